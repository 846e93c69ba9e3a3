//! The Energy Transformer's Hopfield energies over memories `W` `(D, M)`, with `h = x W`:
//! [`BaseModernHopfield`] (ReLU, `-1/2 sum relu(beta h)^2`) and [`SoftmaxModernHopfield`]
//! (`-1/beta sum_A logsumexp(beta h_A)`), plus [`HopfieldEnergy`], the block's choice of the two.

use super::validate::{self, compute_dtype, param_name, upcast};
use super::{flatten_rows, lse_softmax, Energy, HopfieldType};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use hopfield_cuda::HopfieldEnergyKind;

/// `Energy` (validated `raw_energy` / `raw_grad`) and `Module` (the port's `forward`, `dE/dx`)
/// for the two Hopfield energies, which differ only in those raw functions.
macro_rules! energy_and_module {
    ($t:ty) => {
        impl Energy for $t {
            /// The energy; in f32 for an f16/bf16 model.
            fn energy(&self, x: &Tensor) -> Result<Tensor> {
                check_input(x, &self.w)?;
                let e = self.raw_energy(x);
                validate::result("Hopfield energy", "x", x, e, || self.check_params(true))
            }
            fn grad(&self, x: &Tensor) -> Result<Tensor> {
                check_input(x, &self.w)?;
                let g = self.raw_grad(x);
                validate::result("Hopfield energy gradient", "x", x, g, || {
                    self.check_params(true)
                })
            }
        }

        impl Module for $t {
            /// The port's `forward`: `dE/dx`.
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                self.grad(x)
            }
        }
    };
}

/// `dE/dx` of either energy through the fused op (f32 for f16/bf16 inputs, as the energy).
fn fused_grad(x: &Tensor, w: &Tensor, beta: &Tensor, kind: HopfieldEnergyKind) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return x.zeros_like();
    }
    let (xf, dims) = flatten_rows(&upcast(x)?)?;
    hopfield_cuda::hopfield_energy_grad(&xf, &upcast(w)?, &upcast(beta)?, kind)?
        .reshape(dims)?
        .to_dtype(x.dtype())
}

/// ReLU Hopfield energy. State-dict names: `W` `(D, M)`, `beta` `(1,)` (init 1, learnable).
///
/// `dE/dx = -beta relu(beta h) W^T`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{BaseModernHopfield, Energy};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let hop = BaseModernHopfield::new(4, 6, vb)?;
/// assert_eq!(hop.w().dims(), &[4, 6]);
/// let x = Tensor::ones((2, 4), DType::F64, &Device::Cpu)?;
/// assert_eq!(hop.grad(&x)?.dims(), &[2, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BaseModernHopfield {
    w: Tensor,
    beta: Tensor,
    /// State-dict names of `W` and `beta`, for errors.
    names: [String; 2],
}

impl BaseModernHopfield {
    /// The port's init: `W ~ 0.002 N(0, 1)`, `beta = 1`.
    pub fn new(in_dim: usize, hidden_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_options(in_dim, hidden_dim, None, 0.002, vb)
    }

    /// With an initial beta and init std of `W`.
    pub fn with_options(
        in_dim: usize,
        hidden_dim: usize,
        beta: Option<f64>,
        init_scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let names = check_options(in_dim, hidden_dim, true, beta, init_scale, &vb)?;
        let w = hopfield_core::checked_param(
            &vb,
            (in_dim, hidden_dim),
            "W",
            Init::Randn {
                mean: 0.0,
                stdev: init_scale,
            },
        )?;
        let beta = hopfield_core::checked_param(&vb, 1, "beta", Init::Const(beta.unwrap_or(1.0)))?;
        let hop = Self { w, beta, names };
        hop.check_params(false)?;
        Ok(hop)
    }

    /// The memories `W`, `(D, M)`.
    pub fn w(&self) -> &Tensor {
        &self.w
    }
    /// `beta`, `(1,)`.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }

