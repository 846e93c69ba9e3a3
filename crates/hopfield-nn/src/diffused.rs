//! `DiffusedHopfield`: a drop-in [`Hopfield`] whose stored (and optionally state) patterns are
//! diffused over a kNN graph of the patterns before the association (difflayers'
//! `DiffusedHopfield`, Diffusion-Augmented Hopfield Networks).
//!
//! Pipeline (difflayers 0.1.1 semantics): the input LayerNorms; then, if `eta > 0` and keys or
//! queries are diffused, a kNN graph of the normalised stored patterns (and of the state patterns
//! with `diffuse_query`), an optional entropy-adaptive eta, and `diffusion_steps` rounds of
//! "diffuse K (and Q), then `Q = softmax(beta0 Q K^T) V`" (dense or graph-constrained attention,
//! optional energy early stop); finally the unchanged Hopfield core (projections, heads, masks,
//! update steps, output projection). Parameters and state_dict names are exactly `Hopfield`'s.
//! The diffusion is the [`PatternStage`](crate::stage::PatternStage) of the `Hopfield` pipeline
//! (`diffused/stage.rs`; logit diffusion, its [`LogitTransform`](crate::stage::LogitTransform),
//! in `diffused/logits.rs`), run by [`Hopfield::forward_staged`].
//!
//! Deliberate differences from difflayers, each tested (ids from
//! `docs/design/difflayers-semantics.md`):
//! - **Graphs per sample** by default ([`GraphScope::PerSample`]): difflayers builds one graph
//!   from the batch mean, so a sample's output depends on the other samples (D9/B7).
//!   [`GraphScope::BatchMean`] reproduces difflayers exactly.
//! - **Logit diffusion works** (it always crashes in difflayers, D2): the association logits of
//!   every head are diffused over the key graph with `logit_eta` before the softmax, at every
//!   update step, and the values and output projection are applied as usual.
//! - **Padded stored patterns stay out of the diffusion** (per-sample graphs, dense loop
//!   attention): the graph, the diffusion, the adaptive eta, the loop attention and logit
//!   diffusion only see the patterns the `stored_pattern_padding_mask` keeps, so padding never
//!   changes the result (difflayers lets padded patterns smooth the real ones, D8). Association
//!   masks act in the core only, as in difflayers.
//! - Float64 end to end (D1); graph cache keyed on the pattern values (D10).
//!
//! **Graph reuse**: the key (and query) graphs are cached per pattern set in an LRU
//! ([`GraphCache`], [`DiffusedHopfieldConfig::graph_cache_capacity`] sets, raised to the batch size
//! when a batch has more samples), so a batch whose patterns did not change builds no graph on
//! the next call, and a batch where one sample changed rebuilds that sample's graph only. A caller
//! who keeps graphs passes them in with [`DiffusedHopfield::forward_with_graphs`] ([`Graphs`]).

mod logits;
mod padding;
mod stage;

use crate::config::{kwargs, HopfieldConfig};
use crate::hopfield::{Hopfield, HopfieldInput, HopfieldOutput};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use dahn_diffusion::{AttentionMode, CachedGraph, DiffusionConfig, DiffusionMode, GraphCache};
use hopfield_core::{HopfieldError, Masks};
use stage::Diffusion;
use std::sync::Arc;

/// Which patterns a diffusion graph is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphScope {
    /// One graph per sample, from that sample's patterns: results never depend on the batch.
    #[default]
    PerSample,
    /// One graph from the batch mean of the patterns, shared by every sample (difflayers).
    BatchMean,
}

