//! Typed errors of the Energy Transformer modules, converted to `candle_core::Error` at the module
//! boundary (`hopfield_cuda::candle_error!`, recovered with `EtError::find`), so callers keep using
//! `candle_core::Result`.

use candle_core::DType;

/// What went wrong, naming the argument and the shapes involved.
///
/// ```
/// use hopfield_nn::energy::EtError;
/// let e = EtError::TokenDim { arg: "x", expected: 8, shape: vec![2, 5, 7] };
/// assert!(e.to_string().contains("x: expected tokens of dimension 8"));
/// let c: candle_core::Error = e.into();
/// assert!(c.to_string().contains("[2, 5, 7]"));
/// ```
#[derive(Clone, PartialEq, thiserror::Error)]
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
    /// Tokens must have rank >= 2, `(..., L, D)` (rank >= 1 for the per-token energies and norms).
    #[error("{arg}: expected tokens (..., D) of rank >= {min}, got shape {shape:?}")]
    Rank {
        /// The argument name.
        arg: &'static str,
        /// The least rank accepted.
        min: usize,
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
    /// A run of more than [`MAX_N_ITERS`](super::MAX_N_ITERS) steps (a bound no config removes).
    #[error("n_iters: {got} steps exceed the limit of {max}")]
    TooManySteps {
        /// The steps asked for.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// Tokens of a dtype the parameters cannot meet (an integer tensor, or another float type).
    #[error("{arg}: dtype {got:?} is not supported here, expected {expected:?} (the parameters' dtype), shape {shape:?}")]
    DType {
        /// The argument name.
        arg: &'static str,
        /// Its dtype.
        got: DType,
        /// The parameters' dtype.
        expected: DType,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Tokens on another device than the parameters.
    #[error("{arg}: on device {got} but the parameters are on {expected}, shape {shape:?}")]
    Device {
        /// The argument name.
        arg: &'static str,
        /// Its device.
        got: String,
        /// The parameters' device.
        expected: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A parameter or intermediate that cannot be allocated, found before allocating it.
    #[error("{what}: shape {shape:?} is too large: {reason}")]
    TooLarge {
        /// The parameter or intermediate, and where its size comes from.
        what: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Why it cannot be allocated.
        reason: String,
    },
    /// A parameter holding values no energy can be computed from.
    #[error("parameter {name} (shape {shape:?}) {reason}")]
    Parameter {
        /// Its state-dict name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A result that overflowed its dtype although inputs and parameters are finite.
    #[error("{what} of {arg} (shape {shape:?}, {dtype:?}) is not finite: it overflows; scale the input or the parameters (beta, weights, alpha) down, or use a wider dtype")]
    NonFiniteResult {
        /// The result: an energy, a gradient, the tokens after the steps.
        what: &'static str,
        /// The argument it was computed from.
        arg: &'static str,
        /// The argument's shape.
        shape: Vec<usize>,
        /// The argument's dtype.
        dtype: DType,
    },
    /// `energy_report = Paper` without the paper's `EnergyLayerNorm`.
    #[error("the paper's energy needs NormKind::EnergyLayerNorm (the per-feature LayerNorm has no Lagrangian)")]
    PaperEnergyNeedsEnergyNorm,
}

hopfield_cuda::candle_error!(EtError, "hopfield-nn energy");
