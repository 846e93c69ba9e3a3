//! `HopfieldPooling`: trainable state patterns (queries) that pool a set of stored patterns.

use crate::config::{kwargs, HopfieldConfig};
use crate::hopfield::{Hopfield, HopfieldInput, HopfieldOutput};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{init::Init, VarBuilder};
use hopfield_core::{HopfieldError, Masks};

/// Configuration of [`HopfieldPooling`]: the Hopfield arguments plus `quantity` (number of
/// trainable state patterns) and `trainable`.
///
/// ```
/// use hopfield_nn::HopfieldPoolingConfig;
/// let cfg = HopfieldPoolingConfig::from_kwargs(r#"{"input_size": 8, "quantity": 3}"#)?;
/// assert_eq!((cfg.quantity, cfg.trainable), (3, true));
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HopfieldPoolingConfig {
    /// The inner Hopfield's configuration.
    pub hopfield: HopfieldConfig,
    /// Number of pooling (state) patterns.
    pub quantity: usize,
    /// Whether the pooling weights are trained.
    pub trainable: bool,
}

impl HopfieldPoolingConfig {
    /// `quantity = 1`, trainable.
    pub fn new(hopfield: HopfieldConfig) -> Self {
        Self {
            hopfield,
            quantity: 1,
            trainable: true,
        }
    }

    /// Sets `quantity`.
    pub fn with_quantity(mut self, quantity: usize) -> Self {
        self.quantity = quantity;
        self
    }

    /// Sets `trainable`.
    pub fn with_trainable(mut self, trainable: bool) -> Self {
        self.trainable = trainable;
        self
    }

    /// Parses hflayers' `HopfieldPooling` kwargs: `quantity`, `trainable` and every argument of
    /// [`HopfieldConfig::from_kwargs`], with errors that name the argument.
    ///
    /// ```
    /// use hopfield_nn::HopfieldPoolingConfig;
    /// let cfg = HopfieldPoolingConfig::from_kwargs(r#"{"input_size": 8, "trainable": false}"#)?;
    /// assert_eq!((cfg.quantity, cfg.trainable), (1, false));
    /// let e = HopfieldPoolingConfig::from_kwargs(r#"{"input_size": 8, "quantity": 1.5}"#).unwrap_err();
    /// assert_eq!(e.to_string(), "invalid config `quantity`: expected a non-negative integer, got 1.5");
    /// # Ok::<(), hopfield_core::HopfieldError>(())
    /// ```
    pub fn from_kwargs(json: &str) -> std::result::Result<Self, HopfieldError> {
        let mut rest = kwargs::object(json)?;
        let own: PoolingKwargs = kwargs::parse(kwargs::split_off::<PoolingKwargs>(&mut rest))?;
        let mut cfg = Self::new(HopfieldConfig::from_kwargs_map(rest)?);
        if let Some(q) = own.quantity {
            cfg.quantity = q;
        }
        if let Some(t) = own.trainable {
            cfg.trainable = t;
        }
        Ok(cfg)
    }
}

kwargs::kwargs_struct! {
    /// `HopfieldPooling`'s own arguments, as given.
    struct PoolingKwargs {
        quantity: usize,
        trainable: bool,
    }
}

pub(crate) const PATTERN_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// Expands a `(1, q, P)` (batch-first) or `(q, 1, P)` parameter to the batch size of `like`.
pub(crate) fn expand_patterns(w: &Tensor, like: &Tensor, batch_first: bool) -> Result<Tensor> {
    let (q, p) = if batch_first {
        (w.dim(1)?, w.dim(2)?)
    } else {
        (w.dim(0)?, w.dim(2)?)
    };
    if batch_first {
        w.broadcast_as((like.dim(0)?, q, p))
    } else {
        w.broadcast_as((q, like.dim(1)?, p))
    }
}

