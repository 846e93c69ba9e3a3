//! Typed, validated configuration of the [`EnergyTransformer`](super::EnergyTransformer): a plain
//! struct with builder methods and `Default` (the port's defaults where they are not bugs).

use super::{validate, EtError};
use crate::config::kwargs::{self, Failure};
use std::str::FromStr;

/// Which Hopfield energy the block uses.
///
/// ```
/// use hopfield_nn::energy::HopfieldType;
/// assert_eq!("softmax".parse::<HopfieldType>().unwrap(), HopfieldType::Softmax);
/// assert!("bogus".parse::<HopfieldType>().is_err()); // the port silently used ReLU
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HopfieldType {
    /// `BaseModernHopfield`: `-1/2 sum relu(beta x W)^2`, `hopfield.beta` of shape `(1,)`.
    #[default]
    Relu,
    /// `SoftmaxModernHopfield`: `-1/beta sum logsumexp(beta x W)`, `hopfield.beta` of shape `()`.
    Softmax,
}

impl FromStr for HopfieldType {
    type Err = EtError;
    fn from_str(s: &str) -> Result<Self, EtError> {
        match s {
            "relu" => Ok(Self::Relu),
            "softmax" => Ok(Self::Softmax),
            other => Err(EtError::UnknownHopfieldType(other.to_string())),
        }
    }
}

/// Which normalisation produces the tokens `g` at which the energy gradient is taken.
///
/// ```
/// use hopfield_nn::energy::NormKind;
/// assert_eq!(NormKind::default(), NormKind::LayerNorm);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormKind {
    /// The port's `torch.nn.LayerNorm(D)`: per-feature `norm.weight`, `norm.bias`. The update is not
    /// the gradient flow of any energy unless all weights are equal.
    #[default]
    LayerNorm,
    /// The paper's `EnergyLayerNorm`: scalar `norm.gamma`, vector `norm.delta`, with a Lagrangian;
    /// the block then descends a true energy.
    EnergyLayerNorm,
}

/// Which energy `return_energy` reports per step.
///
/// ```
/// use hopfield_nn::energy::EnergyReport;
/// assert_eq!(EnergyReport::default(), EnergyReport::Port);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnergyReport {
    /// The port's: attention + Hopfield energy at the un-normalised `x_{t+1}` (not where the
    /// dynamics descend).
    #[default]
    Port,
    /// The paper's full energy at `x_{t+1}`: `sum_A (g_A . x_A - L(x_A)) + E_att(g) + E_hop(g)` with
    /// `g = EnergyLayerNorm(x)`; needs [`NormKind::EnergyLayerNorm`].
    Paper,
}

/// Configuration of an [`EnergyTransformer`](super::EnergyTransformer).
///
/// ```
/// use hopfield_nn::energy::{EnergyTransformerConfig, HopfieldType};
/// let cfg = EnergyTransformerConfig::new(8, 16, 2)
///     .with_context(5)
///     .with_hopfield_type(HopfieldType::Softmax)
///     .with_alpha(0.05);
/// assert!(cfg.validate().is_ok());
/// assert!(cfg.clone().with_alpha(-0.1).validate().is_err()); // ascent (E-V3)
/// assert!(EnergyTransformerConfig::new(8, 16, 3).validate().is_err()); // 8 % 3 != 0
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyTransformerConfig {
    /// Token dimension `D`.
    pub dim: usize,
    /// Number of Hopfield memories `M`.
    pub hidden_dim: usize,
    /// Attention heads `H` (`D % H == 0`).
    pub n_heads: usize,
    /// Sequence length of the positional embedding; 0 means none.
    pub context: usize,
    /// Whether a positional embedding exists (with `context > 0`).
    pub use_positional_embedding: bool,
    /// Default number of descent steps (`n_iters_default` in the port).
    pub n_iters: usize,
    /// Step size, >= 0 (0: the tokens do not move, as in the port).
    pub alpha: f64,
    /// Initial attention betas, one per head (default `1/sqrt(D/H)`, exact in f64).
    pub attn_beta: Option<Vec<f64>>,
    /// Initial Hopfield beta (default 1 for ReLU, 0.01 for softmax).
    pub hopfield_beta: Option<f64>,
    /// The Hopfield energy.
    pub hopfield_type: HopfieldType,
    /// The normalisation.
    pub norm: NormKind,
    /// Layer-norm epsilon.
    pub eps: f64,
    /// Whether `forward_detailed` returns per-step features and energies.
    pub return_energy: bool,
    /// Which energy is reported.
    pub energy_report: EnergyReport,
    /// Exclude each token's attention to itself (the paper's formula; the port includes it).
    pub exclude_self: bool,
    /// Std of the initial `Wq`, `Wk`, `W` (the port's 0.002 makes an untrained block ~ identity).
    pub init_scale: f64,
}

