//! [`DiffusionConfig`]: every field of difflayers' `DiffusionConfig`, with validation.

use crate::DiffusionError;
use candle_core::Result;
use std::str::FromStr;

/// Which diffusion operator (difflayers' `diffusion_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DiffusionMode {
    /// One explicit Euler step `(I - eta L) x`.
    Simple,
    /// `steps` Euler steps with an early-stop guard.
    Iterative,
    /// Heat kernel `U exp(-eta Lambda) U^T x`.
    Spectral,
    /// `(1 - eta deg) x + eta W x` on the adjacency (unnormalised Laplacian), the default.
    #[default]
    Factored,
}

impl FromStr for DiffusionMode {
    type Err = candle_core::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "simple" => Ok(Self::Simple),
            "iterative" => Ok(Self::Iterative),
            "spectral" => Ok(Self::Spectral),
            "factored" => Ok(Self::Factored),
            o => Err(DiffusionError::InvalidConfig(format!(
                "unknown diffusion mode {o:?} (simple, iterative, spectral, factored)"
            ))
            .into()),
        }
    }
}

/// Which attention (difflayers' `attention_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttentionMode {
    /// `softmax(beta Q K^T) V`.
    #[default]
    Dense,
    /// Softmax over each query's neighbour-table entries only.
    Graph,
}

impl FromStr for AttentionMode {
    type Err = candle_core::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Self::Dense),
            "graph" => Ok(Self::Graph),
            o => Err(DiffusionError::InvalidConfig(format!(
                "unknown attention mode {o:?} (dense, graph)"
            ))
            .into()),
        }
    }
}

