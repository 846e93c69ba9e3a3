//! [`create_operator`] (difflayers' `DiffusionOperator.create(...).precompute(L)`) and
//! [`apply_diffusion`].

use crate::{
    validate, DiffusionMode, DiffusionOperator, FactoredDiffusion, IterativeDiffusion,
    SimpleDiffusion, SpectralDiffusion,
};
use candle_core::{Result, Tensor};
use dahn_graph::GraphMatrix;
use std::sync::Arc;

/// The operator of `mode` precomputed on the Laplacian `l` with `eta` and `steps` (`steps` is
/// ignored by simple and spectral; factored recovers (W, deg) from an unnormalised L).
pub fn create_operator(
    mode: DiffusionMode,
    l: &GraphMatrix,
    eta: f64,
    steps: usize,
) -> Result<Arc<dyn DiffusionOperator>> {
    Ok(match mode {
        DiffusionMode::Simple => Arc::new(SimpleDiffusion::new(l.clone(), eta)?),
        DiffusionMode::Iterative => Arc::new(IterativeDiffusion::new(l.clone(), eta, steps)?),
        DiffusionMode::Spectral => Arc::new(SpectralDiffusion::new(l, eta)?),
        DiffusionMode::Factored => Arc::new(FactoredDiffusion::from_laplacian(l, eta, steps)?),
    })
}

/// difflayers' `apply_diffusion(X, L, eta, mode, steps)`: `eta == 0` returns X, otherwise the
/// mode's operator on L applied once. X and L are validated either way (shapes, dtypes, NaN/inf).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{apply_diffusion, DiffusionMode};
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
/// let x = Tensor::new(&[[1f64], [0.]], &Device::Cpu)?;
/// let y = apply_diffusion(&x, &l.into(), 0.25, DiffusionMode::Iterative, 2)?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![0.625], vec![0.375]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn apply_diffusion(
    x: &Tensor,
    l: &GraphMatrix,
    eta: f64,
    mode: DiffusionMode,
    steps: usize,
) -> Result<Tensor> {
    if eta == 0.0 {
        l.validate()?;
        validate::input("apply_diffusion: X", x, l.n())?;
        return Ok(x.clone());
    }
    create_operator(mode, l, eta, steps)?.apply(x)
}
