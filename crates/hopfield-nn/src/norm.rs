//! The input LayerNorms of the Hopfield modules, composed from differentiable ops.

use candle_core::{Result, Tensor};
use candle_nn::{init::Init, VarBuilder};
use hopfield_core::InputAffine;

/// LayerNorm over the last dimension with optional affine parameters (`weight`, `bias`), loading
/// PyTorch `nn.LayerNorm` state_dict entries. Unlike `candle_nn::LayerNorm` it has a backward pass.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// let map = VarMap::new();
/// let ln = hopfield_nn::LayerNorm::new(4, true, 1e-5, VarBuilder::from_varmap(&map, DType::F64, &Device::Cpu))?;
/// let y = ln.forward(&Tensor::new(&[[1f64, 2., 3., 4.]], &Device::Cpu)?)?;
/// assert!(y.sum_all()?.to_scalar::<f64>()?.abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerNorm {
    size: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm of `size` features; `affine` creates/loads `weight` (init 1) and `bias` (init 0).
    pub fn new(size: usize, affine: bool, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(hopfield_core::checked_param(
                    &vb,
                    size,
                    "weight",
                    Init::Const(1.0),
                )?),
                Some(hopfield_core::checked_param(
                    &vb,
                    size,
                    "bias",
                    Init::Const(0.0),
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            size,
            weight,
            bias,
            eps,
        })
    }

    /// Number of normalised features.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        hopfield_core::ops::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The affine part alone, on an already standardised `z` (`hopfield_cuda::normalize(x, eps)`):
    /// `forward(x)` equals `affine(normalize(x, eps))` exactly. Lets several LayerNorms of the
    /// same input share one standardisation.
    pub fn affine(&self, z: &Tensor) -> Result<Tensor> {
        self.input_affine().apply(z)
    }

    /// The affine part as the core's [`InputAffine`] (what a folded projection takes).
    pub fn input_affine(&self) -> InputAffine<'_> {
        InputAffine {
            weight: self.weight.as_ref(),
            bias: self.bias.as_ref(),
        }
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, x)
    }
}
