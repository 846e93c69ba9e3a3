// alpha-entmax over the rows of a contiguous (rows, n) matrix on CUDA, one alpha per row, and its
// closed-form backward. Same semantics as the CPU op in src/entmax/mod.rs (the tests' reference):
//
//   p_i = [x_i - tau]_+^(1 / (alpha - 1)),  x = (alpha - 1) (z - max z),  sum p = 1.
//
// Forward, one block per row. Pass 1: the row's max and whether it holds NaN or +inf (written to
// `bad[row]`, so the host returns the CPU path's typed error; such a row's output is zeros).
// A fully masked row (all -inf) is all zeros. Pass 2: m, the number of entries with x > -1
// (only they can be in the support, since tau >= -1). Then bisection on tau in the compute type
// (f32 for f32/f16/bf16, f64 for f64), with the CPU path's bracket and stopping rule:
// lo = -1 (the max alone has mass 1), hi = -(1/m)^(alpha - 1) (every entry has mass at most 1/m),
// midpoints until the midpoint equals an end (about 24 halvings in f32, 55 in f64; 200 at most),
// keeping lo where the mass is >= 1. The mass is a block reduction whose value is bitwise the
// same in every thread (see block_sum), so every thread takes the same branch.
// - alpha = 2 (sparsemax) and alpha = 1.5 (entmax-1.5): the bisection only finds the support
//   {x > lo}; tau is then the exact closed form of the CPU's sort-based path from the support's
//   size and sums (sum x, and sum x^2 for 1.5), and p is not renormalised, so entries at or below
//   tau are exact zeros where the CPU path has them.
// - other alpha: tau = lo and p is divided by its sum, as on the CPU.
// -inf logits give x = -inf: exactly 0 and out of every sum.
//
// Backward (per row): with s = p^(2 - alpha) on the support (p > 0), 0 elsewhere,
//   dz = s g - s (sum s g) / (sum s),
// and the alpha gradient
//   dalpha = sum_i g_i [(p_i - s~_i) / (alpha-1)^2 - (p_i ln p_i - s~_i H) / (alpha-1)],
//   s~ = s / sum s, H = sum p ln p (0 for an all-zero row).
//
// Every value is computed in the compute type and stored in the element type.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ double ld(double x) { return x; }
__device__ __forceinline__ float ld(__half x) { return __half2float(x); }
__device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T, typename A> __device__ __forceinline__ T st(A x);
template <> __device__ __forceinline__ float st<float, float>(float x) { return x; }
template <> __device__ __forceinline__ double st<double, double>(double x) { return x; }
template <> __device__ __forceinline__ __half st<__half, float>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16, float>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float pow_(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double pow_(double a, double b) { return pow(a, b); }
__device__ __forceinline__ float sqrt_(float a) { return sqrtf(a); }
__device__ __forceinline__ double sqrt_(double a) { return sqrt(a); }
__device__ __forceinline__ float log_(float a) { return logf(a); }
__device__ __forceinline__ double log_(double a) { return log(a); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ int max_(int a, int b) { return a > b ? a : b; }

struct SumOp {
    template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {
    template <typename V> __device__ __forceinline__ V operator()(V a, V b) const {
        return max_(a, b);
    }
};

// Butterfly (xor) reduction: lanes i and i^o combine the same two values (a + b == b + a
// exactly), so every lane ends with bitwise the same result.
template <typename V, typename Op> __device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The reduction over the block (blockDim.x a multiple of 32, at most 1024), returned to every
// thread: each warp reduces its lanes, then every warp reduces the warps' partials in the same
// order, so all threads hold bitwise the same value (the bisection's branches depend on it).
// `sh` holds 32 values; the leading barrier keeps a previous call's readers from seeing new
// writes.
template <typename V, typename Op> __device__ __forceinline__ V block_reduce(V v, V *sh, Op op,
                                                                            V identity) {
    v = warp_reduce(v, op);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? sh[lane] : identity;
    return warp_reduce(v, op);
}

template <typename A> __device__ __forceinline__ A block_sum(A v, A *sh) {
    return block_reduce(v, sh, SumOp(), (A)0);
}

// [d]_+^e for d > 0: d for sparsemax, d^2 for entmax-1.5, d^e otherwise.
template <typename A> __device__ __forceinline__ A power(A d, int kind, A e) {
    return kind == 2 ? d : kind == 1 ? d * d : pow_(d, e);
}

// alpha -> 2 (sparsemax), 1 (entmax-1.5), 0 (bisection). Compared in the compute type, as the CPU
// compares the f64 value of the stored alpha.
template <typename A> __device__ __forceinline__ int kind_of(A alpha) {
    return alpha == (A)2 ? 2 : alpha == (A)1.5 ? 1 : 0;
}

template <typename T>
__device__ __forceinline__ void entmax_fwd(const T *__restrict__ z, const T *__restrict__ alpha,
                                           int64_t n, T *__restrict__ p, uint8_t *__restrict__ bad,
                                           typename Acc<T>::type *sh, int *shi) {
    typedef typename Acc<T>::type A;
    const int64_t row = blockIdx.x;
    const T *zr = z + row * n;
    T *pr = p + row * n;
    const int tid = threadIdx.x, nt = blockDim.x;

    A mx = -INFINITY;
    int nonfinite = 0;
    for (int64_t i = tid; i < n; i += nt) {
        const A v = ld(zr[i]);
        nonfinite |= isnan(v) || v == (A)INFINITY;
        mx = max_(mx, v);
    }
    nonfinite = __syncthreads_or(nonfinite);
    if (tid == 0) bad[row] = nonfinite ? 1 : 0;
    mx = block_reduce(mx, sh, MaxOp(), (A)-INFINITY);
    if (nonfinite || mx == (A)-INFINITY) {
        // NaN/+inf: the host reports an error; fully masked: nothing may be retrieved.
        for (int64_t i = tid; i < n; i += nt) pr[i] = st<T, A>((A)0);
        return;
    }

    const A al = ld(alpha[row]);
    const A a1 = al - (A)1, e = (A)1 / a1;
    const int kind = kind_of(al);
    // x_i = (alpha - 1) (z_i - max), recomputed from z on every pass (one multiply-add).
#define X(i) (a1 * (ld(zr[i]) - mx))

    int m = 0;
    for (int64_t i = tid; i < n; i += nt) m += X(i) > (A)-1;
    m = block_reduce(m, shi, SumOp(), 0);

    A lo = (A)-1, hi = -pow_((A)1 / (A)m, a1);
    for (int it = 0; it < 200; ++it) {
        const A mid = (A)0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        A mass = 0;
        for (int64_t i = tid; i < n; i += nt) {
            const A d = X(i) - mid;
            if (d > (A)0) mass += power(d, kind, e);
        }
        mass = block_sum(mass, sh);
        if (mass >= (A)1)
            lo = mid;
        else
            hi = mid;
    }

    A tau = lo, norm = 1;
    if (kind != 0) {
        // The closed form on the support {x > lo}: k = |support| >= 1 (the max has x = 0 > lo).
        A s1 = 0, s2 = 0;
        int k = 0;
        for (int64_t i = tid; i < n; i += nt) {
            const A x = X(i);
            if (x > lo) {
                s1 += x;
                s2 += x * x;
                ++k;
            }
        }
        s1 = block_sum(s1, sh);
        s2 = block_sum(s2, sh);
        k = block_reduce(k, shi, SumOp(), 0);
        const A rho = (A)k;
        if (kind == 2) {
            tau = (s1 - (A)1) / rho;
        } else {
            const A mean = s1 / rho;
            const A ss = rho * (s2 / rho - mean * mean);
            tau = mean - sqrt_(max_(((A)1 - ss) / rho, (A)0));
        }
    } else {
        A mass = 0;
        for (int64_t i = tid; i < n; i += nt) {
            const A d = X(i) - lo;
            if (d > (A)0) mass += pow_(d, e);
        }
        norm = block_sum(mass, sh);
    }
    for (int64_t i = tid; i < n; i += nt) {
        const A d = X(i) - tau;
        pr[i] = st<T, A>(d > (A)0 ? power(d, kind, e) / norm : (A)0);
    }
#undef X
}

// s = p^(2 - alpha) on the support, 0 elsewhere.
template <typename A> __device__ __forceinline__ A support_weight(A p, int kind, A two_minus) {
    return p <= (A)0 ? (A)0 : kind == 2 ? (A)1 : kind == 1 ? sqrt_(p) : pow_(p, two_minus);
}

template <typename T>
__device__ __forceinline__ void entmax_bwd(const T *__restrict__ p, const T *__restrict__ g,
                                           const T *__restrict__ alpha, int64_t n,
                                           T *__restrict__ dz, typename Acc<T>::type *sh) {
    typedef typename Acc<T>::type A;
    const int64_t row = blockIdx.x;
    const T *pr = p + row * n, *gr = g + row * n;
    T *dr = dz + row * n;
    const int tid = threadIdx.x, nt = blockDim.x;
    const A al = ld(alpha[row]), two_minus = (A)2 - al;
    const int kind = kind_of(al);
    A ss = 0, sg = 0;
    for (int64_t i = tid; i < n; i += nt) {
        const A s = support_weight(ld(pr[i]), kind, two_minus);
        ss += s;
        sg += s * ld(gr[i]);
    }
    ss = block_sum(ss, sh);
    sg = block_sum(sg, sh);
    const A c = ss > (A)0 ? sg / ss : (A)0;
    for (int64_t i = tid; i < n; i += nt) {
        const A s = support_weight(ld(pr[i]), kind, two_minus);
        dr[i] = st<T, A>(s * (ld(gr[i]) - c));
    }
}

template <typename T>
__device__ __forceinline__ void entmax_alpha_bwd(const T *__restrict__ p, const T *__restrict__ g,
                                                 const T *__restrict__ alpha, int64_t n,
                                                 T *__restrict__ da, typename Acc<T>::type *sh) {
    typedef typename Acc<T>::type A;
    const int64_t row = blockIdx.x;
    const T *pr = p + row * n, *gr = g + row * n;
    const int tid = threadIdx.x, nt = blockDim.x;
    const A al = ld(alpha[row]), two_minus = (A)2 - al, a1 = al - (A)1;
    const int kind = kind_of(al);
    A ss = 0, ent = 0;
    for (int64_t i = tid; i < n; i += nt) {
        const A pi = ld(pr[i]);
        if (pi > (A)0) {
            ss += support_weight(pi, kind, two_minus);
            ent += pi * log_(pi);
        }
    }
    ss = block_sum(ss, sh);
    ent = block_sum(ent, sh);
    if (ss <= (A)0) {
        if (tid == 0) da[row] = st<T, A>((A)0);
        return;
    }
    A acc = 0;
    for (int64_t i = tid; i < n; i += nt) {
        const A pi = ld(pr[i]);
        if (pi > (A)0) {
            const A stl = support_weight(pi, kind, two_minus) / ss;
            acc += ld(gr[i]) * ((pi - stl) / (a1 * a1) - (pi * log_(pi) - stl * ent) / a1);
        }
    }
    acc = block_sum(acc, sh);
    if (tid == 0) da[row] = st<T, A>(acc);
}

// One block per row (grid x = rows); blockDim.x a multiple of 32, at most 1024.
#define ENTMAX_KERNELS(T, SUFFIX)                                                                  \
    extern "C" __global__ void entmax_fwd_##SUFFIX(const T *z, const T *alpha, int64_t n, T *p,   \
                                                   uint8_t *bad) {                                \
        __shared__ Acc<T>::type sh[32];                                                           \
        __shared__ int shi[32];                                                                   \
        entmax_fwd<T>(z, alpha, n, p, bad, sh, shi);                                              \
    }                                                                                             \
    extern "C" __global__ void entmax_bwd_##SUFFIX(const T *p, const T *g, const T *alpha,        \
                                                   int64_t n, T *dz) {                            \
        __shared__ Acc<T>::type sh[32];                                                           \
        entmax_bwd<T>(p, g, alpha, n, dz, sh);                                                    \
    }                                                                                             \
    extern "C" __global__ void entmax_alpha_bwd_##SUFFIX(const T *p, const T *g, const T *alpha,  \
                                                         int64_t n, T *da) {                      \
        __shared__ Acc<T>::type sh[32];                                                           \
        entmax_alpha_bwd<T>(p, g, alpha, n, da, sh);                                              \
    }

ENTMAX_KERNELS(float, f32)
ENTMAX_KERNELS(double, f64)
ENTMAX_KERNELS(__half, f16)
ENTMAX_KERNELS(__nv_bfloat16, bf16)
