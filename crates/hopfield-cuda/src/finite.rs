//! The finiteness check every public entry point runs on its inputs.

use candle_core::{DType, Result, Tensor};

/// Whether every entry of `x` is finite (no NaN, no infinity), with one reduction on the tensor's
/// own device and no host copy of the data: `0 * x` is 0 for finite entries and NaN otherwise,
/// so its sum is finite exactly when `x` is. Carries no gradient.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
/// assert!(hopfield_cuda::all_finite(&x)?);
/// assert!(!hopfield_cuda::all_finite(&(x / 0.0)?)?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn all_finite(x: &Tensor) -> Result<bool> {
    if x.elem_count() == 0 {
        return Ok(true);
    }
    let s = x
        .detach()
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(s.is_finite())
}