impl Default for EnergyTransformerConfig {
    /// The port's defaults for `EnergyTransformer(dim=64, hidden_dim=256, n_heads=4)`.
    fn default() -> Self {
        Self::new(64, 256, 4)
    }
}

impl EnergyTransformerConfig {
    /// The port's defaults: no context, 12 steps, alpha 0.1, ReLU Hopfield, per-feature LayerNorm.
    pub fn new(dim: usize, hidden_dim: usize, n_heads: usize) -> Self {
        Self {
            dim,
            hidden_dim,
            n_heads,
            context: 0,
            use_positional_embedding: true,
            n_iters: 12,
            alpha: 0.1,
            attn_beta: None,
            hopfield_beta: None,
            hopfield_type: HopfieldType::Relu,
            norm: NormKind::LayerNorm,
            eps: 1e-5,
            return_energy: false,
            energy_report: EnergyReport::Port,
            exclude_self: false,
            init_scale: 0.002,
        }
    }

    /// Sets `context` (positional embedding of shape `(1, context, dim)` when > 0).
    pub fn with_context(mut self, context: usize) -> Self {
        self.context = context;
        self
    }
    /// Turns the positional embedding on or off.
    pub fn with_positional_embedding(mut self, on: bool) -> Self {
        self.use_positional_embedding = on;
        self
    }
    /// Sets the default number of steps.
    pub fn with_n_iters(mut self, n: usize) -> Self {
        self.n_iters = n;
        self
    }
    /// Sets the step size.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets the initial attention betas (one per head).
    pub fn with_attn_beta(mut self, beta: Vec<f64>) -> Self {
        self.attn_beta = Some(beta);
        self
    }
    /// Sets the initial Hopfield beta.
    pub fn with_hopfield_beta(mut self, beta: f64) -> Self {
        self.hopfield_beta = Some(beta);
        self
    }
    /// Sets the Hopfield energy.
    pub fn with_hopfield_type(mut self, t: HopfieldType) -> Self {
        self.hopfield_type = t;
        self
    }
    /// Sets the normalisation.
    pub fn with_norm(mut self, norm: NormKind) -> Self {
        self.norm = norm;
        self
    }
    /// Sets the layer-norm epsilon.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Returns features and energies per step from `forward_detailed`.
    pub fn with_return_energy(mut self, on: bool) -> Self {
        self.return_energy = on;
        self
    }
    /// Chooses the reported energy.
    pub fn with_energy_report(mut self, r: EnergyReport) -> Self {
        self.energy_report = r;
        self
    }
    /// Excludes self-attention (the paper's formula).
    pub fn with_exclude_self(mut self, on: bool) -> Self {
        self.exclude_self = on;
        self
    }
    /// Sets the init std of the weights.
    pub fn with_init_scale(mut self, s: f64) -> Self {
        self.init_scale = s;
        self
    }

    /// The paper's block: `EnergyLayerNorm`, the paper's energy reported, energies returned.
    pub fn paper(mut self) -> Self {
        self.norm = NormKind::EnergyLayerNorm;
        self.energy_report = EnergyReport::Paper;
        self.return_energy = true;
        self
    }

    /// Whether a positional embedding parameter exists.
    pub fn has_pos_embedding(&self) -> bool {
        self.use_positional_embedding && self.context > 0
    }