    /// `h = x W` over rows, `relu(beta h)` and the flattened shape, in the compute dtype.
    fn hidden(&self, x: &Tensor) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let (xf, dims) = flatten_rows(&upcast(x)?)?;
        let h = xf.matmul(&upcast(&self.w)?)?;
        let r = h
            .broadcast_mul(&upcast(&self.beta)?.reshape((1, 1))?)?
            .relu()?;
        Ok((h, r, dims))
    }

    /// Errors naming a non-finite parameter (or with `betas`, a zero beta).
    pub(crate) fn check_params(&self, betas: bool) -> Result<()> {
        check_params(&self.names, &self.w, &self.beta, betas)
    }

    /// Closed-form `dE/dW` and `dE/dbeta` (first order).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::energy::BaseModernHopfield;
    /// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
    /// let hop = BaseModernHopfield::new(4, 6, vb)?;
    /// let (gw, gb) = hop.param_grads(&Tensor::ones((2, 4), DType::F64, &Device::Cpu)?)?;
    /// assert_eq!((gw.dims(), gb.dims()), (&[4, 6][..], &[1][..]));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        check_input(x, &self.w)?;
        let g = self.raw_param_grads(x).map(|(w, b)| vec![w, b]);
        let g = validate::results("Hopfield parameter gradients", "x", x, g, || {
            self.check_params(true)
        })?;
        Ok((g[0].clone(), g[1].clone()))
    }

    fn raw_param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.elem_count() == 0 {
            return Ok((self.w.zeros_like()?, self.beta.zeros_like()?));
        }
        let (h, r, _) = self.hidden(x)?;
        let (xf, _) = flatten_rows(&upcast(x)?)?;
        let gw = xf
            .t()?
            .matmul(&r)?
            .broadcast_mul(&upcast(&self.beta)?.reshape((1, 1))?)?
            .neg()?;
        let gb = (r * h)?.sum_all()?.neg()?.reshape(1)?;
        let dt = self.w.dtype();
        Ok((gw.to_dtype(dt)?, gb.to_dtype(dt)?))
    }
}

impl BaseModernHopfield {
    /// The energy without input validation.
    pub(crate) fn raw_energy(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return Tensor::zeros((), compute_dtype(x.dtype()), x.device());
        }
        let (_, r, _) = self.hidden(x)?;
        r.sqr()?.sum_all()?.affine(-0.5, 0.0)
    }

    /// The gradient without input validation.
    pub(crate) fn raw_grad(&self, x: &Tensor) -> Result<Tensor> {
        fused_grad(x, &self.w, &self.beta, HopfieldEnergyKind::Relu)
    }
}

energy_and_module!(BaseModernHopfield);

/// Log-sum-exp Hopfield energy. State-dict names: `W` `(D, M)`, `beta` `()` (init 0.01, learnable).
///
/// `dE/dx = -softmax(beta h) W^T`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{Energy, SoftmaxModernHopfield};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let hop = SoftmaxModernHopfield::with_options(4, 6, Some(0.5), 0.1, vb)?;
/// assert_eq!(hop.beta().to_scalar::<f64>()?, 0.5);
/// let x = Tensor::ones((3, 2, 4), DType::F64, &Device::Cpu)?;
/// assert_eq!(hop.grad(&x)?.dims(), &[3, 2, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SoftmaxModernHopfield {
    w: Tensor,
    beta: Tensor,
    /// State-dict names of `W` and `beta`, for errors.
    names: [String; 2],
}

impl SoftmaxModernHopfield {
    /// The port's init: `W ~ 0.002 N(0, 1)`, `beta = 0.01`.
    pub fn new(in_dim: usize, hidden_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_options(in_dim, hidden_dim, None, 0.002, vb)
    }

    /// With an initial beta and init std of `W`.
    pub fn with_options(
        in_dim: usize,
        hidden_dim: usize,
        beta: Option<f64>,
        init_scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let names = check_options(in_dim, hidden_dim, false, beta, init_scale, &vb)?;
        let w = hopfield_core::checked_param(
            &vb,
            (in_dim, hidden_dim),
            "W",
            Init::Randn {
                mean: 0.0,
                stdev: init_scale,
            },
        )?;
        // Init::Const carries the requested beta when a VarMap creates it; a checkpoint keeps its own.
        let beta =
            hopfield_core::checked_param(&vb, (), "beta", Init::Const(beta.unwrap_or(0.01)))?;
        let hop = Self { w, beta, names };
        hop.check_params(false)?;
        Ok(hop)
    }

