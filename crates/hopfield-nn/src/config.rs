//! `HopfieldConfig`: every constructor argument of hflayers' `Hopfield`, with its defaults, and
//! parsing from hflayers' constructor kwargs as JSON.

use crate::activation::Activation;
use hopfield_core::{
    Association, CoreConfig, CoreLayout, HopfieldError, LearnableAlpha, OnNoConvergence, Scaling,
    StepsEps, UpdateSteps,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Configuration of [`Hopfield`](crate::Hopfield): hflayers' constructor arguments in snake_case
/// with the same defaults, plus the hard cap for "until convergence".
///
/// ```
/// use hopfield_nn::HopfieldConfig;
/// let cfg = HopfieldConfig::new(64).with_num_heads(4).with_update_steps_max(Some(3));
/// assert_eq!(cfg.head_dim()?, 16);
/// let same = HopfieldConfig::from_kwargs(r#"{"input_size": 64, "num_heads": 4, "update_steps_max": 3}"#)?;
/// assert_eq!(cfg, same);
/// # Ok::<(), hopfield_core::HopfieldError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HopfieldConfig {
    /// State-pattern feature size E (required unless the module is purely static).
    pub input_size: Option<usize>,
    /// Per-head association size hd (default E / num_heads).
    pub hidden_size: Option<usize>,
    /// Output size O (default E).
    pub output_size: Option<usize>,
    /// Per-head value size pd (default hd; giving it switches to separate q/k/v weights).
    pub pattern_size: Option<usize>,
    /// Number of heads.
    pub num_heads: usize,
    /// beta: `None` gives 1/sqrt(hd), or 1.0 for pure static retrieval.
    pub scaling: Option<Scaling>,
    /// Additional update steps.
    pub update_steps_max: UpdateSteps,
    /// Convergence threshold (> 0).
    pub update_steps_eps: StepsEps,
    /// Cap on update steps when iterating until convergence.
    pub max_convergence_steps: usize,
    /// What happens at that cap.
    pub on_no_convergence: OnNoConvergence,
    /// LayerNorm on the stored patterns.
    pub normalize_stored_pattern: bool,
    /// ... with affine parameters.
    pub normalize_stored_pattern_affine: bool,
    /// ... and this epsilon.
    pub normalize_stored_pattern_eps: f64,
    /// LayerNorm on the state patterns.
    pub normalize_state_pattern: bool,
    /// ... with affine parameters.
    pub normalize_state_pattern_affine: bool,
    /// ... and this epsilon.
    pub normalize_state_pattern_eps: f64,
    /// LayerNorm on the pattern projections.
    pub normalize_pattern_projection: bool,
    /// ... with affine parameters.
    pub normalize_pattern_projection_affine: bool,
    /// ... and this epsilon.
    pub normalize_pattern_projection_eps: f64,
    /// LayerNorm over hd of projected queries and keys.
    pub normalize_hopfield_space: bool,
    /// ... with affine parameters (`p_norm_weight`, `p_norm_bias`).
    pub normalize_hopfield_space_affine: bool,
    /// ... and this epsilon.
    pub normalize_hopfield_space_eps: f64,
    /// Keys are used unprojected.
    pub stored_pattern_as_static: bool,
    /// Queries are used unprojected.
    pub state_pattern_as_static: bool,
    /// Values are used unprojected.
    pub pattern_projection_as_static: bool,
    /// Values pass through the key projection first.
    pub pattern_projection_as_connected: bool,
    /// Stored-pattern feature size (default E).
    pub stored_pattern_size: Option<usize>,
    /// Pattern-projection feature size (default E).
    pub pattern_projection_size: Option<usize>,
    /// Inputs and outputs are `(N, seq, D)` (true) or `(seq, N, D)`.
    pub batch_first: bool,
    /// Activation applied to the output.
    pub association_activation: Option<Activation>,
    /// Dropout on the final association (training only), in [0, 1].
    pub dropout: f64,
    /// Biases on the projections and the output projection.
    pub input_bias: bool,
    /// Creates hflayers' (unused) `bias_k`/`bias_v` (quirk Q1), so such checkpoints load.
    pub concat_bias_pattern: bool,
    /// Appends an all-zero stored pattern and projection.
    pub add_zero_association: bool,
    /// No output projection: the output is the concatenated heads (H * pd).
    pub disable_out_projection: bool,
    /// The association function: softmax (hflayers, the default), sparsemax or alpha-entmax
    /// (kwarg `"association"`: `"softmax"`, `"sparsemax"`, `"entmax15"`, `{"entmax": alpha}`,
    /// `{"entmax": [alpha per head]}`, or `{"entmax": alpha, "learnable": true}` for one
    /// learnable alpha per head starting at `alpha`, the parameter `association_alpha`).
    pub association: Association,
}

