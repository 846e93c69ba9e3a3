//! kNN graph build (exact, blocked): N = 10^4, d = 64, k = 8 and 16. The one-shot N = 10^5 timing
//! with peak memory is `cargo run --release -p dahn-graph --example knn_scale`.
//!
//! `cargo bench -p dahn-graph --bench knn`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use dahn_graph::GraphBuilder;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;

fn patterns(n: usize, d: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(0);
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu).expect("patterns")
}

fn knn(c: &mut Criterion) {
    let mut g = c.benchmark_group("knn_build");
    g.sample_size(10);
    let x = patterns(10_000, 64);
    for k in [8, 16] {
        g.bench_function(format!("n10000_d64_k{k}"), |b| {
            b.iter(|| black_box(GraphBuilder::new().k(k).build(&x).expect("build")))
        });
    }
    g.finish();
}

criterion_group!(benches, knn);
criterion_main!(benches);
