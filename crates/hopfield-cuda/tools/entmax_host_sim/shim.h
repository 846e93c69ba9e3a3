// Host simulation of the CUDA primitives kernels/entmax.cu uses (tools/entmax_host_sim): one block
// at a time, one std::thread per CUDA thread, __shared__ as static, shuffles and barriers block-wide.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>
using std::isnan;
struct D3 { unsigned x; };
thread_local D3 threadIdx, blockIdx;
D3 blockDim;
std::barrier<> *bar;
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static
#define __restrict__
inline void __syncthreads() { bar->arrive_and_wait(); }
static std::atomic<int> orv{0};
inline int __syncthreads_or(int p) {
    bar->arrive_and_wait();
    if (p) orv = 1;
    bar->arrive_and_wait();
    int r = orv;
    bar->arrive_and_wait();
    if (threadIdx.x == 0) orv = 0;
    bar->arrive_and_wait();
    return r;
}
template <class V> V __shfl_xor_sync(unsigned, V v, int o) {
    static V slots[1024];
    slots[threadIdx.x] = v;
    bar->arrive_and_wait();
    V r = slots[threadIdx.x ^ o];
    bar->arrive_and_wait();
    return r;
}
struct __half { float v; };
struct __nv_bfloat16 { float v; };
inline float __half2float(__half h) { return h.v; }
inline float __bfloat162float(__nv_bfloat16 h) { return h.v; }
inline __half __float2half(float f) { return {f}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return {f}; }
