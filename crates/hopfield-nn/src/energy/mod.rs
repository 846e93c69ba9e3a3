//! The Energy Transformer (Hoover et al., NeurIPS 2023) as ported to PyTorch by
//! `LumenPallidium/energy_transformer`, with the port's checkpoints loading unchanged.
//!
//! Components, each usable on its own and each exposing its energy and the energy's gradient in
//! closed form through [`Energy`] (no autograd is needed for inference):
//!
//! * [`EnergyMHA`]: the attention energy `-sum_h 1/beta_h sum_A logsumexp_B(beta_h q_A . k_B)`;
//! * [`BaseModernHopfield`]: the ReLU Hopfield energy `-1/2 sum relu(beta x W)^2`;
//! * [`SoftmaxModernHopfield`]: the log-sum-exp Hopfield energy `-1/beta sum logsumexp(beta x W)`;
//! * [`LayerNorm`] (the port's per-feature norm) and [`EnergyLayerNorm`] (the paper's scalar-gamma norm,
//!   whose [`Energy`] is its Lagrangian);
//! * [`EnergyTransformer`]: tokens (+ positional embedding) descend the summed energy for `n_iters`
//!   steps of size `alpha`, the gradient being taken at the normalised tokens.
//!
//! Training backpropagates through the unrolled steps with candle autograd, which needs the
//! derivative of each gradient (second derivatives of the energy). The attention and Hopfield
//! gradients are fused CPU ops of `hopfield-cuda` ([`hopfield_cuda::attention_energy_grad`],
//! [`hopfield_cuda::hopfield_energy_grad`]) whose backward passes are the closed-form
//! Hessian-vector products; the energies themselves, and every gradient on other devices, are
//! composed candle ops (differentiable to any order).
//! State-dict names follow the port (`mha.Wq`, `mha.Wk`, `mha.beta`, `hopfield.W`, `hopfield.beta`,
//! `norm.weight`, `norm.bias`, `pos_embedding`), so `VarBuilder::from_mmaped_safetensors` of a port
//! state_dict works and `VarMap::save` writes files the port loads. Where and why this port departs
//! from the PyTorch port (ids E1-E10): `docs/design/energy-transformer-port.md`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Module, VarBuilder, VarMap};
//! use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let cfg = EnergyTransformerConfig::new(8, 16, 2).with_context(5).with_n_iters(3);
//! let et = EnergyTransformer::new(&cfg, vb)?;
//! let x = Tensor::randn(0f32, 1., (2, 5, 8), &Device::Cpu)?;
//! let y = et.forward(&x)?;
//! assert_eq!(y.dims(), &[2, 5, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Differences from the port (its bugs, fixed; see `docs/energy-transformer.md`): betas are typed
//! and separate for attention and Hopfield, the Hopfield type is an enum (unknown names are an
//! error), `filtered_forward` works without a positional embedding and can return energies, bad
//! inputs give an [`EtError`], and the default attention beta `1/sqrt(head_dim)` is exact in f64.
//!
//! Hostile input (one mechanism, `validate.rs`, at every public entry point): tokens of the wrong
//! rank, last axis, dtype (integers, or another float type than the parameters') or device, and
//! NaN/inf values, are an [`EtError`] naming the argument and its shape; sizes from a config or
//! constructor are overflow-checked, and allocations beyond the machine's memory refused, before
//! anything is allocated; runs take at most [`MAX_N_ITERS`] steps; a result that overflows is an
//! error naming the parameter to blame (NaN weights, a zero beta) or the result and argument,
//! never NaN. Zero tokens are defined: energy 0, empty gradients, tokens returned unchanged.
//! f16/bf16 models compute in f32 and return their energies in f32.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Module, VarBuilder, VarMap};
//! use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig};
//! let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
//! let et = EnergyTransformer::new(&EnergyTransformerConfig::new(8, 16, 2), vb)?;
//! let ints = Tensor::zeros((2, 5, 8), DType::U32, &Device::Cpu)?;
//! let e = et.forward(&ints).unwrap_err().to_string();
//! assert!(e.contains("x: dtype U32") && e.contains("[2, 5, 8]"));
//! let none = Tensor::zeros((2, 0, 8), DType::F32, &Device::Cpu)?;
//! assert_eq!(et.energy(&none)?.to_scalar::<f32>()?, 0.0);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod config;
mod error;
mod hopfield;
mod mha;
mod norm;
mod transformer;
mod validate;

pub use config::{EnergyReport, EnergyTransformerConfig, HopfieldType, NormKind};
pub use error::EtError;
pub use hopfield::{BaseModernHopfield, HopfieldEnergy, SoftmaxModernHopfield};
pub use mha::EnergyMHA;
pub use norm::{EnergyLayerNorm, LayerNorm, Norm};
pub use transformer::{with_fused_step, EnergyTransformer, EtOutput};
pub use validate::MAX_N_ITERS;

use candle_core::{Result, Tensor, D};

/// A scalar energy over tokens `(..., L, D)` with its gradient in closed form.
///
/// `energy` sums over every leading (batch) dimension and every token, so the gradient of sample
/// `b` only depends on sample `b`. Candle autograd of `energy` equals `grad`, and `grad` itself can
/// be differentiated once more (training through steps).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{BaseModernHopfield, Energy};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
/// let hop = BaseModernHopfield::new(4, 6, vb)?;
/// let x = Tensor::randn(0f64, 1., (3, 4), &Device::Cpu)?;
/// let (e, g) = (hop.energy(&x)?, hop.grad(&x)?);
/// assert!(e.to_scalar::<f64>()? <= 0.0);
/// assert_eq!(g.dims(), x.dims());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait Energy {
    /// The energy, a 0-d tensor.
    fn energy(&self, x: &Tensor) -> Result<Tensor>;
    /// `dE/dx`, same shape as `x`.
    fn grad(&self, x: &Tensor) -> Result<Tensor>;
}

/// Log-sum-exp and softmax over the last dimension, with the max shift detached (it cancels
/// mathematically; detaching keeps the autograd graph small and exact).
pub(crate) fn lse_softmax(s: &Tensor) -> Result<(Tensor, Tensor)> {
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    let lse = (z.log()? + m)?;
    let p = e.broadcast_div(&z)?;
    Ok((lse, p))
}

/// `(..., D)` -> `(N, D)`; also returns the original dims to restore the shape.
pub(crate) fn flatten_rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let d = *dims.last().unwrap_or(&1);
    let n = x.elem_count() / d.max(1);
    Ok((x.reshape((n, d))?, dims))
}

/// `(..., L, D)` -> `(B, L, D)` with `B` the product of the leading dims (1 for `(L, D)`).
pub(crate) fn as_batched(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let r = dims.len();
    let (l, d) = (dims[r - 2], dims[r - 1]);
    if r == 3 {
        // No reshape node: in backward every view node costs candle another zeros + add of the
        // whole token gradient, which at >= 64K elements runs on candle's spinning thread pool.
        return Ok((x.clone(), dims));
    }
    let b = dims[..r - 2].iter().product::<usize>();
    Ok((x.reshape((b, l, d))?, dims))
}

#[cfg(test)]
mod tests;
