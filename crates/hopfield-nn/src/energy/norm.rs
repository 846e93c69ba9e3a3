//! Normalisations of the Energy Transformer, composed from differentiable candle ops (candle-nn's
//! fused `layer_norm` has no backward pass):
//!
//! * [`LayerNorm`]: the port's `torch.nn.LayerNorm(D)`, per-feature `weight` and `bias`;
//! * [`EnergyLayerNorm`]: the paper's, scalar `gamma` and vector `delta`, the gradient of the
//!   Lagrangian `L(x) = D gamma sqrt(var(x) + eps) + delta . x` (its [`Energy`]).

use super::{error::check_tokens, Energy, NormKind};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// `(x - mean) / sqrt(var + eps)` over the last axis (biased variance) and `sqrt(var + eps)`.
fn standardize(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let s = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    Ok((xc.broadcast_div(&s)?, s))
}

/// The port's per-feature layer norm (`norm.weight`, `norm.bias`, `(D,)`; eps 1e-5).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use hopfield_nn::energy::LayerNorm;
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let ln = LayerNorm::new(2, 1e-5, vb)?;
/// let y = ln.forward(&Tensor::new(&[[1f64, 3.]], &Device::Cpu)?)?;
/// let y = y.to_vec2::<f64>()?;
/// assert!((y[0][0] + 1.0).abs() < 1e-5 && (y[0][1] - 1.0).abs() < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads or creates `weight` (ones) and `bias` (zeros).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
    /// Per-feature weight `(D,)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// Per-feature bias `(D,)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens_any("x", x, self.weight.dim(0)?)?;
        self.raw_forward(x)
    }
}

impl LayerNorm {
    pub(crate) fn raw_forward(&self, x: &Tensor) -> Result<Tensor> {
        hopfield_cuda::normalize(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// The paper's layer norm: `g = gamma (x - mean) / sqrt(var + eps) + delta`, scalar `gamma` `()`,
/// vector `delta` `(D,)`. Its [`Energy`] is the Lagrangian `L` (summed over tokens), whose gradient is
/// `g`; the norm's energy term in the paper is the Legendre transform `sum_A g_A . x_A - L(x_A)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use hopfield_nn::energy::{Energy, EnergyLayerNorm};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let ln = EnergyLayerNorm::new(4, 1e-5, vb)?;
/// let x = Tensor::randn(0f64, 1., (3, 4), &Device::Cpu)?;
/// let same = (ln.forward(&x)? - ln.grad(&x)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert_eq!(same, 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EnergyLayerNorm {
    gamma: Tensor,
    delta: Tensor,
    eps: f64,
    dim: usize,
}

impl EnergyLayerNorm {
    /// Loads or creates `gamma` (1) and `delta` (zeros).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let gamma = vb.get_with_hints((), "gamma", Init::Const(1.0))?;
        let delta = vb.get_with_hints(dim, "delta", Init::Const(0.0))?;
        Ok(Self {
            gamma,
            delta,
            eps,
            dim,
        })
    }
    /// Scalar `gamma`, 0-d.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }
    /// Bias `delta`, `(D,)`.
    pub fn delta(&self) -> &Tensor {
        &self.delta
    }

    /// The Legendre term `sum_A (g_A . x_A - L(x_A))` of the paper's energy (0-d).
    pub fn legendre(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.forward(x)?;
        (g * x)?.sum_all()? - self.energy(x)?
    }
}

impl Module for EnergyLayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.grad(x)
    }
}

impl Energy for EnergyLayerNorm {
    /// The Lagrangian `sum_A D gamma sqrt(var(x_A) + eps) + delta . x_A`.
    fn energy(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens_any("x", x, self.dim)?;
        let (_, s) = standardize(x, self.eps)?;
        let l = s
            .sum_all()?
            .affine(self.dim as f64, 0.0)?
            .mul(&self.gamma)?;
        l + x.broadcast_mul(&self.delta)?.sum_all()?
    }

    fn grad(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens_any("x", x, self.dim)?;
        self.raw_forward(x)
    }
}

impl EnergyLayerNorm {
    pub(crate) fn raw_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (xn, _) = standardize(x, self.eps)?;
        xn.broadcast_mul(&self.gamma)?.broadcast_add(&self.delta)
    }
}

/// The block's normalisation, chosen by [`NormKind`].
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{Norm, NormKind};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
/// assert!(matches!(Norm::new(NormKind::EnergyLayerNorm, 8, 1e-5, vb)?, Norm::Energy(_)));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Norm {
    /// The port's per-feature [`LayerNorm`].
    Port(LayerNorm),
    /// The paper's [`EnergyLayerNorm`].
    Energy(EnergyLayerNorm),
}

impl Norm {
    /// Builds the chosen norm from `vb`.
    pub fn new(kind: NormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::LayerNorm => Self::Port(LayerNorm::new(dim, eps, vb)?),
            NormKind::EnergyLayerNorm => Self::Energy(EnergyLayerNorm::new(dim, eps, vb)?),
        })
    }
}

impl Norm {
    pub(crate) fn raw_forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Port(n) => n.raw_forward(x),
            Self::Energy(n) => n.raw_forward(x),
        }
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Port(n) => n.forward(x),
            Self::Energy(n) => n.forward(x),
        }
    }
}

/// Norms act per row: rank >= 1 with the model dimension last.
fn check_tokens_any(arg: &'static str, x: &Tensor, dim: usize) -> Result<()> {
    if x.rank() == 1 {
        return check_tokens(arg, &x.unsqueeze(0)?, dim);
    }
    check_tokens(arg, x, dim)
}
