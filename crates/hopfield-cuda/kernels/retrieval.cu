// Fused softmax retrieval on CUDA: out = softmax(beta q k^T + mask) v per (sample, head), with the
// log-sum-exp per query row, and its FlashAttention-2 backward. Same semantics as the CPU kernels
// in src/retrieval/cpu.rs (which the tests hold as the reference): per-head beta, an additive
// mask read through a strided (possibly broadcast) view, the zero pattern of
// `add_zero_association` (logit 0, value 0, never masked), and fully masked rows giving output 0,
// lse -inf and zero gradients.
//
// Inputs are strided (N, T, H, d) views with unit stride on d, read in place; every value is
// computed in f32 and stored in the element type (f32, f16 or bf16).
//
// Layout of the work: grid x = (sample, head), grid y = block of rows. The forward pass and the dq
// pass give one query row to each thread and stream blocks of stored patterns through shared
// memory; the dk/dv pass gives one stored pattern to each thread and streams blocks of queries. Head sizes up to MAX_D are supported (the Rust
// side routes larger ones to the composed path).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define MAX_D 128
#define TILE 32

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

// A strided 4-D view: element [a, b, c, d] at off + a*s0 + b*s1 + c*s2 + d*s3.
struct View {
    int64_t off, s0, s1, s2, s3;
};

struct Geometry {
    int n, l, s, h, hd, pd;
    int zero_association;
    int has_mask;
    // Whether d_lse holds the lse's gradient (otherwise it is a placeholder, never read).
    int has_d_lse;
};

__device__ __forceinline__ int64_t at(const View &v, int a, int b, int c) {
    return v.off + a * v.s0 + b * v.s1 + c * v.s2;
}

// Rows j0..j0+c of head h of sample n of a strided (N, T, H, d) view, times `scale`, into a
// shared-memory tile; the block's threads share the copy.
template <typename T>
__device__ __forceinline__ void load_tile(float (*dst)[MAX_D], const T *src, const View &v, int n,
                                          int h, int j0, int c, int d, float scale) {
    for (int i = threadIdx.x; i < c * d; i += blockDim.x) {
        const int j = i / d, e = i % d;
        dst[j][e] = scale * to_f(src[at(v, n, j0 + j, h) + e]);
    }
}

template <typename T>
__device__ __forceinline__ float mask_at(const T *mask, const View &vm, const Geometry &g, int n,
                                         int h, int r, int j) {
    if (!g.has_mask) return 0.f;
    return to_f(mask[vm.off + n * vm.s0 + h * vm.s1 + r * vm.s2 + j * vm.s3]);
}

// out (N, L, H, pd) then lse (N, H, L), both contiguous in `res`.
template <typename T>
__device__ void forward_impl(const T *q, View vq, const T *k, View vk, const T *v, View vv,
                             const T *mask, View vm, const float *betas, Geometry g, T *res) {
    __shared__ float ks[TILE][MAX_D];
    __shared__ float vs[TILE][MAX_D];
    const int nh = blockIdx.x;
    const int n = nh / g.h, h = nh % g.h;
    const int r = blockIdx.y * blockDim.x + threadIdx.x;
    const bool row = r < g.l;
    const float beta = betas[h];
    float qr[MAX_D], acc[MAX_D];
    if (row) {
        const int64_t b = at(vq, n, r, h);
        for (int d = 0; d < g.hd; ++d) qr[d] = beta * to_f(q[b + d]);
    }
    for (int e = 0; e < g.pd; ++e) acc[e] = 0.f;
    // The zero pattern starts the running sum at exp(0 - 0) = 1 with nothing added.
    float m = g.zero_association ? 0.f : -INFINITY;
    float sum = g.zero_association ? 1.f : 0.f;
    for (int j0 = 0; j0 < g.s; j0 += TILE) {
        const int c = min(TILE, g.s - j0);
        __syncthreads();
        load_tile(ks, k, vk, n, h, j0, c, g.hd, 1.f);
        load_tile(vs, v, vv, n, h, j0, c, g.pd, 1.f);
        __syncthreads();
        if (!row) continue;
        float z[TILE];
        float bm = -INFINITY;
        for (int j = 0; j < c; ++j) {
            float dot = 0.f;
            for (int d = 0; d < g.hd; ++d) dot = fmaf(qr[d], ks[j][d], dot);
            z[j] = dot + mask_at(mask, vm, g, n, h, r, j0 + j);
            bm = fmaxf(bm, z[j]);
        }
        const float mnew = fmaxf(m, bm);
        if (mnew == -INFINITY) continue;  // everything so far is masked
        const float alpha = __expf(m - mnew);
        sum *= alpha;
        for (int e = 0; e < g.pd; ++e) acc[e] *= alpha;
        for (int j = 0; j < c; ++j) {
            const float p = __expf(z[j] - mnew);
            sum += p;
            for (int e = 0; e < g.pd; ++e) acc[e] = fmaf(p, vs[j][e], acc[e]);
        }
        m = mnew;
    }
    if (!row) return;
    const int64_t ob = ((int64_t)(n * g.l + r) * g.h + h) * g.pd;
    const int64_t no = (int64_t)g.n * g.l * g.h * g.pd;
    const int64_t li = no + (int64_t)(n * g.h + h) * g.l + r;
    if (m == -INFINITY) {
        for (int e = 0; e < g.pd; ++e) res[ob + e] = from_f<T>(0.f);
        res[li] = from_f<T>(-INFINITY);
        return;
    }
    const float inv = 1.f / sum;
    for (int e = 0; e < g.pd; ++e) res[ob + e] = from_f<T>(acc[e] * inv);
    res[li] = from_f<T>(m + logf(sum));
}