impl Default for HopfieldConfig {
    fn default() -> Self {
        Self {
            input_size: None,
            hidden_size: None,
            output_size: None,
            pattern_size: None,
            num_heads: 1,
            scaling: None,
            update_steps_max: UpdateSteps::Max(0),
            update_steps_eps: StepsEps::Scalar(1e-4),
            max_convergence_steps: 1000,
            on_no_convergence: OnNoConvergence::Error,
            normalize_stored_pattern: true,
            normalize_stored_pattern_affine: true,
            normalize_stored_pattern_eps: 1e-5,
            normalize_state_pattern: true,
            normalize_state_pattern_affine: true,
            normalize_state_pattern_eps: 1e-5,
            normalize_pattern_projection: true,
            normalize_pattern_projection_affine: true,
            normalize_pattern_projection_eps: 1e-5,
            normalize_hopfield_space: false,
            normalize_hopfield_space_affine: false,
            normalize_hopfield_space_eps: 1e-5,
            stored_pattern_as_static: false,
            state_pattern_as_static: false,
            pattern_projection_as_static: false,
            pattern_projection_as_connected: false,
            stored_pattern_size: None,
            pattern_projection_size: None,
            batch_first: true,
            association_activation: None,
            dropout: 0.0,
            input_bias: true,
            concat_bias_pattern: false,
            add_zero_association: false,
            disable_out_projection: false,
            association: Association::Softmax,
        }
    }
}

macro_rules! builders {
    ($($name:ident => $field:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets `", stringify!($field), "`.")]
            pub fn $name(mut self, v: $ty) -> Self {
                self.$field = v.into();
                self
            }
        )*
    };
}

/// One input LayerNorm: (size, affine, eps).
pub(crate) type NormSpec = Option<(usize, bool, f64)>;

/// A config resolved into sizes.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub layout: CoreLayout,
    pub core: CoreConfig,
    pub norm_stored: NormSpec,
    pub norm_state: NormSpec,
    pub norm_projection: NormSpec,
}

impl HopfieldConfig {
    /// Defaults with `input_size` = E.
    pub fn new(input_size: usize) -> Self {
        Self {
            input_size: Some(input_size),
            ..Self::default()
        }
    }

    /// Pure static retrieval: `out = softmax(beta R Y^T) Y` with no parameters (hflayers' blog
    /// recipe: all inputs static, no LayerNorms, no output projection; beta defaults to 1).
    pub fn pure_static() -> Self {
        Self::default()
            .with_stored_pattern_as_static(true)
            .with_state_pattern_as_static(true)
            .with_pattern_projection_as_static(true)
            .with_normalize_stored_pattern(false)
            .with_normalize_stored_pattern_affine(false)
            .with_normalize_state_pattern(false)
            .with_normalize_state_pattern_affine(false)
            .with_normalize_pattern_projection(false)
            .with_normalize_pattern_projection_affine(false)
            .with_disable_out_projection(true)
    }

    builders! {
        with_input_size => input_size: Option<usize>,
        with_hidden_size => hidden_size: Option<usize>,
        with_output_size => output_size: Option<usize>,
        with_pattern_size => pattern_size: Option<usize>,
        with_num_heads => num_heads: usize,
        with_update_steps_eps_per_head => update_steps_eps: StepsEps,
        with_max_convergence_steps => max_convergence_steps: usize,
        with_on_no_convergence => on_no_convergence: OnNoConvergence,
        with_normalize_stored_pattern => normalize_stored_pattern: bool,
        with_normalize_stored_pattern_affine => normalize_stored_pattern_affine: bool,
        with_normalize_stored_pattern_eps => normalize_stored_pattern_eps: f64,
        with_normalize_state_pattern => normalize_state_pattern: bool,
        with_normalize_state_pattern_affine => normalize_state_pattern_affine: bool,
        with_normalize_state_pattern_eps => normalize_state_pattern_eps: f64,
        with_normalize_pattern_projection => normalize_pattern_projection: bool,
        with_normalize_pattern_projection_affine => normalize_pattern_projection_affine: bool,
        with_normalize_pattern_projection_eps => normalize_pattern_projection_eps: f64,
        with_normalize_hopfield_space => normalize_hopfield_space: bool,
        with_normalize_hopfield_space_affine => normalize_hopfield_space_affine: bool,
        with_normalize_hopfield_space_eps => normalize_hopfield_space_eps: f64,
        with_stored_pattern_as_static => stored_pattern_as_static: bool,
        with_state_pattern_as_static => state_pattern_as_static: bool,
        with_pattern_projection_as_static => pattern_projection_as_static: bool,
        with_pattern_projection_as_connected => pattern_projection_as_connected: bool,
        with_stored_pattern_size => stored_pattern_size: Option<usize>,
        with_pattern_projection_size => pattern_projection_size: Option<usize>,
        with_batch_first => batch_first: bool,
        with_association_activation => association_activation: Option<Activation>,
        with_dropout => dropout: f64,
        with_input_bias => input_bias: bool,
        with_concat_bias_pattern => concat_bias_pattern: bool,
        with_add_zero_association => add_zero_association: bool,
        with_association => association: Association,
        with_disable_out_projection => disable_out_projection: bool,
    }