/// Configuration of [`DiffusedHopfield`]: the Hopfield arguments, difflayers' diffusion arguments
/// (one [`DiffusionConfig`], same names and defaults; difflayers' `diffusion_steps` is its
/// `steps`) and where graphs come from.
///
/// ```
/// use hopfield_nn::{DiffusedHopfieldConfig, HopfieldConfig};
/// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8)).with_eta(0.2).with_diffusion_steps(4);
/// assert_eq!((cfg.diffusion.eta, cfg.diffusion.k_neighbors, cfg.diffusion.steps), (0.2, 5, 4));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusedHopfieldConfig {
    /// The Hopfield part.
    pub hopfield: HopfieldConfig,
    /// The diffusion part: graphs, operator and the diffuse -> attend loop (`steps` rounds).
    pub diffusion: DiffusionConfig,
    /// Graph per sample (default) or from the batch mean (difflayers).
    pub graph_scope: GraphScope,
    /// Pattern sets each graph cache (keys, queries) keeps, least recently used evicted first
    /// (default [`GraphCache::DEFAULT_CAPACITY`]); raised to the batch size when a per-sample
    /// batch has more samples, so that unchanged batches always hit. Must be >= 1.
    pub graph_cache_capacity: usize,
}

impl DiffusedHopfieldConfig {
    /// difflayers' defaults around a Hopfield config.
    pub fn new(hopfield: HopfieldConfig) -> Self {
        Self {
            hopfield,
            diffusion: DiffusionConfig::default(),
            graph_scope: GraphScope::PerSample,
            graph_cache_capacity: GraphCache::DEFAULT_CAPACITY,
        }
    }