/// The diffusion configuration of difflayers (its `DiffusionConfig` and the diffusion arguments of
/// `DiffusedHopfield`, same names and defaults): [`GraphCache`](crate::GraphCache) builds graphs
/// and operators from the graph fields, and `hopfield_nn::DiffusedHopfieldConfig` embeds it
/// whole for the diffuse -> attend loop. Plain struct: set fields directly or chain the builder
/// methods, then [`validate`](Self::validate) (the consumers validate too).
///
/// difflayers' `beta` and `use_sparse` are not here: `DiffusedHopfield`'s loop attention takes
/// its beta from the Hopfield `scaling`, as difflayers does, so `beta` was read by nothing; graphs
/// are always stored sparse with the dense path's weights (D4), so `use_sparse` would choose
/// nothing (`DiffusedHopfieldConfig::from_kwargs` still accepts it).
///
/// ```
/// use dahn_diffusion::{DiffusionConfig, DiffusionMode};
/// let cfg = DiffusionConfig::default().eta(0.3).mode(DiffusionMode::Simple).k_neighbors(3);
/// cfg.validate()?;
/// assert_eq!(cfg.steps, 3);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionConfig {
    /// Diffusion strength (step size / heat-kernel time); 0 turns diffusion off. Default 0.1.
    pub eta: f64,
    /// Operator applications per call in [`GraphCache`](crate::GraphCache)'s operators
    /// (iterative, factored; 0 makes them the identity, as in difflayers); in `DiffusedHopfield`,
    /// the number of diffuse -> attend rounds (difflayers' `diffusion_steps`; 0 runs none), each
    /// applying the operator once. Default 3.
    pub steps: usize,
    /// Default factored.
    pub diffusion_mode: DiffusionMode,
    /// The loop attention: dense, or over each node's graph neighbours. Default dense.
    pub attention_mode: AttentionMode,
    /// kNN degree (clamped to N - 1 at build time; 0 gives the edgeless graph, on which every
    /// operator is the identity, as in difflayers). Default 5.
    pub k_neighbors: usize,
    /// Normalised Laplacian for simple/iterative/spectral (factored always uses `D - W`, as
    /// difflayers, D5). Default true.
    pub use_normalized_laplacian: bool,
    /// Diffuse the stored patterns (keys). Default true.
    pub diffuse_key: bool,
    /// Diffuse the state patterns (queries) over their own graph. Default false.
    pub diffuse_query: bool,
    /// Diffuse the association logits over the key graph (always crashes in difflayers, D2;
    /// `hopfield_nn::DiffusedHopfield` implements it). Default false.
    pub use_logit_diffusion: bool,
    /// eta for logit diffusion; `None` = `eta`.
    pub logit_eta: Option<f64>,
    /// Scale eta by the entropy of the raw associations ([`crate::compute_adaptive_eta`]).
    /// Default false.
    pub adaptive_eta: bool,
    /// Sigmoid temperature of the adaptive eta. Default 5.0.
    pub adaptive_temperature: f64,
    /// Entropy midpoint of the adaptive eta. Default 1.0.
    pub adaptive_threshold: f64,
    /// Reuse the graph while the patterns are unchanged (see `GraphCache`). Default true.
    pub cache_graph: bool,
    /// Stop the dynamics when |E_t - E_(t-1)| < tol; 0 disables. Default 0.
    pub energy_stop_tol: f64,
    /// How the kNN graph is built: exact (default; O(N^2 d)) or approximate
    /// ([`dahn_graph::KnnMethod::NnDescent`], for 10^6 patterns; recall ~0.93 at k = 8).
    pub knn_method: dahn_graph::KnnMethod,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            eta: 0.1,
            steps: 3,
            diffusion_mode: DiffusionMode::Factored,
            attention_mode: AttentionMode::Dense,
            k_neighbors: 5,
            use_normalized_laplacian: true,
            diffuse_key: true,
            diffuse_query: false,
            use_logit_diffusion: false,
            logit_eta: None,
            adaptive_eta: false,
            adaptive_temperature: 5.0,
            adaptive_threshold: 1.0,
            cache_graph: true,
            energy_stop_tol: 0.0,
            knn_method: dahn_graph::KnnMethod::Exact,
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident : $field:ident : $t:ty;)*) => {
        $( $(#[$m])* pub fn $name(mut self, v: $t) -> Self { self.$field = v; self } )*
    };
}

impl DiffusionConfig {
    setters! {
        /// Sets `eta`.
        eta: eta: f64;
        /// Sets `steps`.
        steps: steps: usize;
        /// Sets `diffusion_mode`.
        mode: diffusion_mode: DiffusionMode;
        /// Sets `attention_mode`.
        attention: attention_mode: AttentionMode;
        /// Sets `k_neighbors`.
        k_neighbors: k_neighbors: usize;
        /// Sets `use_normalized_laplacian`.
        normalized_laplacian: use_normalized_laplacian: bool;
        /// Sets `diffuse_key`.
        diffuse_key: diffuse_key: bool;
        /// Sets `diffuse_query`.
        diffuse_query: diffuse_query: bool;
        /// Sets `use_logit_diffusion`.
        logit_diffusion: use_logit_diffusion: bool;
        /// Sets `logit_eta`.
        logit_eta: logit_eta: Option<f64>;
        /// Sets `adaptive_eta`.
        adaptive_eta: adaptive_eta: bool;
        /// Sets `adaptive_temperature`.
        adaptive_temperature: adaptive_temperature: f64;
        /// Sets `adaptive_threshold`.
        adaptive_threshold: adaptive_threshold: f64;
        /// Sets `cache_graph`.
        cache_graph: cache_graph: bool;
        /// Sets `knn_method` (exact or NN-descent kNN graphs).
        knn_method: knn_method: dahn_graph::KnnMethod;
        /// Sets `energy_stop_tol`.
        energy_stop_tol: energy_stop_tol: f64;
    }

    /// Checks every field:
    /// - `eta` finite and >= 0; for the Euler modes with the normalised Laplacian (whose largest
    ///   eigenvalue is at least 1 on any graph with an edge) `eta <= 2`, beyond which
    ///   `(I - eta L)` provably amplifies. Factored mode's bound depends on the degrees and is
    ///   checked when the operator is built (`FactoredDiffusion`); spectral is stable for any eta;
    /// - `steps <= MAX_STEPS` ([`crate::MAX_STEPS`]); `k_neighbors` and `steps` may be 0
    ///   (difflayers' edge values: no edges, no steps);
    /// - `adaptive_temperature`, `adaptive_threshold` finite; `energy_stop_tol >= 0`;
    /// - `logit_eta`, when given, finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| -> Result<()> { Err(DiffusionError::InvalidConfig(m).into()) };
        if !self.eta.is_finite() || self.eta < 0.0 {
            return bad(format!("eta must be finite and >= 0, got {}", self.eta));
        }
        if matches!(
            self.diffusion_mode,
            DiffusionMode::Simple | DiffusionMode::Iterative
        ) && self.use_normalized_laplacian
            && self.eta > 2.0
        {
            return Err(DiffusionError::Unstable {
                eta: self.eta,
                lambda_lower_bound: 1.0,
                what: "Euler step on the normalised Laplacian",
            }
            .into());
        }
        crate::validate::steps("DiffusionConfig", self.steps)?;
        for (name, v) in [
            ("adaptive_temperature", self.adaptive_temperature),
            ("adaptive_threshold", self.adaptive_threshold),
        ] {
            if !v.is_finite() {
                return bad(format!("{name} must be finite, got {v}"));
            }
        }
        if !self.energy_stop_tol.is_finite() || self.energy_stop_tol < 0.0 {
            return bad(format!(
                "energy_stop_tol must be finite and >= 0, got {}",
                self.energy_stop_tol
            ));
        }
        if let Some(e) = self.logit_eta {
            if !e.is_finite() || e < 0.0 {
                return bad(format!("logit_eta must be finite and >= 0, got {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn defaults_are_difflayers_defaults() {
        let c = DiffusionConfig::default();
        assert_eq!((c.eta, c.steps, c.k_neighbors), (0.1, 3, 5));
        assert_eq!(c.diffusion_mode, DiffusionMode::Factored);
        assert!(c.use_normalized_laplacian && c.diffuse_key && !c.diffuse_query && c.cache_graph);
        assert!(c.validate().is_ok());
    }

    #[rstest]
    #[case(DiffusionConfig::default().eta(-0.1))]
    #[case(DiffusionConfig::default().eta(f64::NAN))]
    #[case(DiffusionConfig::default().steps(crate::MAX_STEPS + 1))]
    #[case(DiffusionConfig::default().adaptive_temperature(f64::INFINITY))]
    #[case(DiffusionConfig::default().logit_eta(Some(-1.0)))]
    #[case(DiffusionConfig::default().energy_stop_tol(-1.0))]
    #[case(DiffusionConfig::default().mode(DiffusionMode::Simple).eta(2.5))]
    fn invalid_configs_are_typed_errors(#[case] c: DiffusionConfig) {
        let e = c.validate().unwrap_err();
        assert!(crate::DiffusionError::find(&e).is_some(), "{e}");
    }

    /// difflayers' edge values: k = 0 (an empty `topk`, no edges) and 0 operator steps (the
    /// identity) are accepted.
    #[test]
    fn zero_k_and_zero_steps_are_accepted() -> Result<()> {
        DiffusionConfig::default().k_neighbors(0).validate()?;
        DiffusionConfig::default().steps(0).validate()
    }

    #[test]
    fn spectral_accepts_large_eta_and_modes_parse() -> Result<()> {
        DiffusionConfig::default()
            .mode(DiffusionMode::Spectral)
            .eta(5.0)
            .validate()?;
        assert_eq!(
            "iterative".parse::<DiffusionMode>()?,
            DiffusionMode::Iterative
        );
        assert_eq!("graph".parse::<AttentionMode>()?, AttentionMode::Graph);
        assert!("nope".parse::<DiffusionMode>().is_err());
        Ok(())
    }
}
