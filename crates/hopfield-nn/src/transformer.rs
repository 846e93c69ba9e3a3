//! Transformer drop-in layers built on [`Hopfield`]: post-norm encoder and decoder layers
//! (hflayers `HopfieldEncoderLayer`, `HopfieldDecoderLayer`).

use crate::activation::Activation;
use crate::config::{activation_named, kwargs, HopfieldConfig};
use crate::hopfield::{Hopfield, HopfieldInput};
use crate::norm::LayerNorm;
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::init::{Init, DEFAULT_KAIMING_NORMAL};
use candle_nn::VarBuilder;
use hopfield_core::checked_param;
use hopfield_core::rng::Dropout;
use hopfield_core::{HopfieldError, Masks};
use serde_json::{Map, Value};

/// Configuration shared by the encoder and decoder layers.
///
/// ```
/// use hopfield_nn::{HopfieldConfig, TransformerLayerConfig};
/// let cfg = TransformerLayerConfig::new(HopfieldConfig::new(64).with_num_heads(4)).with_dim_feedforward(128);
/// assert_eq!(cfg.dropout, 0.1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerLayerConfig {
    /// The (self-)association.
    pub hopfield: HopfieldConfig,
    /// The cross association (decoder only; `None` in an encoder).
    pub hopfield_cross: Option<HopfieldConfig>,
    /// Hidden size of the feed-forward block.
    pub dim_feedforward: usize,
    /// Dropout after the association and inside/after the feed-forward block.
    pub dropout: f64,
    /// Feed-forward activation.
    pub activation: Activation,
}

impl TransformerLayerConfig {
    /// hflayers' defaults: `dim_feedforward = 2048`, `dropout = 0.1`, relu.
    pub fn new(hopfield: HopfieldConfig) -> Self {
        Self {
            hopfield,
            hopfield_cross: None,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
        }
    }

    /// Sets the decoder's cross association.
    pub fn with_hopfield_cross(mut self, cross: HopfieldConfig) -> Self {
        self.hopfield_cross = Some(cross);
        self
    }

    /// Sets `dim_feedforward`.
    pub fn with_dim_feedforward(mut self, v: usize) -> Self {
        self.dim_feedforward = v;
        self
    }

    /// Sets `dropout`.
    pub fn with_dropout(mut self, v: f64) -> Self {
        self.dropout = v;
        self
    }

    /// Sets the activation.
    pub fn with_activation(mut self, v: Activation) -> Self {
        self.activation = v;
        self
    }

    /// Parses `{"hopfield": {...}, "hopfield_cross": {...}, "dim_feedforward": n, "dropout": p,
    /// "activation": "relu"}` (the goldens' kwargs for the transformer layers; the inner objects
    /// are [`HopfieldConfig::from_kwargs`]' kwargs). Errors name the argument, and inside the
    /// inner objects the argument within them.
    ///
    /// ```
    /// use hopfield_nn::TransformerLayerConfig;
    /// let cfg = TransformerLayerConfig::from_kwargs(r#"{"hopfield": {"input_size": 8}, "dropout": 0.0}"#)?;
    /// assert_eq!((cfg.dim_feedforward, cfg.dropout), (2048, 0.0));
    /// let e = TransformerLayerConfig::from_kwargs(r#"{"hopfield": {"input_size": -8}}"#).unwrap_err();
    /// assert_eq!(e.to_string(), "invalid config `hopfield`: `input_size`: expected a non-negative integer, got -8");
    /// # Ok::<(), hopfield_core::HopfieldError>(())
    /// ```
    pub fn from_kwargs(json: &str) -> std::result::Result<Self, HopfieldError> {
        let kw: TransformerKwargs = kwargs::parse(kwargs::object(json)?)?;
        // The inner object's own errors are put under the outer argument, so that a decoder's
        // two Hopfield configs are told apart.
        let inner = |field: &'static str, map: Map<String, Value>| {
            HopfieldConfig::from_kwargs_map(map).map_err(|e| match e {
                HopfieldError::Config { field: f, reason } => HopfieldError::Config {
                    field,
                    reason: format!("`{f}`: {reason}"),
                },
                other => other,
            })
        };
        let hopfield = kw.hopfield.ok_or_else(|| HopfieldError::Config {
            field: "hopfield",
            reason: "is required (the Hopfield kwargs)".into(),
        })?;
        let mut cfg = Self::new(inner("hopfield", hopfield)?);
        if let Some(v) = kw.hopfield_cross {
            cfg.hopfield_cross = Some(inner("hopfield_cross", v)?);
        }
        if let Some(v) = kw.dim_feedforward {
            cfg.dim_feedforward = v;
        }
        if let Some(v) = kw.dropout {
            cfg.dropout = v;
        }
        if let Some(name) = kw.activation {
            cfg.activation = activation_named("activation", &name)?;
        }
        Ok(cfg)
    }
    /// Checks what the builders do not: the dropout probability (sizes are checked where the
    /// weights are allocated).
    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(HopfieldError::Config {
                field: "dropout",
                reason: format!("must be in [0, 1), got {}", self.dropout),
            }
            .into());
        }
        Ok(())
    }

    fn model_dim(&self) -> Result<usize> {
        self.hopfield.input_size.ok_or_else(|| {
            HopfieldError::Config {
                field: "hopfield.input_size",
                reason: "the transformer layers need the Hopfield's input_size".into(),
            }
            .into()
        })
    }
}

