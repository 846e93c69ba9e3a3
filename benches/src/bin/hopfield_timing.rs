//! Times `Hopfield` forward and forward+backward at the benchmark shapes and prints one JSON
//! object per line (`{"shape": .., "forward_ms": .., "forward_backward_ms": ..}`), the median
//! of repeated runs. `hflayers_compare.py` runs it next to PyTorch hflayers.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin hopfield_timing
//! ```

use candle_core::Result;
use hopfield_benches::{median_ms, Case, SHAPES};

fn main() -> Result<()> {
    // Opt-in, so that the default comparison runs both sides on the stock allocator.
    if std::env::var_os("HOPFIELD_TUNE_ALLOCATOR").is_some() {
        eprintln!("tune_allocator: {}", hopfield_cuda::tune_allocator());
    }
    // HOPFIELD_FUSED=0 times the explicit association path instead of the fused retrieval.
    if std::env::var("HOPFIELD_FUSED").as_deref() == Ok("0") {
        hopfield_nn::set_fused_retrieval(false);
        eprintln!("fused retrieval off");
    }
    // HOPFIELD_SHAPE=N32_L256_E128_H8_k0 times one shape only (for profiling).
    let only = std::env::var("HOPFIELD_SHAPE").ok();
    let dev = hopfield_benches::device_from_args()?;
    for shape in SHAPES {
        if only.as_deref().is_some_and(|id| id != shape.id()) {
            continue;
        }
        let case = Case::new(shape, &dev)?;
        // HOPFIELD_PASS=forward (or backward) times only that pass (for profiling).
        let pass = std::env::var("HOPFIELD_PASS").unwrap_or_default();
        // Synchronised, so that GPU times are the work's, not the launches'.
        let forward = || case.forward().and_then(|y| dev.synchronize().map(|_| y));
        let forward_backward = || {
            case.forward_backward()
                .and_then(|n| dev.synchronize().map(|_| n))
        };
        let fwd = if pass == "backward" {
            f64::NAN
        } else {
            median_ms(3, 10, 2.0, forward)?
        };
        let bwd = if pass == "forward" {
            f64::NAN
        } else {
            median_ms(3, 10, 2.0, forward_backward)?
        };
        println!(
            "{{\"shape\": \"{}\", \"forward_ms\": {fwd:.4}, \"forward_backward_ms\": {bwd:.4}}}",
            shape.id()
        );
    }
    Ok(())
}