/// The pooling patterns of hflayers' `HopfieldPooling` (`pooling_weights`, then `hopfield.*`):
/// `quantity` trainable state patterns retrieve from the input set; the output is
/// `(N, quantity * O)`, quantity-major, for either `batch_first` (hflayers returns
/// `(quantity, N*O)` when `batch_first=False`, quirk Q7).
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{HopfieldConfig, HopfieldPooling, HopfieldPoolingConfig};
/// let map = VarMap::new();
/// let cfg = HopfieldPoolingConfig::new(HopfieldConfig::new(8)).with_quantity(2);
/// let pool = HopfieldPooling::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let bags = Tensor::randn(0f32, 1., (4, 16, 8), &Device::Cpu)?;
/// assert_eq!(pool.forward_t(&bags, false)?.dims(), &[4, 16]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HopfieldPooling {
    config: HopfieldPoolingConfig,
    pooling_weights: Tensor,
    hopfield: Hopfield,
}

impl HopfieldPooling {
    /// Builds or loads the module under `vb`.
    pub fn new(config: HopfieldPoolingConfig, vb: VarBuilder) -> Result<Self> {
        let h = &config.hopfield;
        if config.quantity == 0 {
            return Err(HopfieldError::Config {
                field: "quantity",
                reason: "must be >= 1".into(),
            }
            .into());
        }
        let p = if h.state_pattern_as_static {
            h.head_dim()?
        } else {
            h.input_size.unwrap_or(0)
        };
        let shape = if h.batch_first {
            (1, config.quantity, p)
        } else {
            (config.quantity, 1, p)
        };
        let pooling_weights =
            hopfield_core::checked_param(&vb, shape, "pooling_weights", PATTERN_INIT)?;
        let hopfield = Hopfield::new(h.clone(), vb.pp("hopfield"))?;
        Ok(Self {
            config,
            pooling_weights,
            hopfield,
        })
    }

    /// The inner Hopfield module.
    pub fn hopfield(&self) -> &Hopfield {
        &self.hopfield
    }

    /// The pooling (state) patterns.
    pub fn pooling_weights(&self) -> &Tensor {
        &self.pooling_weights
    }

    fn full(
        &self,
        stored: &Tensor,
        projection: &Tensor,
        masks: Masks,
        train: bool,
    ) -> Result<HopfieldOutput> {
        let bf = self.config.hopfield.batch_first;
        let state = self.queries(stored)?;
        let mut out = self.hopfield.forward_full(
            HopfieldInput::Triple {
                stored,
                state: &state,
                projection,
            },
            masks,
            train,
        )?;
        let y = if bf {
            out.output
        } else {
            out.output.transpose(0, 1)?
        };
        out.output = y.flatten_from(1)?;
        Ok(out)
    }

    /// The trainable queries expanded over the batch of `stored`.
    pub(crate) fn queries(&self, stored: &Tensor) -> Result<Tensor> {
        let mut w = self.pooling_weights.clone();
        if !self.config.trainable {
            w = w.detach();
        }
        expand_patterns(&w, stored, self.config.hopfield.batch_first)
    }

    /// Pools `stored` (also the projection), or a `(stored, projection)` pair, with masks.
    pub fn forward_with(
        &self,
        stored: &Tensor,
        projection: Option<&Tensor>,
        masks: Masks,
        train: bool,
    ) -> Result<Tensor> {
        // The output alone: the fused retrieval path, no association matrix.
        let state = self.queries(stored)?;
        let y = self.hopfield.forward_with(
            HopfieldInput::Triple {
                stored,
                state: &state,
                projection: projection.unwrap_or(stored),
            },
            masks,
            train,
        )?;
        let y = if self.config.hopfield.batch_first {
            y
        } else {
            y.transpose(0, 1)?
        };
        y.flatten_from(1)
    }

    /// The association `(N, H, quantity, S)`.
    pub fn association_matrix(
        &self,
        stored: &Tensor,
        projection: Option<&Tensor>,
        masks: Masks,
    ) -> Result<Tensor> {
        Ok(self
            .full(stored, projection.unwrap_or(stored), masks, false)?
            .association
            .detach())
    }

    /// The projected pattern projections `(N, H, S, pd)`.
    pub fn projected_pattern_matrix(
        &self,
        stored: &Tensor,
        projection: Option<&Tensor>,
        masks: Masks,
    ) -> Result<Tensor> {
        Ok(self
            .full(stored, projection.unwrap_or(stored), masks, false)?
            .projected
            .detach())
    }
}

impl ModuleT for HopfieldPooling {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, None, Masks::default(), train)
    }
}
