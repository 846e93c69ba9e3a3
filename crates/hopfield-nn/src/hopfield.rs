//! `Hopfield`: the modern Hopfield association module (hflayers `Hopfield`).

use crate::association_core::HopfieldCore;
use crate::config::{HopfieldConfig, NormSpec};
use crate::norm::LayerNorm;
use crate::stage::{PatternStage, Patterns};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use hopfield_core::error::{expect_float, expect_shape};
use hopfield_core::{CoreLayout, CoreOutput, HopfieldError, Masks};

/// What a Hopfield module associates: one tensor (stored pattern, state pattern and pattern
/// projection at once) or the triple `(stored, state, projection)` = (keys, queries, values).
#[derive(Debug, Clone, Copy)]
pub enum HopfieldInput<'a> {
    /// Self-association.
    Single(&'a Tensor),
    /// `(stored, state, projection)`, hflayers' tuple order.
    Triple {
        /// Stored patterns (keys).
        stored: &'a Tensor,
        /// State patterns (queries).
        state: &'a Tensor,
        /// Pattern projections (values).
        projection: &'a Tensor,
    },
}

impl<'a> From<&'a Tensor> for HopfieldInput<'a> {
    fn from(x: &'a Tensor) -> Self {
        HopfieldInput::Single(x)
    }
}

impl<'a> From<(&'a Tensor, &'a Tensor, &'a Tensor)> for HopfieldInput<'a> {
    fn from((stored, state, projection): (&'a Tensor, &'a Tensor, &'a Tensor)) -> Self {
        HopfieldInput::Triple {
            stored,
            state,
            projection,
        }
    }
}

impl<'a> HopfieldInput<'a> {
    /// `(stored, state, projection)`.
    pub fn parts(&self) -> (&'a Tensor, &'a Tensor, &'a Tensor) {
        match *self {
            HopfieldInput::Single(x) => (x, x, x),
            HopfieldInput::Triple {
                stored,
                state,
                projection,
            } => (stored, state, projection),
        }
    }
}

/// Everything one forward pass computes.
#[derive(Debug, Clone)]
pub struct HopfieldOutput {
    /// The module's output, in the module's layout (`batch_first`).
    pub output: Tensor,
    /// The association xi of the last step, before dropout, `(N, H, L, S)`.
    pub association: Tensor,
    /// The projected pattern projections, `(N, H, S, pd)`.
    pub projected: Tensor,
    /// Update steps run per (sample, head).
    pub steps_run: Vec<usize>,
    /// False only if "until convergence" stopped at its cap.
    pub converged: bool,
}

/// The modern Hopfield association module, hflayers' `Hopfield`, loading its state_dict names:
/// `association_core.*`, `norm_stored_pattern.*`, `norm_state_pattern.*`,
/// `norm_pattern_projection.*`.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
/// let dev = Device::Cpu;
/// let map = VarMap::new();
/// let hopfield = Hopfield::new(HopfieldConfig::new(16).with_num_heads(4),
///     VarBuilder::from_varmap(&map, DType::F32, &dev))?;
/// let x = Tensor::randn(0f32, 1., (2, 10, 16), &dev)?;
/// let y = hopfield.forward_t(&x, false)?; // self-association
/// assert_eq!(y.dims(), &[2, 10, 16]);
/// let (stored, state) = (Tensor::randn(0f32, 1., (2, 7, 16), &dev)?, Tensor::randn(0f32, 1., (2, 3, 16), &dev)?);
/// let y = hopfield.forward_with((&stored, &state, &stored).into(), Masks::default(), false)?;
/// assert_eq!(y.dims(), &[2, 3, 16]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Hopfield {
    config: HopfieldConfig,
    association_core: HopfieldCore,
    norm_stored_pattern: Option<LayerNorm>,
    norm_state_pattern: Option<LayerNorm>,
    norm_pattern_projection: Option<LayerNorm>,
}

fn build_norm(spec: NormSpec, vb: VarBuilder) -> Result<Option<LayerNorm>> {
    spec.map(|(size, affine, eps)| LayerNorm::new(size, affine, eps, vb))
        .transpose()
}