    /// Sets a scalar `scaling` (beta).
    pub fn with_scaling(mut self, beta: f64) -> Self {
        self.scaling = Some(Scaling::Scalar(beta));
        self
    }

    /// Sets one beta per head.
    pub fn with_scaling_per_head(mut self, betas: Vec<f64>) -> Self {
        self.scaling = Some(Scaling::PerHead(betas));
        self
    }

    /// Sets `update_steps_max`: `Some(k)` additional steps, or `None` until convergence.
    pub fn with_update_steps_max(mut self, k: Option<usize>) -> Self {
        self.update_steps_max = k.map_or(UpdateSteps::UntilConvergence, UpdateSteps::Max);
        self
    }

    /// Sets a scalar `update_steps_eps`.
    pub fn with_update_steps_eps(mut self, eps: f64) -> Self {
        self.update_steps_eps = StepsEps::Scalar(eps);
        self
    }

    /// Whether all three inputs are static with no parameters (hflayers' static execution).
    pub fn is_static_execution(&self) -> bool {
        self.stored_pattern_as_static
            && self.state_pattern_as_static
            && self.pattern_projection_as_static
            && !self.pattern_projection_as_connected
            && !self.normalize_hopfield_space
            && !self.normalize_hopfield_space_affine
            && self.disable_out_projection
    }

    /// Per-head association size hd.
    pub fn head_dim(&self) -> Result<usize, HopfieldError> {
        if let Some(hd) = self.hidden_size {
            return Ok(hd);
        }
        let e = self.input_size.unwrap_or(0);
        if self.num_heads == 0 {
            return Err(HopfieldError::Config {
                field: "num_heads",
                reason: "must be >= 1".into(),
            });
        }
        if !e.is_multiple_of(self.num_heads) {
            return Err(HopfieldError::HeadsDoNotDivide {
                what: "input_size",
                size: e,
                heads: self.num_heads,
            });
        }
        Ok(e / self.num_heads)
    }

    /// A LayerNorm epsilon: torch accepts 0 (a constant row then standardises to 0 here, NaN in
    /// torch); a negative or non-finite one is rejected (torch takes the square root of a
    /// possibly negative number).
    fn check_eps(field: &'static str, eps: f64) -> Result<(), HopfieldError> {
        if eps >= 0.0 && eps.is_finite() {
            Ok(())
        } else {
            Err(HopfieldError::Config {
                field,
                reason: format!("must be >= 0 and finite, got {eps}"),
            })
        }
    }

