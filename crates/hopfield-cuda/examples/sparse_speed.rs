//! Speed of the sparse kernels (`hopfield_cuda::sparse`) on a kNN-like graph, against the
//! machine's memory bandwidth.
//!
//! ```sh
//! cargo run --release -p hopfield-cuda --example sparse_speed            # N = 100000, k = 8
//! cargo run --release -p hopfield-cuda --example sparse_speed -- 20000 8  # N, k
//! ```
//!
//! Reports, per batch width B (32 and 256, f32): the time of `spmm` (y = W x) and of the fused
//! step `(1 - eta deg) x + eta W x`, and the bandwidth achieved against the floor of touching
//! every byte once (W's row pointers, columns and f32 values; x read; y written), as a fraction
//! of the stream bandwidth a parallel copy loop reaches on the same machine.

use candle_core::{Device, Result, Tensor};
use hopfield_cuda::sparse::{diffusion_step, spmm, CsrMatrix};
use rayon::prelude::*;
use std::time::Instant;

/// Median seconds of `reps` runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

/// Bytes per second of a parallel copy of 256 MiB (read + write counted), best of 5.
fn stream_bandwidth() -> f64 {
    let len = 64 << 20;
    let src = vec![1f32; len];
    let mut dst = vec![0f32; len];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let s = Instant::now();
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(s.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * len * 4) as f64 / best
}

/// Row i links to k distinct pseudo-random columns (a kNN graph's shape without its locality:
/// the gathers of x rows are as scattered as they get).
fn knn_like(n: usize, k: usize) -> Result<CsrMatrix> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let (mut rp, mut ci, mut v) = (
        vec![0usize],
        Vec::with_capacity(n * k),
        Vec::with_capacity(n * k),
    );
    for _ in 0..n {
        let start = ci.len();
        while ci.len() - start < k.min(n) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let c = (s % n as u64) as u32;
            if !ci[start..].contains(&c) {
                ci.push(c);
                v.push(0.5 + (s >> 40) as f64 / (1u64 << 25) as f64);
            }
        }
        ci[start..].sort_unstable();
        rp.push(ci.len());
    }
    CsrMatrix::new(n, rp, ci, v)
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, k) = (
        args.first().copied().unwrap_or(100_000),
        args.get(1).copied().unwrap_or(8),
    );
    let dev = Device::Cpu;
    let stream = stream_bandwidth();
    println!(
        "threads {}, stream copy bandwidth {:.1} GB/s",
        rayon::current_num_threads(),
        stream / 1e9
    );
    let a = knn_like(n, k)?;
    let deg: Vec<f32> = (0..n)
        .map(|i| a.row(i).1.iter().sum::<f64>() as f32)
        .collect();
    let deg = Tensor::from_vec(deg, n, &dev)?;
    let eta = 0.05;
    println!("graph: N = {n}, k = {k}, nnz = {}", a.nnz());
    println!("| op | B | time (ms) | floor bytes (MB) | achieved (GB/s) | of stream |");
    println!("|---|---|---|---|---|---|");
    for b in [32usize, 256] {
        let x = Tensor::randn(0f32, 1., (n, b), &dev)?;
        let w_bytes = (n + 1) * 8 + a.nnz() * (4 + 4);
        let xy = 2 * n * b * 4;
        for (name, extra) in [("spmm", 0usize), ("fused step", n * 4)] {
            let bytes = (w_bytes + xy + extra) as f64;
            let t = time(7, || {
                let y = if extra == 0 {
                    spmm(&a, &x)?
                } else {
                    diffusion_step(&a, &deg, eta, &x)?
                };
                std::hint::black_box(y);
                Ok(())
            })?;
            println!(
                "| {name} | {b} | {:.2} | {:.1} | {:.1} | {:.0}% |",
                t * 1e3,
                bytes / 1e6,
                bytes / t / 1e9,
                100.0 * bytes / t / stream
            );
        }
    }
    Ok(())
}