// delta[n, h, r] = dO . O, laid out like the lse.
template <typename T>
__device__ void delta_impl(const T *out, const T *d_out, Geometry g, float *delta) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t rows = (int64_t)g.n * g.h * g.l;
    if (i >= rows) return;
    const int r = i % g.l;
    const int nh = i / g.l;
    const int n = nh / g.h, h = nh % g.h;
    const int64_t b = ((int64_t)(n * g.l + r) * g.h + h) * g.pd;
    float s = 0.f;
    for (int e = 0; e < g.pd; ++e) s = fmaf(to_f(out[b + e]), to_f(d_out[b + e]), s);
    delta[i] = s;
}

// The lse of a row as the shift of exp(z - shift): +inf for fully masked rows, so that their
// recomputed association is exactly 0.
__device__ __forceinline__ float lse_shift(float lse) { return lse == -INFINITY ? INFINITY : lse; }

// dq: one query row per thread, stored patterns streamed. dS = P (dP - D + dlse), dq = beta dS k.
template <typename T>
__device__ void dq_impl(const T *q, View vq, const T *k, View vk, const T *v, View vv,
                        const T *mask, View vm, const float *betas, Geometry g, const T *lse,
                        const T *d_out, const T *d_lse, const float *delta, T *dq) {
    __shared__ float ks[TILE][MAX_D];
    __shared__ float vs[TILE][MAX_D];
    const int nh = blockIdx.x;
    const int n = nh / g.h, h = nh % g.h;
    const int r = blockIdx.y * blockDim.x + threadIdx.x;
    const bool row = r < g.l;
    const float beta = betas[h];
    float qr[MAX_D], dor[MAX_D], acc[MAX_D];
    float shift = INFINITY, dshift = 0.f;
    if (row) {
        const int64_t b = at(vq, n, r, h);
        for (int d = 0; d < g.hd; ++d) qr[d] = beta * to_f(q[b + d]);
        const int64_t ob = ((int64_t)(n * g.l + r) * g.h + h) * g.pd;
        for (int e = 0; e < g.pd; ++e) dor[e] = to_f(d_out[ob + e]);
        const int64_t li = (int64_t)(n * g.h + h) * g.l + r;
        shift = lse_shift(to_f(lse[li]));
        dshift = (g.has_d_lse ? to_f(d_lse[li]) : 0.f) - delta[li];
    }
    for (int d = 0; d < g.hd; ++d) acc[d] = 0.f;
    for (int j0 = 0; j0 < g.s; j0 += TILE) {
        const int c = min(TILE, g.s - j0);
        __syncthreads();
        load_tile(ks, k, vk, n, h, j0, c, g.hd, 1.f);
        load_tile(vs, v, vv, n, h, j0, c, g.pd, 1.f);
        __syncthreads();
        if (!row) continue;
        for (int j = 0; j < c; ++j) {
            float dot = 0.f, dp = 0.f;
            for (int d = 0; d < g.hd; ++d) dot = fmaf(qr[d], ks[j][d], dot);
            for (int e = 0; e < g.pd; ++e) dp = fmaf(dor[e], vs[j][e], dp);
            const float p = __expf(dot + mask_at(mask, vm, g, n, h, r, j0 + j) - shift);
            const float ds = p * (dp + dshift);
            for (int d = 0; d < g.hd; ++d) acc[d] = fmaf(ds, ks[j][d], acc[d]);
        }
    }
    if (!row) return;
    const int64_t b = ((int64_t)(n * g.l + r) * g.h + h) * g.hd;
    for (int d = 0; d < g.hd; ++d) dq[b + d] = from_f<T>(beta * acc[d]);
}

