// Runs the kernels of kernels/entmax.cu on the host (see shim.h): reads `rows n f64`, the logits,
// one alpha per row and the cotangent from stdin; prints the per-row NaN/+inf flags, p, dz and
// dalpha, one line each.
#include "shim.h"
#include "../../kernels/entmax.cu"
#include <cstdio>
#include <functional>
// Runs `k` over `rows` blocks of `nt` threads.
static void launch(int rows, int nt, std::function<void()> k) {
    blockDim.x = nt;
    for (int b = 0; b < rows; ++b) {
        std::barrier<> br(nt);
        bar = &br;
        std::vector<std::thread> ts;
        for (int t = 0; t < nt; ++t)
            ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = b; k(); });
        for (auto &t : ts) t.join();
    }
}
template <class T> void run(int rows, int64_t n, const std::vector<double> &zd,
                            const std::vector<double> &ad, const std::vector<double> &gd) {
    std::vector<T> z(zd.begin(), zd.end()), a(ad.begin(), ad.end()), g(gd.begin(), gd.end());
    std::vector<T> p(rows * n, (T)-7), dz(rows * n, (T)-7), da(rows, (T)-7);
    std::vector<uint8_t> bad(rows, 7);
    // The launch configuration of src/entmax/cuda.rs.
    int nt = std::min<int64_t>(8, (n + 31) / 32) * 32;
    if constexpr (sizeof(T) == 8) {
        launch(rows, nt, [&] { entmax_fwd_f64(z.data(), a.data(), n, p.data(), bad.data()); });
        launch(rows, nt, [&] { entmax_bwd_f64(p.data(), g.data(), a.data(), n, dz.data()); });
        launch(rows, nt, [&] { entmax_alpha_bwd_f64(p.data(), g.data(), a.data(), n, da.data()); });
    } else {
        launch(rows, nt, [&] { entmax_fwd_f32(z.data(), a.data(), n, p.data(), bad.data()); });
        launch(rows, nt, [&] { entmax_bwd_f32(p.data(), g.data(), a.data(), n, dz.data()); });
        launch(rows, nt, [&] { entmax_alpha_bwd_f32(p.data(), g.data(), a.data(), n, da.data()); });
    }
    for (int r = 0; r < rows; ++r) printf("%d ", bad[r]);
    printf("\n");
    for (auto v : p) printf("%.17g ", (double)v);
    printf("\n");
    for (auto v : dz) printf("%.17g ", (double)v);
    printf("\n");
    for (auto v : da) printf("%.17g ", (double)v);
    printf("\n");
}
int main(int argc, char **argv) {
    int rows; long n; int f64;
    if (scanf("%d %ld %d", &rows, &n, &f64) != 3) return 1;
    std::vector<double> z(rows * n), a(rows), g(rows * n);
    char buf[64];
    auto rd = [&](double &v) { scanf("%63s", buf); v = strtod(buf, nullptr); };
    for (auto &v : z) rd(v);
    for (auto &v : a) rd(v);
    for (auto &v : g) rd(v);
    if (f64) run<double>(rows, n, z, a, g); else run<float>(rows, n, z, a, g);
}
