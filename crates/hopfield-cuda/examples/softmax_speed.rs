//! Times the fused masked softmax against candle-nn's fused softmax (no backward) on a
//! 4096 x 1024 f32 tensor: `cargo run --release -p hopfield-cuda --example softmax_speed`.
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time(name: &str, f: impl Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
    f()?;
    let start = Instant::now();
    for _ in 0..20 {
        f()?;
    }
    println!(
        "{name:28} {:7.2} ms",
        start.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let x = Tensor::randn(0f32, 3., (4096, 1024), &Device::Cpu)?;
    time("hopfield_cuda::masked_softmax", || {
        hopfield_cuda::masked_softmax(&x)
    })?;
    time("candle_nn softmax_last_dim", || {
        candle_nn::ops::softmax_last_dim(&x)
    })?;
    time("exp only (candle)", || x.exp())?;
    Ok(())
}
