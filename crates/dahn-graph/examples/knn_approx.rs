//! One-shot scale check of the approximate kNN build (large-leaf forest, then NN-descent): N uniform random patterns x d
//! dims, k neighbours, f32 (the same data as `knn_scale`). Prints the build time, the peak
//! resident memory (VmHWM), recall@k of the directed lists on `sample` random rows against brute
//! force for those rows, and, with `--exact`, recall against the full exact build
//! (`GraphBuilder` exact path: directed lists by brute force on every row, and the share of the
//! exact symmetrised graph's edges present in the approximate one).
//!
//! `cargo run --release -p dahn-graph --example knn_approx -- [N] [d] [k] [sample] [pool] [max_iters] [trees] [leaf] [--exact]`
//! (defaults 1000000 64 8 1000, then `NnDescent::default()`'s; pool 0 = automatic)

use candle_core::{Device, Tensor};
use dahn_graph::{brute_force_rows, nn_descent, GraphBuilder, NnDescent};
use rand::{rngs::StdRng, seq::index::sample, Rng, SeedableRng};
use std::time::Instant;

fn vm_hwm_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> candle_core::Result<()> {
    let exact = std::env::args().any(|a| a == "--exact");
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, d, k, rows) = (
        args.first().copied().unwrap_or(1_000_000),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(8),
        args.get(3).copied().unwrap_or(1000),
    );
    let mut params = NnDescent::default().pool(args.get(4).copied().filter(|&p| p > 0));
    if let Some(&iters) = args.get(5) {
        params = params.max_iters(iters);
    }
    if let Some(&trees) = args.get(6) {
        params = params.trees(Some(trees));
    }
    if let Some(&leaf) = args.get(7) {
        params = params.leaf(leaf);
    }
    // Same seeded uniform patterns as knn_scale (candle's CPU rng cannot be seeded).
    let mut rng = StdRng::seed_from_u64(0);
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?;
    let before = vm_hwm_mib();
    let t = Instant::now();
    let lists = nn_descent(&x, k, &params)?;
    let search = t.elapsed().as_secs_f64();
    let csr = lists.to_csr()?;
    let secs = t.elapsed().as_secs_f64();
    let peak = vm_hwm_mib();
    let sample_rows: Vec<usize> = sample(&mut rng, n, rows.min(n)).into_vec();
    let t = Instant::now();
    let truth = brute_force_rows(&x, &sample_rows, k)?;
    let recall = lists.recall(&sample_rows, &truth)?;
    println!(
        "N={n} d={d} k={k} {params:?} ({trees} trees): build {secs:.1} s (search {search:.1} s), nnz {} ({:.1} per node), \
         peak RSS {:.0} MiB (before build {:.0} MiB), threads {}; recall@{k} on {} sampled rows {recall:.4} \
         (brute force {:.1} s)",
        csr.nnz(),
        csr.nnz() as f64 / n as f64,
        peak.unwrap_or(f64::NAN),
        before.unwrap_or(f64::NAN),
        rayon::current_num_threads(),
        sample_rows.len(),
        t.elapsed().as_secs_f64(),
        trees = params.tree_count(n),
    );
    if exact {
        let t = Instant::now();
        let g = GraphBuilder::new().k(k).build(&x)?;
        let exact_secs = t.elapsed().as_secs_f64();
        let all: Vec<usize> = (0..n).collect();
        let truth = brute_force_rows(&x, &all, k)?;
        let ex = g.adjacency();
        let (mut kept, mut total) = (0usize, 0usize);
        for i in 0..n {
            let (cols, _) = ex.row(i);
            total += cols.len();
            kept += cols
                .iter()
                .filter(|&&j| csr.get(i, j as usize) > 0.0)
                .count();
        }
        println!(
            "exact build {exact_secs:.1} s; recall@{k} of the directed lists on all {n} rows {:.4}; \
             exact symmetrised edges present in the approximate graph {:.4} ({kept}/{total})",
            lists.recall(&all, &truth)?,
            kept as f64 / total as f64
        );
    }
    Ok(())
}
