//! One factored diffusion step `(1 - eta deg) X + eta W X` on a sparse kNN graph: N vs 2N
//! (expected ratio ~2, O(k N d)) and k vs 2k. d = 64, f32.
//!
//! `cargo bench -p dahn-diffusion --bench factored`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use dahn_diffusion::{DiffusionOperator, FactoredDiffusion};
use dahn_graph::GraphBuilder;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;

fn patterns(n: usize, d: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(1);
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu).expect("patterns")
}

fn factored(c: &mut Criterion) {
    let mut g = c.benchmark_group("factored_step");
    g.sample_size(20);
    for (n, k) in [(25_000, 8), (50_000, 8), (25_000, 16)] {
        let x = patterns(n, 64);
        let graph = GraphBuilder::new().k(k).build(&x).expect("graph");
        let op =
            FactoredDiffusion::from_graph(graph.matrix(), &graph.degrees().expect("deg"), 0.05, 1)
                .expect("op");
        g.bench_function(format!("n{n}_d64_k{k}"), |b| {
            b.iter(|| black_box(op.apply(&x).expect("step")))
        });
    }
    g.finish();
}

criterion_group!(benches, factored);
criterion_main!(benches);
