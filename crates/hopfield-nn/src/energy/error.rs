//! Typed errors of the Energy Transformer modules, converted to `candle_core::Error` at the module
//! boundary (`candle_core::Error::wrap`), so callers keep using `candle_core::Result`.

use candle_core::Tensor;

/// What went wrong, naming the argument and the shapes involved.
///
/// ```
/// use hopfield_nn::energy::EtError;
/// let e = EtError::TokenDim { arg: "x", expected: 8, shape: vec![2, 5, 7] };
/// assert!(e.to_string().contains("x: expected tokens of dimension 8"));
/// let c: candle_core::Error = e.into();
/// assert!(c.to_string().contains("[2, 5, 7]"));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EtError {
    /// A configuration value is out of range.
    #[error("invalid config {field} = {value}: {reason}")]
    Config {
        /// The field name.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A Hopfield type name other than `relu` / `softmax` (the port silently used ReLU).
    #[error("unknown hopfield_type {0:?}: expected \"relu\" or \"softmax\"")]
    UnknownHopfieldType(String),
    /// A keyword argument of the port that this crate does not know.
    #[error("unsupported port argument {name} = {value}")]
    UnsupportedArgument {
        /// The argument name.
        name: String,
        /// Its value.
        value: String,
    },
    /// Tokens must have rank >= 2: `(..., L, D)`.
    #[error("{arg}: expected tokens (..., L, D) of rank >= 2, got shape {shape:?}")]
    Rank {
        /// The argument name.
        arg: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The last dimension is not the model dimension.
    #[error(
        "{arg}: expected tokens of dimension {expected} in the last axis, got shape {shape:?}"
    )]
    TokenDim {
        /// The argument name.
        arg: &'static str,
        /// The model dimension.
        expected: usize,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// With a positional embedding the sequence length must equal `context`.
    #[error(
        "{arg}: {got} tokens but the positional embedding has context {context} (shape {shape:?})"
    )]
    SeqLen {
        /// The argument name.
        arg: &'static str,
        /// Number of tokens given.
        got: usize,
        /// The embedding's context.
        context: usize,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// `filtered_forward` indices: wrong length, rank, dtype or out of range.
    #[error("indices: {reason} (indices shape {shape:?}, {tokens} tokens, context {context})")]
    Indices {
        /// What is wrong.
        reason: String,
        /// Shape of the indices.
        shape: Vec<usize>,
        /// Number of tokens in x.
        tokens: usize,
        /// The embedding's context.
        context: usize,
    },
    /// NaN or infinite inputs.
    #[error("{arg}: contains NaN or infinite values (shape {shape:?})")]
    NonFinite {
        /// The argument name.
        arg: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A run of zero steps.
    #[error("n_iters: must be >= 1, got 0")]
    ZeroSteps,
    /// `energy_report = Paper` without the paper's `EnergyLayerNorm`.
    #[error("the paper's energy needs NormKind::EnergyLayerNorm (the per-feature LayerNorm has no Lagrangian)")]
    PaperEnergyNeedsEnergyNorm,
}

impl From<EtError> for candle_core::Error {
    fn from(e: EtError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Checks `x` is `(..., L, dim)` with finite values.
pub(crate) fn check_tokens(arg: &'static str, x: &Tensor, dim: usize) -> candle_core::Result<()> {
    let shape = x.dims().to_vec();
    if shape.len() < 2 {
        return Err(EtError::Rank { arg, shape }.into());
    }
    if shape[shape.len() - 1] != dim {
        return Err(EtError::TokenDim {
            arg,
            expected: dim,
            shape,
        }
        .into());
    }
    check_finite(arg, x)
}

/// Errors if `x` holds NaN or infinities (see [`hopfield_cuda::all_finite`]).
pub(crate) fn check_finite(arg: &'static str, x: &Tensor) -> candle_core::Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(EtError::NonFinite {
            arg,
            shape: x.dims().to_vec(),
        }
        .into())
    }
}
