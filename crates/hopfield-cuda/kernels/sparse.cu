// Sparse-diffusion kernels on CUDA: y = W x (spmm) and the fused factored diffusion step
// y = (1 - eta deg) * x + eta W x, for a CSR matrix W (u32 row pointers and columns, values in
// the element type) and a row-major (N, m) x. Same semantics as the CPU kernel in
// src/sparse/cpu.rs: per output element the sum runs over the row's entries in order from zero.
//
// One thread per output element, consecutive threads on consecutive columns of one row, so the
// gathered rows of x and the written rows of y are read and written coalesced; the row's
// pointers, columns and values are the same for the threads of a row (broadcast loads).

#include <stdint.h>

template <typename T>
__device__ __forceinline__ void sparse_product(const uint32_t *__restrict__ row_ptr,
                                               const uint32_t *__restrict__ cols,
                                               const T *__restrict__ vals,
                                               const T *__restrict__ x,
                                               const T *__restrict__ deg, T eta, int step,
                                               int64_t n, int64_t m, T *__restrict__ y) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * m) return;
    const int64_t i = idx / m, c = idx % m;
    T acc = 0;
    for (uint32_t p = row_ptr[i]; p < row_ptr[i + 1]; ++p) {
        acc += vals[p] * x[(int64_t)cols[p] * m + c];
    }
    if (step) {
        const T keep = (T)1 - deg[i] * eta;
        y[idx] = x[idx] * keep + acc * eta;
    } else {
        y[idx] = acc;
    }
}

#define SPARSE_PRODUCT(NAME, T)                                                                  \
    extern "C" __global__ void NAME(const uint32_t *row_ptr, const uint32_t *cols, const T *vals, \
                                    const T *x, const T *deg, T eta, int step, int64_t n,        \
                                    int64_t m, T *y) {                                           \
        sparse_product<T>(row_ptr, cols, vals, x, deg, eta, step, n, m, y);                      \
    }

SPARSE_PRODUCT(sparse_product_f32, float)
SPARSE_PRODUCT(sparse_product_f64, double)