    /// Head dimension `D / H`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads.max(1)
    }

    /// The parameters' state-dict names (with the config fields their sizes come from) and shapes.
    pub(crate) fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (d, h) = (self.dim, self.n_heads);
        let z = self.head_dim();
        let mut v = vec![
            ("mha.Wq (from dim, n_heads)", vec![h, z, d]),
            ("mha.Wk (from dim, n_heads)", vec![h, z, d]),
            ("mha.beta (from n_heads)", vec![h]),
            (
                "hopfield.W (from dim, hidden_dim)",
                vec![d, self.hidden_dim],
            ),
            ("norm (from dim)", vec![d]),
        ];
        if self.has_pos_embedding() {
            v.push((
                "pos_embedding (from context, dim)",
                vec![1, self.context, d],
            ));
        }
        v
    }

    /// Checks every field, including that every parameter's size is computable and allocatable
    /// in principle (overflow-checked) and that `n_iters` is within [`MAX_N_ITERS`](super::MAX_N_ITERS).
    ///
    /// ```
    /// use hopfield_nn::energy::EnergyTransformerConfig;
    /// let huge = EnergyTransformerConfig::new(1 << 40, 16, 1);
    /// assert!(huge.validate().unwrap_err().to_string().contains("mha.Wq"));
    /// ```
    pub fn validate(&self) -> Result<(), EtError> {
        let bad = |field, value: String, reason| {
            Err(EtError::Config {
                field,
                value,
                reason,
            })
        };
        if self.dim == 0 {
            return bad("dim", "0".into(), "must be > 0");
        }
        // E-V9: with no memories the ReLU Hopfield energy is 0 (an attention-only block, as in the
        // port), but the softmax one is -(1/beta) logsumexp(nothing) = +inf.
        if self.hidden_dim == 0 && self.hopfield_type == HopfieldType::Softmax {
            return bad(
                "hidden_dim",
                "0".into(),
                "must be > 0 with the softmax Hopfield (its energy over no memories is +inf)",
            );
        }
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return bad(
                "n_heads",
                format!("{} (dim {})", self.n_heads, self.dim),
                "must be > 0 and divide dim",
            );
        }
        validate::steps(self.n_iters)?;
        for (what, dims) in self.param_shapes() {
            // Dtype-agnostic here (8 bytes, the widest): the builder's dtype is checked, and a
            // large allocation probed, when the parameters are made.
            let n = validate::elem_count(what, &dims)?;
            if n > isize::MAX as usize / 8 {
                return Err(EtError::TooLarge {
                    what: what.into(),
                    shape: dims,
                    reason: format!("{n} elements exceed the largest possible allocation"),
                });
            }
        }
        // E-V3: a negative step ascends the energy (the port runs it; the tokens grow without
        // bound over the steps), NaN/inf make every token NaN.
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return bad("alpha", self.alpha.to_string(), "must be finite and >= 0");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps.to_string(), "must be finite and > 0");
        }
        if !(self.init_scale.is_finite() && self.init_scale >= 0.0) {
            return bad(
                "init_scale",
                self.init_scale.to_string(),
                "must be finite and >= 0",
            );
        }
        if let Some(b) = &self.attn_beta {
            if b.len() != self.n_heads {
                return bad("attn_beta", format!("{b:?}"), "needs one beta per head");
            }
            if b.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return bad("attn_beta", format!("{b:?}"), "must be finite and > 0");
            }
        }
        if let Some(b) = self.hopfield_beta {
            if !(b.is_finite() && b > 0.0) {
                return bad("hopfield_beta", b.to_string(), "must be finite and > 0");
            }
        }
        if self.energy_report == EnergyReport::Paper && self.norm != NormKind::EnergyLayerNorm {
            return Err(EtError::PaperEnergyNeedsEnergyNorm);
        }
        Ok(())
    }

    /// A configuration from the port's constructor keyword arguments (JSON), e.g.
    /// `{"dim": 8, "hidden_dim": 16, "n_heads": 2, "context": 5, "hopfield_type": "softmax"}`.
    /// `dim`, `hidden_dim` and `n_heads` are required; `beta` may only be `null` (a number
    /// crashes the port, E1, and a tensor means two different things, E2); `norm` must name a
    /// `LayerNorm`; `ema_decay` is accepted and unused (this crate leaves the EMA to the
    /// optimiser). Unknown arguments and an unknown `hopfield_type` are errors, and so are values
    /// of the wrong type, named by argument.
    ///
    /// ```
    /// use hopfield_nn::energy::{EnergyTransformerConfig, HopfieldType};
    /// let kw = serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 4, "hopfield_type": "softmax"});
    /// let cfg = EnergyTransformerConfig::from_port_kwargs(&kw).unwrap();
    /// assert_eq!(cfg.hopfield_type, HopfieldType::Softmax);
    /// assert_eq!(cfg.n_iters, 12);
    /// let kw = serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 4, "alpha": "0.1"});
    /// let e = EnergyTransformerConfig::from_port_kwargs(&kw).unwrap_err();
    /// assert_eq!(e.to_string(), r#"invalid config alpha = "0.1": expected a number"#);
    /// ```
    pub fn from_port_kwargs(kw: &serde_json::Value) -> Result<Self, EtError> {
        let unsupported = |name: &str, v: &serde_json::Value| EtError::UnsupportedArgument {
            name: name.to_string(),
            value: v.to_string(),
        };
        let serde_json::Value::Object(map) = kw else {
            return Err(unsupported("kwargs", kw));
        };
        let k: PortKwargs = kwargs::parse(map.clone()).map_err(|f| match f {
            Failure::NotObject(_) => unsupported("kwargs", kw),
            Failure::Unknown { key, value } => unsupported(&key, &value),
            Failure::Invalid {
                field,
                value,
                expected,
            } => EtError::Config {
                field,
                value: value.to_string(),
                reason: expected_reason(&expected),
            },
            Failure::Missing { field } => unsupported(field, &serde_json::Value::Null),
        })?;
        let required = |name: &str, v: Option<usize>| {
            v.ok_or_else(|| unsupported(name, &serde_json::Value::Null))
        };
        let mut cfg = Self::new(
            required("dim", k.dim)?,
            required("hidden_dim", k.hidden_dim)?,
            required("n_heads", k.n_heads)?,
        );
        if let Some(v) = k.context {
            cfg.context = v;
        }
        if let Some(v) = k.n_iters_default {
            cfg.n_iters = v;
        }
        if let Some(v) = k.alpha {
            cfg.alpha = v;
        }
        if let Some(v) = k.use_positional_embedding {
            cfg.use_positional_embedding = v;
        }
        if let Some(v) = k.return_energy {
            cfg.return_energy = v;
        }
        if let Some(v) = k.hopfield_type {
            cfg.hopfield_type = v.parse()?;
        }
        if let Some(b) = k.beta.filter(|b| !b.is_null()) {
            return Err(unsupported("beta", &b));
        }
        if let Some(n) = k.norm.filter(|n| !n.ends_with("LayerNorm")) {
            return Err(unsupported("norm", &serde_json::Value::String(n)));
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

kwargs::kwargs_struct! {
    /// The port's `EnergyTransformer(...)` arguments, as given.
    struct PortKwargs {
        dim: usize,
        hidden_dim: usize,
        n_heads: usize,
        context: usize,
        n_iters_default: usize,
        alpha: f64,
        beta: serde_json::Value,
        hopfield_type: String,
        use_positional_embedding: bool,
        norm: String,
        /// Type-checked only: the EMA update is the optimiser's business here.
        #[allow(dead_code)]
        ema_decay: Option<f64>,
        return_energy: bool,
    }
}

/// [`EtError::Config`]'s reason (a `&'static str`) for what a kwarg of the wrong type expected.
fn expected_reason(expected: &str) -> &'static str {
    match expected {
        "a non-negative integer" => "expected a non-negative integer",
        "a number" => "expected a number",
        "a boolean" => "expected a boolean",
        "a string" => "expected a string",
        _ => "has the wrong type",
    }
}
