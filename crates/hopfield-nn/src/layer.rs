//! `HopfieldLayer`: a trainable lookup table of stored patterns (and optionally separate targets).

use crate::config::{kwargs, HopfieldConfig};
use crate::hopfield::{Hopfield, HopfieldInput, HopfieldOutput};
use crate::pooling::{expand_patterns, PATTERN_INIT};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use hopfield_core::{HopfieldError, Masks};

/// Configuration of [`HopfieldLayer`].
///
/// ```
/// use hopfield_nn::HopfieldLayerConfig;
/// let cfg = HopfieldLayerConfig::from_kwargs(
///     r#"{"input_size": 8, "quantity": 10, "lookup_weights_as_separated": true}"#)?;
/// assert!(cfg.lookup_weights_as_separated && cfg.lookup_targets_as_trainable);
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HopfieldLayerConfig {
    /// The inner Hopfield's configuration.
    pub hopfield: HopfieldConfig,
    /// Number of stored patterns in the lookup table.
    pub quantity: usize,
    /// Whether `lookup_weights` are trained.
    pub trainable: bool,
    /// Separate `target_weights` as pattern projections (else the lookup weights serve both).
    pub lookup_weights_as_separated: bool,
    /// Whether `target_weights` are trained.
    pub lookup_targets_as_trainable: bool,
}

impl HopfieldLayerConfig {
    /// `quantity = 1`, trainable, not separated.
    pub fn new(hopfield: HopfieldConfig) -> Self {
        Self {
            hopfield,
            quantity: 1,
            trainable: true,
            lookup_weights_as_separated: false,
            lookup_targets_as_trainable: true,
        }
    }

    /// Sets `quantity`.
    pub fn with_quantity(mut self, v: usize) -> Self {
        self.quantity = v;
        self
    }

    /// Sets `trainable`.
    pub fn with_trainable(mut self, v: bool) -> Self {
        self.trainable = v;
        self
    }

    /// Sets `lookup_weights_as_separated`.
    pub fn with_lookup_weights_as_separated(mut self, v: bool) -> Self {
        self.lookup_weights_as_separated = v;
        self
    }

    /// Sets `lookup_targets_as_trainable`.
    pub fn with_lookup_targets_as_trainable(mut self, v: bool) -> Self {
        self.lookup_targets_as_trainable = v;
        self
    }

    /// Parses hflayers' `HopfieldLayer` kwargs: `quantity`, `trainable`,
    /// `lookup_weights_as_separated`, `lookup_targets_as_trainable` and every argument of
    /// [`HopfieldConfig::from_kwargs`], with errors that name the argument.
    ///
    /// ```
    /// use hopfield_nn::HopfieldLayerConfig;
    /// let cfg = HopfieldLayerConfig::from_kwargs(r#"{"input_size": 8, "lookup_targets_as_trainable": false}"#)?;
    /// assert!(!cfg.lookup_targets_as_trainable);
    /// let e = HopfieldLayerConfig::from_kwargs(r#"{"input_size": 8, "trainable": "yes"}"#).unwrap_err();
    /// assert_eq!(e.to_string(), r#"invalid config `trainable`: expected a boolean, got "yes""#);
    /// # Ok::<(), hopfield_core::HopfieldError>(())
    /// ```
    pub fn from_kwargs(json: &str) -> std::result::Result<Self, HopfieldError> {
        let mut rest = kwargs::object(json)?;
        let own: LayerKwargs = kwargs::parse(kwargs::split_off::<LayerKwargs>(&mut rest))?;
        let mut cfg = Self::new(HopfieldConfig::from_kwargs_map(rest)?);
        if let Some(v) = own.quantity {
            cfg.quantity = v;
        }
        if let Some(v) = own.trainable {
            cfg.trainable = v;
        }
        if let Some(v) = own.lookup_weights_as_separated {
            cfg.lookup_weights_as_separated = v;
        }
        if let Some(v) = own.lookup_targets_as_trainable {
            cfg.lookup_targets_as_trainable = v;
        }
        Ok(cfg)
    }
}

kwargs::kwargs_struct! {
    /// `HopfieldLayer`'s own arguments, as given.
    struct LayerKwargs {
        quantity: usize,
        trainable: bool,
        lookup_weights_as_separated: bool,
        lookup_targets_as_trainable: bool,
    }
}