impl Hopfield {
    /// Builds (from a `VarMap`) or loads (from safetensors) the module under `vb`.
    pub fn new(config: HopfieldConfig, vb: VarBuilder) -> Result<Self> {
        let mut r = config.resolve()?;
        // A learnable association alpha is a parameter of the module (`association_alpha`).
        r.core.association = r.core.association.load(r.layout.num_heads, &vb)?;
        let association_core = HopfieldCore::new(r.layout, r.core, vb.pp("association_core"))?;
        Ok(Self {
            norm_stored_pattern: build_norm(r.norm_stored, vb.pp("norm_stored_pattern"))?,
            norm_state_pattern: build_norm(r.norm_state, vb.pp("norm_state_pattern"))?,
            norm_pattern_projection: build_norm(
                r.norm_projection,
                vb.pp("norm_pattern_projection"),
            )?,
            association_core,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HopfieldConfig {
        &self.config
    }

    /// The resolved sizes.
    pub fn layout(&self) -> &CoreLayout {
        &self.association_core.weights().layout
    }

    /// The association core.
    pub fn association_core(&self) -> &HopfieldCore {
        &self.association_core
    }

    /// Output feature size O.
    pub fn output_size(&self) -> usize {
        let l = self.layout();
        l.out_dim.unwrap_or(l.num_heads * l.pattern_dim)
    }

    /// Full forward pass with masks, returning the output, association and projected patterns.
    pub fn forward_full(
        &self,
        input: HopfieldInput,
        masks: Masks,
        train: bool,
    ) -> Result<HopfieldOutput> {
        let p = self.normalized_inputs(input)?;
        self.finish(self.association_core.associate(&p, None, masks, train)?)
    }

    /// [`forward_full`](Self::forward_full) with `stage` between the input LayerNorms and the
    /// association core (see [`PatternStage`]), returning the stage's report too. The stage
    /// sees the checked, normalised, batch-major patterns; the core associates what it returns.
    /// [`DiffusedHopfield`](crate::DiffusedHopfield) is this with diffusion as the stage.
    ///
    /// ```
    /// use candle_core::{DType, Device, Result, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::stage::{PatternStage, Patterns, Staged};
    /// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
    /// /// Associates with the stored patterns' mean only.
    /// struct MeanMemory;
    /// impl PatternStage for MeanMemory {
    ///     type Report = ();
    ///     fn stage(&self, p: Patterns, _masks: Masks) -> Result<Staged<()>> {
    ///         let stored = p.stored.mean_keepdim(1)?;
    ///         let projection = p.projection.mean_keepdim(1)?;
    ///         Ok(Staged::patterns(Patterns { stored, projection, ..p }, ()))
    ///     }
    /// }
    /// let map = VarMap::new();
    /// let hopfield = Hopfield::new(HopfieldConfig::new(8),
    ///     VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// let x = Tensor::randn(0f32, 1., (2, 5, 8), &Device::Cpu)?;
    /// let (out, ()) = hopfield.forward_staged(HopfieldInput::Single(&x), &MeanMemory, Masks::default(), false)?;
    /// assert_eq!(out.association.dims(), &[2, 1, 5, 1]); // one memory per sample
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward_staged<S: PatternStage + ?Sized>(
        &self,
        input: HopfieldInput,
        stage: &S,
        masks: Masks,
        train: bool,
    ) -> Result<(HopfieldOutput, S::Report)> {
        let staged = stage.stage(self.normalized_inputs(input)?, masks)?;
        let out = self.association_core.associate(
            &staged.patterns,
            staged.logits.as_deref(),
            masks,
            train,
        )?;
        Ok((self.finish(out)?, staged.report))
    }

    /// The output of [`forward_staged`](Self::forward_staged) alone (with the stage's report):
    /// without a logit transform the core runs the fused retrieval, so the `(N, H, L, S)`
    /// association is never formed (as in `Module::forward`). Same values as
    /// `forward_staged(..).0.output`.
    ///
    /// ```
    /// use candle_core::{DType, Device, Result, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::stage::{PatternStage, Patterns, Staged};
    /// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
    /// struct Identity;
    /// impl PatternStage for Identity {
    ///     type Report = ();
    ///     fn stage(&self, p: Patterns, _masks: Masks) -> Result<Staged<()>> {
    ///         Ok(Staged::patterns(p, ()))
    ///     }
    /// }
    /// let map = VarMap::new();
    /// let hopfield = Hopfield::new(HopfieldConfig::new(8),
    ///     VarBuilder::from_varmap(&map, DType::F64, &Device::Cpu))?;
    /// let x = Tensor::randn(0f64, 1., (2, 5, 8), &Device::Cpu)?;
    /// let input = || HopfieldInput::Single(&x);
    /// let (y, ()) = hopfield.forward_staged_output(input(), &Identity, Masks::default(), false)?;
    /// let (full, ()) = hopfield.forward_staged(input(), &Identity, Masks::default(), false)?;
    /// assert!((y - full.output)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward_staged_output<S: PatternStage + ?Sized>(
        &self,
        input: HopfieldInput,
        stage: &S,
        masks: Masks,
        train: bool,
    ) -> Result<(Tensor, S::Report)> {
        let staged = stage.stage(self.normalized_inputs(input)?, masks)?;
        let y = self.association_core.associate_output(
            &staged.patterns,
            staged.logits.as_deref(),
            masks,
            train,
        )?;
        Ok((self.finish_output(y)?, staged.report))
    }

    /// An input in the module's layout as `(N, T, features)` (a free transpose for
    /// `batch_first = false`).
    fn batch_major(&self, x: &Tensor) -> Result<Tensor> {
        if self.config.batch_first {
            Ok(x.clone())
        } else {
            x.transpose(0, 1)
        }
    }

    /// Self-association whose three input LayerNorms are all present with one eps, or all absent:
    /// one standardisation, and the core runs the three projections as one GEMM
    /// ([`HopfieldCore::forward_output_shared`]). `None` where that does not apply.
    fn forward_self_association(
        &self,
        input: HopfieldInput,
        masks: Masks,
        train: bool,
    ) -> Result<Option<Tensor>> {
        let HopfieldInput::Single(x) = input else {
            return Ok(None);
        };
        // Core order: query (state), key (stored), value (projection).
        let norms = [
            self.norm_state_pattern.as_ref(),
            self.norm_stored_pattern.as_ref(),
            self.norm_pattern_projection.as_ref(),
        ];
        let eps = match norms {
            [Some(a), Some(b), Some(c)] if a.eps() == b.eps() && b.eps() == c.eps() => {
                Some(a.eps())
            }
            [None, None, None] => None,
            _ => return Ok(None),
        };
        self.check_inputs(x, x, x)?;
        let x = self.batch_major(x)?;
        let z = match eps {
            Some(eps) => hopfield_cuda::normalize(&x, eps)?,
            None => x,
        };
        let affines = norms.map(|n| n.map(LayerNorm::input_affine).unwrap_or_default());
        self.association_core
            .forward_output_shared(&z, affines, masks, train)
            .map(Some)
    }

    /// Checks the inputs, makes them batch-major and applies the input LayerNorms: what the
    /// association core (or a stage before it) receives.
    pub(crate) fn normalized_inputs(&self, input: HopfieldInput) -> Result<Patterns> {
        let (stored, state, projection) = input.parts();
        self.check_inputs(stored, state, projection)?;
        let batch_major = |x: &Tensor| self.batch_major(x);
        // Self-association: the stored, state and projection LayerNorms see the same tensor, so
        // one standardisation (and one in the backward pass) serves all three; only the affine
        // parts differ. Same operations as three separate LayerNorms, so the same values.
        if let HopfieldInput::Single(x) = input {
            let norms = [
                &self.norm_stored_pattern,
                &self.norm_state_pattern,
                &self.norm_pattern_projection,
            ];
            let present: Vec<&LayerNorm> = norms.iter().filter_map(|n| n.as_ref()).collect();
            if present.len() > 1 && present.iter().all(|n| n.eps() == present[0].eps()) {
                let x = batch_major(x)?;
                let z = hopfield_cuda::normalize(&x, present[0].eps())?;
                let apply = |n: &Option<LayerNorm>| match n {
                    Some(n) => n.affine(&z),
                    None => Ok(x.clone()),
                };
                return Ok(Patterns {
                    stored: apply(norms[0])?,
                    state: apply(norms[1])?,
                    projection: apply(norms[2])?,
                });
            }
        }
        let norm = |n: &Option<LayerNorm>, x: &Tensor| match n {
            Some(n) => n.forward(&batch_major(x)?),
            None => batch_major(x),
        };
        Ok(Patterns {
            stored: norm(&self.norm_stored_pattern, stored)?,
            state: norm(&self.norm_state_pattern, state)?,
            projection: norm(&self.norm_pattern_projection, projection)?,
        })
    }

    /// Turns the core's batch-major result into the module's output: layout and activation.
    fn finish(&self, out: CoreOutput) -> Result<HopfieldOutput> {
        Ok(HopfieldOutput {
            output: self.finish_output(out.output)?,
            association: out.association,
            projected: out.projected,
            steps_run: out.steps_run,
            converged: out.converged,
        })
    }

    /// The core's batch-major output in the module's layout, with the association activation.
    fn finish_output(&self, y: Tensor) -> Result<Tensor> {
        let mut y = if self.config.batch_first {
            y
        } else {
            y.transpose(0, 1)?
        };
        if let Some(a) = self.config.association_activation {
            y = a.apply(&y)?;
        }
        // The last line of defence against silent NaN: finite inputs and weights can still
        // overflow in a projection (inputs of 1e19 without input LayerNorms). One vectorised
        // pass over the output (~1% of a forward at the benchmark shapes).
        if !hopfield_cuda::all_finite(&y)? {
            return Err(HopfieldError::NonFinite {
                arg: "output (a projection overflowed: inputs or weights too large for the dtype)",
            }
            .into());
        }
        Ok(y)
    }

    /// Checks ranks (and feature sizes where an input LayerNorm fixes them) before anything runs,
    /// so that errors name the module's arguments; the core checks the rest.
    fn check_inputs(&self, stored: &Tensor, state: &Tensor, projection: &Tensor) -> Result<()> {
        for (arg, x, norm, len) in [
            (
                "stored pattern (key)",
                stored,
                &self.norm_stored_pattern,
                "S",
            ),
            (
                "state pattern (query)",
                state,
                &self.norm_state_pattern,
                "L",
            ),
            (
                "pattern projection (value)",
                projection,
                &self.norm_pattern_projection,
                "S",
            ),
        ] {
            let size = norm.as_ref().map(LayerNorm::size);
            let (a, b) = if self.config.batch_first {
                ("N", len)
            } else {
                (len, "N")
            };
            let words = || match size {
                Some(d) => format!("({a}, {b}, {d})"),
                None => format!("({a}, {b}, features)"),
            };
            expect_shape(arg, x.dims(), &[None, None, size], words)?;
            expect_float(arg, x)?;
            if let Some(model) = self.association_core.weights().dtype() {
                if x.dtype() != model {
                    return Err(HopfieldError::DtypeMismatch {
                        arg,
                        dtype: format!("{:?}", x.dtype()),
                        model: format!("{model:?}"),
                    }
                    .into());
                }
            }
        }
        // The three inputs share N, and stored patterns and projections share S (checked here,
        // at the module's boundary, so that every path built on these inputs, the diffusion
        // graphs included, sees consistent sizes).
        let (bn, sn) = if self.config.batch_first {
            (0, 1)
        } else {
            (1, 0)
        };
        let mismatch =
            |what, lhs_arg, lhs: &Tensor, rhs_arg, rhs: &Tensor| HopfieldError::Mismatch {
                what,
                lhs_arg,
                lhs: lhs.dims().to_vec(),
                rhs_arg,
                rhs: rhs.dims().to_vec(),
            };
        if state.dim(bn)? != stored.dim(bn)? {
            return Err(mismatch(
                "batch size N",
                "state pattern",
                state,
                "stored pattern",
                stored,
            )
            .into());
        }
        if projection.dim(bn)? != stored.dim(bn)? {
            return Err(mismatch(
                "batch size N",
                "pattern projection",
                projection,
                "stored pattern",
                stored,
            )
            .into());
        }
        if projection.dim(sn)? != stored.dim(sn)? {
            return Err(mismatch(
                "number of stored patterns S",
                "pattern projection",
                projection,
                "stored pattern",
                stored,
            )
            .into());
        }
        Ok(())
    }

    /// Forward pass with masks: the output alone, which lets the core run the fused retrieval
    /// kernel and never form the `(N, H, L, S)` association (see
    /// [`hopfield_core::hopfield_core_output`]). Same values and gradients as
    /// [`forward_full`](Self::forward_full)`.output`.
    pub fn forward_with(&self, input: HopfieldInput, masks: Masks, train: bool) -> Result<Tensor> {
        if let Some(y) = self.forward_self_association(input, masks, train)? {
            return self.finish_output(y);
        }
        let p = self.normalized_inputs(input)?;
        let y = self.association_core.forward_output_batch_major(
            &p.state,
            &p.stored,
            &p.projection,
            masks,
            train,
        )?;
        self.finish_output(y)
    }

    /// The association xi of the last update step, before dropout, `(N, H, L, S)`, without
    /// gradient (hflayers' `get_association_matrix`).
    pub fn association_matrix(&self, input: HopfieldInput, masks: Masks) -> Result<Tensor> {
        Ok(self.forward_full(input, masks, false)?.association.detach())
    }

    /// The projected pattern projections `(N, H, S, pd)`, without gradient (hflayers'
    /// `get_projected_pattern_matrix`).
    pub fn projected_pattern_matrix(&self, input: HopfieldInput, masks: Masks) -> Result<Tensor> {
        Ok(self.forward_full(input, masks, false)?.projected.detach())
    }
}

impl ModuleT for Hopfield {
    /// Self-association; `train` enables dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(HopfieldInput::Single(x), Masks::default(), train)
    }
}