    /// Replaces the whole diffusion configuration.
    ///
    /// ```
    /// use dahn_diffusion::{DiffusionConfig, DiffusionMode};
    /// use hopfield_nn::{DiffusedHopfieldConfig, HopfieldConfig};
    /// let d = DiffusionConfig::default().mode(DiffusionMode::Simple).k_neighbors(3);
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8)).with_diffusion(d.clone());
    /// assert_eq!(cfg.diffusion, d);
    /// ```
    pub fn with_diffusion(mut self, diffusion: DiffusionConfig) -> Self {
        self.diffusion = diffusion;
        self
    }
    /// Sets `eta`.
    pub fn with_eta(mut self, v: f64) -> Self {
        self.diffusion.eta = v;
        self
    }
    /// Sets `k_neighbors`.
    pub fn with_k_neighbors(mut self, v: usize) -> Self {
        self.diffusion.k_neighbors = v;
        self
    }
    /// Sets how the kNN graphs are built (exact, or NN-descent for very large memories).
    ///
    /// ```
    /// use dahn_graph::{KnnMethod, NnDescent};
    /// use hopfield_nn::{DiffusedHopfieldConfig, HopfieldConfig};
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8))
    ///     .with_knn_method(KnnMethod::NnDescent(NnDescent::default()));
    /// assert!(matches!(cfg.diffusion.knn_method, KnnMethod::NnDescent(_)));
    /// ```
    pub fn with_knn_method(mut self, v: dahn_graph::KnnMethod) -> Self {
        self.diffusion.knn_method = v;
        self
    }
    /// Sets `diffusion_mode`.
    pub fn with_diffusion_mode(mut self, v: DiffusionMode) -> Self {
        self.diffusion.diffusion_mode = v;
        self
    }
    /// Sets the number of diffuse -> attend rounds (difflayers' `diffusion_steps`).
    pub fn with_diffusion_steps(mut self, v: usize) -> Self {
        self.diffusion.steps = v;
        self
    }
    /// Sets `diffuse_key` and `diffuse_query`.
    pub fn with_diffuse(mut self, key: bool, query: bool) -> Self {
        self.diffusion.diffuse_key = key;
        self.diffusion.diffuse_query = query;
        self
    }
    /// Sets `use_normalized_laplacian`.
    pub fn with_normalized_laplacian(mut self, v: bool) -> Self {
        self.diffusion.use_normalized_laplacian = v;
        self
    }
    /// Sets `attention_mode`.
    pub fn with_attention_mode(mut self, v: AttentionMode) -> Self {
        self.diffusion.attention_mode = v;
        self
    }
    /// Enables logit diffusion with this eta (`None`: `eta`).
    pub fn with_logit_diffusion(mut self, on: bool, logit_eta: Option<f64>) -> Self {
        self.diffusion.use_logit_diffusion = on;
        self.diffusion.logit_eta = logit_eta;
        self
    }
    /// Enables the entropy-adaptive eta.
    pub fn with_adaptive_eta(mut self, on: bool, temperature: f64, threshold: f64) -> Self {
        self.diffusion.adaptive_eta = on;
        self.diffusion.adaptive_temperature = temperature;
        self.diffusion.adaptive_threshold = threshold;
        self
    }
    /// Sets `energy_stop_tol`.
    pub fn with_energy_stop_tol(mut self, v: f64) -> Self {
        self.diffusion.energy_stop_tol = v;
        self
    }
    /// Sets `cache_graph`.
    pub fn with_cache_graph(mut self, v: bool) -> Self {
        self.diffusion.cache_graph = v;
        self
    }
    /// Sets `graph_scope`.
    pub fn with_graph_scope(mut self, v: GraphScope) -> Self {
        self.graph_scope = v;
        self
    }
    /// Sets `graph_cache_capacity` (pattern sets kept per graph cache, >= 1).
    ///
    /// ```
    /// use hopfield_nn::{DiffusedHopfieldConfig, HopfieldConfig};
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8)).with_graph_cache_capacity(4);
    /// assert_eq!(cfg.graph_cache_capacity, 4);
    /// ```
    pub fn with_graph_cache_capacity(mut self, v: usize) -> Self {
        self.graph_cache_capacity = v;
        self
    }

    /// Parses difflayers' `DiffusedHopfield` kwargs: Hopfield's ([`HopfieldConfig::from_kwargs`]),
    /// the diffusion arguments, and our `graph_scope` (`"per_sample"` or `"batch_mean"`).
    /// `use_sparse` is accepted and changes nothing (graphs are always stored sparse with the
    /// dense path's weights, D4). Errors name the argument.
    ///
    /// ```
    /// use dahn_diffusion::DiffusionMode;
    /// use hopfield_nn::DiffusedHopfieldConfig;
    /// let cfg = DiffusedHopfieldConfig::from_kwargs(
    ///     r#"{"input_size": 8, "eta": 0.2, "diffusion_mode": "simple", "diffusion_steps": 2}"#)?;
    /// assert_eq!((cfg.diffusion.eta, cfg.diffusion.diffusion_mode, cfg.diffusion.steps), (0.2, DiffusionMode::Simple, 2));
    /// let e = DiffusedHopfieldConfig::from_kwargs(r#"{"input_size": 8, "eta": "0.2"}"#).unwrap_err();
    /// assert_eq!(e.to_string(), r#"invalid config `eta`: expected a number, got "0.2""#);
    /// # Ok::<(), hopfield_core::HopfieldError>(())
    /// ```
    pub fn from_kwargs(json: &str) -> std::result::Result<Self, HopfieldError> {
        let mut rest = kwargs::object(json)?;
        let kw: DiffusedKwargs = kwargs::parse(kwargs::split_off::<DiffusedKwargs>(&mut rest))?;
        let mut c = Self::new(HopfieldConfig::from_kwargs_map(rest)?);
        let d = &mut c.diffusion;
        macro_rules! given {
            ($($kw:ident => $field:ident),*) => {
                $(if let Some(v) = kw.$kw {
                    d.$field = v;
                })*
            };
        }
        given!(
            eta => eta,
            k_neighbors => k_neighbors,
            use_normalized_laplacian => use_normalized_laplacian,
            diffuse_query => diffuse_query,
            diffuse_key => diffuse_key,
            diffusion_steps => steps,
            use_logit_diffusion => use_logit_diffusion,
            logit_eta => logit_eta,
            adaptive_eta => adaptive_eta,
            adaptive_temperature => adaptive_temperature,
            adaptive_threshold => adaptive_threshold,
            cache_graph => cache_graph,
            energy_stop_tol => energy_stop_tol
        );
        let named = |field: &'static str, e: candle_core::Error| HopfieldError::Config {
            field,
            reason: e.to_string(),
        };
        if let Some(m) = kw.diffusion_mode {
            d.diffusion_mode = m.parse().map_err(|e| named("diffusion_mode", e))?;
        }
        if let Some(m) = kw.attention_mode {
            d.attention_mode = m.parse().map_err(|e| named("attention_mode", e))?;
        }
        if let Some(s) = kw.graph_scope {
            c.graph_scope = match s.as_str() {
                "per_sample" => GraphScope::PerSample,
                "batch_mean" => GraphScope::BatchMean,
                o => {
                    return Err(HopfieldError::Config {
                        field: "graph_scope",
                        reason: format!("expected per_sample or batch_mean, got {o:?}"),
                    })
                }
            };
        }
        Ok(c)
    }

    /// Whether the diffuse -> attend loop runs: `eta > 0`, keys or queries diffused, and at least
    /// one round (`diffusion_steps = 0` runs none: difflayers builds its graph and leaves it unused,
    /// we build none).
    ///
    /// ```
    /// use hopfield_nn::{DiffusedHopfieldConfig, HopfieldConfig};
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8));
    /// assert!(cfg.dynamics_active());
    /// assert!(!cfg.clone().with_diffusion_steps(0).dynamics_active());
    /// assert!(!cfg.with_eta(0.0).dynamics_active());
    /// ```
    pub fn dynamics_active(&self) -> bool {
        let d = &self.diffusion;
        d.eta > 0.0 && (d.diffuse_key || d.diffuse_query) && d.steps > 0
    }

    /// The graph caches' configuration: the loop applies each operator once per round.
    fn operator_config(&self) -> DiffusionConfig {
        self.diffusion.clone().steps(1)
    }

    fn validate(&self) -> std::result::Result<(), HopfieldError> {
        let cfg = |field, reason: String| HopfieldError::Config { field, reason };
        let h = &self.hopfield;
        if self.dynamics_active()
            && h.pattern_projection_size.is_some()
            && h.pattern_projection_size != h.input_size
        {
            return Err(cfg(
                "pattern_projection_size",
                format!(
                    "the diffusion loop replaces the state patterns by readouts of the projections, \
                     so pattern_projection_size ({:?}) must equal input_size ({:?})",
                    h.pattern_projection_size, h.input_size
                ),
            ));
        }
        // Edge values (docs/design/difflayers-semantics.md): each bad value names its argument.
        // D-V1: difflayers silently turns the diffusion off for a negative or NaN eta
        // (`eta > 0` is false) and returns NaN for an infinite one.
        let d = &self.diffusion;
        if !(d.eta.is_finite() && d.eta >= 0.0) {
            return Err(cfg(
                "eta",
                format!("must be finite and >= 0, got {}", d.eta),
            ));
        }
        // D-V4: a negative or NaN tolerance silently disables the energy stop in difflayers.
        if !(d.energy_stop_tol.is_finite() && d.energy_stop_tol >= 0.0) {
            return Err(cfg(
                "energy_stop_tol",
                format!(
                    "must be finite and >= 0 (0 disables the energy stop), got {}",
                    d.energy_stop_tol
                ),
            ));
        }
        // D-V5: a NaN temperature or threshold makes difflayers' adaptive eta NaN, which its 5%
        // test then silently ignores; an infinite one saturates the sigmoid.
        for (field, v) in [
            ("adaptive_temperature", d.adaptive_temperature),
            ("adaptive_threshold", d.adaptive_threshold),
        ] {
            if !v.is_finite() {
                return Err(cfg(field, format!("must be finite, got {v}")));
            }
        }
        // D-V6: logit_eta scales the logit diffusion (which crashes in difflayers, D2).
        if let Some(e) = d.logit_eta.filter(|e| !(e.is_finite() && *e >= 0.0)) {
            return Err(cfg(
                "logit_eta",
                format!("must be finite and >= 0, got {e}"),
            ));
        }
        // The round count is checked at the loop (MAX_STEPS), where it is used: with the loop
        // off, difflayers accepts any count; 0 rounds is plain Hopfield on the normalised patterns.
        // D-V3: with no neighbours, difflayers' graph attention reads out zeros (a softmax over
        // nothing) in every round; dense attention with k = 0 is fine (no edges, no diffusion).
        if self.dynamics_active()
            && self.diffusion.attention_mode == AttentionMode::Graph
            && self.diffusion.k_neighbors == 0
        {
            return Err(cfg(
                "k_neighbors",
                "attention_mode graph needs k_neighbors >= 1: with no neighbours every loop \
                 readout is zero (difflayers returns zeros there)"
                    .into(),
            ));
        }
        if self.graph_cache_capacity == 0 {
            return Err(cfg(
                "graph_cache_capacity",
                "must be >= 1, got 0 (use with_cache_graph(false) to not cache)".into(),
            ));
        }
        // D-V8: an Euler step that provably amplifies is an eta too large for the mode.
        self.operator_config().validate().map_err(|e| {
            let field = match dahn_diffusion::DiffusionError::find(&e) {
                Some(dahn_diffusion::DiffusionError::Unstable { .. }) => "eta",
                _ => "diffusion",
            };
            cfg(field, e.to_string())
        })
    }
}

