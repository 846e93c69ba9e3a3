//! Times the fused retrieval against the composed (explicit) path, forward and forward+backward,
//! and against candle-nn's CPU flash attention (`candle_nn::attention::flash_attn`, forward only:
//! it has no backward), same inputs and layout, same process.
//!
//! ```text
//! cargo run --release -p hopfield-cuda --example retrieval_speed
//! cargo run --release -p hopfield-cuda --example retrieval_speed -- 32,64,64,4,16  # one shape
//! cargo run --release -p hopfield-cuda --example retrieval_speed -- 32,64,64,4,16 fused  # only ours
//! ```

use candle_core::{Device, Result, Tensor, Var};
use hopfield_cuda::retrieval::{retrieve_composed, retrieve_with_lse, Retrieval};
use std::time::Instant;

fn median_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 1.0 && t.len() < 200) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let mut shapes = vec![
        (32, 64, 64, 4, 16),
        (32, 256, 256, 8, 16),
        (16, 512, 512, 8, 32),
        (1, 1024, 65536, 1, 64),
    ];
    if let Some(arg) = std::env::args().nth(1) {
        let v: Vec<usize> = arg
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if let [n, l, s, h, d] = v[..] {
            shapes = vec![(n, l, s, h, d)];
        } else {
            return Err(candle_core::Error::Msg(format!(
                "expected N,L,S,H,d, got {arg}"
            )));
        }
    }
    let only_fused = std::env::args().nth(2).as_deref() == Some("fused");
    for (n, l, s, h, d) in shapes {
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., (n, l, h, d), &dev)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 1., (n, s, h, d), &dev)?)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1., (n, s, h, d), &dev)?)?;
        let cfg = Retrieval::new(0.25);
        let flops = 4.0 * (n * h * l * s * d) as f64;
        for (name, fused) in [("fused", true), ("composed", false)] {
            if only_fused && !fused {
                continue;
            }
            let run = || {
                if fused {
                    retrieve_with_lse(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg)
                } else {
                    retrieve_composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg)
                }
            };
            let fwd = median_ms(|| run().map(|_| ()))?;
            let bwd = if s <= 4096 {
                median_ms(|| run()?.0.sum_all()?.backward().map(|_| ()))?
            } else {
                f64::NAN
            };
            println!(
                "N{n} L{l} S{s} H{h} d{d} {name:>10}: forward {fwd:8.2} ms ({:5.1} GFLOP/s), forward+backward {bwd:8.2} ms",
                flops / fwd / 1e6
            );
        }
        if only_fused {
            continue;
        }
        let (qt, kt, vt) = (
            q.as_tensor().detach(),
            k.as_tensor().detach(),
            v.as_tensor().detach(),
        );
        let fwd = median_ms(|| {
            candle_nn::attention::flash_attn::<f32>(
                &qt,
                &kt,
                &vt,
                0.25,
                candle_nn::attention::AttnMask::None,
                None,
                None,
            )
            .map(|_| ())
        })?;
        println!(
            "N{n} L{l} S{s} H{h} d{d} candle-fa: forward {fwd:8.2} ms ({:5.1} GFLOP/s), no backward",
            flops / fwd / 1e6
        );
    }
    Ok(())
}