kwargs::kwargs_struct! {
    /// The transformer layers' arguments, as given.
    struct TransformerKwargs {
        hopfield: Map<String, Value>,
        hopfield_cross: Map<String, Value>,
        dim_feedforward: usize,
        dropout: f64,
        activation: String,
    }
}

/// `nn.Linear` with PyTorch's names and candle-nn's initialisation, through the fused
/// [`hopfield_core::ops::linear`] (which also takes zero-token batches) and with its size
/// checked before allocation.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1. / (in_dim.max(1) as f64).sqrt();
        Ok(Self {
            weight: checked_param(&vb, (out_dim, in_dim), "weight", DEFAULT_KAIMING_NORMAL)?,
            bias: checked_param(
                &vb,
                out_dim,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        hopfield_core::ops::linear(x, &self.weight, Some(&self.bias))
    }
}

/// The post-norm feed-forward block shared by both layers.
#[derive(Debug, Clone)]
struct FeedForward {
    linear_residual: Dense,
    linear_output: Dense,
    dropout_residual: Dropout,
    dropout_output: Dropout,
    norm_output: LayerNorm,
    activation: Activation,
}

impl FeedForward {
    fn new(cfg: &TransformerLayerConfig, d: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_residual: Dense::new(d, cfg.dim_feedforward, vb.pp("linear_residual"))?,
            linear_output: Dense::new(cfg.dim_feedforward, d, vb.pp("linear_output"))?,
            dropout_residual: Dropout::new(cfg.dropout),
            dropout_output: Dropout::new(cfg.dropout),
            norm_output: LayerNorm::new(d, true, 1e-5, vb.pp("norm_output"))?,
            activation: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.activation.apply(&self.linear_residual.forward(x)?)?;
        let h = self.dropout_residual.forward_t(&h, train)?;
        let f = self
            .dropout_output
            .forward_t(&self.linear_output.forward(&h)?, train)?;
        self.norm_output.forward(&(x + f)?)
    }
}

fn check_output_size(which: &'static str, h: &Hopfield, d: usize) -> Result<()> {
    if h.output_size() != d {
        return Err(HopfieldError::Config {
            field: which,
            reason: format!(
                "output size {} must equal the model size {d} for the residual connection",
                h.output_size()
            ),
        }
        .into());
    }
    Ok(())
}

/// hflayers' `HopfieldEncoderLayer`: `x = norm_residual(x + drop(hopfield(x)))`, then the
/// feed-forward block with `norm_output`. State_dict names: `hopfield_association.*`,
/// `linear_residual.*`, `linear_output.*`, `norm_residual.*`, `norm_output.*`.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{HopfieldConfig, HopfieldEncoderLayer, TransformerLayerConfig};
/// let map = VarMap::new();
/// let cfg = TransformerLayerConfig::new(HopfieldConfig::new(8).with_num_heads(2)).with_dim_feedforward(16);
/// let enc = HopfieldEncoderLayer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (2, 5, 8), &Device::Cpu)?;
/// assert_eq!(enc.forward_t(&x, false)?.dims(), &[2, 5, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HopfieldEncoderLayer {
    hopfield_association: Hopfield,
    dropout_hopfield_association: Dropout,
    norm_residual: LayerNorm,
    ff: FeedForward,
}

impl HopfieldEncoderLayer {
    /// Builds or loads the layer under `vb`.
    pub fn new(cfg: TransformerLayerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.model_dim()?;
        let hopfield_association =
            Hopfield::new(cfg.hopfield.clone(), vb.pp("hopfield_association"))?;
        check_output_size("hopfield.output_size", &hopfield_association, d)?;
        Ok(Self {
            hopfield_association,
            dropout_hopfield_association: Dropout::new(cfg.dropout),
            norm_residual: LayerNorm::new(d, true, 1e-5, vb.pp("norm_residual"))?,
            ff: FeedForward::new(&cfg, d, &vb)?,
        })
    }

    /// The association module.
    pub fn hopfield_association(&self) -> &Hopfield {
        &self.hopfield_association
    }

    /// Forward pass: `src_mask` is the association mask, `src_key_padding_mask` the padding mask.
    pub fn forward_with(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        src_key_padding_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let masks = Masks {
            stored_pattern_padding_mask: src_key_padding_mask,
            association_mask: src_mask,
        };
        let a = self
            .hopfield_association
            .forward_with(HopfieldInput::Single(src), masks, train)?;
        let a = self.dropout_hopfield_association.forward_t(&a, train)?;
        let x = self.norm_residual.forward(&(src + a)?)?;
        self.ff.forward(&x, train)
    }

    /// The association of the inner Hopfield on `src` (no masks).
    pub fn association_matrix(&self, src: &Tensor) -> Result<Tensor> {
        self.hopfield_association
            .association_matrix(HopfieldInput::Single(src), Masks::default())
    }
}