kwargs::kwargs_struct! {
    /// difflayers' diffusion arguments of `DiffusedHopfield`, and our `graph_scope`, as given.
    struct DiffusedKwargs {
        eta: f64,
        k_neighbors: usize,
        use_normalized_laplacian: bool,
        diffuse_query: bool,
        diffuse_key: bool,
        diffusion_mode: String,
        diffusion_steps: usize,
        attention_mode: String,
        /// Accepted for compatibility; see [`DiffusedHopfieldConfig::from_kwargs`].
        #[allow(dead_code)]
        use_sparse: bool,
        use_logit_diffusion: bool,
        logit_eta: Option<f64>,
        adaptive_eta: bool,
        adaptive_temperature: f64,
        adaptive_threshold: f64,
        cache_graph: bool,
        energy_stop_tol: f64,
        graph_scope: String,
    }
}

/// Graphs a caller keeps and passes to [`DiffusedHopfield::forward_with_graphs`] instead of the
/// module's caches: one per sample with [`GraphScope::PerSample`] (built on that sample's
/// unpadded stored patterns), one with [`GraphScope::BatchMean`]. Build them with
/// [`CachedGraph::build`] or [`CachedGraph::from_graph`] and [`DiffusedHopfield::graph_config`],
/// or take them from an earlier [`DiffusedOutput`] (`key_graphs`, `query_graphs`).
///
/// ```
/// use hopfield_nn::diffused::Graphs;
/// let g = Graphs::new(vec![]);
/// assert!(g.keys.is_empty() && g.queries.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Graphs {
    /// Key graphs (over the stored patterns), one per group.
    pub keys: Vec<Arc<CachedGraph>>,
    /// Query graphs (over the state patterns), one per group, used with `diffuse_query`; empty:
    /// the module's query cache builds them.
    pub queries: Vec<Arc<CachedGraph>>,
}

