//! Normalisations of the Energy Transformer: parameters and energies here, the normalisation
//! itself is [`hopfield_core::ops::layer_norm`] (fused standardisation with its backward):
//!
//! * [`LayerNorm`]: the port's `torch.nn.LayerNorm(D)`, per-feature `weight` and `bias`;
//! * [`EnergyLayerNorm`]: the paper's, scalar `gamma` and vector `delta`, the gradient of the
//!   Lagrangian `L(x) = D gamma sqrt(var(x) + eps) + delta . x` (its [`Energy`]).

use super::validate::{self, compute_dtype, param_name, upcast};
use super::{Energy, NormKind};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use hopfield_core::ops::layer_norm;

/// `sqrt(var + eps)` over the last axis (biased variance): the Lagrangian's per-token term. The
/// normalisation itself is [`hopfield_core::ops::layer_norm`], the one LayerNorm of the workspace.
fn std_dev(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()
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
    /// State-dict names of `weight` and `bias`, for errors.
    names: [String; 2],
}

impl LayerNorm {
    /// Loads or creates `weight` (ones) and `bias` (zeros).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        check_options(dim, eps, &vb)?;
        let names = ["weight", "bias"].map(|n| param_name(&vb, n));
        let weight = hopfield_core::checked_param(&vb, dim, "weight", Init::Const(1.0))?;
        let bias = hopfield_core::checked_param(&vb, dim, "bias", Init::Const(0.0))?;
        let ln = Self {
            weight,
            bias,
            eps,
            names,
        };
        ln.check_params()?;
        Ok(ln)
    }

    /// Errors naming a non-finite parameter.
    pub(crate) fn check_params(&self) -> Result<()> {
        validate::param(&self.names[0], &self.weight)?;
        validate::param(&self.names[1], &self.bias)
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
        validate::tokens("x", x, &self.weight, self.weight.dim(0)?, 1)?;
        let y = self.raw_forward(x);
        validate::result("LayerNorm output", "x", x, y, || self.check_params())
    }
}

impl LayerNorm {
    /// In `x`'s dtype, computed in f32 for f16/bf16 (whose variance overflows for inputs ~ 256).
    pub(crate) fn raw_forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return x.zeros_like();
        }
        let (w, b) = (upcast(&self.weight)?, upcast(&self.bias)?);
        layer_norm(&upcast(x)?, Some(&w), Some(&b), self.eps)?.to_dtype(x.dtype())
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
    /// State-dict names of `gamma` and `delta`, for errors.
    names: [String; 2],
}

impl EnergyLayerNorm {
    /// Loads or creates `gamma` (1) and `delta` (zeros).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        check_options(dim, eps, &vb)?;
        let names = ["gamma", "delta"].map(|n| param_name(&vb, n));
        let gamma = hopfield_core::checked_param(&vb, (), "gamma", Init::Const(1.0))?;
        let delta = hopfield_core::checked_param(&vb, dim, "delta", Init::Const(0.0))?;
        let ln = Self {
            gamma,
            delta,
            eps,
            dim,
            names,
        };
        ln.check_params()?;
        Ok(ln)
    }

    /// Errors naming a non-finite parameter.
    pub(crate) fn check_params(&self) -> Result<()> {
        validate::param(&self.names[0], &self.gamma)?;
        validate::param(&self.names[1], &self.delta)
    }
    /// Scalar `gamma`, 0-d.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }
    /// Bias `delta`, `(D,)`.
    pub fn delta(&self) -> &Tensor {
        &self.delta
    }

    /// The Legendre term `sum_A (g_A . x_A - L(x_A))` of the paper's energy (0-d; f32 for an
    /// f16/bf16 model).
    pub fn legendre(&self, x: &Tensor) -> Result<Tensor> {
        validate::tokens("x", x, &self.delta, self.dim, 1)?;
        let e = self.raw_legendre(x);
        validate::result("Legendre term", "x", x, e, || self.check_params())
    }

    pub(crate) fn raw_legendre(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return Tensor::zeros((), compute_dtype(x.dtype()), x.device());
        }
        let x = upcast(x)?;
        let g = self.raw_forward(&x)?;
        (g * &x)?.sum_all()? - self.raw_energy(&x)?
    }
}

impl Module for EnergyLayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.grad(x)
    }
}

impl Energy for EnergyLayerNorm {
    /// The Lagrangian `sum_A D gamma sqrt(var(x_A) + eps) + delta . x_A`.
    /// In f32 for an f16/bf16 model.
    fn energy(&self, x: &Tensor) -> Result<Tensor> {
        validate::tokens("x", x, &self.delta, self.dim, 1)?;
        let e = self.raw_energy(x);
        validate::result("EnergyLayerNorm Lagrangian", "x", x, e, || {
            self.check_params()
        })
    }

    fn grad(&self, x: &Tensor) -> Result<Tensor> {
        validate::tokens("x", x, &self.delta, self.dim, 1)?;
        let g = self.raw_forward(x);
        validate::result("EnergyLayerNorm output", "x", x, g, || self.check_params())
    }
}

impl EnergyLayerNorm {
    /// The Lagrangian without input validation, in the compute dtype.
    pub(crate) fn raw_energy(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return Tensor::zeros((), compute_dtype(x.dtype()), x.device());
        }
        let x = upcast(x)?;
        let s = std_dev(&x, self.eps)?;
        let l = s
            .sum_all()?
            .affine(self.dim as f64, 0.0)?
            .mul(&upcast(&self.gamma)?)?;
        l + x.broadcast_mul(&upcast(&self.delta)?)?.sum_all()?
    }

    /// In `x`'s dtype, computed in f32 for f16/bf16.
    pub(crate) fn raw_forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return x.zeros_like();
        }
        let (gamma, delta) = (upcast(&self.gamma)?, upcast(&self.delta)?);
        layer_norm(&upcast(x)?, Some(&gamma), Some(&delta), self.eps)?.to_dtype(x.dtype())
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

    /// Errors naming a non-finite parameter.
    pub(crate) fn check_params(&self) -> Result<()> {
        match self {
            Self::Port(n) => n.check_params(),
            Self::Energy(n) => n.check_params(),
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

/// The constructors' argument checks, before anything is allocated.
fn check_options(dim: usize, eps: f64, vb: &VarBuilder) -> Result<()> {
    validate::positive("dim", dim)?;
    // eps = 0 makes a constant row 0 / 0.
    validate::scalar("eps", eps, false)?;
    validate::model_dtype(vb.dtype())?;
    validate::alloc(
        &param_name(vb, "norm parameters"),
        &[dim],
        vb.dtype(),
        vb.device(),
    )?;
    Ok(())
}