/// hflayers' `HopfieldLayer` (`lookup_weights`, `target_weights`, then `hopfield.*`): the input
/// is the state pattern; the stored patterns are the trainable `lookup_weights` and the
/// projections are the same weights or separate `target_weights`. Output `(N, L, O)`.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{HopfieldConfig, HopfieldLayer, HopfieldLayerConfig};
/// let map = VarMap::new();
/// let cfg = HopfieldLayerConfig::new(HopfieldConfig::new(8)).with_quantity(10);
/// let layer = HopfieldLayer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (2, 5, 8), &Device::Cpu)?;
/// assert_eq!(layer.forward_t(&x, false)?.dims(), &[2, 5, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HopfieldLayer {
    config: HopfieldLayerConfig,
    lookup_weights: Tensor,
    target_weights: Option<Tensor>,
    hopfield: Hopfield,
}

impl HopfieldLayer {
    /// Builds or loads the module under `vb`.
    pub fn new(config: HopfieldLayerConfig, vb: VarBuilder) -> Result<Self> {
        let h = &config.hopfield;
        if config.quantity == 0 {
            return Err(HopfieldError::Config {
                field: "quantity",
                reason: "must be >= 1".into(),
            }
            .into());
        }
        let e = h.input_size.unwrap_or(0);
        let lw = if h.stored_pattern_as_static {
            h.head_dim()?
        } else {
            h.stored_pattern_size.unwrap_or(e)
        };
        let shape = |p| {
            if h.batch_first {
                (1, config.quantity, p)
            } else {
                (config.quantity, 1, p)
            }
        };
        let lookup_weights =
            hopfield_core::checked_param(&vb, shape(lw), "lookup_weights", PATTERN_INIT)?;
        let target_weights = if config.lookup_weights_as_separated {
            // A static target used as it is has the per-head size; one that goes through the
            // key projection (connected, stored pattern projected) has the projection input size.
            let used_as_is = h.pattern_projection_as_static
                && (!h.pattern_projection_as_connected || h.stored_pattern_as_static);
            let t = if used_as_is {
                h.pattern_size.unwrap_or(h.head_dim()?)
            } else {
                h.pattern_projection_size.unwrap_or(lw)
            };
            Some(hopfield_core::checked_param(
                &vb,
                shape(t),
                "target_weights",
                PATTERN_INIT,
            )?)
        } else {
            None
        };
        let hopfield = Hopfield::new(h.clone(), vb.pp("hopfield"))?;
        Ok(Self {
            config,
            lookup_weights,
            target_weights,
            hopfield,
        })
    }

    /// The inner Hopfield module.
    pub fn hopfield(&self) -> &Hopfield {
        &self.hopfield
    }

    /// The stored patterns of the lookup table.
    pub fn lookup_weights(&self) -> &Tensor {
        &self.lookup_weights
    }

    /// The separate targets, if any.
    pub fn target_weights(&self) -> Option<&Tensor> {
        self.target_weights.as_ref()
    }

    fn full(&self, state: &Tensor, masks: Masks, train: bool) -> Result<HopfieldOutput> {
        let (stored, projection) = self.patterns(state)?;
        self.hopfield.forward_full(
            HopfieldInput::Triple {
                stored: &stored,
                state,
                projection: &projection,
            },
            masks,
            train,
        )
    }

    /// The lookup table (stored patterns) and targets (projections) expanded over the batch.
    pub(crate) fn patterns(&self, state: &Tensor) -> Result<(Tensor, Tensor)> {
        let bf = self.config.hopfield.batch_first;
        let mut lookup = self.lookup_weights.clone();
        if !self.config.trainable {
            lookup = lookup.detach();
        }
        let stored = expand_patterns(&lookup, state, bf)?;
        let projection = match &self.target_weights {
            Some(t) => {
                let t = if self.config.lookup_targets_as_trainable {
                    t.clone()
                } else {
                    t.detach()
                };
                expand_patterns(&t, state, bf)?
            }
            None => stored.clone(),
        };
        Ok((stored, projection))
    }

    /// Forward pass with masks (the output alone: the fused retrieval path).
    pub fn forward_with(&self, state: &Tensor, masks: Masks, train: bool) -> Result<Tensor> {
        let (stored, projection) = self.patterns(state)?;
        self.hopfield.forward_with(
            HopfieldInput::Triple {
                stored: &stored,
                state,
                projection: &projection,
            },
            masks,
            train,
        )
    }

    /// The association `(N, H, L, quantity)`.
    pub fn association_matrix(&self, state: &Tensor, masks: Masks) -> Result<Tensor> {
        Ok(self.full(state, masks, false)?.association.detach())
    }

    /// The projected pattern projections `(N, H, quantity, pd)`.
    pub fn projected_pattern_matrix(&self, state: &Tensor, masks: Masks) -> Result<Tensor> {
        Ok(self.full(state, masks, false)?.projected.detach())
    }
}

impl ModuleT for HopfieldLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, Masks::default(), train)
    }
}
