//! Shapes and model builders shared by the criterion bench (`benches/hopfield.rs`) and the
//! `hopfield_timing` binary that `hflayers_compare.py` compares with PyTorch hflayers.
//!
//! Every case is hflayers' default `Hopfield(input_size=E, num_heads=H,
//! update_steps_max=k)` in self-association on a `(N, L, E)` batch (so S = L), f32, eval mode;
//! forward+backward is `output.sum().backward()` into the parameters.

use candle_core::{DType, Device, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::{Hopfield, HopfieldConfig};

/// The device of the timing binaries: `--device auto|cpu|cuda|cuda:N` on the command line (or
/// `--device=...`), else the `HOPFIELD_DEVICE` environment variable (for the criterion bench),
/// else `auto` (CUDA when built with the `cuda` feature and present, else the CPU).
pub fn device_from_args() -> Result<Device> {
    let args: Vec<String> = std::env::args().collect();
    let given = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--device" {
            Some(args.get(i + 1).cloned().unwrap_or_default())
        } else {
            a.strip_prefix("--device=").map(str::to_string)
        }
    });
    let choice = given
        .or_else(|| std::env::var("HOPFIELD_DEVICE").ok())
        .unwrap_or_else(|| "auto".into());
    choice
        .parse::<hopfield_cuda::DeviceChoice>()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .device()
}

/// One benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Batch size N.
    pub n: usize,
    /// Sequence length L (= number of stored patterns S).
    pub l: usize,
    /// Feature size E.
    pub e: usize,
    /// Heads H.
    pub h: usize,
    /// `update_steps_max`.
    pub steps: usize,
}

impl Shape {
    /// `N32_L64_E64_H4_k0`-style id, the same in the Rust and Python outputs.
    pub fn id(&self) -> String {
        format!(
            "N{}_L{}_E{}_H{}_k{}",
            self.n, self.l, self.e, self.h, self.steps
        )
    }
}

/// The shapes of docs/performance.md.
pub const SHAPES: [Shape; 4] = [
    Shape {
        n: 32,
        l: 64,
        e: 64,
        h: 4,
        steps: 0,
    },
    Shape {
        n: 32,
        l: 256,
        e: 128,
        h: 8,
        steps: 0,
    },
    Shape {
        n: 16,
        l: 512,
        e: 256,
        h: 8,
        steps: 0,
    },
    Shape {
        n: 32,
        l: 128,
        e: 64,
        h: 4,
        steps: 3,
    },
];

/// A freshly initialised module, its parameters and a random input.
pub struct Case {
    /// The module.
    pub model: Hopfield,
    /// Its parameters (forward+backward differentiates them).
    pub varmap: VarMap,
    /// Input `(N, L, E)`.
    pub x: Tensor,
}

impl Case {
    /// Builds the case on `dev`.
    pub fn new(s: Shape, dev: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let cfg = HopfieldConfig::new(s.e)
            .with_num_heads(s.h)
            .with_update_steps_max(Some(s.steps));
        let model = Hopfield::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
        let x = Tensor::randn(0f32, 1., (s.n, s.l, s.e), dev)?;
        Ok(Self { model, varmap, x })
    }

    /// Eval-mode forward pass.
    pub fn forward(&self) -> Result<Tensor> {
        self.model.forward_t(&self.x, false)
    }

    /// Forward pass, then the gradients of `sum(output)`; returns the number of gradients so
    /// the work cannot be optimised away.
    pub fn forward_backward(&self) -> Result<usize> {
        let grads = self.forward()?.sum_all()?.backward()?;
        Ok(self
            .varmap
            .all_vars()
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count())
    }
}

/// Median milliseconds of `f`, the protocol of every timing binary here (and of the Python side
/// of the comparisons): `warmup` untimed calls, then timed calls until at least `min_runs` have
/// run and `seconds` have passed (at most 1000 calls).
///
/// ```
/// let ms = hopfield_benches::median_ms(1, 3, 0.0, || Ok(()))?;
/// assert!(ms >= 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn median_ms<T>(
    warmup: usize,
    min_runs: usize,
    seconds: f64,
    mut f: impl FnMut() -> Result<T>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::new();
    let start = std::time::Instant::now();
    while times.len() < min_runs.max(1)
        || (start.elapsed().as_secs_f64() < seconds && times.len() < 1000)
    {
        let t = std::time::Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