    /// The memories `W`, `(D, M)`.
    pub fn w(&self) -> &Tensor {
        &self.w
    }
    /// `beta`, 0-d.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }

    /// `h = x W` over rows, `lse(beta h)` `(N, 1)`, `softmax(beta h)` and the original dims, in
    /// the compute dtype.
    fn hidden(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Vec<usize>)> {
        let (xf, dims) = flatten_rows(&upcast(x)?)?;
        let h = xf.matmul(&upcast(&self.w)?)?;
        let (lse, p) = lse_softmax(&h.broadcast_mul(&upcast(&self.beta)?.reshape((1, 1))?)?)?;
        Ok((h, lse, p, dims))
    }

    /// Errors naming a non-finite parameter (or with `betas`, a zero beta).
    pub(crate) fn check_params(&self, betas: bool) -> Result<()> {
        check_params(&self.names, &self.w, &self.beta, betas)
    }

    /// Closed-form `dE/dW` and `dE/dbeta` (first order).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::energy::SoftmaxModernHopfield;
    /// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
    /// let hop = SoftmaxModernHopfield::new(4, 6, vb)?;
    /// let (gw, gb) = hop.param_grads(&Tensor::ones((2, 4), DType::F64, &Device::Cpu)?)?;
    /// assert_eq!((gw.dims(), gb.dims()), (&[4, 6][..], &[] as &[usize]));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        check_input(x, &self.w)?;
        let g = self.raw_param_grads(x).map(|(w, b)| vec![w, b]);
        let g = validate::results("Hopfield parameter gradients", "x", x, g, || {
            self.check_params(true)
        })?;
        Ok((g[0].clone(), g[1].clone()))
    }

    fn raw_param_grads(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.elem_count() == 0 {
            return Ok((self.w.zeros_like()?, self.beta.zeros_like()?));
        }
        let (h, lse, p, _) = self.hidden(x)?;
        let (xf, _) = flatten_rows(&upcast(x)?)?;
        let gw = xf.t()?.matmul(&p)?.neg()?;
        let inv = upcast(&self.beta)?.recip()?;
        let gb = ((lse.sum_all()? * inv.sqr()?)? - ((p * h)?.sum_all()? * inv)?)?;
        let dt = self.w.dtype();
        Ok((gw.to_dtype(dt)?, gb.to_dtype(dt)?))
    }
}

impl SoftmaxModernHopfield {
    /// The energy without input validation.
    pub(crate) fn raw_energy(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() == 0 {
            return Tensor::zeros((), compute_dtype(x.dtype()), x.device());
        }
        let (_, lse, _, _) = self.hidden(x)?;
        lse.sum_all()?.div(&upcast(&self.beta)?)?.neg()
    }

    /// The gradient without input validation.
    pub(crate) fn raw_grad(&self, x: &Tensor) -> Result<Tensor> {
        fused_grad(x, &self.w, &self.beta, HopfieldEnergyKind::Softmax)
    }
}

energy_and_module!(SoftmaxModernHopfield);

/// The block's Hopfield energy: ReLU or softmax, chosen by [`HopfieldType`].
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{HopfieldEnergy, HopfieldType};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
/// let hop = HopfieldEnergy::new(HopfieldType::Softmax, 8, 16, None, 0.002, vb)?;
/// assert!(matches!(hop, HopfieldEnergy::Softmax(_)));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum HopfieldEnergy {
    /// [`BaseModernHopfield`].
    Relu(BaseModernHopfield),
    /// [`SoftmaxModernHopfield`].
    Softmax(SoftmaxModernHopfield),
}

impl HopfieldEnergy {
    /// Builds the chosen energy from `vb` (names `W`, `beta`).
    pub fn new(
        kind: HopfieldType,
        in_dim: usize,
        hidden_dim: usize,
        beta: Option<f64>,
        init_scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match kind {
            HopfieldType::Relu => Self::Relu(BaseModernHopfield::with_options(
                in_dim, hidden_dim, beta, init_scale, vb,
            )?),
            HopfieldType::Softmax => Self::Softmax(SoftmaxModernHopfield::with_options(
                in_dim, hidden_dim, beta, init_scale, vb,
            )?),
        })
    }
}

