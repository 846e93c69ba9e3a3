//! Times one Energy Transformer block step (tokens 64, dim 128, heads 4, 512 ReLU memories,
//! `LayerNorm`, f32) forward and forward+backward at batch 1 and 8, and prints one JSON object
//! per line (`{"batch": .., "forward_ms": .., "forward_backward_ms": ..}`), the median of repeated
//! runs (the protocol of `hopfield_timing`). `benches/et_port.py --compare` runs it next to the
//! PyTorch port and prints the ratios.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin et_timing [-- --device cpu|cuda] [--batch B] [--iters N] [--composed]
//! ```
//!
//! `--iters N` runs N descent steps per forward (default 1), as the port's `n_iters`.
//!
//! `--composed` times the composed reference step instead of the fused one
//! ([`hopfield_nn::energy::with_fused_step`]), for before/after comparisons in one build.
//! `ET_PASS=forward` (or `backward`) times only that pass, so that a profile holds one of them.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use hopfield_benches::median_ms;
use hopfield_nn::energy::{with_fused_step, EnergyTransformer, EnergyTransformerConfig};

const TOKENS: usize = 64;
const DIM: usize = 128;
const HEADS: usize = 4;
const MEMORIES: usize = 512;

fn main() -> Result<()> {
    let dev = hopfield_benches::device_from_args()?;
    let args: Vec<String> = std::env::args().collect();
    let batches: Vec<usize> = match args.iter().position(|a| a == "--batch") {
        Some(i) => vec![args.get(i + 1).and_then(|b| b.parse().ok()).unwrap_or(1)],
        None => vec![1, 8],
    };
    let fused = !args.iter().any(|a| a == "--composed");
    let iters = match args.iter().position(|a| a == "--iters") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(1),
        None => 1,
    };
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    // Weights at 1/sqrt(D), as the port script's, so the block acts (timing is the same).
    let cfg = EnergyTransformerConfig::new(DIM, MEMORIES, HEADS)
        .with_n_iters(iters)
        .with_init_scale(1.0 / (DIM as f64).sqrt());
    let et = EnergyTransformer::new(&cfg, vb)?;
    for batch in batches {
        let x = Tensor::randn(0f32, 1., (batch, TOKENS, DIM), &dev)?;
        let cot = Tensor::randn(0f32, 1., (batch, TOKENS, DIM), &dev)?;
        let forward = || {
            let y = et.forward_detailed(&x, None)?.y;
            dev.synchronize().map(|_| y)
        };
        let xv = Var::from_tensor(&x)?;
        let forward_backward = || {
            let y = et.forward_detailed(xv.as_tensor(), None)?.y;
            let grads = (y * &cot)?.sum_all()?.backward()?;
            dev.synchronize().map(|_| grads)
        };
        // ET_PASS=forward (or backward) times only that pass (for profiling).
        let pass = std::env::var("ET_PASS").unwrap_or_default();
        let (fwd, bwd) = with_fused_step(fused, || -> Result<(f64, f64)> {
            Ok((
                if pass == "backward" {
                    f64::NAN
                } else {
                    median_ms(3, 10, 2.0, forward)?
                },
                if pass == "forward" {
                    f64::NAN
                } else {
                    median_ms(3, 10, 2.0, forward_backward)?
                },
            ))
        })?;
        println!(
            "{{\"batch\": {batch}, \"forward_ms\": {fwd:.4}, \"forward_backward_ms\": {bwd:.4}}}"
        );
    }
    Ok(())
}
