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
    /// A tensor has a dtype the operation cannot take (integer inputs, integer degrees).
    #[error("{what}: unsupported dtype {dtype} (expected a float dtype)")]
    DType {
        /// Which argument.
        what: &'static str,
        /// The dtype, in words.
        dtype: String,
    },
    /// An input that must have at least one row or column has none.
    #[error("{what}: empty (shape {shape:?})")]
    Empty {
        /// Which argument.
        what: &'static str,
        /// The shape that was passed.
        shape: Vec<usize>,
    },
    /// A matrix the operator needs symmetric is not, beyond rounding.
    #[error("{what}: the matrix is not symmetric: M[{row}][{col}] = {value} but M[{col}][{row}] = {transposed} (largest |M - M^T| = {defect:e}, tolerance {tolerance:e})")]
    NotSymmetric {
        /// Which operator.
        what: &'static str,
        /// Row of the worst pair.
        row: usize,
        /// Column of the worst pair.
        col: usize,
        /// `M[row][col]`.
        value: f64,
        /// `M[col][row]`.
        transposed: f64,
        /// `|value - transposed|`.
        defect: f64,
        /// The rounding tolerance it exceeds.
        tolerance: f64,
    },
    /// A result overflows its dtype although every input is finite.
    #[error("{what}: the result overflows {dtype} although the inputs are finite; rescale them or use F64")]
    Overflow {
        /// Which result.
        what: &'static str,
        /// The result's dtype, in words.
        dtype: String,
    },
    /// A requested size overflows `usize` or cannot be allocated (reported instead of aborting).
    #[error("{what}: a buffer of shape {dims:?} is too large to allocate")]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its shape.
        dims: Vec<usize>,
    },
}

hopfield_cuda::candle_error!(DiffusionError, "dahn-diffusion");
