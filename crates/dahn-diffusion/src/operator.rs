//! The [`DiffusionOperator`] trait shared by the four operators (their input checks are in
//! `validate`).

use crate::DiffusionMode;
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
