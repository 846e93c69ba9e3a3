//! Times the association functions over the last dim on the CPU: `masked_softmax` (the
//! reference), sparsemax and entmax-1.5 (exact, sort-based) and alpha-entmax at alpha 1.3
//! (bisection), forward alone and forward + backward (the gradient of `sum(p * w)`), f32. Prints
//! one JSON line per (shape, function) with the minimum and median over repeated runs (ms) and
//! the median's ratio to softmax's.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin entmax_timing
//! ```

use candle_core::{Device, Result, Tensor, Var};

/// (rows, S): an attention layer's association (N H L = 32 * 8 * 256 rows of S = 256) and the
/// `sparse_digits` memory (1797 queries of 1797 stored digits).
const SHAPES: [(usize, usize); 2] = [(65_536, 256), (1797, 1797)];

fn min_median(mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut t = Vec::new();
    let start = std::time::Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 3.0 && t.len() < 200) {
        let s = std::time::Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok((t[0], t[t.len() / 2]))
}

type Assoc = fn(&Tensor) -> Result<Tensor>;

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let functions: [(&str, Assoc); 4] = [
        ("softmax", hopfield_cuda::masked_softmax),
        ("sparsemax", hopfield_cuda::sparsemax),
        ("entmax15", hopfield_cuda::entmax15),
        ("entmax_alpha1.3", |z| hopfield_cuda::entmax(z, 1.3)),
    ];
    for (rows, s) in SHAPES {
        // Logits of a sharp association (beta q k^T with unit-ish vectors and beta 8).
        let z = (Tensor::randn(0f32, 1., (rows, s), &dev)? * 3.0)?;
        let w = Tensor::randn(0f32, 1., (rows, s), &dev)?;
        let zv = Var::from_tensor(&z)?;
        let mut base = (0.0, 0.0);
        for (name, f) in functions {
            let (fmin, fmed) = min_median(|| f(&z).map(|_| ()))?;
            let (bmin, bmed) = min_median(|| {
                let p = f(zv.as_tensor())?;
                (p * &w)?.sum_all()?.backward().map(|_| ())
            })?;
            if name == "softmax" {
                base = (fmed, bmed);
            }
            println!(
                "{{\"shape\": \"rows{rows}_S{s}\", \"function\": \"{name}\", \"forward_min_ms\": {fmin:.2}, \"forward_median_ms\": {fmed:.2}, \"forward_vs_softmax\": {:.2}, \"fwd_bwd_min_ms\": {bmin:.2}, \"fwd_bwd_median_ms\": {bmed:.2}, \"fwd_bwd_vs_softmax\": {:.2}}}",
                fmed / base.0,
                bmed / base.1
            );
        }
    }
    Ok(())
}
