//! Input validation shared by the graph constructors: rank, emptiness, finiteness, dtype.

use crate::GraphError;
use candle_core::{Result, Tensor};

/// `x` must be a non-empty (N, d) float tensor without NaN or infinities; returns (N, d).
pub(crate) fn patterns_2d(x: &Tensor, what: &'static str) -> Result<(usize, usize)> {
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
    float_dtype(x, what)?;
    if n == 0 {
        return Err(GraphError::Empty { what }.into());
    }
    finite(x, what)?;
    Ok((n, d))
}

/// `a` must be a square (N, N) float matrix without NaN or infinities; returns N.
pub(crate) fn square(a: &Tensor, what: &'static str) -> Result<usize> {
    let n = match a.dims() {
        [n, m] if n == m => *n,
        got => {
            return Err(GraphError::NotSquare {
                what,
                got: got.to_vec(),
            }
            .into())
        }
    };
    float_dtype(a, what)?;
    finite(a, what)?;
    Ok(n)
}

pub(crate) fn float_dtype(x: &Tensor, what: &'static str) -> Result<()> {
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
pub(crate) fn finite(x: &Tensor, what: &'static str) -> Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(GraphError::NonFinite { what }.into())
    }
}

/// Host copy of a float tensor as f64 (graph bookkeeping is always done in f64).
pub(crate) fn host_f64(x: &Tensor) -> Result<Vec<f64>> {
    x.detach()
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}
