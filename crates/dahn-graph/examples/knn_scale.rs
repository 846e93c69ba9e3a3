//! One-shot scale check of the exact blocked kNN build: N patterns x d dims, k neighbours, f32.
//! Prints the build time and the peak resident memory (VmHWM).
//!
//! `cargo run --release -p dahn-graph --example knn_scale -- [N] [d] [k] [block_rows]` (defaults 100000 64 8, automatic block)

use candle_core::{Device, Tensor};
use dahn_graph::GraphBuilder;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

fn vm_hwm_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, d, k) = (
        args.first().copied().unwrap_or(100_000),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(8),
    );
    // Uniform patterns from a seeded generator (candle's CPU rng cannot be seeded).
    let mut rng = StdRng::seed_from_u64(0);
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?;
    let before = vm_hwm_mib();
    let t = Instant::now();
    let mut builder = GraphBuilder::new().k(k);
    if let Some(&b) = args.get(3) {
        builder = builder.block_rows(b);
    }
    let g = builder.build(&x)?;
    let secs = t.elapsed().as_secs_f64();
    let nnz = g.adjacency().nnz();
    println!(
        "N={n} d={d} k={k}: build {secs:.2} s, nnz {nnz} ({:.1} per node), peak RSS {:.0} MiB (before build {:.0} MiB), threads {}",
        nnz as f64 / n as f64,
        vm_hwm_mib().unwrap_or(f64::NAN),
        before.unwrap_or(f64::NAN),
        rayon::current_num_threads()
    );
    Ok(())
}
