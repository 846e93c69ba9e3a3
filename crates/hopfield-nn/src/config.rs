//! `HopfieldConfig`: every constructor argument of hflayers' `Hopfield`, with its defaults, and
//! parsing from hflayers' constructor kwargs as JSON.

use crate::activation::Activation;
use hopfield_core::{
    CoreConfig, CoreLayout, HopfieldError, OnNoConvergence, Scaling, StepsEps, UpdateSteps,
};
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
    /// Dropout on the final association (training only).
    pub dropout: f64,
    /// Biases on the projections and the output projection.
    pub input_bias: bool,
    /// Creates hflayers' (unused) `bias_k`/`bias_v` (quirk Q1), so such checkpoints load.
    pub concat_bias_pattern: bool,
    /// Appends an all-zero stored pattern and projection.
    pub add_zero_association: bool,
    /// No output projection: the output is the concatenated heads (H * pd).
    pub disable_out_projection: bool,
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
        if e % self.num_heads != 0 {
            return Err(HopfieldError::HeadsDoNotDivide {
                what: "input_size",
                size: e,
                heads: self.num_heads,
            });
        }
        Ok(e / self.num_heads)
    }

    fn check_eps(field: &'static str, eps: f64) -> Result<(), HopfieldError> {
        if eps > 0.0 && eps.is_finite() {
            Ok(())
        } else {
            Err(HopfieldError::Config {
                field,
                reason: format!("must be > 0, got {eps}"),
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
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(HopfieldError::Config {
                field: "dropout",
                reason: format!("must be in [0, 1), got {}", self.dropout),
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
        if !static_exec {
            layout.validate()?;
        }
        let scaling = self.scaling.clone().unwrap_or(if static_exec {
            Scaling::Scalar(1.0)
        } else {
            Scaling::Scalar(1.0 / (hd as f64).sqrt())
        });
        let core = CoreConfig {
            num_heads: self.num_heads,
            scaling,
            update_steps_max: self.update_steps_max.clone(),
            update_steps_eps: self.update_steps_eps.clone(),
            max_convergence_steps: self.max_convergence_steps,
            on_no_convergence: self.on_no_convergence,
            dropout: self.dropout,
            add_zero_association: self.add_zero_association,
            key_as_static: self.stored_pattern_as_static,
            query_as_static: self.state_pattern_as_static,
            value_as_static: self.pattern_projection_as_static,
            value_as_connected: self.pattern_projection_as_connected,
            normalize_pattern: self.normalize_hopfield_space
                || self.normalize_hopfield_space_affine,
            normalize_pattern_eps: self.normalize_hopfield_space_eps,
        };
        core.validate()?;
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
            if self.pattern_projection_as_static {
                pd
            } else {
                vdim
            },
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

    /// Parses hflayers' constructor kwargs (a JSON object, e.g. the goldens' `kwargs` metadata).
    /// Unknown keys are errors, so a typo never silently means a default.
    pub fn from_kwargs(json: &str) -> Result<Self, HopfieldError> {
        let v: Value = serde_json::from_str(json).map_err(|e| HopfieldError::Config {
            field: "kwargs",
            reason: e.to_string(),
        })?;
        let obj = v.as_object().ok_or_else(|| HopfieldError::Config {
            field: "kwargs",
            reason: "expected a JSON object".into(),
        })?;
        let mut rest = obj.clone();
        let cfg = Self::take_kwargs(&mut rest)?;
        reject_unknown(&rest)?;
        Ok(cfg)
    }

    /// Takes the Hopfield kwargs out of `obj`, leaving any others (for the wrappers' own keys).
    pub(crate) fn take_kwargs(obj: &mut Map<String, Value>) -> Result<Self, HopfieldError> {
        let mut c = Self::default();
        let keys: Vec<String> = obj.keys().cloned().collect();
        for k in keys {
            let v = &obj[&k];
            macro_rules! set {
                ($field:ident, $parse:expr) => {{
                    c.$field = $parse(stringify!($field), v)?;
                }};
            }
            match k.as_str() {
                "input_size" => set!(input_size, opt_usize),
                "hidden_size" => set!(hidden_size, opt_usize),
                "output_size" => set!(output_size, opt_usize),
                "pattern_size" => set!(pattern_size, opt_usize),
                "num_heads" => set!(num_heads, req_usize),
                "scaling" => set!(scaling, scaling),
                "update_steps_max" => set!(update_steps_max, update_steps),
                "update_steps_eps" => set!(update_steps_eps, steps_eps),
                "normalize_stored_pattern" => set!(normalize_stored_pattern, boolean),
                "normalize_stored_pattern_affine" => set!(normalize_stored_pattern_affine, boolean),
                "normalize_stored_pattern_eps" => set!(normalize_stored_pattern_eps, float),
                "normalize_state_pattern" => set!(normalize_state_pattern, boolean),
                "normalize_state_pattern_affine" => set!(normalize_state_pattern_affine, boolean),
                "normalize_state_pattern_eps" => set!(normalize_state_pattern_eps, float),
                "normalize_pattern_projection" => set!(normalize_pattern_projection, boolean),
                "normalize_pattern_projection_affine" => {
                    set!(normalize_pattern_projection_affine, boolean)
                }
                "normalize_pattern_projection_eps" => set!(normalize_pattern_projection_eps, float),
                "normalize_hopfield_space" => set!(normalize_hopfield_space, boolean),
                "normalize_hopfield_space_affine" => set!(normalize_hopfield_space_affine, boolean),
                "normalize_hopfield_space_eps" => set!(normalize_hopfield_space_eps, float),
                "stored_pattern_as_static" => set!(stored_pattern_as_static, boolean),
                "state_pattern_as_static" => set!(state_pattern_as_static, boolean),
                "pattern_projection_as_static" => set!(pattern_projection_as_static, boolean),
                "pattern_projection_as_connected" => set!(pattern_projection_as_connected, boolean),
                "stored_pattern_size" => set!(stored_pattern_size, opt_usize),
                "pattern_projection_size" => set!(pattern_projection_size, opt_usize),
                "batch_first" => set!(batch_first, boolean),
                "association_activation" => set!(association_activation, activation),
                "dropout" => set!(dropout, float),
                "input_bias" => set!(input_bias, boolean),
                "concat_bias_pattern" => set!(concat_bias_pattern, boolean),
                "add_zero_association" => set!(add_zero_association, boolean),
                "disable_out_projection" => set!(disable_out_projection, boolean),
                _ => continue,
            }
            obj.remove(&k);
        }
        Ok(c)
    }
}

pub(crate) fn reject_unknown(rest: &Map<String, Value>) -> Result<(), HopfieldError> {
    match rest.keys().next() {
        None => Ok(()),
        Some(k) => Err(HopfieldError::Config {
            field: "kwargs",
            reason: format!("unknown argument {k:?}"),
        }),
    }
}

fn bad(field: &'static str, what: &str, v: &Value) -> HopfieldError {
    HopfieldError::Config {
        field,
        reason: format!("expected {what}, got {v}"),
    }
}

pub(crate) fn req_usize(f: &'static str, v: &Value) -> Result<usize, HopfieldError> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| bad(f, "a non-negative integer", v))
}

pub(crate) fn opt_usize(f: &'static str, v: &Value) -> Result<Option<usize>, HopfieldError> {
    if v.is_null() {
        Ok(None)
    } else {
        req_usize(f, v).map(Some)
    }
}

pub(crate) fn boolean(f: &'static str, v: &Value) -> Result<bool, HopfieldError> {
    v.as_bool().ok_or_else(|| bad(f, "a boolean", v))
}

pub(crate) fn float(f: &'static str, v: &Value) -> Result<f64, HopfieldError> {
    v.as_f64().ok_or_else(|| bad(f, "a number", v))
}

fn floats(f: &'static str, v: &Value) -> Result<Vec<f64>, HopfieldError> {
    v.as_array()
        .ok_or_else(|| bad(f, "a list of numbers", v))?
        .iter()
        .map(|x| float(f, x))
        .collect()
}

fn scaling(f: &'static str, v: &Value) -> Result<Option<Scaling>, HopfieldError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(_) => Ok(Some(Scaling::Scalar(float(f, v)?))),
        _ => Ok(Some(Scaling::PerHead(floats(f, v)?))),
    }
}

fn update_steps(f: &'static str, v: &Value) -> Result<UpdateSteps, HopfieldError> {
    match v {
        Value::Null => Ok(UpdateSteps::UntilConvergence),
        Value::Number(_) => Ok(UpdateSteps::Max(req_usize(f, v)?)),
        Value::Array(a) => a
            .iter()
            .map(|x| match x.as_i64() {
                // hflayers' tensor form uses negative entries for "until convergence".
                Some(k) if k < 0 => Ok(None),
                Some(k) => Ok(Some(k as usize)),
                None => Err(bad(f, "integers", x)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(UpdateSteps::PerHead),
        _ => Err(bad(f, "an integer, a list of integers or null", v)),
    }
}

fn steps_eps(f: &'static str, v: &Value) -> Result<StepsEps, HopfieldError> {
    match v {
        Value::Number(_) => Ok(StepsEps::Scalar(float(f, v)?)),
        _ => Ok(StepsEps::PerHead(floats(f, v)?)),
    }
}

fn activation(f: &'static str, v: &Value) -> Result<Option<Activation>, HopfieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Activation::from_name(s).map(Some),
        _ => Err(bad(f, "a function name or null", v)),
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
}
