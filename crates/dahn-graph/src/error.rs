//! The crate's typed errors and their conversion into `candle_core::Error`.
//!
//! Public functions return `candle_core::Result`; a domain error travels inside
//! `candle_core::Error::WrappedContext` (the one candle variant that keeps a `std::error::Error`,
//! so it can be downcast) and is recovered with [`GraphError::find`]. `Debug` prints the message,
//! because candle formats that variant with `{:?}`.

/// What went wrong while building a graph or a Laplacian.
#[derive(Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// A tensor had the wrong number of dimensions.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    Rank {
        /// Which argument.
        what: &'static str,
        /// The accepted ranks, in words.
        expected: &'static str,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A matrix that must be square (N, N) was not.
    #[error("{what}: expected a square (N, N) matrix, got shape {got:?}")]
    NotSquare {
        /// Which argument.
        what: &'static str,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// Two arguments disagree on a dimension.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// There are no patterns (N = 0).
    #[error("{what}: no patterns (N = 0)")]
    Empty {
        /// Which argument.
        what: &'static str,
    },
    /// The input holds NaN or an infinity.
    #[error("{what}: contains NaN or infinite values")]
    NonFinite {
        /// Which argument.
        what: &'static str,
    },
    /// A scalar argument outside its documented range (e.g. a negative tolerance).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `k` must be at least 1.
    #[error("k must be >= 1, got {0}")]
    InvalidK(usize),
    /// Only floating-point tensors can be turned into graphs.
    #[error("{what}: unsupported dtype {dtype}")]
    DType {
        /// Which argument.
        what: &'static str,
        /// The dtype, in words.
        dtype: String,
    },
    /// An index (a triplet's row or column, a node) is not below its bound.
    #[error("{what}: index {index} is out of range 0..{bound}")]
    IndexOutOfRange {
        /// Which argument (and which element of it).
        what: String,
        /// The index that was passed.
        index: u64,
        /// The exclusive upper bound.
        bound: u64,
    },
    /// A result is not representable in its dtype although every input is finite (e.g. a
    /// Laplacian degree, a row sum of huge weights, beyond the dtype's largest value).
    #[error("{what}: {detail}")]
    Overflow {
        /// Which result.
        what: &'static str,
        /// Where and by how much, in words.
        detail: String,
    },
    /// A requested size overflows `usize` or cannot be allocated (e.g. a dense N x N view of a
    /// huge sparse graph, or `k` from a config far beyond the data). Reported before anything is
    /// written, instead of aborting the process.
    #[error("{what}: a buffer of shape {dims:?} ({elems}) is too large to allocate")]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its shape.
        dims: Vec<usize>,
        /// Its element count, or "overflows usize".
        elems: String,
    },
}

hopfield_cuda::candle_error!(GraphError, "dahn-graph");
