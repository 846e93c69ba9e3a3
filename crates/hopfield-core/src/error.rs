//! Typed errors for bad configurations and bad inputs.
//!
//! Validation functions return [`HopfieldError`] so callers can match on the problem; the tensor
//! entry points wrap it into `candle_core::Error` (its message names the argument and the shapes).

use thiserror::Error;

/// What went wrong, with the argument and the shapes involved.
#[derive(Clone, PartialEq, Error)]
pub enum HopfieldError {
    /// An input tensor has the wrong rank or size.
    #[error("{arg}: expected shape {expected}, got {got:?}")]
    Shape {
        /// The argument's name.
        arg: &'static str,
        /// The expected shape, in words (e.g. `(N, S, 8)`).
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// Two inputs disagree on a dimension they must share.
    #[error("{what}: {lhs_arg} has shape {lhs:?} but {rhs_arg} has shape {rhs:?}")]
    Mismatch {
        /// Which dimension must agree.
        what: &'static str,
        /// First argument.
        lhs_arg: &'static str,
        /// Its shape.
        lhs: Vec<usize>,
        /// Second argument.
        rhs_arg: &'static str,
        /// Its shape.
        rhs: Vec<usize>,
    },
    /// A mask has the wrong shape.
    #[error("{mask}: expected shape {expected}, got {got:?}")]
    MaskShape {
        /// The mask's name.
        mask: &'static str,
        /// The accepted shapes, in words.
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A mask has a dtype that is neither boolean-like (integer) nor float.
    #[error("{mask}: unsupported dtype {dtype}; {expected}")]
    MaskDtype {
        /// The mask's name.
        mask: &'static str,
        /// The dtype that was passed.
        dtype: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// An input tensor is not floating point (patterns are real vectors).
    #[error("{arg}: expected a floating-point tensor (f16, bf16, f32 or f64), got {dtype}")]
    InputDtype {
        /// The argument's name.
        arg: &'static str,
        /// The dtype that was passed.
        dtype: String,
    },
    /// An input's dtype differs from the model's weights.
    #[error("{arg}: dtype {dtype} differs from the model's {model}; convert the input (to_dtype) or load the model in {dtype}")]
    DtypeMismatch {
        /// The argument's name.
        arg: &'static str,
        /// The input's dtype.
        dtype: String,
        /// The weights' dtype.
        model: String,
    },
    /// The number of heads does not divide a size that is split across heads.
    #[error("{what} = {size} is not divisible by num_heads = {heads}")]
    HeadsDoNotDivide {
        /// Which size.
        what: &'static str,
        /// The size.
        size: usize,
        /// The number of heads.
        heads: usize,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A per-head setting has the wrong length.
    #[error("{field}: expected one value per head ({heads}), got {got}")]
    PerHeadLength {
        /// The field.
        field: &'static str,
        /// Number of heads.
        heads: usize,
        /// Number of values passed.
        got: usize,
    },
    /// Iterating "until convergence" hit the hard cap.
    #[error("update steps did not converge within the cap of {cap} steps for {unconverged} (sample, head) pairs; raise `max_convergence_steps` or `update_steps_eps`")]
    NotConverged {
        /// The cap that was hit.
        cap: usize,
        /// How many (sample, head) pairs were still changing.
        unconverged: usize,
    },
    /// A float (additive) mask holds values it cannot take.
    #[error("{mask}: the additive mask with shape {shape:?} contains {what}; a float mask takes 0 (keep), finite biases or -inf (masked)")]
    MaskValues {
        /// Which mask.
        mask: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What was found (`NaN` or `+inf`).
        what: &'static str,
    },
    /// A tensor the configuration asks for cannot be allocated (its size overflows, or the
    /// allocator refuses it): reported before anything is allocated, instead of an abort.
    #[error("{what}: a tensor of shape {dims:?} ({bytes}) cannot be allocated; check the configured sizes")]
    TooLarge {
        /// The tensor (its state_dict name or role).
        what: String,
        /// Its shape.
        dims: Vec<usize>,
        /// Its size in bytes, in words (or "more than usize::MAX").
        bytes: String,
    },
    /// An input contains NaN or infinite values.
    #[error("{arg} contains non-finite values (NaN or inf)")]
    NonFinite {
        /// The argument's name.
        arg: &'static str,
    },
    /// A weight tensor is missing, unexpected or mis-shaped.
    #[error("weights: {0}")]
    Weights(String),
}

impl HopfieldError {
    /// Wraps the error into a `candle_core::Error` (the same as `.into()`).
    pub fn into_candle(self) -> candle_core::Error {
        self.into()
    }
}

hopfield_cuda::candle_error!(HopfieldError, "hopfield-core");

/// `Err(HopfieldError::InputDtype{..})` unless `x` is floating point.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let ids = Tensor::zeros((2, 3), DType::U32, &Device::Cpu)?;
/// let err = hopfield_core::error::expect_float("state pattern (query)", &ids).unwrap_err();
/// assert!(err.to_string().contains("U32"));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn expect_float(arg: &'static str, x: &candle_core::Tensor) -> Result<(), HopfieldError> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(HopfieldError::InputDtype {
            arg,
            dtype: format!("{:?}", x.dtype()),
        })
    }
}