impl Graphs {
    /// Key graphs only (query graphs, if needed, come from the module's cache).
    pub fn new(keys: Vec<Arc<CachedGraph>>) -> Self {
        Self {
            keys,
            queries: Vec::new(),
        }
    }

    /// Adds query graphs.
    ///
    /// ```
    /// use hopfield_nn::diffused::Graphs;
    /// let g = Graphs::new(vec![]).with_queries(vec![]);
    /// assert!(g.queries.is_empty());
    /// ```
    pub fn with_queries(mut self, queries: Vec<Arc<CachedGraph>>) -> Self {
        self.queries = queries;
        self
    }
}

/// Everything one forward pass of [`DiffusedHopfield`] computes.
#[derive(Debug, Clone)]
pub struct DiffusedOutput {
    /// The Hopfield core's result (output, association, projected patterns, update steps).
    pub hopfield: HopfieldOutput,
    /// The state patterns handed to the core, batch-major `(N, L, E)`.
    pub core_state: Tensor,
    /// The stored patterns handed to the core, batch-major `(N, S, E)`.
    pub core_stored: Tensor,
    /// The key graph of each group (one per sample, or one for the batch).
    pub key_graphs: Vec<Arc<CachedGraph>>,
    /// The query graph of each group, with `diffuse_query`.
    pub query_graphs: Vec<Arc<CachedGraph>>,
    /// Diffuse-attend rounds run per group.
    pub dynamics_steps_run: Vec<usize>,
    /// The eta used per group (differs from `eta` only with `adaptive_eta`).
    pub eta_effective: Vec<f64>,
    /// Energies per group, with `energy_stop_tol > 0`.
    pub energies: Vec<Vec<f64>>,
}

