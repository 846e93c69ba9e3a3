//! Differentiable building blocks: composed LayerNorm, linear maps and a masked softmax that never
//! produces NaN.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` have no backward pass, so everything here
//! is composed from primitive ops that candle can differentiate.

use candle_core::{DType, Result, Tensor};

/// LayerNorm over the last dimension, with optional affine weight and bias (biased variance, as
/// PyTorch).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f64, 2., 3.]], &Device::Cpu)?;
/// let y = hopfield_core::ops::layer_norm(&x, None, None, 1e-5)?;
/// let v = y.to_vec2::<f64>()?;
/// assert!((v[0][0] + 1.2247).abs() < 1e-3 && v[0][1].abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    // The standardisation and the affine part are fused ops, each with its backward.
    hopfield_cuda::affine(&hopfield_cuda::normalize(x, eps)?, weight, bias)
}

/// `x W^T + b`: the fused projection of `hopfield-cuda` (one autograd node, see there).
pub use hopfield_cuda::linear;

/// Softmax over the last dimension that tolerates `-inf` logits (a fully masked row gives zeros,
/// never NaN): the one softmax entry point of the workspace, [`hopfield_cuda::masked_softmax`],
/// re-exported where the association's other building blocks live.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let inf = f64::NEG_INFINITY;
/// let x = Tensor::new(&[[0f64, 0.], [inf, inf]], &Device::Cpu)?;
/// let p = hopfield_core::ops::masked_softmax(&x)?;
/// assert_eq!(p.to_vec2::<f64>()?, vec![vec![0.5, 0.5], vec![0., 0.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub use hopfield_cuda::masked_softmax;

/// Converts a boolean-like mask (any integer dtype, nonzero = masked) into an additive float mask
/// of `0` / `-inf`.
pub fn bool_to_additive(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let keep = mask.eq(0u32)?;
    let zeros = Tensor::zeros(mask.shape(), dtype, mask.device())?;
    let ninf = Tensor::full(f64::NEG_INFINITY, mask.shape(), mask.device())?.to_dtype(dtype)?;
    keep.where_cond(&zeros, &ninf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn masked_softmax_matches_softmax_and_has_grad() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[0.3f64, -1.0, 2.0], [1.0, 1.0, 0.0]], &dev)?;
        let p = masked_softmax(x.as_tensor())?;
        let r = candle_nn::ops::softmax(x.as_tensor(), candle_core::D::Minus1)?;
        let d = (p.clone() - r)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-15);
        let g = (p.narrow(1, 0, 1)?.sum_all()?).backward()?;
        let gx = g.get(&x).expect("grad").to_vec2::<f64>()?;
        // d p0 / d x0 = p0 (1 - p0)
        let p0 = p.to_vec2::<f64>()?[0][0];
        assert!((gx[0][0] - p0 * (1.0 - p0)).abs() < 1e-14);
        Ok(())
    }

    #[test]
    fn fully_masked_rows_are_zero_with_zero_grad() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[0.5f64, 1.0]], &dev)?;
        let mask = Tensor::new(&[[f64::NEG_INFINITY, f64::NEG_INFINITY]], &dev)?;
        let p = masked_softmax(&x.as_tensor().broadcast_add(&mask)?)?;
        assert_eq!(p.to_vec2::<f64>()?, vec![vec![0.0, 0.0]]);
        let g = p.sum_all()?.backward()?;
        let gx = g.get(&x).expect("grad").to_vec2::<f64>()?;
        assert!(gx[0].iter().all(|v| *v == 0.0));
        Ok(())
    }

    #[test]
    fn layer_norm_values() -> Result<()> {
        let x = Tensor::new(&[[1f64, 3.0]], &Device::Cpu)?;
        let w = Tensor::new(&[2f64, 1.0], &Device::Cpu)?;
        let b = Tensor::new(&[0f64, 1.0], &Device::Cpu)?;
        let y = layer_norm(&x, Some(&w), Some(&b), 0.0)?.to_vec2::<f64>()?;
        assert!((y[0][0] + 2.0).abs() < 1e-12 && (y[0][1] - 2.0).abs() < 1e-12);
        Ok(())
    }
}
