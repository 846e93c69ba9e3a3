//! The association function: what turns the logits `beta q k^T + mask` into the weights of the
//! stored patterns. hflayers always uses softmax; sparse Hopfield networks (Hu et al., "On Sparse
//! Modern Hopfield Model", NeurIPS 2023; Martins et al., "Sparse and Structured Hopfield
//! Networks", ICML 2024) replace it by sparsemax or alpha-entmax, which give many stored patterns
//! a weight of exactly zero and retrieve a pattern among many similar ones more cleanly.
//!
//! The kernels are [`hopfield_cuda::entmax`] and friends (exact sort-based sparsemax and
//! entmax-1.5, bisection for other alphas, closed-form backward). The fused retrieval kernel is a
//! softmax kernel, so every other choice takes the explicit path (the association is formed).

use crate::error::HopfieldError;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The lower bound a learnable alpha is clamped to: the alpha gradient has a `1 / (alpha - 1)^2`
/// factor, and alpha = 1 (softmax) is where it is undefined.
pub const MIN_LEARNABLE_ALPHA: f64 = 1.01;

/// The alphas of [`Association::EntmaxLearnable`]: the initial value of every head and, once a
/// module has loaded it, the parameter `(H,)` (`association_alpha`). Two are equal when their
/// initial values are and they hold the same parameter tensor (or none).
#[derive(Debug, Clone)]
pub struct LearnableAlpha {
    /// The value every head starts from (a fresh `VarMap`), in (1, 2].
    pub init: f64,
    /// The parameter, one alpha per head (used clamped to [`MIN_LEARNABLE_ALPHA`], 2).
    pub param: Option<Tensor>,
}

impl PartialEq for LearnableAlpha {
    fn eq(&self, other: &Self) -> bool {
        self.init == other.init
            && match (&self.param, &other.param) {
                (None, None) => true,
                (Some(a), Some(b)) => a.id() == b.id(),
                _ => false,
            }
    }
}

/// The association function of [`CoreConfig`](crate::CoreConfig) (`association`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_core::Association;
/// let logits = Tensor::new(&[[[[2f32, 1.9, 0.]]]], &Device::Cpu)?;
/// let soft = Association::Softmax.apply(&logits)?.flatten_all()?.to_vec1::<f32>()?;
/// let sparse = Association::Sparsemax.apply(&logits)?.flatten_all()?.to_vec1::<f32>()?;
/// assert!(soft[2] > 0.0);
/// assert_eq!(sparse[2], 0.0); // the far pattern gets no weight at all
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Association {
    /// softmax (hflayers, the default).
    #[default]
    Softmax,
    /// sparsemax (alpha = 2).
    Sparsemax,
    /// entmax-1.5 (alpha = 1.5).
    Entmax15,
    /// alpha-entmax with one alpha in `[1, 2]` for every head (1: softmax).
    Entmax(f64),
    /// alpha-entmax with one alpha in `(1, 2]` per head.
    EntmaxPerHead(Vec<f64>),
    /// alpha-entmax with one learnable alpha per head ([`Association::load`] creates or loads
    /// the parameter `association_alpha`; without it every head uses `init`).
    EntmaxLearnable(LearnableAlpha),
}

impl Association {
    /// Whether this is plain softmax (what the fused retrieval kernel computes).
    pub fn is_softmax(&self) -> bool {
        match self {
            Association::Softmax => true,
            Association::Entmax(a) => *a == 1.0,
            _ => false,
        }
    }

