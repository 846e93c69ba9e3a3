//! The seeded generator behind weight initialisation and dropout.
//!
//! Candle's CPU generator cannot be seeded, so two training runs with the same `--seed` drew
//! different initial weights and dropout masks. After [`seed`], every random initialisation that
//! goes through [`crate::checked_param`] (all weights of hopfield-core's and hopfield-nn's
//! hflayers-family modules) and every dropout mask of [`dropout`] comes from one process-wide
//! `StdRng` of the calling thread (models are built and trained on the thread that calls them),
//! so a program that seeds once and builds and trains in the same order prints the same numbers
//! on every run. Unseeded (the default), both use candle's generator as before.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::{Init, NormalOrUniform};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seeds weight initialisation and dropout on this thread (see the module docs).
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_core::{rng, CoreLayout, CoreWeights};
/// let build = || {
///     let map = VarMap::new();
///     let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
///     CoreWeights::load(CoreLayout::new(8, 2), vb)
/// };
/// rng::seed(7);
/// let a = build()?;
/// rng::seed(7);
/// let b = build()?;
/// let (a, b) = (a.out_proj_weight.unwrap(), b.out_proj_weight.unwrap());
/// assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
/// rng::unseed();
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn seed(seed: u64) {
    RNG.with(|g| *g.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Back to candle's (unseeded) generator.
pub fn unseed() {
    RNG.with(|g| *g.borrow_mut() = None);
}

/// Whether [`seed`] is in effect.
pub fn is_seeded() -> bool {
    RNG.with(|g| g.borrow().is_some())
}

/// `n` draws from `f`, or `None` when unseeded.
fn draw(n: usize, mut f: impl FnMut(&mut StdRng) -> f64) -> Option<Vec<f64>> {
    RNG.with(|g| {
        let mut g = g.borrow_mut();
        let rng = g.as_mut()?;
        Some((0..n).map(|_| f(rng)).collect())
    })
}

/// The values of a random `init` of `shape` drawn from the seeded generator (the distributions
/// candle-nn's `Init::var` uses); `None` when unseeded or `init` is a constant.
pub(crate) fn seeded_init(
    init: &Init,
    shape: &Shape,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let n = shape.elem_count();
    let uniform =
        |lo: f64, up: f64| draw(n, |r| r.random_range(lo..up.max(lo + f64::MIN_POSITIVE)));
    let normal = |mean: f64, std: f64| {
        draw(n, |r| {
            let z: f64 = StandardNormal.sample(r);
            mean + std * z
        })
    };
    let values = match *init {
        Init::Const(_) => None,
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => uniform(-(3f64.sqrt()) * std, 3f64.sqrt() * std),
                NormalOrUniform::Normal => normal(0.0, std),
            }
        }
    };
    values
        .map(|v| Tensor::from_vec(v, shape.clone(), device)?.to_dtype(dtype))
        .transpose()
}

/// Inverted dropout with drop probability `p` (as `candle_nn::ops::dropout`): each entry is zeroed
/// with probability `p` and the rest scaled by `1 / (1 - p)`; `p = 1` gives zeros (as torch). The mask comes from the seeded
/// generator after [`seed`], from candle's otherwise.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::rng;
/// let x = Tensor::ones((4, 256), candle_core::DType::F32, &Device::Cpu)?;
/// rng::seed(3);
/// let a = rng::dropout(&x, 0.5)?;
/// rng::seed(3);
/// let b = rng::dropout(&x, 0.5)?;
/// assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
/// rng::unseed();
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&p) {
        candle_core::bail!("dropout: the probability must be in [0, 1], got {p}");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    if p == 1.0 {
        // torch: everything dropped, zero gradient.
        return x.affine(0.0, 0.0);
    }
    let Some(keep) = draw(x.elem_count(), |r| {
        if r.random::<f64>() >= p {
            1.0 / (1.0 - p)
        } else {
            0.0
        }
    }) else {
        return candle_nn::ops::dropout(x, p as f32);
    };
    let mask = Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// [`dropout`] as a layer, `candle_nn::Dropout`'s interface: active in training only.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// let x = Tensor::ones((2, 8), DType::F32, &Device::Cpu)?;
/// let d = hopfield_core::rng::Dropout::new(0.5);
/// assert_eq!(d.forward_t(&x, false)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Drop probability `p` (checked when applied: [0, 1]).
    pub fn new(p: f64) -> Self {
        Self { p }
    }
}

impl candle_core::ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            dropout(x, self.p)
        } else {
            Ok(x.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::{FanInOut, NonLinearity};

    #[test]
    fn seeded_draws_repeat_and_follow_their_distribution() -> Result<()> {
        let dev = Device::Cpu;
        let shape = Shape::from((64, 256));
        let kaiming = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::ReLU,
        };
        seed(11);
        let a = seeded_init(&kaiming, &shape, DType::F64, &dev)?.unwrap();
        let u = seeded_init(&Init::Uniform { lo: -2., up: 2. }, &shape, DType::F64, &dev)?.unwrap();
        seed(11);
        let b = seeded_init(&kaiming, &shape, DType::F64, &dev)?.unwrap();
        assert!(seeded_init(&Init::Const(1.0), &shape, DType::F64, &dev)?.is_none());
        unseed();
        assert!(seeded_init(&kaiming, &shape, DType::F64, &dev)?.is_none());
        assert_eq!(a.to_vec2::<f64>()?, b.to_vec2::<f64>()?);
        // Kaiming normal, fan-in 256, ReLU gain sqrt(2): std = sqrt(2 / 256).
        let std = a.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt();
        assert!((std - (2.0f64 / 256.).sqrt()).abs() < 0.005, "{std}");
        let (lo, hi) = (
            u.min_all()?.to_scalar::<f64>()?,
            u.max_all()?.to_scalar::<f64>()?,
        );
        assert!(
            (-2.0..-1.9).contains(&lo) && (1.9..2.0).contains(&hi),
            "{lo} {hi}"
        );
        Ok(())
    }
}