    /// Checks the configuration and derives every size.
    pub(crate) fn resolve(&self) -> Result<Resolved, HopfieldError> {
        let static_exec = self.is_static_execution();
        if self.input_size.is_none() && !static_exec {
            return Err(HopfieldError::Config {
                field: "input_size",
                reason: "is required unless the module is purely static".into(),
            });
        }
        if self.input_size == Some(0) {
            return Err(HopfieldError::Config {
                field: "input_size",
                reason: "must be >= 1".into(),
            });
        }
        let e = self.input_size.unwrap_or(0);
        let hd = if static_exec {
            self.hidden_size.or(self.input_size).unwrap_or(0)
        } else {
            self.head_dim()?
        };
        let pd = self.pattern_size.unwrap_or(hd);
        let kdim = self.stored_pattern_size.unwrap_or(e);
        let vdim = self.pattern_projection_size.unwrap_or(e);
        for (f, eps) in [
            (
                "normalize_stored_pattern_eps",
                self.normalize_stored_pattern_eps,
            ),
            (
                "normalize_state_pattern_eps",
                self.normalize_state_pattern_eps,
            ),
            (
                "normalize_pattern_projection_eps",
                self.normalize_pattern_projection_eps,
            ),
            (
                "normalize_hopfield_space_eps",
                self.normalize_hopfield_space_eps,
            ),
        ] {
            Self::check_eps(f, eps)?;
        }
        // torch's dropout takes p in [0, 1] (p = 1 drops everything in training).
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(HopfieldError::Config {
                field: "dropout",
                reason: format!("must be in [0, 1], got {}", self.dropout),
            });
        }
        let layout = CoreLayout {
            num_heads: self.num_heads,
            embed_dim: e,
            kdim,
            vdim,
            head_dim: hd,
            pattern_dim: pd,
            out_dim: (!self.disable_out_projection).then(|| self.output_size.unwrap_or(e)),
            pattern_dim_given: self.pattern_size.is_some(),
            bias: self.input_bias,
            add_bias_kv: self.concat_bias_pattern,
            key_as_static: self.stored_pattern_as_static,
            query_as_static: self.state_pattern_as_static,
            value_as_static: self.pattern_projection_as_static,
            value_as_connected: self.pattern_projection_as_connected,
            normalize_pattern_affine: self.normalize_hopfield_space_affine,
        };
        // Pure static retrieval takes its sizes from its inputs: only its head count is checked.
        if static_exec {
            layout.validate_heads()?;
        } else {
            layout.validate()?;
        }
        let scaling = self.scaling.clone().unwrap_or(if static_exec {
            Scaling::Scalar(1.0)
        } else {
            Scaling::Scalar(1.0 / (hd as f64).sqrt())
        });
        let core = CoreConfig {
            scaling,
            update_steps_max: self.update_steps_max.clone(),
            update_steps_eps: self.update_steps_eps.clone(),
            max_convergence_steps: self.max_convergence_steps,
            on_no_convergence: self.on_no_convergence,
            dropout: self.dropout,
            add_zero_association: self.add_zero_association,
            normalize_pattern: self.normalize_hopfield_space
                || self.normalize_hopfield_space_affine,
            normalize_pattern_eps: self.normalize_hopfield_space_eps,
            association: self.association.clone(),
        };
        core.validate(layout.num_heads)?;
        // Input LayerNorms are sized by what actually arrives: a static input has the per-head
        // size (fixes hflayers quirk Q5, whose norms crash unless the sizes happen to coincide).
        let norm = |on: bool, affine: bool, eps: f64, size: usize, field| {
            if !on {
                return Ok(None);
            }
            if size == 0 {
                return Err(HopfieldError::Config {
                    field,
                    reason: "a LayerNorm needs input_size (or hidden_size for static inputs)"
                        .into(),
                });
            }
            Ok(Some((size, affine, eps)))
        };
        let norm_stored = norm(
            self.normalize_stored_pattern,
            self.normalize_stored_pattern_affine,
            self.normalize_stored_pattern_eps,
            if self.stored_pattern_as_static {
                hd
            } else {
                kdim
            },
            "normalize_stored_pattern",
        )?;
        let norm_state = norm(
            self.normalize_state_pattern,
            self.normalize_state_pattern_affine,
            self.normalize_state_pattern_eps,
            if self.state_pattern_as_static { hd } else { e },
            "normalize_state_pattern",
        )?;
        let norm_projection = norm(
            self.normalize_pattern_projection,
            self.normalize_pattern_projection_affine,
            self.normalize_pattern_projection_eps,
            layout.value_input_dim(),
            "normalize_pattern_projection",
        )?;
        Ok(Resolved {
            layout,
            core,
            norm_stored,
            norm_state,
            norm_projection,
        })
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), HopfieldError> {
        self.resolve().map(|_| ())
    }

    /// Parses hflayers' constructor kwargs (a JSON object, e.g. the goldens' `kwargs` metadata),
    /// with hflayers' names; `null` where hflayers takes `None`, a number or a list for the
    /// per-head arguments. Unknown keys and values of the wrong type are errors that name the
    /// argument, so a typo never silently means a default.
    ///
    /// ```
    /// use hopfield_nn::{HopfieldConfig, HopfieldError, UpdateSteps};
    /// let cfg = HopfieldConfig::from_kwargs(r#"{"input_size": 8, "update_steps_max": null}"#)?;
    /// assert_eq!(cfg.update_steps_max, UpdateSteps::UntilConvergence);
    /// let e = HopfieldConfig::from_kwargs(r#"{"input_size": 8, "hidden_size": -3}"#).unwrap_err();
    /// assert_eq!(e.to_string(), "invalid config `hidden_size`: expected a non-negative integer, got -3");
    /// let e = HopfieldConfig::from_kwargs(r#"{"input_size": 8, "num_head": 2}"#).unwrap_err();
    /// assert_eq!(e.to_string(), r#"invalid config `kwargs`: unknown argument "num_head""#);
    /// # Ok::<(), HopfieldError>(())
    /// ```
    pub fn from_kwargs(json: &str) -> Result<Self, HopfieldError> {
        Self::from_kwargs_map(kwargs::object(json)?)
    }

    /// [`from_kwargs`](Self::from_kwargs) on a parsed object (the wrappers hand over what is left
    /// after their own arguments).
    pub(crate) fn from_kwargs_map(map: Map<String, Value>) -> Result<Self, HopfieldError> {
        kwargs::parse::<HopfieldKwargs>(map)?.into_config()
    }
}

kwargs::kwargs_struct! {
    /// hflayers' `Hopfield(...)` arguments, as given.
    struct HopfieldKwargs {
        input_size: Option<usize>,
        hidden_size: Option<usize>,
        output_size: Option<usize>,
        pattern_size: Option<usize>,
        num_heads: usize,
        scaling: Option<ScalingKw>,
        update_steps_max: Option<UpdateStepsKw>,
        update_steps_eps: StepsEpsKw,
        normalize_stored_pattern: bool,
        normalize_stored_pattern_affine: bool,
        normalize_stored_pattern_eps: f64,
        normalize_state_pattern: bool,
        normalize_state_pattern_affine: bool,
        normalize_state_pattern_eps: f64,
        normalize_pattern_projection: bool,
        normalize_pattern_projection_affine: bool,
        normalize_pattern_projection_eps: f64,
        normalize_hopfield_space: bool,
        normalize_hopfield_space_affine: bool,
        normalize_hopfield_space_eps: f64,
        stored_pattern_as_static: bool,
        state_pattern_as_static: bool,
        pattern_projection_as_static: bool,
        pattern_projection_as_connected: bool,
        stored_pattern_size: Option<usize>,
        pattern_projection_size: Option<usize>,
        batch_first: bool,
        association_activation: Option<String>,
        dropout: f64,
        input_bias: bool,
        concat_bias_pattern: bool,
        add_zero_association: bool,
        disable_out_projection: bool,
        association: AssociationKw,
    }
}

