//! Masks of an association: hflayers' boolean padding and association masks and additive float
//! masks, validated and turned into one additive mask broadcastable to `(N, H, L, S)`.

use crate::error::HopfieldError;
use crate::ops::bool_to_additive;
use candle_core::{DType, Result, Tensor};

/// Optional masks of one association.
///
/// Boolean masks are any integer dtype (nonzero = masked, hflayers' `True`); float association
/// masks are added to the logits and may contain `-inf`. Masks are re-applied at every update
/// step; the zero pattern of `add_zero_association` is never masked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Masks<'a> {
    /// `(N, S)`, boolean: stored patterns to ignore per sample.
    pub stored_pattern_padding_mask: Option<&'a Tensor>,
    /// `(L, S)` shared by every sample and head, or `(N*H, L, S)` with row `n*H + h`;
    /// boolean or additive float.
    pub association_mask: Option<&'a Tensor>,
}

pub(crate) fn mask_to_additive(name: &'static str, mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let d = mask.dtype();
    if d.is_int() {
        bool_to_additive(mask, dtype)
    } else if d.is_float() {
        check_additive_values(name, mask)?;
        mask.to_dtype(dtype)
    } else {
        Err(HopfieldError::MaskDtype {
            mask: name,
            dtype: format!("{d:?}"),
            expected: "use an integer dtype (nonzero = masked) or a float (additive) mask",
        }
        .into())
    }
}

/// A float (additive) mask takes 0, finite biases and `-inf`; NaN, or `+inf` (which makes the
/// rest of its row NaN), is an error naming the mask. One scan; masks without `-inf` finish
/// after the first.
fn check_additive_values(name: &'static str, mask: &Tensor) -> Result<()> {
    match hopfield_cuda::bad_additive_values(mask)? {
        None => Ok(()),
        Some(what) => Err(HopfieldError::MaskValues {
            mask: name,
            shape: mask.dims().to_vec(),
            what,
        }
        .into()),
    }
}

/// The additive mask, broadcastable to `(N, H, L, S')`.
pub(crate) fn additive_mask(
    masks: &Masks,
    dims: (usize, usize, usize, usize),
    zero_column: bool,
    dtype: DType,
) -> Result<Option<Tensor>> {
    let (n, h, l, s) = dims;
    let mut acc: Option<Tensor> = None;
    if let Some(m) = masks.association_mask {
        let shape = match m.dims() {
            [a, b] if (*a, *b) == (l, s) => (1, 1, l, s),
            [nh, a, b] if (*nh, *a, *b) == (n * h, l, s) => (n, h, l, s),
            other => {
                return Err(HopfieldError::MaskShape {
                    mask: "association_mask",
                    expected: format!("(L, S) = ({l}, {s}) or (N*H, L, S) = ({}, {l}, {s})", n * h),
                    got: other.to_vec(),
                }
                .into())
            }
        };
        acc = Some(mask_to_additive("association_mask", m, dtype)?.reshape(shape)?);
    }
    if let Some(m) = masks.stored_pattern_padding_mask {
        if m.dims() != [n, s] {
            return Err(HopfieldError::MaskShape {
                mask: "stored_pattern_padding_mask",
                expected: format!("(N, S) = ({n}, {s})"),
                got: m.dims().to_vec(),
            }
            .into());
        }
        if !m.dtype().is_int() {
            return Err(HopfieldError::MaskDtype {
                mask: "stored_pattern_padding_mask",
                dtype: format!("{:?}", m.dtype()),
                expected: "padding masks are boolean: use an integer dtype (nonzero = masked)",
            }
            .into());
        }
        let p = bool_to_additive(m, dtype)?.reshape((n, 1, 1, s))?;
        acc = Some(match acc {
            Some(a) => a.broadcast_add(&p)?,
            None => p,
        });
    }
    match acc {
        Some(a) if zero_column => {
            let mut d = a.dims().to_vec();
            d[3] = 1;
            let z = Tensor::zeros(d, dtype, a.device())?;
            Ok(Some(Tensor::cat(&[&a, &z], 3)?))
        }
        other => Ok(other),
    }
}