/// `Err(HopfieldError::Shape{..})` if `dims` is not `expected` (entries `None` match anything).
pub fn expect_shape(
    arg: &'static str,
    dims: &[usize],
    expected: &[Option<usize>],
    expected_words: impl FnOnce() -> String,
) -> Result<(), HopfieldError> {
    let ok = dims.len() == expected.len()
        && dims
            .iter()
            .zip(expected)
            .all(|(d, e)| e.is_none_or(|e| e == *d));
    if ok {
        Ok(())
    } else {
        Err(HopfieldError::Shape {
            arg,
            expected: expected_words(),
            got: dims.to_vec(),
        })
    }
}

/// Largest single tensor a configuration may ask for (16 TiB): beyond any machine this runs on,
/// and below what Linux's overcommit would hand out as untouched virtual memory.
const MAX_TENSOR_BYTES: usize = 1 << 44;

/// `Err(HopfieldError::TooLarge{..})` unless a tensor of `dims` in `dtype` can be allocated: its
/// element count and byte size must not overflow, stay below 16 TiB, and the allocator must
/// agree to reserve it (tried with `try_reserve` and released at once, so no page is touched).
/// Every constructor calls this for each tensor a configuration sizes, so a hidden size of
/// 10^12 from a kwargs JSON is a typed error instead of an abort.
///
/// ```
/// use candle_core::DType;
/// use hopfield_core::error::check_alloc;
/// assert!(check_alloc("w", &[16, 16], DType::F32).is_ok());
/// let err = check_alloc("in_proj_weight", &[1 << 40, 1 << 40], DType::F32).unwrap_err();
/// assert!(err.to_string().contains("in_proj_weight"));
/// ```
pub fn check_alloc(
    what: &str,
    dims: &[usize],
    dtype: candle_core::DType,
) -> Result<(), HopfieldError> {
    let too_large = |bytes: String| HopfieldError::TooLarge {
        what: what.to_string(),
        dims: dims.to_vec(),
        bytes,
    };
    let elems = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| too_large("more than usize::MAX elements".into()))?;
    let bytes = elems
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| too_large("more than usize::MAX bytes".into()))?;
    if bytes > MAX_TENSOR_BYTES {
        return Err(too_large(format!("{bytes} bytes, above the 16 TiB limit")));
    }
    let mut probe: Vec<u8> = Vec::new();
    probe
        .try_reserve_exact(bytes)
        .map_err(|_| too_large(format!("{bytes} bytes, refused by the allocator")))?;
    Ok(())
}
