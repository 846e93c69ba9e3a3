//! The dynamics of one association: scaling, update steps and their stopping rule, dropout, the
//! zero pattern and the Hopfield-space LayerNorm's use. The structure it runs on (sizes, heads,
//! which inputs are projected) is [`CoreLayout`](crate::CoreLayout)'s.

use crate::association::Association;
use crate::error::HopfieldError;

/// The inverse temperature beta applied to the state patterns before each association.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Scaling {
    /// No scaling (beta = 1): hflayers' `HopfieldCore` called with `scaling=None`.
    #[default]
    None,
    /// One beta for every head.
    Scalar(f64),
    /// One beta per head. Unlike hflayers (quirk Q2), head `h` really gets `beta[h]`.
    PerHead(Vec<f64>),
}

impl Scaling {
    /// The beta of each head.
    pub fn per_head(&self, heads: usize) -> Result<Vec<f64>, HopfieldError> {
        let v = match self {
            Scaling::None => vec![1.0; heads],
            Scaling::Scalar(b) => vec![*b; heads],
            Scaling::PerHead(v) => {
                if v.len() != heads {
                    return Err(HopfieldError::PerHeadLength {
                        field: "scaling",
                        heads,
                        got: v.len(),
                    });
                }
                v.clone()
            }
        };
        if let Some(b) = v.iter().find(|b| !b.is_finite()) {
            return Err(HopfieldError::Config {
                field: "scaling",
                reason: format!("beta must be finite, got {b}"),
            });
        }
        Ok(v)
    }
}

/// How many additional association steps may run after the first one.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateSteps {
    /// Up to `k` additional steps (0: a single association, i.e. plain attention).
    Max(usize),
    /// Iterate until the association stops changing (bounded by `max_convergence_steps`).
    UntilConvergence,
    /// Per head: `Some(k)` or `None` for until convergence.
    PerHead(Vec<Option<usize>>),
}

impl Default for UpdateSteps {
    fn default() -> Self {
        UpdateSteps::Max(0)
    }
}

impl UpdateSteps {
    /// The limit of each head (`None`: until convergence).
    pub fn per_head(&self, heads: usize) -> Result<Vec<Option<usize>>, HopfieldError> {
        match self {
            UpdateSteps::Max(k) => Ok(vec![Some(*k); heads]),
            UpdateSteps::UntilConvergence => Ok(vec![None; heads]),
            UpdateSteps::PerHead(v) if v.len() == heads => Ok(v.clone()),
            UpdateSteps::PerHead(v) => Err(HopfieldError::PerHeadLength {
                field: "update_steps_max",
                heads,
                got: v.len(),
            }),
        }
    }
}

/// Convergence threshold on the Frobenius norm of the change of the association matrix.
#[derive(Debug, Clone, PartialEq)]
pub enum StepsEps {
    /// One threshold for every head.
    Scalar(f64),
    /// One threshold per head.
    PerHead(Vec<f64>),
}

impl Default for StepsEps {
    fn default() -> Self {
        StepsEps::Scalar(1e-4)
    }
}

impl StepsEps {
    /// The threshold of each head; each must be > 0.
    pub fn per_head(&self, heads: usize) -> Result<Vec<f64>, HopfieldError> {
        let v = match self {
            StepsEps::Scalar(e) => vec![*e; heads],
            StepsEps::PerHead(v) if v.len() == heads => v.clone(),
            StepsEps::PerHead(v) => {
                return Err(HopfieldError::PerHeadLength {
                    field: "update_steps_eps",
                    heads,
                    got: v.len(),
                })
            }
        };
        if let Some(e) = v.iter().find(|e| !(**e > 0.0 && e.is_finite())) {
            return Err(HopfieldError::Config {
                field: "update_steps_eps",
                reason: format!("must be > 0 and finite, got {e}"),
            });
        }
        Ok(v)
    }
}

/// What to do when "until convergence" reaches `max_convergence_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNoConvergence {
    /// Return [`HopfieldError::NotConverged`].
    #[default]
    Error,
    /// Stop and report `converged = false` in the output.
    Stop,
}