// dk and dv: one stored pattern per thread, queries streamed. dv = P^T dO, dk = dS^T (beta q).
template <typename T>
__device__ void dkv_impl(const T *q, View vq, const T *k, View vk, const T *v, View vv,
                         const T *mask, View vm, const float *betas, Geometry g, const T *lse,
                         const T *d_out, const T *d_lse, const float *delta, T *dk, T *dv) {
    __shared__ float qs[TILE][MAX_D];
    __shared__ float dos[TILE][MAX_D];
    __shared__ float shifts[TILE];
    __shared__ float dshifts[TILE];
    const int nh = blockIdx.x;
    const int n = nh / g.h, h = nh % g.h;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    const bool col = j < g.s;
    const float beta = betas[h];
    // The output gradient is contiguous (N, L, H, pd).
    const View vo = {0, (int64_t)g.l * g.h * g.pd, (int64_t)g.h * g.pd, g.pd, 1};
    float kj[MAX_D], vj[MAX_D], dkj[MAX_D], dvj[MAX_D];
    if (col) {
        const int64_t bk = at(vk, n, j, h);
        for (int d = 0; d < g.hd; ++d) kj[d] = to_f(k[bk + d]);
        const int64_t bv = at(vv, n, j, h);
        for (int e = 0; e < g.pd; ++e) vj[e] = to_f(v[bv + e]);
    }
    for (int d = 0; d < g.hd; ++d) dkj[d] = 0.f;
    for (int e = 0; e < g.pd; ++e) dvj[e] = 0.f;
    for (int r0 = 0; r0 < g.l; r0 += TILE) {
        const int c = min(TILE, g.l - r0);
        __syncthreads();
        load_tile(qs, q, vq, n, h, r0, c, g.hd, beta);
        load_tile(dos, d_out, vo, n, h, r0, c, g.pd, 1.f);
        for (int r = threadIdx.x; r < c; r += blockDim.x) {
            const int64_t li = (int64_t)(n * g.h + h) * g.l + r0 + r;
            shifts[r] = lse_shift(to_f(lse[li]));
            dshifts[r] = (g.has_d_lse ? to_f(d_lse[li]) : 0.f) - delta[li];
        }
        __syncthreads();
        if (!col) continue;
        for (int r = 0; r < c; ++r) {
            float dot = 0.f, dp = 0.f;
            for (int d = 0; d < g.hd; ++d) dot = fmaf(qs[r][d], kj[d], dot);
            for (int e = 0; e < g.pd; ++e) dp = fmaf(dos[r][e], vj[e], dp);
            const float p = __expf(dot + mask_at(mask, vm, g, n, h, r0 + r, j) - shifts[r]);
            const float ds = p * (dp + dshifts[r]);
            for (int e = 0; e < g.pd; ++e) dvj[e] = fmaf(p, dos[r][e], dvj[e]);
            for (int d = 0; d < g.hd; ++d) dkj[d] = fmaf(ds, qs[r][d], dkj[d]);
        }
    }
    if (!col) return;
    const int64_t bk = ((int64_t)(n * g.s + j) * g.h + h) * g.hd;
    for (int d = 0; d < g.hd; ++d) dk[bk + d] = from_f<T>(dkj[d]);
    const int64_t bv = ((int64_t)(n * g.s + j) * g.h + h) * g.pd;
    for (int e = 0; e < g.pd; ++e) dv[bv + e] = from_f<T>(dvj[e]);
}

#define RETRIEVAL_KERNELS(T, SUFFIX)                                                              \
    extern "C" __global__ void retrieval_fwd_##SUFFIX(                                           \
        const T *q, View vq, const T *k, View vk, const T *v, View vv, const T *mask, View vm,  \
        const float *betas, Geometry g, T *res) {                                               \
        forward_impl<T>(q, vq, k, vk, v, vv, mask, vm, betas, g, res);                          \
    }                                                                                            \
    extern "C" __global__ void retrieval_delta_##SUFFIX(const T *out, const T *d_out,            \
                                                        Geometry g, float *delta) {              \
        delta_impl<T>(out, d_out, g, delta);                                                    \
    }                                                                                            \
    extern "C" __global__ void retrieval_dq_##SUFFIX(                                            \
        const T *q, View vq, const T *k, View vk, const T *v, View vv, const T *mask, View vm,  \
        const float *betas, Geometry g, const T *lse, const T *d_out, const T *d_lse,           \
        const float *delta, T *dq) {                                                            \
        dq_impl<T>(q, vq, k, vk, v, vv, mask, vm, betas, g, lse, d_out, d_lse, delta, dq);      \
    }                                                                                            \
    extern "C" __global__ void retrieval_dkv_##SUFFIX(                                           \
        const T *q, View vq, const T *k, View vk, const T *v, View vv, const T *mask, View vm,  \
        const float *betas, Geometry g, const T *lse, const T *d_out, const T *d_lse,           \
        const float *delta, T *dk, T *dv) {                                                     \
        dkv_impl<T>(q, vq, k, vk, v, vv, mask, vm, betas, g, lse, d_out, d_lse, delta, dk, dv); \
    }

RETRIEVAL_KERNELS(float, f32)
RETRIEVAL_KERNELS(__half, f16)
RETRIEVAL_KERNELS(__nv_bfloat16, bf16)