/// A drop-in [`Hopfield`] with diffusion of keys and/or queries over pattern graphs, logit
/// diffusion, adaptive eta and energy early stop (difflayers' `DiffusedHopfield`). Loads
/// `Hopfield` checkpoints (identical state_dict).
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use hopfield_nn::{DiffusedHopfield, DiffusedHopfieldConfig, HopfieldConfig};
/// let map = VarMap::new();
/// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8).with_num_heads(2)).with_k_neighbors(3);
/// let dh = DiffusedHopfield::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
/// let x = Tensor::randn(0f32, 1., (2, 9, 8), &Device::Cpu)?;
/// assert_eq!(dh.forward_t(&x, false)?.dims(), &[2, 9, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug)]
pub struct DiffusedHopfield {
    config: DiffusedHopfieldConfig,
    hopfield: Hopfield,
    key_cache: GraphCache,
    query_cache: GraphCache,
}

impl DiffusedHopfield {
    /// Builds or loads the module (its parameters are `Hopfield`'s) under `vb`.
    pub fn new(config: DiffusedHopfieldConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let hopfield = Hopfield::new(config.hopfield.clone(), vb)?;
        let dc = config.operator_config();
        let cap = config.graph_cache_capacity;
        Ok(Self {
            key_cache: GraphCache::with_capacity(dc.clone(), cap)?,
            query_cache: GraphCache::with_capacity(dc, cap)?,
            hopfield,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiffusedHopfieldConfig {
        &self.config
    }

    /// The underlying Hopfield module.
    pub fn hopfield(&self) -> &Hopfield {
        &self.hopfield
    }

    /// Number of key graphs built so far (cache misses; graphs passed in are not counted).
    pub fn graph_builds(&self) -> usize {
        self.key_cache.builds()
    }

    /// Number of query graphs built so far (with `diffuse_query`).
    pub fn query_graph_builds(&self) -> usize {
        self.query_cache.builds()
    }

    /// The configuration this module builds its graphs with (the loop applies each operator
    /// once per round, so `steps` is 1): build graphs for [`Self::forward_with_graphs`] with it.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::{DiffusedHopfield, DiffusedHopfieldConfig, HopfieldConfig};
    /// let map = VarMap::new();
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8)).with_diffusion_steps(3);
    /// let dh = DiffusedHopfield::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// assert_eq!(dh.graph_config().steps, 1);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn graph_config(&self) -> DiffusionConfig {
        self.config.operator_config()
    }

    /// Full forward pass with masks.
    pub fn forward_full(
        &self,
        input: HopfieldInput,
        masks: Masks,
        train: bool,
    ) -> Result<DiffusedOutput> {
        self.forward_impl(input, None, masks, train)
    }

