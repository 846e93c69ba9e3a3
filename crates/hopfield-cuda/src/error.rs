//! The kernels' typed errors and the boundary checks that produce them: every public op checks
//! its arguments through these helpers before it touches data, so a bad argument is reported by
//! name (and shape) instead of panicking inside candle or returning NaN.
//!
//! Checks that read data back (`NaN` in a mask, a logit that overflowed) cost one pass over data
//! the op reads anyway, or over its `O(rows)` log-sum-exp, never a pass over the `L x S`
//! association.

use candle_core::{DType, Tensor};

/// A bad argument to one of this crate's ops.
#[derive(Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A tensor of an integer dtype where a float one is needed.
    #[error("{op}: `{arg}` must be floating point (f16, bf16, f32 or f64), got {dtype:?} with shape {shape:?}")]
    NotFloat {
        /// The op.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Two arguments that must share a dtype do not.
    #[error("{op}: `{arg}` is {got:?} but `{other}` is {expected:?}")]
    DtypeMismatch {
        /// The op.
        op: &'static str,
        /// The argument with the odd dtype.
        arg: &'static str,
        /// Its dtype.
        got: DType,
        /// The argument it must match.
        other: &'static str,
        /// That argument's dtype.
        expected: DType,
    },
    /// An argument's shape does not fit the op or the other arguments.
    #[error("{op}: `{arg}` must be {expected}, got {got:?}")]
    Shape {
        /// The op.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// The shape it must have, in words (with the sizes the other arguments fix).
        expected: String,
        /// Its shape.
        got: Vec<usize>,
    },
    /// A scalar parameter out of its domain (NaN, infinite, negative, too large for the dtype).
    #[error("{op}: `{name}` must be {expected}, got {value}")]
    Param {
        /// The op.
        op: &'static str,
        /// The parameter.
        name: &'static str,
        /// Its domain, in words.
        expected: &'static str,
        /// The value given.
        value: f64,
    },
    /// A tensor holds values its op cannot take (NaN anywhere, `+inf` in an additive mask).
    #[error("{op}: `{arg}` with shape {shape:?} contains {what}")]
    Values {
        /// The op.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What was found, in words.
        what: &'static str,
    },
    /// A result overflowed the dtype: the inputs are too large to compute in it.
    #[error("{op}: {what} overflowed {dtype:?} in {rows} row(s) (inputs of shape {shape:?}): inputs with NaN/inf, or too large for the dtype; scale them down (e.g. normalise them) or lower beta")]
    Overflow {
        /// The op.
        op: &'static str,
        /// What overflowed, in words.
        what: &'static str,
        /// The dtype it was computed in.
        dtype: DType,
        /// Rows affected.
        rows: usize,
        /// The shape of the input that produced it.
        shape: Vec<usize>,
    },
}

crate::candle_error!(KernelError, "hopfield-cuda");

/// `Err(KernelError::NotFloat)` unless `x` is floating point.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let ids = Tensor::zeros((2, 3), DType::U32, &Device::Cpu)?;
/// let err = hopfield_cuda::expect_float("my_op", "ids", &ids).unwrap_err();
/// assert!(err.to_string().contains("`ids` must be floating point"));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn expect_float(op: &'static str, arg: &'static str, x: &Tensor) -> Result<(), KernelError> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(KernelError::NotFloat {
            op,
            arg,
            dtype: x.dtype(),
            shape: x.dims().to_vec(),
        })
    }
}

/// `Err(KernelError::DtypeMismatch)` unless `x` has `reference`'s dtype.
pub(crate) fn expect_same_dtype(
    op: &'static str,
    (arg, x): (&'static str, &Tensor),
    (other, reference): (&'static str, &Tensor),
) -> Result<(), KernelError> {
    if x.dtype() == reference.dtype() {
        Ok(())
    } else {
        Err(KernelError::DtypeMismatch {
            op,
            arg,
            got: x.dtype(),
            other,
            expected: reference.dtype(),
        })
    }
}

/// The largest finite value of a float dtype (as f64).
pub(crate) fn dtype_max(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::MAX.to_f64(),
        DType::BF16 => half::bf16::MAX.to_f64(),
        DType::F32 => f32::MAX as f64,
        _ => f64::MAX,
    }
}

/// `Err(KernelError::Param)` unless `value` is finite, at least `min`, and representable in
/// `dtype` (a beta of 1e39 is finite in f64 but infinite in an f32 model).
pub(crate) fn expect_param(
    op: &'static str,
    name: &'static str,
    value: f64,
    min: f64,
    dtype: DType,
    expected: &'static str,
) -> Result<(), KernelError> {
    if value.is_finite() && value >= min && value.abs() <= dtype_max(dtype) {
        Ok(())
    } else {
        Err(KernelError::Param {
            op,
            name,
            expected,
            value,
        })
    }
}

/// What an additive mask holds that it cannot take: `Some("NaN")`, `Some("+inf")` (which makes
/// every other entry of its row NaN), or `None` (`0` keeps, `-inf` masks, finite values bias).
/// One vectorised scan when the mask is finite; the search for the culprit only when not. The
/// one check behind every crate's mask validation.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let m = Tensor::new(&[0f32, f32::NEG_INFINITY, f32::INFINITY], &Device::Cpu)?;
/// assert_eq!(hopfield_cuda::bad_additive_values(&m)?, Some("+inf"));
/// let ids = Tensor::new(&[1u8, 0], &Device::Cpu)?;
/// assert_eq!(hopfield_cuda::bad_additive_values(&ids)?, None);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn bad_additive_values(m: &Tensor) -> candle_core::Result<Option<&'static str>> {
    // Integer masks cannot hold NaN or inf.
    if m.elem_count() == 0 || !m.dtype().is_float() || crate::all_finite(m)? {
        return Ok(None);
    }
    let flat = m.flatten_all()?;
    Ok(if flat.ne(&flat)?.max(0)?.to_scalar::<u8>()? != 0 {
        Some("NaN")
    } else if flat.eq(f64::INFINITY)?.max(0)?.to_scalar::<u8>()? != 0 {
        Some("+inf")
    } else {
        None
    })
}

