//! The [`DiffusionOperator`] trait shared by the four operators, and input checks.

use crate::{DiffusionError, DiffusionMode};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A precomputed graph diffusion `X -> X'` for X of shape (N, d) or (N, B, d) (the B batch
/// columns are diffused independently with the same graph). Differentiable w.r.t. X; the graph is
/// a constant. `eta == 0` returns X unchanged.
pub trait DiffusionOperator: Send + Sync + std::fmt::Debug {
    /// Applies the operator (including its own `steps`).
    fn apply(&self, x: &Tensor) -> Result<Tensor>;
    /// Diffusion strength.
    fn eta(&self) -> f64;
    /// Applications of the one-step map per call (1 for simple and spectral).
    fn steps(&self) -> usize;
    /// Which operator.
    fn mode(&self) -> DiffusionMode;
    /// Number of graph nodes.
    fn n(&self) -> usize;
    /// The same graph with a new `eta` and `steps` (DiffusedHopfield: per-loop-step copies with
    /// `steps = 1`, and the rebuild with the adaptive eta). Reuses the precomputation (the
    /// spectral eigendecomposition is not redone).
    fn with_params(&self, eta: f64, steps: usize) -> Result<Arc<dyn DiffusionOperator>>;
}

/// `x` must be (n, d) or (n, B, d) and finite.
pub(crate) fn check_input(x: &Tensor, n: usize, what: &'static str) -> Result<()> {
    let dims = x.dims();
    if !(dims.len() == 2 || dims.len() == 3) || dims[0] != n {
        return Err(DiffusionError::ShapeMismatch(format!(
            "{what}: graph has {n} nodes, input has shape {dims:?} (expected ({n}, d) or ({n}, B, d))"
        ))
        .into());
    }
    crate::error::check_finite(x, what)
}

/// `eta` must be finite and >= 0.
pub(crate) fn check_eta(eta: f64, what: &'static str) -> Result<()> {
    if eta.is_finite() && eta >= 0.0 {
        Ok(())
    } else {
        Err(DiffusionError::InvalidConfig(format!(
            "{what}: eta must be finite and >= 0, got {eta}"
        ))
        .into())
    }
}

/// Rejects a provably unstable explicit step: for a symmetric operator matrix `M` (here `L`),
/// `lambda_max(M) >= max_i M_ii` (Rayleigh quotient of a unit vector), and `|1 - eta lambda| > 1`
/// once `eta lambda > 2`. Never rejects a stable configuration; non-symmetric matrices are not
/// checked (the bound does not hold for them).
pub(crate) fn check_euler_stability(
    eta: f64,
    diag_max: f64,
    symmetric: bool,
    what: &'static str,
) -> Result<()> {
    if symmetric && eta * diag_max > 2.0 {
        return Err(DiffusionError::Unstable {
            eta,
            lambda_lower_bound: diag_max,
            what,
        }
        .into());
    }
    Ok(())
}
