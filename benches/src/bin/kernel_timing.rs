//! Times the fused retrieval kernel alone (`hopfield_cuda::retrieval::retrieve`, forward) against
//! a plain f32 GEMM of the same flop count on the same thread pool, and prints the kernel's
//! GFLOP/s and its fraction of the GEMM rate. Minimum and median over repeated runs: on a shared
//! VM the minimum is the least disturbed run.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin kernel_timing
//! ```

use candle_core::{Device, Result, Tensor};
use hopfield_cuda::retrieval::{retrieve, Retrieval};

/// (N, L, S, H, d): the attention shapes of the benchmark layers (`hopfield_timing`).
const SHAPES: [(usize, usize, usize, usize, usize); 3] = [
    (32, 64, 64, 4, 16),
    (32, 256, 256, 8, 16),
    (16, 512, 512, 8, 32),
];

fn min_median(mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut t = Vec::new();
    let start = std::time::Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 3.0 && t.len() < 500) {
        let s = std::time::Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok((t[0], t[t.len() / 2]))
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // KT_ITERS=n: only the kernel, n calls per shape, no timing printed (for `perf stat`, whose
    // task-clock a loaded machine disturbs less than wall time).
    if let Some(iters) = std::env::var("KT_ITERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        // KT_SHAPE=i: only the i-th shape (for profiling one).
        let only = std::env::var("KT_SHAPE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        for (i, &(n, l, s, h, d)) in SHAPES.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let q = Tensor::randn(0f32, 1., (n, l, h, d), &dev)?;
            let k = Tensor::randn(0f32, 1., (n, s, h, d), &dev)?;
            let v = Tensor::randn(0f32, 1., (n, s, h, d), &dev)?;
            let cfg = Retrieval::new(1.0 / (d as f64).sqrt());
            // KT_PASS=backward: forward and backward of the kernel (the gradient of sum(out)).
            let backward = std::env::var("KT_PASS").as_deref() == Ok("backward");
            let (q, k, v) = (
                candle_core::Var::from_tensor(&q)?,
                candle_core::Var::from_tensor(&k)?,
                candle_core::Var::from_tensor(&v)?,
            );
            for _ in 0..iters {
                let out = retrieve(&q, &k, &v, &cfg)?;
                if backward {
                    out.sum_all()?.backward()?;
                }
            }
        }
        return Ok(());
    }
    for (n, l, s, h, d) in SHAPES {
        let q = Tensor::randn(0f32, 1., (n, l, h, d), &dev)?;
        let k = Tensor::randn(0f32, 1., (n, s, h, d), &dev)?;
        let v = Tensor::randn(0f32, 1., (n, s, h, d), &dev)?;
        let cfg = Retrieval::new(1.0 / (d as f64).sqrt());
        let (kmin, kmed) = min_median(|| retrieve(&q, &k, &v, &cfg).map(|_| ()))?;
        let flop = 4.0 * (n * h * l * s * d) as f64;
        // A square-ish GEMM with the same flop count: (m x kk) (kk x m).
        let m = ((flop / 2.0 / 256.0).sqrt()) as usize;
        let a = Tensor::randn(0f32, 1., (m, 256), &dev)?;
        let b = Tensor::randn(0f32, 1., (256, m), &dev)?;
        let (gmin, gmed) = min_median(|| a.matmul(&b).map(|_| ()))?;
        let gflop = 2.0 * (m * m * 256) as f64;
        let (kr, gr) = (flop / kmin / 1e6, gflop / gmin / 1e6);
        println!(
            "{{\"shape\": \"N{n}_L{l}_S{s}_H{h}_d{d}\", \"kernel_min_ms\": {kmin:.3}, \"kernel_median_ms\": {kmed:.3}, \"kernel_gflops\": {kr:.1}, \"gemm_min_ms\": {gmin:.3}, \"gemm_median_ms\": {gmed:.3}, \"gemm_gflops\": {gr:.1}, \"fraction_of_gemm\": {:.2}}}",
            kr / gr
        );
    }
    Ok(())
}