    /// Checks the alphas for a core of `heads` heads.
    pub fn validate(&self, heads: usize) -> std::result::Result<(), HopfieldError> {
        let bad = |a: f64, range: &str| HopfieldError::Config {
            field: "association",
            reason: format!("entmax alpha must be in {range}, got {a}"),
        };
        match self {
            Association::Entmax(a) if !(1.0..=2.0).contains(a) => Err(bad(*a, "[1, 2]")),
            Association::EntmaxPerHead(v) if v.len() != heads => {
                Err(HopfieldError::PerHeadLength {
                    field: "association",
                    heads,
                    got: v.len(),
                })
            }
            Association::EntmaxPerHead(v) => match v.iter().find(|a| !(**a > 1.0 && **a <= 2.0)) {
                Some(a) => Err(bad(*a, "(1, 2] per head")),
                None => Ok(()),
            },
            Association::EntmaxLearnable(l) if !(l.init > 1.0 && l.init <= 2.0) => {
                Err(bad(l.init, "(1, 2] (learnable)"))
            }
            Association::EntmaxLearnable(LearnableAlpha { param: Some(p), .. })
                if p.dims() != [heads] =>
            {
                Err(HopfieldError::Shape {
                    arg: "association_alpha",
                    expected: format!("({heads},), one alpha per head"),
                    got: p.dims().to_vec(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The association weights of `logits` `(N, H, L, S)` (masked entries `-inf`) over the last
    /// dimension: `-inf` entries get exactly 0 and a fully masked row is all zeros for every
    /// choice. Per-head alphas need the head dim at index 1.
    pub fn apply(&self, logits: &Tensor) -> Result<Tensor> {
        match self {
            Association::Softmax => hopfield_cuda::masked_softmax(logits),
            Association::Sparsemax => hopfield_cuda::sparsemax(logits),
            Association::Entmax15 => hopfield_cuda::entmax15(logits),
            Association::Entmax(a) => hopfield_cuda::entmax(logits, *a),
            Association::EntmaxPerHead(v) => {
                let heads = logits.dim(1)?;
                self.validate(heads)?;
                let alpha = Tensor::new(v.as_slice(), logits.device())?
                    .to_dtype(logits.dtype())?
                    .reshape((1, heads, 1, 1))?;
                hopfield_cuda::entmax_learnable(logits, &alpha)
            }
            Association::EntmaxLearnable(l) => {
                let heads = logits.dim(1)?;
                self.validate(heads)?;
                let alpha = match &l.param {
                    Some(p) => p.to_dtype(logits.dtype())?,
                    None => {
                        Tensor::full(l.init, heads, logits.device())?.to_dtype(logits.dtype())?
                    }
                };
                // Clamping keeps alpha in the domain; its gradient stops at the bounds.
                let alpha = alpha
                    .clamp(MIN_LEARNABLE_ALPHA, 2.0)?
                    .reshape((1, heads, 1, 1))?;
                hopfield_cuda::entmax_learnable(logits, &alpha)
            }
        }
    }

    /// The entmax alpha of each of `heads` heads, `None` for softmax (alpha = 1); a learnable
    /// alpha gives its current value, clamped as [`apply`](Self::apply) uses it (a constant: no
    /// gradient flows to the parameter from these numbers).
    ///
    /// ```
    /// use hopfield_core::Association;
    /// assert_eq!(Association::Sparsemax.head_alphas(2), Some(vec![2.0, 2.0]));
    /// assert_eq!(Association::Entmax(1.0).head_alphas(2), None);
    /// ```
    pub fn head_alphas(&self, heads: usize) -> Option<Vec<f64>> {
        if self.is_softmax() {
            return None;
        }
        Some(match self {
            Association::Sparsemax => vec![2.0; heads],
            Association::Entmax15 => vec![1.5; heads],
            Association::Entmax(a) => vec![*a; heads],
            Association::EntmaxPerHead(v) => v.clone(),
            Association::EntmaxLearnable(l) => {
                let current = l.param.as_ref().and_then(|p| {
                    p.to_dtype(candle_core::DType::F64)
                        .and_then(|p| p.to_vec1::<f64>())
                        .ok()
                });
                current
                    .unwrap_or_else(|| vec![l.init; heads])
                    .into_iter()
                    .map(|a| a.clamp(MIN_LEARNABLE_ALPHA, 2.0))
                    .collect()
            }
            Association::Softmax => return None,
        })
    }

    /// This association with its parameter under `vb` for a core of `heads` heads: for
    /// [`Association::EntmaxLearnable`], `association_alpha` `(heads,)` (created at `init` in a
    /// `VarMap`, loaded from a checkpoint otherwise); every other choice has no parameter and is
    /// returned as it is.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_core::{Association, LearnableAlpha};
    /// let map = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    /// let a = Association::EntmaxLearnable(LearnableAlpha { init: 1.5, param: None });
    /// let loaded = a.load(4, &vb)?;
    /// assert_eq!(map.data().lock().unwrap()["association_alpha"].to_vec1::<f32>()?, vec![1.5; 4]);
    /// assert_ne!(loaded, a);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn load(&self, heads: usize, vb: &VarBuilder) -> Result<Self> {
        match self {
            Association::EntmaxLearnable(l) if l.param.is_none() => {
                self.validate(heads)?;
                let p = vb.get_with_hints(heads, "association_alpha", Init::Const(l.init))?;
                Ok(Association::EntmaxLearnable(LearnableAlpha {
                    init: l.init,
                    param: Some(p),
                }))
            }
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Each choice is the kernel it names; per-head alphas act per head.
    #[test]
    fn choices_are_their_kernels() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f64, 2., (2, 3, 4, 6), &dev)?;
        assert_eq!(
            max_diff(
                &Association::Softmax.apply(&z)?,
                &hopfield_cuda::masked_softmax(&z)?
            ),
            0.0
        );
        assert_eq!(
            max_diff(
                &Association::Entmax(1.0).apply(&z)?,
                &Association::Softmax.apply(&z)?
            ),
            0.0
        );
        let per = Association::EntmaxPerHead(vec![2.0, 1.5, 1.25]).apply(&z)?;
        for (h, want) in [
            Association::Sparsemax,
            Association::Entmax15,
            Association::Entmax(1.25),
        ]
        .iter()
        .enumerate()
        {
            let w = want.apply(&z.narrow(1, h, 1)?)?;
            assert!(max_diff(&per.narrow(1, h, 1)?, &w) < 1e-15);
        }
        Ok(())
    }

    /// Through the whole core: the association of a sparse choice has exact zeros, rows sum to 1,
    /// `hopfield_core_output` (which routes it to the explicit path) agrees with
    /// `hopfield_core_forward`, and with update steps the iteration uses the same function.
    #[test]
    fn core_forward_uses_the_association() -> Result<()> {
        use crate::{
            hopfield_core_forward, hopfield_core_output, CoreConfig, CoreLayout, CoreWeights,
            Masks, Scaling, UpdateSteps,
        };
        let dev = Device::Cpu;
        let map = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&map, DType::F64, &dev);
        let w = CoreWeights::load(CoreLayout::new(8, 2), vb)?;
        let x = Tensor::randn(0f64, 1., (2, 12, 8), &dev)?;
        for assoc in [Association::Sparsemax, Association::Entmax(1.3)] {
            for steps in [0, 2] {
                let cfg = CoreConfig::default()
                    .with_scaling(Scaling::Scalar(200.0))
                    .with_update_steps_max(UpdateSteps::Max(steps))
                    .with_association(assoc.clone());
                let full = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
                let out = hopfield_core_output(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
                assert_eq!(max_diff(&full.output, &out), 0.0);
                let a = full.association.flatten_to(2)?.to_vec2::<f64>()?;
                let zeros: usize = a
                    .iter()
                    .map(|r| r.iter().filter(|v| **v == 0.0).count())
                    .sum();
                assert!(zeros > 0, "{assoc:?}: no exact zero");
                for r in &a {
                    assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                }
                let soft = hopfield_core_forward(
                    &x,
                    &x,
                    &x,
                    &w,
                    &cfg.clone().with_association(Association::Softmax),
                    Masks::default(),
                    false,
                )?;
                assert!(max_diff(&soft.output, &full.output) > 1e-6);
            }
        }
        Ok(())
    }

    #[test]
    fn validation() {
        assert!(Association::Entmax(1.0).is_softmax());
        assert!(!Association::Sparsemax.is_softmax());
        assert!(Association::Entmax(2.5).validate(1).is_err());
        assert!(matches!(
            Association::EntmaxPerHead(vec![1.5]).validate(2),
            Err(HopfieldError::PerHeadLength {
                heads: 2,
                got: 1,
                ..
            })
        ));
        assert!(Association::EntmaxPerHead(vec![1.0, 1.5])
            .validate(2)
            .is_err());
        let z = Tensor::zeros((1, 2, 1, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(Association::EntmaxPerHead(vec![1.5]).apply(&z).is_err());
        let learn = |init, param| Association::EntmaxLearnable(LearnableAlpha { init, param });
        assert!(learn(1.0, None).validate(2).is_err());
        let p = Tensor::new(&[1.5f32, 1.5, 1.5], &Device::Cpu).unwrap();
        assert!(matches!(
            learn(1.5, Some(p)).validate(2),
            Err(HopfieldError::Shape {
                arg: "association_alpha",
                ..
            })
        ));
    }

    /// A learnable alpha acts per head as the fixed per-head alphas of its current values,
    /// clamped to [MIN_LEARNABLE_ALPHA, 2].
    #[test]
    fn learnable_alpha_acts_per_head() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f64, 2., (2, 3, 4, 6), &dev)?;
        let p = Tensor::new(&[1.3f64, 2.5, 1.0], &dev)?;
        let learn = Association::EntmaxLearnable(LearnableAlpha {
            init: 1.5,
            param: Some(p),
        });
        assert_eq!(
            learn.head_alphas(3),
            Some(vec![1.3, 2.0, MIN_LEARNABLE_ALPHA])
        );
        let fixed = Association::EntmaxPerHead(vec![1.3, 2.0, MIN_LEARNABLE_ALPHA]);
        assert!(max_diff(&learn.apply(&z)?, &fixed.apply(&z)?) < 1e-15);
        Ok(())
    }
}
