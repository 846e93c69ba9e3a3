//! The crate's typed errors and their conversion into `candle_core::Error` (same scheme as
//! `dahn_graph::GraphError`: carried in `candle_core::Error::WrappedContext`, recovered with
//! [`DiffusionError::find`]).

/// What went wrong in a diffusion operator, the attention, the dynamics or the config.
#[derive(Clone, PartialEq, thiserror::Error)]
pub enum DiffusionError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The explicit Euler step would amplify some component (provably unstable).
    #[error("unstable diffusion: eta = {eta} but eta * lambda_max >= eta * {lambda_lower_bound} > 2 ({what})")]
    Unstable {
        /// The step size.
        eta: f64,
        /// A lower bound on the operator's largest eigenvalue.
        lambda_lower_bound: f64,
        /// Which operator.
        what: &'static str,
    },
    /// Arguments disagree on shapes.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// `FactoredDiffusion::from_laplacian` needs `L = D - W` (zero row sums).
    #[error("not an unnormalised Laplacian: row {row} sums to {sum} (expected 0); use FactoredDiffusion::from_graph")]
    NotUnnormalizedLaplacian {
        /// First offending row.
        row: usize,
        /// Its row sum.
        sum: f64,
    },
    /// The iteration produced NaN or infinities.
    #[error("diffusion diverged after {steps} step(s) (non-finite values)")]
    Diverged {
        /// Steps run.
        steps: usize,
    },
    /// An input holds NaN or an infinity.
    #[error("{what}: contains NaN or infinite values")]
    NonFinite {
        /// Which argument.
        what: &'static str,
    },
    /// A required input was not given.
    #[error("missing input: {0}")]
    Missing(&'static str),
}

impl std::fmt::Debug for DiffusionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl DiffusionError {
    /// Finds a `DiffusionError` inside a `candle_core::Error`.
    ///
    /// ```
    /// use dahn_diffusion::{DiffusionConfig, DiffusionError};
    /// let err = DiffusionConfig::default().k_neighbors(0).validate().unwrap_err();
    /// assert!(matches!(DiffusionError::find(&err), Some(DiffusionError::InvalidConfig(_))));
    /// ```
    pub fn find(err: &candle_core::Error) -> Option<&DiffusionError> {
        match err {
            candle_core::Error::WrappedContext { wrapped, .. } => {
                wrapped.downcast_ref::<DiffusionError>()
            }
            candle_core::Error::WithBacktrace { inner, .. } => Self::find(inner),
            candle_core::Error::Context { inner, .. } => Self::find(inner),
            _ => None,
        }
    }
}

impl From<DiffusionError> for candle_core::Error {
    fn from(e: DiffusionError) -> Self {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(e),
            context: "dahn-diffusion".into(),
        }
        .bt()
    }
}

/// Errors if the tensor holds NaN or infinities (see [`hopfield_cuda::all_finite`]).
pub(crate) fn check_finite(x: &candle_core::Tensor, what: &'static str) -> candle_core::Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(DiffusionError::NonFinite { what }.into())
    }
}