/// `association` (not an hflayers argument): a name, or `{"entmax": alpha}` with one alpha or
/// one per head.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "\"softmax\", \"sparsemax\", \"entmax15\", {\"entmax\": alpha} or {\"entmax\": [alpha per head]}"
)]
enum AssociationKw {
    Name(String),
    Entmax(EntmaxKw),
}

/// `{"entmax": alpha or [alpha per head], "learnable": bool}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntmaxKw {
    entmax: EntmaxAlphaKw,
    #[serde(default)]
    learnable: bool,
}

/// The alpha of `{"entmax": ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EntmaxAlphaKw {
    Scalar(f64),
    PerHead(Vec<f64>),
}

/// `scaling`: one beta, or one per head (hflayers takes a float or a tensor).
#[derive(Deserialize)]
#[serde(untagged, expecting = "a number, a list of numbers or null")]
enum ScalingKw {
    Scalar(f64),
    PerHead(Vec<f64>),
}

/// `update_steps_max`: a count, or one per head (hflayers' tensor form); a negative count means
/// "until convergence" as in hflayers (which compares `update_steps_max < 0`), and so does `null`
/// (the outer `Option`).
#[derive(Deserialize)]
#[serde(untagged, expecting = "an integer, a list of integers or null")]
enum UpdateStepsKw {
    Max(usize),
    Negative(i64),
    PerHead(Vec<i64>),
}

/// `update_steps_eps`: one threshold, or one per head.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a number or a list of numbers")]
enum StepsEpsKw {
    Scalar(f64),
    PerHead(Vec<f64>),
}

impl HopfieldKwargs {
    fn into_config(self) -> Result<HopfieldConfig, HopfieldError> {
        let mut c = HopfieldConfig::default();
        macro_rules! given {
            ($($field:ident),*) => {
                $(if let Some(v) = self.$field {
                    c.$field = v;
                })*
            };
        }
        given!(
            input_size,
            hidden_size,
            output_size,
            pattern_size,
            num_heads,
            normalize_stored_pattern,
            normalize_stored_pattern_affine,
            normalize_stored_pattern_eps,
            normalize_state_pattern,
            normalize_state_pattern_affine,
            normalize_state_pattern_eps,
            normalize_pattern_projection,
            normalize_pattern_projection_affine,
            normalize_pattern_projection_eps,
            normalize_hopfield_space,
            normalize_hopfield_space_affine,
            normalize_hopfield_space_eps,
            stored_pattern_as_static,
            state_pattern_as_static,
            pattern_projection_as_static,
            pattern_projection_as_connected,
            stored_pattern_size,
            pattern_projection_size,
            batch_first,
            dropout,
            input_bias,
            concat_bias_pattern,
            add_zero_association,
            disable_out_projection
        );
        if let Some(s) = self.scaling {
            c.scaling = s.map(|s| match s {
                ScalingKw::Scalar(b) => Scaling::Scalar(b),
                ScalingKw::PerHead(b) => Scaling::PerHead(b),
            });
        }
        if let Some(s) = self.update_steps_max {
            c.update_steps_max = match s {
                None => UpdateSteps::UntilConvergence,
                Some(UpdateStepsKw::Max(k)) => UpdateSteps::Max(k),
                Some(UpdateStepsKw::Negative(k)) if k < 0 => UpdateSteps::UntilConvergence,
                Some(UpdateStepsKw::Negative(k)) => UpdateSteps::Max(k as usize),
                Some(UpdateStepsKw::PerHead(ks)) => {
                    UpdateSteps::PerHead(ks.into_iter().map(|k| usize::try_from(k).ok()).collect())
                }
            };
        }
        if let Some(e) = self.update_steps_eps {
            c.update_steps_eps = match e {
                StepsEpsKw::Scalar(e) => StepsEps::Scalar(e),
                StepsEpsKw::PerHead(e) => StepsEps::PerHead(e),
            };
        }
        if let Some(a) = self.association {
            c.association = match a {
                AssociationKw::Name(n) => match n.as_str() {
                    "softmax" => Association::Softmax,
                    "sparsemax" => Association::Sparsemax,
                    "entmax15" => Association::Entmax15,
                    other => {
                        return Err(HopfieldError::Config {
                            field: "association",
                            reason: format!(
                                "unknown association {other:?}: expected \"softmax\", \"sparsemax\", \"entmax15\" or {{\"entmax\": alpha}}"
                            ),
                        })
                    }
                },
                AssociationKw::Entmax(EntmaxKw {
                    entmax: EntmaxAlphaKw::Scalar(a),
                    learnable: false,
                }) => Association::Entmax(a),
                AssociationKw::Entmax(EntmaxKw {
                    entmax: EntmaxAlphaKw::PerHead(a),
                    learnable: false,
                }) => Association::EntmaxPerHead(a),
                AssociationKw::Entmax(EntmaxKw {
                    entmax: EntmaxAlphaKw::Scalar(a),
                    learnable: true,
                }) => Association::EntmaxLearnable(LearnableAlpha {
                    init: a,
                    param: None,
                }),
                AssociationKw::Entmax(EntmaxKw {
                    entmax: EntmaxAlphaKw::PerHead(_),
                    learnable: true,
                }) => {
                    return Err(HopfieldError::Config {
                        field: "association",
                        reason: "a learnable alpha starts from one value for every head: \
                                 {\"entmax\": alpha, \"learnable\": true}"
                            .into(),
                    })
                }
            };
        }
        if let Some(a) = self.association_activation {
            c.association_activation = a
                .map(|name| activation_named("association_activation", &name))
                .transpose()?;
        }
        Ok(c)
    }
}

