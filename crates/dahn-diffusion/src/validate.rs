//! Boundary validation for every public entry point of the crate, in one place: dtypes, shapes,
//! finiteness of tensors and parameters, step counts, symmetry up to rounding and the provable
//! instability bounds. Each helper takes the name of the argument it checks first (as every check
//! of the workspace does, e.g. `finite(what, x)`) and returns a typed [`DiffusionError`]; a check
//! that reads data back is one reduction.

use crate::DiffusionError;
use candle_core::{DType, Result, Tensor};
use dahn_graph::GraphMatrix;

/// The most steps any loop of this crate runs per call ([`crate::IterativeDiffusion`],
/// [`crate::FactoredDiffusion`], [`crate::DynamicsEngine`], [`crate::DiffusionConfig::steps`]).
/// A fixed bound, so a step count from a config (a typo, a parsing error) cannot run for hours:
/// diffusion converges long before (each step multiplies the non-constant components by at most
/// `1 - eta lambda_2`).
///
/// ```
/// use dahn_diffusion::{DiffusionConfig, MAX_STEPS};
/// assert!(DiffusionConfig::default().steps(MAX_STEPS + 1).validate().is_err());
/// ```
pub const MAX_STEPS: usize = 10_000;

/// Errors if `x` holds NaN or infinities (see [`hopfield_cuda::all_finite`]).
pub(crate) fn finite(what: &'static str, x: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(x)? {
        Ok(())
    } else {
        Err(DiffusionError::NonFinite { what }.into())
    }
}

/// `x` must have a float dtype (candle panics deep inside on some integer ops).
pub(crate) fn float(what: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(DiffusionError::DType {
            what,
            dtype: format!("{:?}", x.dtype()),
        }
        .into())
    }
}

/// `x` must be (n, d) or (n, B, d), float and finite.
pub(crate) fn input(what: &'static str, x: &Tensor, n: usize) -> Result<()> {
    let dims = x.dims();
    if !(dims.len() == 2 || dims.len() == 3) || dims[0] != n {
        return Err(DiffusionError::ShapeMismatch(format!(
            "{what}: graph has {n} nodes, input has shape {dims:?} (expected ({n}, d) or ({n}, B, d))"
        ))
        .into());
    }
    float(what, x)?;
    finite(what, x)
}

/// A scalar parameter must be finite (and, with `non_negative`, >= 0).
pub(crate) fn param(what: &str, name: &str, v: f64, non_negative: bool) -> Result<()> {
    if v.is_finite() && (!non_negative || v >= 0.0) {
        return Ok(());
    }
    let want = if non_negative {
        "finite and >= 0"
    } else {
        "finite"
    };
    Err(DiffusionError::InvalidConfig(format!("{what}: {name} must be {want}, got {v}")).into())
}

/// `eta` must be finite and >= 0.
pub(crate) fn eta(what: &'static str, eta: f64) -> Result<()> {
    param(what, "eta", eta, true)
}

/// A step count must not exceed [`MAX_STEPS`].
pub(crate) fn steps(what: &'static str, steps: usize) -> Result<()> {
    if steps <= MAX_STEPS {
        Ok(())
    } else {
        Err(DiffusionError::InvalidConfig(format!(
            "{what}: steps = {steps} exceeds MAX_STEPS = {MAX_STEPS}"
        ))
        .into())
    }
}

/// Relative rounding tolerance of a matrix held in `dtype` (sparse matrices are f64).
fn rounding_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// Whether `m` is symmetric up to rounding (`|M_ij - M_ji| <= tol * max |M|`): a Laplacian
/// normalised in floating point is not bit-symmetric, and must still get the symmetric bound.
/// `Err(NotSymmetric)` from [`require_symmetric`] carries the worst pair.
pub(crate) fn symmetry(
    what: &'static str,
    m: &GraphMatrix,
) -> Result<std::result::Result<(), DiffusionError>> {
    let dtype = match m {
        GraphMatrix::Dense(t) => t.dtype(),
        GraphMatrix::Sparse(_) => DType::F64,
    };
    let Some((row, col, value, transposed)) = m.asymmetry()? else {
        return Ok(Ok(()));
    };
    let tolerance = rounding_tolerance(dtype) * m.max_abs()?;
    let defect = (value - transposed).abs();
    if defect <= tolerance {
        return Ok(Ok(()));
    }
    Ok(Err(DiffusionError::NotSymmetric {
        what,
        row,
        col,
        value,
        transposed,
        defect,
        tolerance,
    }))
}

/// [`symmetry`] as an error.
pub(crate) fn require_symmetric(what: &'static str, m: &GraphMatrix) -> Result<()> {
    symmetry(what, m)?.map_err(Into::into)
}

/// Rejects a provably unstable explicit step `x <- (I - eta M) x`, given `M`'s diagonal:
/// - `M` symmetric (up to rounding): `lambda_max(M) >= max_i M_ii` (Rayleigh quotient of a unit
///   vector), and `|1 - eta lambda| > 1` once `eta lambda > 2`;
/// - any `M`: the eigenvalues' mean is `tr(M) / N`, so some eigenvalue has real part
///   `>= mean_i M_ii`, and `|1 - eta lambda| > 1` once `eta * mean_i M_ii > 2`.
///
/// Never rejects a stable configuration.
pub(crate) fn euler_stability(
    what: &'static str,
    eta: f64,
    diag: &[f64],
    symmetric: bool,
) -> Result<()> {
    let bound = if symmetric {
        diag.iter().copied().fold(0.0, f64::max)
    } else if diag.is_empty() {
        0.0
    } else {
        diag.iter().sum::<f64>() / diag.len() as f64
    };
    if eta * bound > 2.0 {
        return Err(DiffusionError::Unstable {
            eta,
            lambda_lower_bound: bound,
            what,
        }
        .into());
    }
    Ok(())
}

/// An operator's result must be finite; its input was, so anything else is divergence.
pub(crate) fn diverged(out: &Tensor, steps: usize) -> Result<()> {
    if hopfield_cuda::all_finite(out)? {
        Ok(())
    } else {
        Err(DiffusionError::Diverged { steps }.into())
    }
}

/// A result computed from finite inputs must be finite, else [`DiffusionError::Overflow`].
pub(crate) fn no_overflow(what: &'static str, out: &Tensor) -> Result<()> {
    if hopfield_cuda::all_finite(out)? {
        Ok(())
    } else {
        Err(DiffusionError::Overflow {
            what,
            dtype: format!("{:?}", out.dtype()),
        }
        .into())
    }
}

/// The element count of `dims`, overflow-checked, and memory for `bytes` per element that can be
/// reserved now (a failed allocation inside candle or a `Vec` aborts the process).
pub(crate) fn can_allocate(what: &'static str, dims: &[usize], bytes: usize) -> Result<usize> {
    let too_large = || DiffusionError::TooLarge {
        what,
        dims: dims.to_vec(),
    };
    let elems = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_large)?;
    let total = elems
        .checked_mul(bytes.max(1))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(too_large)?;
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(total).map_err(|_| too_large())?;
    Ok(elems)
}
