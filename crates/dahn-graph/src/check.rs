//! Input validation shared by every public entry point of the crate: rank, emptiness, dtype,
//! finiteness, index ranges and sizes. Each helper takes the name of the argument it checks first
//! (as every check of the workspace does, e.g. `finite(what, x)`) and returns a typed
//! [`GraphError`]; checks that read data back are one reduction each.

use crate::GraphError;
use candle_core::{DType, Result, Tensor};

/// `x` must be a non-empty (N, d) float tensor without NaN or infinities; returns (N, d).
pub(crate) fn patterns_2d(what: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = match x.dims() {
        [n, d] => (*n, *d),
        got => {
            return Err(GraphError::Rank {
                what,
                expected: "a 2-D (N, d) tensor",
                got: got.to_vec(),
            }
            .into())
        }
    };
    float_dtype(what, x)?;
    if n == 0 {
        return Err(GraphError::Empty { what }.into());
    }
    // Node ids are stored as u32 in the CSR graphs.
    node_count(what, n)?;
    finite(what, x)?;
    Ok((n, d))
}

/// `a` must be a square (N, N) float matrix without NaN or infinities; returns N.
pub(crate) fn square(what: &'static str, a: &Tensor) -> Result<usize> {
    let n = square_dims(what, a)?;
    float_dtype(what, a)?;
    finite(what, a)?;
    Ok(n)
}

/// `a` must be 2-D and square (shape only, no data read); returns N.
pub(crate) fn square_dims(what: &'static str, a: &Tensor) -> Result<usize> {
    match a.dims() {
        [n, m] if n == m => Ok(*n),
        got => Err(GraphError::NotSquare {
            what,
            got: got.to_vec(),
        }
        .into()),
    }
}

pub(crate) fn float_dtype(what: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(GraphError::DType {
            what,
            dtype: format!("{:?}", x.dtype()),
        }
        .into())
    }
}

/// Errors if the tensor holds NaN or infinities (see [`hopfield_cuda::all_finite`]).
pub(crate) fn finite(what: &'static str, x: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(GraphError::NonFinite { what }.into())
    }
}

/// Node ids are `u32` in [`crate::Csr`]: N may not exceed `u32::MAX`.
pub(crate) fn node_count(what: &'static str, n: usize) -> Result<()> {
    if n as u64 > u32::MAX as u64 {
        return Err(GraphError::TooLarge {
            what,
            dims: vec![n],
            elems: format!("{n} nodes, more than u32::MAX"),
        }
        .into());
    }
    Ok(())
}

/// The element count of `dims`, overflow-checked, and small enough for a buffer of `elem_bytes`
/// per element to be addressable (`isize::MAX` bytes), else [`GraphError::TooLarge`].
pub(crate) fn checked_elems(
    what: &'static str,
    dims: &[usize],
    elem_bytes: usize,
) -> Result<usize> {
    let too_large = |elems: String| GraphError::TooLarge {
        what,
        dims: dims.to_vec(),
        elems,
    };
    let elems = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| too_large("overflows usize".into()))?;
    match elems.checked_mul(elem_bytes.max(1)) {
        Some(b) if b <= isize::MAX as usize => Ok(elems),
        _ => Err(too_large(format!("{elems} elements")).into()),
    }
}

/// An empty vector with room for `cap` elements, or [`GraphError::TooLarge`] when the memory
/// cannot be had: a failed `Vec::with_capacity` aborts the process, `try_reserve` does not.
pub(crate) fn try_with_capacity<T>(what: &'static str, cap: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(cap).map_err(|_| GraphError::TooLarge {
        what,
        dims: vec![cap],
        elems: format!("{cap} elements"),
    })?;
    Ok(v)
}

/// `vec![fill; len]`, or [`GraphError::TooLarge`] (see [`try_with_capacity`]).
pub(crate) fn try_vec<T: Clone>(what: &'static str, len: usize, fill: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, len)?;
    v.resize(len, fill);
    Ok(v)
}

/// Before candle allocates a tensor of `dims` in `dtype` (which aborts the process when the
/// allocation fails), checks the size and that the memory can be reserved right now.
pub(crate) fn can_allocate(what: &'static str, dims: &[usize], dtype: DType) -> Result<()> {
    let elems = checked_elems(what, dims, dtype.size_in_bytes())?;
    let bytes = elems * dtype.size_in_bytes();
    let mut probe: Vec<u8> = Vec::new();
    probe
        .try_reserve_exact(bytes)
        .map_err(|_| GraphError::TooLarge {
            what,
            dims: dims.to_vec(),
            elems: format!("{elems} elements, {bytes} bytes"),
        })?;
    Ok(())
}

/// Host copy of a float tensor as f64 (graph bookkeeping is always done in f64).
pub(crate) fn host_f64(x: &Tensor) -> Result<Vec<f64>> {
    x.detach()
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// After a product `out` computed from `input`: a non-finite result is [`GraphError::NonFinite`]
/// when `input` was not finite, else [`GraphError::Overflow`]. One reduction when all is well.
pub(crate) fn finite_product(what: &'static str, out: &Tensor, input: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(out)? {
        return Ok(());
    }
    if !hopfield_cuda::all_finite(input)? {
        return Err(GraphError::NonFinite { what }.into());
    }
    Err(GraphError::Overflow {
        what,
        detail: format!(
            "the product of finite operands overflows {:?}; rescale the operand or use F64",
            out.dtype()
        ),
    }
    .into())
}

/// Two powers of two whose product brings values up to `2^log2_max` to at most `2^1000` (sums of
/// a few of them stay finite), exactly, and no further: small values keep their range. Two
/// factors because a single `2^-1025` would underflow to 0.
pub(crate) fn pow2_halves(log2_max: f64) -> (f64, f64) {
    let e = (log2_max - 1000.0).ceil().max(0.0) as i32;
    (2f64.powi(-(e / 2)), 2f64.powi(-(e - e / 2)))
}
