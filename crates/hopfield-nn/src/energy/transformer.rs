//! The Energy Transformer block: tokens (+ positional embedding) descend the summed attention and
//! Hopfield energy, `x_{t+1} = x_t - alpha dE/dg(g_t)` with `g_t = norm(x_t)`, for `n_iters` steps.

use super::error::{check_finite, check_tokens};
use super::{
    EnergyMHA, EnergyReport, EnergyTransformerConfig, EtError, HopfieldEnergy, Norm, NormKind,
};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

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
            Some(vb.get_with_hints(
                (1, cfg.context, cfg.dim),
                "pos_embedding",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?)
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

    /// The block energy at normalised tokens `g`: attention + Hopfield (the port's `energy`).
    pub fn energy(&self, g: &Tensor) -> Result<Tensor> {
        check_tokens("g", g, self.cfg.dim)?;
        self.raw_energy(g)
    }

    /// `dE/dg`, the port's `forward_step`.
    pub fn grad(&self, g: &Tensor) -> Result<Tensor> {
        check_tokens("g", g, self.cfg.dim)?;
        self.raw_grad(g)
    }

    /// The paper's full energy at un-normalised tokens `x`:
    /// `sum_A (g_A . x_A - L(x_A)) + E_att(g) + E_hop(g)`, `g = EnergyLayerNorm(x)`.
    pub fn paper_energy(&self, x: &Tensor) -> Result<Tensor> {
        check_tokens("x", x, self.cfg.dim)?;
        self.raw_paper_energy(x)
    }

    fn raw_energy(&self, g: &Tensor) -> Result<Tensor> {
        self.mha.raw_energy(g)? + self.hopfield.raw_energy(g)?
    }

    fn raw_grad(&self, g: &Tensor) -> Result<Tensor> {
        self.mha.raw_grad(g)? + self.hopfield.raw_grad(g)?
    }

    fn raw_paper_energy(&self, x: &Tensor) -> Result<Tensor> {
        match &self.norm {
            Norm::Energy(n) => n.legendre(x)? + self.raw_energy(&n.raw_forward(x)?)?,
            Norm::Port(_) => Err(EtError::PaperEnergyNeedsEnergyNorm.into()),
        }
    }

    /// Runs `n_iters` steps (the argument, else the config's) from `x + pos_embedding`; features and
    /// energies per step come back when `return_energy` is set.
    pub fn forward_detailed(&self, x: &Tensor, n_iters: Option<usize>) -> Result<EtOutput> {
        check_tokens("x", x, self.cfg.dim)?;
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
        self.run(x0, n_iters)
    }

    /// As [`forward_detailed`](Self::forward_detailed), adding `pos_embedding[:, indices]` (token
    /// `i` of `x` sits at position `indices[i]`); without a positional embedding nothing is added
    /// (the port crashed). `indices`: rank 1, integer, one per token, each `< context`.
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
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn filtered_forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        n_iters: Option<usize>,
    ) -> Result<EtOutput> {
        check_tokens("x", x, self.cfg.dim)?;
        let x0 = match &self.pos_embedding {
            None => x.clone(),
            Some(pos) => {
                let l = x.dim(x.rank() - 2)?;
                self.check_indices(indices, l)?;
                add_pos(x, &pos.index_select(indices, 1)?)?
            }
        };
        self.run(x0, n_iters)
    }

    fn check_indices(&self, indices: &Tensor, tokens: usize) -> Result<()> {
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
        if indices.rank() != 1 || indices.dim(0)? != tokens {
            return Err(err("expected one index per token".into()));
        }
        let vals = indices.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        if let Some(v) = vals
            .iter()
            .find(|&&v| v < 0 || v as usize >= self.cfg.context)
        {
            return Err(err(format!("index {v} out of range")));
        }
        Ok(())
    }

    /// The descent loop from `x0` (positional embedding already added).
    fn run(&self, x0: Tensor, n_iters: Option<usize>) -> Result<EtOutput> {
        let n = n_iters.unwrap_or(self.cfg.n_iters);
        if n == 0 {
            return Err(EtError::ZeroSteps.into());
        }
        check_finite("x", &x0)?;
        let track = self.cfg.return_energy;
        let (mut features, mut energies) = (Vec::new(), Vec::new());
        let mut x = x0;
        for _ in 0..n {
            let g = self.norm.raw_forward(&x)?;
            x = (&x - (self.raw_grad(&g)? * self.cfg.alpha)?)?;
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
        let (features, energies) = if track {
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
