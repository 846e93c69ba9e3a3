//! Helpers shared by the module tests.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// A float64 CPU `VarBuilder` over `map`.
pub fn vb(map: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(map, DType::F64, &Device::Cpu)
}

/// `max |a - b|` as f64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Replaces every variable by N(0, 0.3^2) draws, so that no parameter sits at an initialisation
/// (ones, zeros) that hides its effect.
pub fn randomize(map: &VarMap) -> Result<()> {
    for v in map.all_vars() {
        v.set(&Tensor::randn(0f64, 0.3, v.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}
