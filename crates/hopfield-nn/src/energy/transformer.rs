//! The Energy Transformer block: tokens (+ positional embedding) descend the summed attention and
//! Hopfield energy, `x_{t+1} = x_t - alpha dE/dg(g_t)` with `g_t = norm(x_t)`, for `n_iters` steps.

use super::validate::{self, compute_dtype};
use super::{
    EnergyMHA, EnergyReport, EnergyTransformerConfig, EtError, HopfieldEnergy, Norm, NormKind,
};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

std::thread_local! {
    /// Whether this thread's runs use the fused block step (tests turn it off to run the
    /// composed reference through the same public entry points).
    static FUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `f` with the fused block step ([`hopfield_cuda::et_step`], the default on the CPU for f32
/// and f64) off (`fused = false`) or on, on this thread: the composed steps are the reference
/// (and differentiable to any order), so tests and benches run the same entry points both ways.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{with_fused_step, EnergyTransformer, EnergyTransformerConfig};
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let et = EnergyTransformer::new(&EnergyTransformerConfig::new(8, 16, 2).with_init_scale(0.3), vb)?;
/// let x = Tensor::randn(0f64, 1., (2, 5, 8), &Device::Cpu)?;
/// let fused = et.forward(&x)?;
/// let composed = with_fused_step(false, || et.forward(&x))?;
/// assert!((fused - composed)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_fused_step<R>(fused: bool, f: impl FnOnce() -> R) -> R {
    let old = FUSED.with(|c| c.replace(fused));
    let r = f();
    FUSED.with(|c| c.set(old));
    r
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct EtOutput {
    /// Tokens after the last step, shape of the input.
    pub y: Tensor,
    /// With `return_energy`: the (detached) tokens after each step, `(n_iters, *x.shape)`.
    pub features: Option<Tensor>,
    /// With `return_energy`: the (detached) energy after each step, `(n_iters,)`; which energy is
    /// set by [`EnergyReport`].
    pub energies: Option<Tensor>,
}

/// The Energy Transformer block of the PyTorch port, loading its state_dicts unchanged
/// (`mha.*`, `hopfield.*`, `norm.*`, `pos_embedding`).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig};
///
/// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
/// let cfg = EnergyTransformerConfig::new(8, 16, 2)
///     .with_init_scale(0.3)
///     .with_n_iters(4)
///     .paper(); // EnergyLayerNorm, the paper's energy, energies returned
/// let et = EnergyTransformer::new(&cfg, vb)?;
/// let x = Tensor::randn(0f64, 1., (2, 5, 8), &Device::Cpu)?;
/// let out = et.forward_detailed(&x, None)?;
/// let e = out.energies.unwrap().to_vec1::<f64>()?;
/// assert!(e.windows(2).all(|w| w[1] <= w[0])); // the paper's energy decreases
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EnergyTransformer {
    mha: EnergyMHA,
    hopfield: HopfieldEnergy,
    norm: Norm,
    pos_embedding: Option<Tensor>,
    cfg: EnergyTransformerConfig,
}

impl EnergyTransformer {
    /// Validates `cfg` and loads or creates the parameters from `vb`.
    pub fn new(cfg: &EnergyTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        validate::model_dtype(vb.dtype())?;
        // Each parameter, then all together, before any is made: a size that only fails in sum
        // would otherwise abort half-way through.
        for (what, dims) in cfg.param_shapes() {
            validate::alloc(what, &dims, vb.dtype(), vb.device())?;
        }
        let total = cfg
            .param_shapes()
            .iter()
            .try_fold(0usize, |n, (what, dims)| {
                n.checked_add(validate::elem_count(what, dims)?)
                    .ok_or_else(|| EtError::TooLarge {
                        what: "parameters (from dim, hidden_dim, n_heads, context)".into(),
                        shape: vec![],
                        reason: "their element count overflows usize".into(),
                    })
            })?;
        validate::alloc("all parameters", &[total], vb.dtype(), vb.device())?;
        let mha = EnergyMHA::with_options(
            cfg.dim,
            cfg.n_heads,
            cfg.attn_beta.as_deref(),
            cfg.init_scale,
            cfg.exclude_self,
            vb.pp("mha"),
        )?;
        let hopfield = HopfieldEnergy::new(
            cfg.hopfield_type,
            cfg.dim,
            cfg.hidden_dim,
            cfg.hopfield_beta,
            cfg.init_scale,
            vb.pp("hopfield"),
        )?;
        let norm = Norm::new(cfg.norm, cfg.dim, cfg.eps, vb.pp("norm"))?;
        let pos_embedding = if cfg.has_pos_embedding() {
            let pos = hopfield_core::checked_param(
                &vb,
                (1, cfg.context, cfg.dim),
                "pos_embedding",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?;
            validate::param(&validate::param_name(&vb, "pos_embedding"), &pos)?;
            Some(pos)
        } else {
            None
        };
        Ok(Self {
            mha,
            hopfield,
            norm,
            pos_embedding,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EnergyTransformerConfig {
        &self.cfg
    }
    /// The attention energy.
    pub fn mha(&self) -> &EnergyMHA {
        &self.mha
    }
    /// The Hopfield energy.
    pub fn hopfield(&self) -> &HopfieldEnergy {
        &self.hopfield
    }
    /// The normalisation.
    pub fn norm(&self) -> &Norm {
        &self.norm
    }
    /// The positional embedding `(1, context, D)`, if any.
    pub fn pos_embedding(&self) -> Option<&Tensor> {
        self.pos_embedding.as_ref()
    }

    /// The block energy at normalised tokens `g`: attention + Hopfield (the port's `energy`); in
    /// f32 for an f16/bf16 model, 0 for no tokens.
    pub fn energy(&self, g: &Tensor) -> Result<Tensor> {
        self.check_input("g", g)?;
        let e = self.raw_energy(g);
        validate::result("block energy", "g", g, e, || self.check_params())
    }

    /// `dE/dg`, the port's `forward_step`.
    pub fn grad(&self, g: &Tensor) -> Result<Tensor> {
        self.check_input("g", g)?;
        let d = self.raw_grad(g);
        validate::result("block energy gradient", "g", g, d, || self.check_params())
    }

    /// The paper's full energy at un-normalised tokens `x`:
    /// `sum_A (g_A . x_A - L(x_A)) + E_att(g) + E_hop(g)`, `g = EnergyLayerNorm(x)`.
    pub fn paper_energy(&self, x: &Tensor) -> Result<Tensor> {
        if let Norm::Port(_) = self.norm {
            return Err(EtError::PaperEnergyNeedsEnergyNorm.into());
        }
        self.check_input("x", x)?;
        let e = self.raw_paper_energy(x);
        validate::result("paper energy", "x", x, e, || self.check_params())
    }

    /// Shape, dtype, device, finiteness and working-memory checks of tokens `arg`.
    fn check_input(&self, arg: &'static str, x: &Tensor) -> Result<()> {
        // One read of the data (finiteness); the rest is arithmetic on shapes.
        validate::tokens(arg, x, self.mha.wq(), self.cfg.dim, 2)?;
        self.mha.check_work(arg, x)?;
        self.hopfield.check_work(x)
    }

    /// Errors naming the first unusable parameter: explains a failed or non-finite result.
    fn check_params(&self) -> Result<()> {
        self.mha.check_params(true)?;
        self.hopfield.check_params(true)?;
        self.norm.check_params()?;
        if let Some(pos) = &self.pos_embedding {
            validate::param("pos_embedding", pos)?;
        }
        Ok(())
    }

    fn raw_energy(&self, g: &Tensor) -> Result<Tensor> {
        self.mha.raw_energy(g)? + self.hopfield.raw_energy(g)?
    }

    fn raw_grad(&self, g: &Tensor) -> Result<Tensor> {
        self.mha.raw_grad(g)? + self.hopfield.raw_grad(g)?
    }

    fn raw_paper_energy(&self, x: &Tensor) -> Result<Tensor> {
        match &self.norm {
            Norm::Energy(n) => n.raw_legendre(x)? + self.raw_energy(&n.raw_forward(x)?)?,
            Norm::Port(_) => Err(EtError::PaperEnergyNeedsEnergyNorm.into()),
        }
    }

    /// Runs `n_iters` steps (the argument, else the config's; at most
    /// [`MAX_N_ITERS`](super::MAX_N_ITERS)) from `x + pos_embedding`; features and energies per
    /// step come back when `return_energy` is set. No tokens: `x` comes back unchanged (zero
    /// energies). Tokens that overflow during the descent are an error, never NaN.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig, MAX_N_ITERS};
    /// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    /// let et = EnergyTransformer::new(&EnergyTransformerConfig::new(8, 16, 2), vb)?;
    /// let x = Tensor::zeros((2, 3, 8), DType::F32, &Device::Cpu)?;
    /// assert!(et.forward_detailed(&x, Some(MAX_N_ITERS + 1)).is_err());
    /// let none = Tensor::zeros((2, 0, 8), DType::F32, &Device::Cpu)?;
    /// assert_eq!(et.forward_detailed(&none, None)?.y.dims(), &[2, 0, 8]);
    /// assert!(et.forward_detailed(&x.to_dtype(DType::U32)?, None).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward_detailed(&self, x: &Tensor, n_iters: Option<usize>) -> Result<EtOutput> {
        self.check_input("x", x)?;
        let x0 = match &self.pos_embedding {
            None => x.clone(),
            Some(pos) => {
                let l = x.dim(x.rank() - 2)?;
                if l != self.cfg.context {
                    return Err(EtError::SeqLen {
                        arg: "x",
                        got: l,
                        context: self.cfg.context,
                        shape: x.dims().to_vec(),
                    }
                    .into());
                }
                add_pos(x, pos)?
            }
        };
        self.run(x, x0, n_iters)
    }

    /// As [`forward_detailed`](Self::forward_detailed), adding `pos_embedding[:, indices]` (token
    /// `i` of `x` sits at position `indices[i]`); without a positional embedding nothing is added
    /// (the port crashed). `indices`: rank 1, integer, one per token, each in `-context..context`;
    /// a negative index counts from the end, as torch's indexing in the port does.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::energy::{EnergyTransformer, EnergyTransformerConfig};
    /// let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    /// let et = EnergyTransformer::new(&EnergyTransformerConfig::new(8, 16, 2).with_context(10), vb)?;
    /// let x = Tensor::zeros((1, 3, 8), DType::F32, &Device::Cpu)?;
    /// let idx = Tensor::new(&[0u32, 4, 9], &Device::Cpu)?;
    /// let y = et.filtered_forward(&x, &idx, Some(2))?.y;
    /// assert_eq!(y.dims(), &[1, 3, 8]);
    /// let from_end = Tensor::new(&[0i64, 4, -1], &Device::Cpu)?;
    /// assert_eq!(et.filtered_forward(&x, &from_end, Some(2))?.y.to_vec3::<f32>()?, y.to_vec3::<f32>()?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn filtered_forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        n_iters: Option<usize>,
    ) -> Result<EtOutput> {
        self.check_input("x", x)?;
        let x0 = match &self.pos_embedding {
            None => x.clone(),
            Some(pos) => {
                let l = x.dim(x.rank() - 2)?;
                let indices = self.check_indices(indices, l)?;
                add_pos(x, &pos.index_select(&indices, 1)?)?
            }
        };
        self.run(x, x0, n_iters)
    }

    /// The validated indices, negative ones counted from the end (`-1` is `context - 1`).
    fn check_indices(&self, indices: &Tensor, tokens: usize) -> Result<Tensor> {
        let err = |reason: String| -> candle_core::Error {
            EtError::Indices {
                reason,
                shape: indices.dims().to_vec(),
                tokens,
                context: self.cfg.context,
            }
            .into()
        };
        if !matches!(indices.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return Err(err(format!(
                "dtype {:?} is not an integer type",
                indices.dtype()
            )));
        }
        if !indices.device().same_device(self.mha.wq().device()) {
            return Err(err("not on the parameters' device".into()));
        }
        if indices.rank() != 1 || indices.dim(0)? != tokens {
            return Err(err("expected one index per token".into()));
        }
        let vals = indices.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        // Contexts are allocatable parameter sizes, far below i64::MAX.
        let context = self.cfg.context as i64;
        if let Some(v) = vals.iter().find(|&&v| v < -context || v >= context) {
            return Err(err(format!("index {v} out of range")));
        }
        if vals.iter().all(|&v| v >= 0) {
            return Ok(indices.clone());
        }
        let wrapped: Vec<i64> = vals
            .iter()
            .map(|&v| if v < 0 { v + context } else { v })
            .collect();
        Tensor::new(wrapped, indices.device())
    }

    /// The descent loop from `x0` (positional embedding already added to the validated `x`).
    fn run(&self, x: &Tensor, x0: Tensor, n_iters: Option<usize>) -> Result<EtOutput> {
        let n = validate::steps(n_iters.unwrap_or(self.cfg.n_iters))?;
        let track = self.cfg.return_energy;
        if track {
            let dims: Vec<usize> = std::iter::once(n)
                .chain(x0.dims().iter().copied())
                .collect();
            validate::alloc(
                "features (n_iters, *x.shape)",
                &dims,
                x0.dtype(),
                x0.device(),
            )?;
        }
        if self.pos_embedding.is_some() {
            // Both terms are finite (checked) but their sum may overflow.
            validate::finite("x + pos_embedding", &x0)?;
        }
        if x0.elem_count() == 0 {
            // No tokens: nothing moves and every energy is an empty sum.
            let dims: Vec<usize> = std::iter::once(n)
                .chain(x0.dims().iter().copied())
                .collect();
            let (features, energies) = if track {
                let e_dtype = compute_dtype(x0.dtype());
                (
                    Some(Tensor::zeros(dims, x0.dtype(), x0.device())?),
                    Some(Tensor::zeros(n, e_dtype, x0.device())?),
                )
            } else {
                (None, None)
            };
            return Ok(EtOutput {
                y: x0,
                features,
                energies,
            });
        }
        let out = self.raw_run(x0, n, track);
        // One pass over the result (and the tracked steps): a descent that overflowed is an
        // error naming the input, not NaN tokens.
        let out = out.map(|o| {
            let mut v = vec![o.y];
            v.extend(o.features);
            v.extend(o.energies);
            v
        });
        let mut v = validate::results("tokens after the descent", "x", x, out, || {
            self.check_params()
        })?
        .into_iter();
        let y = v.next().expect("y is always returned");
        Ok(EtOutput {
            y,
            features: v.next(),
            energies: v.next(),
        })
    }

    /// Whether [`step`](Self::step) runs the fused block step: on the CPU in f32 and f64 (f16 and
    /// bf16 models keep the composed path, which rounds `g` and the gradient to the model dtype).
    fn fusable(x: &Tensor) -> bool {
        x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// One descent step `x - alpha dE/dg(norm(x))`: [`hopfield_cuda::et_step`], one graph node
    /// with a closed-form backward, when `fused` (and [`fusable`](Self::fusable)); otherwise
    /// the composed norm, gradients and update (the reference, differentiable to any order).
    pub(crate) fn step(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if !(fused && Self::fusable(x)) {
            let g = self.norm.raw_forward(x)?;
            return x - (self.raw_grad(&g)? * self.cfg.alpha)?;
        }
        let (x3, dims) = super::as_batched(x)?;
        let (norm_weight, norm_bias) = match &self.norm {
            Norm::Port(n) => (n.weight(), n.bias()),
            Norm::Energy(n) => (n.gamma(), n.delta()),
        };
        let (hopfield_beta, kind) = self.hopfield.beta_and_kind();
        let p = hopfield_cuda::EtStep {
            norm_weight,
            norm_bias,
            eps: self.cfg.eps,
            wq: self.mha.wq(),
            wk: self.mha.wk(),
            attn_beta: self.mha.beta(),
            exclude_self: self.cfg.exclude_self,
            w: self.hopfield.w(),
            hopfield_beta,
            kind,
            alpha: self.cfg.alpha,
        };
        let y = hopfield_cuda::et_step(&x3, &p)?;
        // Already batched: no reshape node (see `as_batched`).
        if y.dims() == dims.as_slice() {
            Ok(y)
        } else {
            y.reshape(dims)
        }
    }

    fn raw_run(&self, x0: Tensor, n: usize, track: bool) -> Result<EtOutput> {
        let (mut features, mut energies) = (Vec::new(), Vec::new());
        let mut x = x0;
        for _ in 0..n {
            x = self.step(&x, FUSED.with(|f| f.get()))?;
            if track {
                let xd = x.detach();
                let e = match self.cfg.energy_report {
                    EnergyReport::Port => self.raw_energy(&xd)?,
                    EnergyReport::Paper => self.raw_paper_energy(&xd)?,
                };
                energies.push(e.detach());
                features.push(xd);
            }
        }
        let (features, energies) = if track && n == 0 {
            // The port's empty lists: no step, no feature, no energy.
            let dims: Vec<usize> = std::iter::once(0).chain(x.dims().iter().copied()).collect();
            (
                Some(Tensor::zeros(dims, x.dtype(), x.device())?),
                Some(Tensor::zeros(0, compute_dtype(x.dtype()), x.device())?),
            )
        } else if track {
            (
                Some(Tensor::stack(&features, 0)?),
                Some(Tensor::stack(&energies, 0)?),
            )
        } else {
            (None, None)
        };
        Ok(EtOutput {
            y: x,
            features,
            energies,
        })
    }

    /// Whether the block descends a true energy (the paper's `EnergyLayerNorm`).
    pub fn is_gradient_flow(&self) -> bool {
        self.cfg.norm == NormKind::EnergyLayerNorm
    }
}

/// `x + pos` with `pos` `(1, L, D)`; an unbatched `(L, D)` input keeps its shape (the port returned
/// `(1, L, D)`).
fn add_pos(x: &Tensor, pos: &Tensor) -> Result<Tensor> {
    if x.rank() == 2 {
        x.broadcast_add(&pos.squeeze(0)?)
    } else {
        x.broadcast_add(pos)
    }
}

impl Module for EnergyTransformer {
    /// `forward_detailed(x, None).y`: the tokens after `n_iters` steps.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_detailed(x, None)?.y)
    }
}

impl super::Energy for EnergyTransformer {
    /// The block energy at normalised tokens (see [`EnergyTransformer::energy`]).
    fn energy(&self, g: &Tensor) -> Result<Tensor> {
        EnergyTransformer::energy(self, g)
    }
    /// `dE/dg` (see [`EnergyTransformer::grad`]).
    fn grad(&self, g: &Tensor) -> Result<Tensor> {
        EnergyTransformer::grad(self, g)
    }
}