/// `Err(KernelError::Values)` if an additive mask holds NaN or `+inf` ([`bad_additive_values`]).
pub(crate) fn expect_additive_mask(
    op: &'static str,
    arg: &'static str,
    m: &Tensor,
) -> candle_core::Result<()> {
    expect_float(op, arg, m)?;
    match bad_additive_values(m)? {
        None => Ok(()),
        Some(what) => Err(KernelError::Values {
            op,
            arg,
            shape: m.dims().to_vec(),
            what: if what == "+inf" {
                "+inf (an additive mask takes 0, finite biases or -inf)"
            } else {
                what
            },
        }
        .into()),
    }
}

/// `Err(KernelError::Overflow)` when some logit `beta q k^T` (before any mask) is NaN or `+inf`:
/// inputs too large for `dtype`, or not finite. `-inf` counts as masked. One vectorised scan when
/// every logit is finite. The explicit association paths of this crate and of hopfield-core
/// share it, so they report exactly what the fused kernel reports.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[[[1f32, f32::INFINITY], [0., 1.]]]], &Device::Cpu)?;
/// let err = hopfield_cuda::expect_logits_in_range(&logits, &[1, 2, 1, 4]).unwrap_err();
/// assert!(err.to_string().contains("in 1 row(s)"));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn expect_logits_in_range(logits: &Tensor, inputs: &[usize]) -> candle_core::Result<()> {
    if !logits.dtype().is_float() || crate::all_finite(logits)? {
        return Ok(());
    }
    let nan_or_pos_inf = logits
        .ne(logits)?
        .to_dtype(DType::F32)?
        .add(&logits.eq(f64::INFINITY)?.to_dtype(DType::F32)?)?;
    let rows = nan_or_pos_inf
        .max_keepdim(candle_core::D::Minus1)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    if rows == 0 {
        return Ok(());
    }
    Err(KernelError::Overflow {
        op: "retrieval",
        what: "the logits beta q k^T",
        dtype: logits.dtype(),
        rows,
        shape: inputs.to_vec(),
    }
    .into())
}

/// Finds an error of type `E` inside a `candle_core::Error`, under any backtrace and context
/// layers: how a caller recovers the typed error of any crate of this workspace (each error enum
/// has a `find` built on it, see [`candle_error!`](crate::candle_error)).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use hopfield_cuda::{find_error, KernelError};
/// let ids = Tensor::zeros((2, 3), DType::U32, &Device::Cpu)?;
/// let err = hopfield_cuda::masked_softmax(&ids).unwrap_err();
/// assert!(matches!(find_error::<KernelError>(&err), Some(KernelError::NotFloat { .. })));
/// assert!(matches!(KernelError::find(&err.context("while testing")), Some(KernelError::NotFloat { .. })));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn find_error<E: std::error::Error + 'static>(err: &candle_core::Error) -> Option<&E> {
    match err {
        candle_core::Error::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<E>(),
        candle_core::Error::WithBacktrace { inner, .. } => find_error(inner),
        candle_core::Error::Context { inner, .. } => find_error(inner),
        _ => None,
    }
}

/// The one way every error enum of the workspace enters `candle_core::Error`: as
/// `Error::WrappedContext` (a `std::error::Error` that [`find_error`] can downcast; candle's
/// `Error::wrap` keeps only a `Display`, which cannot be downcast), with the crate's name as
/// context and a backtrace when `RUST_BACKTRACE` asks for one. Also implements `Debug` as the
/// message (candle prints the wrapped error with `{:?}`) and `find`.
///
/// ```
/// #[derive(Clone, PartialEq, thiserror::Error)]
/// enum MyError {
///     #[error("bad thing")]
///     Bad,
/// }
/// hopfield_cuda::candle_error!(MyError, "my-crate");
/// let err: candle_core::Error = MyError::Bad.into();
/// assert!(err.to_string().starts_with("bad thing"));
/// assert_eq!(MyError::find(&err), Some(&MyError::Bad));
/// ```
#[macro_export]
macro_rules! candle_error {
    ($ty:ident, $context:literal) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{self}")
            }
        }

        impl ::std::convert::From<$ty> for ::candle_core::Error {
            fn from(e: $ty) -> Self {
                ::candle_core::Error::WrappedContext {
                    wrapped: ::std::boxed::Box::new(e),
                    context: $context.into(),
                }
                .bt()
            }
        }

        impl $ty {
            #[doc = concat!("Finds a `", stringify!($ty), "` inside a `candle_core::Error` (under any backtrace or context layer).")]
            pub fn find(err: &::candle_core::Error) -> ::std::option::Option<&Self> {
                $crate::find_error::<Self>(err)
            }
        }
    };
}