/// [`Activation::from_name`] with the error on the argument that named it.
pub(crate) fn activation_named(
    field: &'static str,
    name: &str,
) -> Result<Activation, HopfieldError> {
    Activation::from_name(name).map_err(|e| match e {
        HopfieldError::Config { reason, .. } => HopfieldError::Config { field, reason },
        other => other,
    })
}
/// Constructor kwargs as JSON: serde derives the parsing, this module only attributes each failure
/// to the argument it belongs to (serde's own messages name a type, never the key).
pub(crate) mod kwargs {
    use hopfield_core::HopfieldError;
    use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess};
    use serde::{Deserialize, Deserializer};
    use serde_json::{Map, Value};

    /// Declares a private kwargs struct: every field is `Option<T>`, `None` when the key is absent,
    /// so the typed config keeps the one set of defaults; a present `null` is `T`'s business (an
    /// error unless `T` is itself an `Option`), unlike serde's plain `Option`, which would let
    /// `null` silently mean "default".
    macro_rules! kwargs_struct {
        ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* }) => {
            $(#[$m])*
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct $name {
                $(
                    $(#[$fm])*
                    #[serde(default, deserialize_with = "crate::config::kwargs::present")]
                    $field: Option<$ty>,
                )*
            }
        };
    }
    pub(crate) use kwargs_struct;

    /// `deserialize_with` helper of [`kwargs_struct`]: a present key is `Some`, whatever its value.
    pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        T::deserialize(d).map(Some)
    }

    /// Why a kwargs object did not parse, attributed to an argument where there is one.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Failure {
        /// Not JSON, or not a JSON object.
        NotObject(String),
        /// A key the constructor does not take.
        Unknown { key: String, value: Value },
        /// A known argument with a value of the wrong type.
        Invalid {
            field: &'static str,
            value: Value,
            expected: String,
        },
        /// A required argument is absent.
        Missing { field: &'static str },
    }

    impl From<Failure> for HopfieldError {
        fn from(f: Failure) -> Self {
            match f {
                Failure::NotObject(reason) => HopfieldError::Config {
                    field: "kwargs",
                    reason,
                },
                Failure::Unknown { key, .. } => HopfieldError::Config {
                    field: "kwargs",
                    reason: format!("unknown argument {key:?}"),
                },
                Failure::Invalid {
                    field,
                    value,
                    expected,
                } => HopfieldError::Config {
                    field,
                    reason: format!("expected {expected}, got {value}"),
                },
                Failure::Missing { field } => HopfieldError::Config {
                    field,
                    reason: "is required".into(),
                },
            }
        }
    }

    /// The JSON object of `json`.
    pub(crate) fn object(json: &str) -> Result<Map<String, Value>, Failure> {
        match serde_json::from_str(json) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => Err(Failure::NotObject("expected a JSON object".into())),
            Err(e) => Err(Failure::NotObject(e.to_string())),
        }
    }

    /// Takes the keys that `T` declares out of `map` (a wrapper's own arguments, before the rest
    /// go to the inner Hopfield's kwargs).
    pub(crate) fn split_off<T: DeserializeOwned>(
        map: &mut Map<String, Value>,
    ) -> Map<String, Value> {
        let fields = fields_of::<T>();
        let keys: Vec<String> = map
            .keys()
            .filter(|k| fields.contains(&k.as_str()))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| map.remove_entry(&k))
            .collect()
    }

    /// Deserializes `T` from `map`, naming the argument of any failure.
    pub(crate) fn parse<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, Failure> {
        let mut current: Option<(String, Value)> = None;
        let mut exhausted = false;
        let access = Tracked {
            entries: map.into_iter(),
            value: None,
            current: &mut current,
            exhausted: &mut exhausted,
        };
        let err = match T::deserialize(de::value::MapAccessDeserializer::new(access)) {
            Ok(t) => return Ok(t),
            Err(e) => e.to_string(),
        };
        let fields = fields_of::<T>();
        let known = |name: &str| fields.iter().copied().find(|f| *f == name);
        if exhausted {
            // Every key was read: only a missing field fails after that.
            let name = err.split('`').nth(1).and_then(known).unwrap_or("kwargs");
            return Err(Failure::Missing { field: name });
        }
        let (key, value) = current.unwrap_or_default();
        match known(&key) {
            None => Err(Failure::Unknown { key, value }),
            Some(field) => Err(Failure::Invalid {
                field,
                value,
                expected: expected(&err),
            }),
        }
    }

    /// What a type error expected, in words: serde's "invalid type: X, expected Y" names Rust
    /// types for the primitives; an untagged enum's message is its `expecting` text.
    fn expected(serde_message: &str) -> String {
        let y = serde_message
            .rsplit_once(", expected ")
            .map_or(serde_message, |(_, y)| y);
        match y {
            "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer".into(),
            "f64" | "f32" => "a number".into(),
            "a sequence" => "a list".into(),
            "a map" => "a JSON object".into(),
            other => other.into(),
        }
    }

    /// A map access over the kwargs object that remembers the entry being read, so that a failure
    /// can be put on its key.
    struct Tracked<'a> {
        entries: serde_json::map::IntoIter,
        value: Option<Value>,
        current: &'a mut Option<(String, Value)>,
        exhausted: &'a mut bool,
    }

    impl<'de> MapAccess<'de> for Tracked<'_> {
        type Error = serde_json::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Self::Error> {
            let Some((key, value)) = self.entries.next() else {
                *self.exhausted = true;
                return Ok(None);
            };
            *self.current = Some((key.clone(), value.clone()));
            self.value = Some(value);
            seed.deserialize(key.into_deserializer()).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Self::Error> {
            seed.deserialize(self.value.take().unwrap_or(Value::Null))
        }
    }

    /// The field names a derived `Deserialize` struct declares (serde hands them to
    /// `deserialize_struct`, as `'static` strings).
    pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
        struct Probe<'a>(&'a mut &'static [&'static str]);
        impl<'de> Deserializer<'de> for Probe<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("probed"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Probe(&mut fields));
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwargs_parse_every_form() {
        let c = HopfieldConfig::from_kwargs(
            r#"{"input_size": 8, "num_heads": 2, "scaling": [0.5, 0.25], "update_steps_max": null,
                "update_steps_eps": [1e-3, 1e-4], "association_activation": "tanh"}"#,
        )
        .unwrap();
        assert_eq!(c.scaling, Some(Scaling::PerHead(vec![0.5, 0.25])));
        assert_eq!(c.update_steps_max, UpdateSteps::UntilConvergence);
        assert_eq!(c.update_steps_eps, StepsEps::PerHead(vec![1e-3, 1e-4]));
        assert_eq!(c.association_activation, Some(Activation::Tanh));
    }

    #[test]
    fn kwargs_reject_unknown_and_bad_types() {
        assert!(matches!(
            HopfieldConfig::from_kwargs(r#"{"input_size": 8, "num_head": 2}"#),
            Err(HopfieldError::Config {
                field: "kwargs",
                ..
            })
        ));
        assert!(matches!(
            HopfieldConfig::from_kwargs(r#"{"input_size": "8"}"#),
            Err(HopfieldError::Config {
                field: "input_size",
                ..
            })
        ));
    }

    #[test]
    fn heads_must_divide() {
        let e = HopfieldConfig::new(10).with_num_heads(3).validate();
        assert_eq!(
            e,
            Err(HopfieldError::HeadsDoNotDivide {
                what: "input_size",
                size: 10,
                heads: 3
            })
        );
    }

    #[test]
    fn eps_must_be_positive() {
        let e = HopfieldConfig::new(8).with_update_steps_eps(0.0).validate();
        assert!(matches!(
            e,
            Err(HopfieldError::Config {
                field: "update_steps_eps",
                ..
            })
        ));
        let e = HopfieldConfig::new(8)
            .with_normalize_state_pattern_eps(-1.0)
            .validate();
        assert!(matches!(
            e,
            Err(HopfieldError::Config {
                field: "normalize_state_pattern_eps",
                ..
            })
        ));
    }

    #[test]
    fn static_norm_sizes_follow_inputs() {
        // hflayers (Q5) would size this norm 16 and crash on the 8-feature static keys.
        let r = HopfieldConfig::new(16)
            .with_hidden_size(Some(8))
            .with_stored_pattern_as_static(true)
            .resolve()
            .unwrap();
        assert_eq!(r.norm_stored, Some((8, true, 1e-5)));
        assert_eq!(r.norm_state, Some((16, true, 1e-5)));
    }

    /// The `association` kwarg: names, one alpha or one per head; softmax when absent; unknown
    /// names, wrong types and alphas out of range are typed errors naming the argument; the
    /// wrappers pass it to their Hopfield.
    #[test]
    fn association_kwarg() {
        let parse = |a: &str| {
            HopfieldConfig::from_kwargs(&format!(
                r#"{{"input_size": 8, "num_heads": 2, "association": {a}}}"#
            ))
        };
        assert_eq!(
            HopfieldConfig::from_kwargs(r#"{"input_size": 8}"#)
                .unwrap()
                .association,
            Association::Softmax
        );
        for (a, want) in [
            (r#""softmax""#, Association::Softmax),
            (r#""sparsemax""#, Association::Sparsemax),
            (r#""entmax15""#, Association::Entmax15),
            (r#"{"entmax": 1.3}"#, Association::Entmax(1.3)),
            (
                r#"{"entmax": [1.2, 2.0]}"#,
                Association::EntmaxPerHead(vec![1.2, 2.0]),
            ),
        ] {
            let c = parse(a).unwrap();
            assert_eq!(c.association, want);
            assert_eq!(c.resolve().unwrap().core.association, want);
        }
        let c = parse(r#"{"entmax": 1.4, "learnable": true}"#).unwrap();
        assert_eq!(
            c.association,
            Association::EntmaxLearnable(LearnableAlpha {
                init: 1.4,
                param: None
            })
        );
        for bad in [
            r#""entmax""#,
            "1.5",
            r#"{"entmax": "x"}"#,
            "null",
            r#"{"entmax": 1.5, "learnable": 1}"#,
            r#"{"entmax": 1.5, "learn": true}"#,
            r#"{"entmax": [1.5, 1.5], "learnable": true}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("`association`"), "{bad}: {e}");
        }
        for bad in [
            r#"{"entmax": 2.5}"#,
            r#"{"entmax": [1.5]}"#,
            r#"{"entmax": [1.0, 1.5]}"#,
        ] {
            let e = parse(bad).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains("association"), "{bad}: {e}");
        }
        let p = crate::HopfieldPoolingConfig::from_kwargs(
            r#"{"input_size": 8, "association": "sparsemax"}"#,
        )
        .unwrap();
        assert_eq!(p.hopfield.association, Association::Sparsemax);
        let l = crate::HopfieldLayerConfig::from_kwargs(
            r#"{"input_size": 8, "association": {"entmax": 1.5}}"#,
        )
        .unwrap();
        assert_eq!(l.hopfield.association, Association::Entmax(1.5));
    }

    /// A learnable alpha is the parameter `association_alpha` (one per head) of `Hopfield`: at
    /// its initial value the module computes what the fixed alpha computes, and its gradient
    /// matches finite differences of the fixed-alpha module (f64).
    #[test]
    fn learnable_alpha_is_a_parameter_with_the_right_gradient() -> candle_core::Result<()> {
        use crate::{Hopfield, HopfieldInput, Masks};
        use candle_core::{DType, Device, Tensor};
        use candle_nn::{VarBuilder, VarMap};
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
        let base = HopfieldConfig::new(6).with_num_heads(2).with_scaling(4.0);
        let learnable = Hopfield::new(
            base.clone()
                .with_association(Association::EntmaxLearnable(LearnableAlpha {
                    init: 1.4,
                    param: None,
                })),
            vb.clone(),
        )?;
        let alpha = map.data().lock().unwrap()["association_alpha"].clone();
        assert_eq!(alpha.as_tensor().to_vec1::<f64>()?, vec![1.4, 1.4]);
        let x = Tensor::randn(0f64, 1., (2, 5, 6), &dev)?;
        let w = Tensor::randn(0f64, 1., (2, 5, 6), &dev)?;
        let run = |m: &Hopfield| -> candle_core::Result<Tensor> {
            (m.forward_with(HopfieldInput::from(&x), Masks::default(), false)? * &w)?.sum_all()
        };
        let fixed = |a: f64| {
            Hopfield::new(
                base.clone().with_association(Association::Entmax(a)),
                vb.clone(),
            )
        };
        let y = run(&learnable)?;
        let want = run(&fixed(1.4)?)?.to_scalar::<f64>()?;
        assert!((y.to_scalar::<f64>()? - want).abs() < 1e-12);
        let g = y.backward()?;
        let got: f64 = g
            .get(alpha.as_tensor())
            .expect("alpha gradient")
            .sum_all()?
            .to_scalar()?;
        let h = 1e-6;
        let fd = (run(&fixed(1.4 + h)?)?.to_scalar::<f64>()?
            - run(&fixed(1.4 - h)?)?.to_scalar::<f64>()?)
            / (2.0 * h);
        assert!((fd - got).abs() < 1e-6 * fd.abs().max(1.0), "{fd} vs {got}");
        Ok(())
    }
}