    /// Forward pass with graphs the caller keeps (no cache lookup, no build; `graph_builds` does
    /// not grow). `graphs.keys` holds one graph per sample ([`GraphScope::PerSample`], each with
    /// one node per unpadded stored pattern of its sample) or one ([`GraphScope::BatchMean`], one
    /// node per stored pattern); `graphs.queries`, if not empty, the same over the state patterns.
    /// Graphs built by this module (an earlier [`DiffusedOutput`]) give exactly its cached result.
    /// Errors: a graph count that is not the number of groups or a node count that is not the
    /// number of patterns ([`HopfieldError::Mismatch`] naming both), a graph dtype that is not the
    /// patterns' ([`HopfieldError::DtypeMismatch`]), a graph built for another mode, eta or step
    /// count than [`Self::graph_config`] ([`HopfieldError::Config`], field `graphs`).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use dahn_diffusion::CachedGraph;
    /// use hopfield_nn::diffused::Graphs;
    /// use hopfield_nn::{DiffusedHopfield, DiffusedHopfieldConfig, HopfieldConfig, HopfieldInput, Masks};
    /// let map = VarMap::new();
    /// let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(8)).with_k_neighbors(3);
    /// let dh = DiffusedHopfield::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// let (stored, state) = (Tensor::randn(0f32, 1., (2, 9, 8), &Device::Cpu)?, Tensor::randn(0f32, 1., (2, 4, 8), &Device::Cpu)?);
    /// // Any graph with one node per stored pattern, e.g. one of the raw patterns per sample:
    /// let keys = (0..2)
    ///     .map(|n| Ok(std::sync::Arc::new(CachedGraph::build(&stored.get(n)?, &dh.graph_config())?)))
    ///     .collect::<candle_core::Result<Vec<_>>>()?;
    /// let input = HopfieldInput::Triple { stored: &stored, state: &state, projection: &stored };
    /// let y = dh.forward_with_graphs(input, &Graphs::new(keys), Masks::default(), false)?;
    /// assert_eq!((y.hopfield.output.dims(), dh.graph_builds()), (&[2, 4, 8][..], 0));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward_with_graphs(
        &self,
        input: HopfieldInput,
        graphs: &Graphs,
        masks: Masks,
        train: bool,
    ) -> Result<DiffusedOutput> {
        self.forward_impl(input, Some(graphs), masks, train)
    }

    /// The Hopfield pipeline with diffusion as its stage.
    fn forward_impl(
        &self,
        input: HopfieldInput,
        graphs: Option<&Graphs>,
        masks: Masks,
        train: bool,
    ) -> Result<DiffusedOutput> {
        let stage = Diffusion {
            module: self,
            graphs,
        };
        let (hopfield, r) = self.hopfield.forward_staged(input, &stage, masks, train)?;
        Ok(DiffusedOutput {
            hopfield,
            core_state: r.core_state,
            core_stored: r.core_stored,
            key_graphs: r.key_graphs,
            query_graphs: r.query_graphs,
            dynamics_steps_run: r.dynamics_steps_run,
            eta_effective: r.eta_effective,
            energies: r.energies,
        })
    }

    /// Forward pass with masks: the output alone, so that the core runs the fused retrieval
    /// where it applies (no `(N, H, L, S)` association; [`forward_full`](Self::forward_full)
    /// returns it). Same values as `forward_full(..).hopfield.output`.
    pub fn forward_with(&self, input: HopfieldInput, masks: Masks, train: bool) -> Result<Tensor> {
        let stage = Diffusion {
            module: self,
            graphs: None,
        };
        Ok(self
            .hopfield
            .forward_staged_output(input, &stage, masks, train)?
            .0)
    }

    /// The core's association `(N, H, L, S)` after the dynamics, without gradient.
    pub fn association_matrix(&self, input: HopfieldInput, masks: Masks) -> Result<Tensor> {
        Ok(self
            .forward_full(input, masks, false)?
            .hopfield
            .association
            .detach())
    }

    /// The core's projected pattern projections `(N, H, S, pd)`, without gradient.
    pub fn projected_pattern_matrix(&self, input: HopfieldInput, masks: Masks) -> Result<Tensor> {
        Ok(self
            .forward_full(input, masks, false)?
            .hopfield
            .projected
            .detach())
    }
}

impl ModuleT for DiffusedHopfield {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(HopfieldInput::Single(x), Masks::default(), train)
    }
}