impl Energy for HopfieldEnergy {
    fn energy(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu(h) => h.energy(x),
            Self::Softmax(h) => h.energy(x),
        }
    }
    fn grad(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu(h) => h.grad(x),
            Self::Softmax(h) => h.grad(x),
        }
    }
}

impl HopfieldEnergy {
    pub(crate) fn raw_energy(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu(h) => h.raw_energy(x),
            Self::Softmax(h) => h.raw_energy(x),
        }
    }
    pub(crate) fn raw_grad(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu(h) => h.raw_grad(x),
            Self::Softmax(h) => h.raw_grad(x),
        }
    }
    /// The memories `W`, `(D, M)`.
    pub fn w(&self) -> &Tensor {
        match self {
            Self::Relu(h) => h.w(),
            Self::Softmax(h) => h.w(),
        }
    }
    /// `beta` (`(1,)` for ReLU, 0-d for softmax) and the interaction, for the fused block step.
    pub(crate) fn beta_and_kind(&self) -> (&Tensor, HopfieldEnergyKind) {
        match self {
            Self::Relu(h) => (h.beta(), HopfieldEnergyKind::Relu),
            Self::Softmax(h) => (h.beta(), HopfieldEnergyKind::Softmax),
        }
    }
}

impl HopfieldEnergy {
    /// Errors naming a non-finite parameter (or with `betas`, a zero beta).
    pub(crate) fn check_params(&self, betas: bool) -> Result<()> {
        match self {
            Self::Relu(h) => h.check_params(betas),
            Self::Softmax(h) => h.check_params(betas),
        }
    }

    /// That the hidden activations `(N, M)` for (already validated) tokens `x` can be allocated.
    pub(crate) fn check_work(&self, x: &Tensor) -> Result<()> {
        check_work(x, self.w())
    }
}

/// The Hopfield energies act per token, so `(D,)`-shaped rows are fine too: rank >= 1. Also
/// checks that the hidden activations `(N, M)` can be allocated.
fn check_input(x: &Tensor, w: &Tensor) -> Result<()> {
    validate::tokens("x", x, w, w.dim(0)?, 1)?;
    check_work(x, w)
}

fn check_work(x: &Tensor, w: &Tensor) -> Result<()> {
    let (d, m) = w.dims2()?;
    let n = x.elem_count() / d;
    let dtype = compute_dtype(x.dtype());
    validate::alloc(
        "Hopfield activations (tokens, M)",
        &[n, m],
        dtype,
        x.device(),
    )?;
    Ok(())
}

/// The constructors' argument checks, before anything is allocated; returns the parameters'
/// state-dict names.
fn check_options(
    in_dim: usize,
    hidden_dim: usize,
    no_memories_ok: bool,
    beta: Option<f64>,
    init_scale: f64,
    vb: &VarBuilder,
) -> Result<[String; 2]> {
    validate::positive("in_dim", in_dim)?;
    // No memories: the ReLU energy is an empty sum (0, as in the port); the softmax energy's
    // log-sum-exp over nothing is -inf (E-V9).
    if !no_memories_ok {
        validate::positive("hidden_dim", hidden_dim)?;
    }
    validate::model_dtype(vb.dtype())?;
    if let Some(b) = beta {
        validate::scalar("beta", b, false)?;
        validate::representable("beta", b, vb.dtype())?;
    }
    validate::scalar("init_scale", init_scale, true)?;
    validate::representable("init_scale", init_scale, vb.dtype())?;
    let names = ["W", "beta"].map(|n| param_name(vb, n));
    validate::alloc(&names[0], &[in_dim, hidden_dim], vb.dtype(), vb.device())?;
    Ok(names)
}

fn check_params(names: &[String; 2], w: &Tensor, beta: &Tensor, betas: bool) -> Result<()> {
    validate::param(&names[0], w)?;
    validate::param(&names[1], beta)?;
    if betas {
        validate::nonzero_beta(&names[1], beta)?;
    }
    Ok(())
}