impl ModuleT for HopfieldEncoderLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, None, None, train)
    }
}

/// Masks of a decoder layer (hflayers' names).
#[derive(Debug, Clone, Copy, Default)]
pub struct DecoderMasks<'a> {
    /// Association mask of the self association.
    pub tgt_mask: Option<&'a Tensor>,
    /// Association mask of the cross association.
    pub memory_mask: Option<&'a Tensor>,
    /// Padding mask of the targets (self association).
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// Padding mask of the memory (cross association).
    pub memory_key_padding_mask: Option<&'a Tensor>,
}

/// hflayers' `HopfieldDecoderLayer`: self association, cross association with `memory` as
/// stored pattern and projection, then the feed-forward block; post-norm. State_dict names:
/// `hopfield_association_self.*`, `hopfield_association_cross.*`, `linear_residual.*`,
/// `linear_output.*`, `norm_residual_self.*`, `norm_residual_cross.*`, `norm_output.*`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{DecoderMasks, HopfieldConfig, HopfieldDecoderLayer, TransformerLayerConfig};
/// let map = VarMap::new();
/// let h = HopfieldConfig::new(8).with_num_heads(2);
/// let cfg = TransformerLayerConfig::new(h.clone()).with_hopfield_cross(h).with_dim_feedforward(16);
/// let dec = HopfieldDecoderLayer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let (tgt, memory) = (Tensor::randn(0f32, 1., (2, 3, 8), &Device::Cpu)?, Tensor::randn(0f32, 1., (2, 6, 8), &Device::Cpu)?);
/// assert_eq!(dec.forward_with(&tgt, &memory, DecoderMasks::default(), false)?.dims(), &[2, 3, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HopfieldDecoderLayer {
    hopfield_association_self: Hopfield,
    hopfield_association_cross: Hopfield,
    dropout_self: Dropout,
    dropout_cross: Dropout,
    norm_residual_self: LayerNorm,
    norm_residual_cross: LayerNorm,
    ff: FeedForward,
}

impl HopfieldDecoderLayer {
    /// Builds or loads the layer under `vb` (`cfg.hopfield_cross` defaults to `cfg.hopfield`).
    pub fn new(cfg: TransformerLayerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.model_dim()?;
        let cross_cfg = cfg
            .hopfield_cross
            .clone()
            .unwrap_or_else(|| cfg.hopfield.clone());
        let hopfield_association_self =
            Hopfield::new(cfg.hopfield.clone(), vb.pp("hopfield_association_self"))?;
        let hopfield_association_cross =
            Hopfield::new(cross_cfg, vb.pp("hopfield_association_cross"))?;
        check_output_size("hopfield.output_size", &hopfield_association_self, d)?;
        check_output_size("hopfield_cross.output_size", &hopfield_association_cross, d)?;
        Ok(Self {
            hopfield_association_self,
            hopfield_association_cross,
            dropout_self: Dropout::new(cfg.dropout),
            dropout_cross: Dropout::new(cfg.dropout),
            norm_residual_self: LayerNorm::new(d, true, 1e-5, vb.pp("norm_residual_self"))?,
            norm_residual_cross: LayerNorm::new(d, true, 1e-5, vb.pp("norm_residual_cross"))?,
            ff: FeedForward::new(&cfg, d, &vb)?,
        })
    }

    /// Forward pass.
    pub fn forward_with(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        masks: DecoderMasks,
        train: bool,
    ) -> Result<Tensor> {
        let a = self.hopfield_association_self.forward_with(
            HopfieldInput::Single(tgt),
            Masks {
                stored_pattern_padding_mask: masks.tgt_key_padding_mask,
                association_mask: masks.tgt_mask,
            },
            train,
        )?;
        let x = self
            .norm_residual_self
            .forward(&(tgt + self.dropout_self.forward_t(&a, train)?)?)?;
        let c = self.hopfield_association_cross.forward_with(
            HopfieldInput::Triple {
                stored: memory,
                state: &x,
                projection: memory,
            },
            Masks {
                stored_pattern_padding_mask: masks.memory_key_padding_mask,
                association_mask: masks.memory_mask,
            },
            train,
        )?;
        let x = self
            .norm_residual_cross
            .forward(&(x + self.dropout_cross.forward_t(&c, train)?)?)?;
        self.ff.forward(&x, train)
    }

    /// Association of the self Hopfield on `tgt`.
    pub fn association_matrix_self(&self, tgt: &Tensor) -> Result<Tensor> {
        self.hopfield_association_self
            .association_matrix(HopfieldInput::Single(tgt), Masks::default())
    }

    /// Association of the cross Hopfield for `(memory, tgt, memory)`.
    pub fn association_matrix_cross(&self, tgt: &Tensor, memory: &Tensor) -> Result<Tensor> {
        self.hopfield_association_cross.association_matrix(
            HopfieldInput::Triple {
                stored: memory,
                state: tgt,
                projection: memory,
            },
            Masks::default(),
        )
    }
}
