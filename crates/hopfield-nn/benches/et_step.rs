//! One Energy Transformer block step (tokens 64, dim 128, heads 4, 512 Hopfield memories, batch 1,
//! f32 CPU): forward, and forward + backward (second order, through the closed-form gradient).
//! Compare with `benches/et_port.py` (the port's algorithm in PyTorch) at the same shapes.
//!
//! `cargo bench -p hopfield-nn --bench et_step` (`ET_BATCH=8` for a batch of 8 sequences; the
//! matching `benches/et_port.py --batch 8`).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig};
use std::hint::black_box;

const TOKENS: usize = 64;
const DIM: usize = 128;
const HEADS: usize = 4;
const MEMORIES: usize = 512;

fn et_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    // Weights at 1/sqrt(D) so the block acts (the port's 0.002 init is ~identity); timing is the same.
    let cfg = EnergyTransformerConfig::new(DIM, MEMORIES, HEADS)
        .with_n_iters(1)
        .with_init_scale(1.0 / (DIM as f64).sqrt());
    let et = EnergyTransformer::new(&cfg, vb).expect("model");
    let batch: usize = std::env::var("ET_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let x = Tensor::randn(0f32, 1., (batch, TOKENS, DIM), &dev).expect("x");
    let cot = Tensor::randn(0f32, 1., (batch, TOKENS, DIM), &dev).expect("cotangent");
    let mut group = c.benchmark_group(format!("et_step/batch{batch}"));
    group.bench_function("forward", |b| {
        b.iter(|| black_box(et.forward_detailed(&x, None).expect("forward").y))
    });
    let xv = Var::from_tensor(&x).expect("var");
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let y = et
                .forward_detailed(xv.as_tensor(), None)
                .expect("forward")
                .y;
            let loss = (y * &cot).and_then(|t| t.sum_all()).expect("loss");
            black_box(loss.backward().expect("backward"))
        })
    });
    // The block's two fused gradient ops on their own (the split of the step's time).
    let g = Var::from_tensor(&x).expect("var");
    let mha = et.mha();
    let hop = match et.hopfield() {
        hopfield_nn::energy::HopfieldEnergy::Relu(h) => h,
        _ => unreachable!("the default block uses ReLU memories"),
    };
    let (wq, wk, beta) = (mha.wq(), mha.wk(), mha.beta());
    group.bench_function("attention_grad", |b| {
        b.iter(|| {
            black_box(
                hopfield_cuda::attention_energy_grad(&x, wq, wk, beta, false).expect("attention"),
            )
        })
    });
    group.bench_function("attention_grad_backward", |b| {
        b.iter(|| {
            let d = hopfield_cuda::attention_energy_grad(g.as_tensor(), wq, wk, beta, false)
                .expect("attention");
            black_box(
                (d * &cot)
                    .and_then(|t| t.sum_all()?.backward())
                    .expect("backward"),
            )
        })
    });
    let rows = x.reshape((batch * TOKENS, DIM)).expect("rows");
    let grow = Var::from_tensor(&rows).expect("var");
    let cot_rows = cot.reshape((batch * TOKENS, DIM)).expect("rows");
    let kind = hopfield_cuda::HopfieldEnergyKind::Relu;
    group.bench_function("hopfield_grad", |b| {
        b.iter(|| {
            black_box(
                hopfield_cuda::hopfield_energy_grad(&rows, hop.w(), hop.beta(), kind)
                    .expect("hopfield"),
            )
        })
    });
    group.bench_function("hopfield_grad_backward", |b| {
        b.iter(|| {
            let d =
                hopfield_cuda::hopfield_energy_grad(grow.as_tensor(), hop.w(), hop.beta(), kind)
                    .expect("hopfield");
            black_box(
                (d * &cot_rows)
                    .and_then(|t| t.sum_all()?.backward())
                    .expect("backward"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, et_step);
criterion_main!(benches);