/// Settings of [`hopfield_core_forward`](crate::hopfield_core_forward) that are not weights: how
/// the association runs on the structure a [`CoreLayout`](crate::CoreLayout) fixes. Per-head
/// settings are checked against that layout's head count.
///
/// ```
/// use hopfield_core::{CoreConfig, CoreLayout, Scaling, UpdateSteps};
/// let layout = CoreLayout::new(64, 4);
/// let cfg = CoreConfig::default()
///     .with_scaling(Scaling::PerHead(vec![0.25; 4]))
///     .with_update_steps_max(UpdateSteps::Max(3));
/// cfg.validate(layout.num_heads)?;
/// assert!(cfg.validate(2).is_err()); // four betas for two heads
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// beta.
    pub scaling: Scaling,
    /// Additional update steps after the first association.
    pub update_steps_max: UpdateSteps,
    /// Convergence threshold.
    pub update_steps_eps: StepsEps,
    /// Hard cap on the number of update steps when iterating until convergence.
    pub max_convergence_steps: usize,
    /// What happens at the cap.
    pub on_no_convergence: OnNoConvergence,
    /// Dropout probability on the final association (training only), in [0, 1].
    pub dropout: f64,
    /// Append an all-zero stored pattern and projection (never masked).
    pub add_zero_association: bool,
    /// LayerNorm over the head dim of projected queries and keys (Hopfield space), first step
    /// only. Its affine parameters exist when the layout's `normalize_pattern_affine` says so
    /// (as in hflayers, they are unused while this is off).
    pub normalize_pattern: bool,
    /// Its epsilon.
    pub normalize_pattern_eps: f64,
    /// The association function (softmax as in hflayers, or sparsemax / alpha-entmax); anything
    /// but softmax takes the explicit path.
    pub association: Association,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            scaling: Scaling::None,
            update_steps_max: UpdateSteps::Max(0),
            update_steps_eps: StepsEps::Scalar(1e-4),
            max_convergence_steps: 1000,
            on_no_convergence: OnNoConvergence::Error,
            dropout: 0.0,
            add_zero_association: false,
            normalize_pattern: false,
            normalize_pattern_eps: 1e-5,
            association: Association::Softmax,
        }
    }
}

macro_rules! with {
    ($(#[$m:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$m])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$field = v;
            self
        }
    };
}

impl CoreConfig {
    with!(/// Sets `scaling`.
        with_scaling, scaling: Scaling);
    with!(/// Sets `update_steps_max`.
        with_update_steps_max, update_steps_max: UpdateSteps);
    with!(/// Sets `update_steps_eps`.
        with_update_steps_eps, update_steps_eps: StepsEps);
    with!(/// Sets `max_convergence_steps`.
        with_max_convergence_steps, max_convergence_steps: usize);
    with!(/// Sets `on_no_convergence`.
        with_on_no_convergence, on_no_convergence: OnNoConvergence);
    with!(/// Sets `dropout`.
        with_dropout, dropout: f64);
    with!(/// Sets `add_zero_association`.
        with_add_zero_association, add_zero_association: bool);
    with!(/// Sets `normalize_pattern`.
        with_normalize_pattern, normalize_pattern: bool);
    with!(/// Sets `normalize_pattern_eps`.
        with_normalize_pattern_eps, normalize_pattern_eps: f64);
    with!(/// Sets `association`.
        with_association, association: Association);

    /// Checks every field for a core of `heads` heads (the layout's `num_heads`, which
    /// [`CoreLayout::validate`](crate::CoreLayout::validate) checks): per-head settings must have
    /// one entry per head.
    pub fn validate(&self, heads: usize) -> Result<(), HopfieldError> {
        self.scaling.per_head(heads)?;
        self.update_steps_max.per_head(heads)?;
        self.update_steps_eps.per_head(heads)?;
        self.association.validate(heads)?;
        // torch accepts p = 1 (everything dropped in training, nothing in eval).
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(HopfieldError::Config {
                field: "dropout",
                reason: format!("must be in [0, 1], got {}", self.dropout),
            });
        }
        // torch's LayerNorm accepts eps = 0 (a constant row then standardises to 0 here).
        if !(self.normalize_pattern_eps >= 0.0 && self.normalize_pattern_eps.is_finite()) {
            return Err(HopfieldError::Config {
                field: "normalize_pattern_eps",
                reason: format!(
                    "must be >= 0 and finite, got {}",
                    self.normalize_pattern_eps
                ),
            });
        }
        if self.max_convergence_steps == 0 {
            return Err(HopfieldError::Config {
                field: "max_convergence_steps",
                reason: "must be >= 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_head_values() {
        assert_eq!(Scaling::None.per_head(2).unwrap(), vec![1.0, 1.0]);
        assert_eq!(Scaling::Scalar(0.5).per_head(3).unwrap(), vec![0.5; 3]);
        assert_eq!(
            UpdateSteps::UntilConvergence.per_head(2).unwrap(),
            vec![None, None]
        );
        assert!(matches!(
            Scaling::PerHead(vec![1.0]).per_head(2),
            Err(HopfieldError::PerHeadLength {
                field: "scaling",
                heads: 2,
                got: 1
            })
        ));
    }

    #[test]
    fn eps_must_be_positive() {
        assert!(matches!(
            StepsEps::Scalar(0.0).per_head(1),
            Err(HopfieldError::Config {
                field: "update_steps_eps",
                ..
            })
        ));
        assert!(CoreConfig::default().with_dropout(1.0).validate(1).is_ok());
        assert!(CoreConfig::default().with_dropout(1.5).validate(1).is_err());
        assert!(CoreConfig::default()
            .with_normalize_pattern_eps(0.0)
            .validate(1)
            .is_ok());
        assert!(CoreConfig::default()
            .with_normalize_pattern_eps(-1e-5)
            .validate(1)
            .is_err());
    }
}
