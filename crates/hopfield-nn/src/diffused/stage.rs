//! Diffusion as the [`PatternStage`] of the Hopfield pipeline: per group of samples (one per
//! sample, or the batch), the kNN graphs of the normalised patterns, an optional adaptive eta and
//! the diffuse -> attend loop replace the stored and state patterns; logit diffusion becomes the
//! stage's [`LogitTransform`].

use super::logits::LogitDiffusion;
use super::padding::Padding;
use super::{DiffusedHopfield, GraphScope, Graphs};
use crate::stage::{LogitTransform, PatternStage, Patterns, Staged};
use candle_core::{Result, Tensor};
use dahn_diffusion::{
    compute_adaptive_eta, AttentionMode, AttentionOperator, CachedGraph, DiffusionMode,
    DiffusionOperator, DynamicsEngine, DynamicsInputs, EnergyTracker,
};
use hopfield_core::{HopfieldError, Masks, Scaling};
use rayon::prelude::*;
use std::sync::Arc;

/// One call's diffusion: the module's caches and settings, and the caller's graphs if any.
pub(super) struct Diffusion<'a> {
    pub(super) module: &'a DiffusedHopfield,
    pub(super) graphs: Option<&'a Graphs>,
}

/// What the diffusion stage reports: a [`DiffusedOutput`](super::DiffusedOutput) without the
/// Hopfield part.
pub(super) struct DiffusionReport {
    pub(super) core_state: Tensor,
    pub(super) core_stored: Tensor,
    pub(super) key_graphs: Vec<Arc<CachedGraph>>,
    pub(super) query_graphs: Vec<Arc<CachedGraph>>,
    pub(super) dynamics_steps_run: Vec<usize>,
    pub(super) eta_effective: Vec<f64>,
    pub(super) energies: Vec<Vec<f64>>,
}

impl DiffusionReport {
    /// Patterns passed on undiffused.
    fn unchanged(p: &Patterns) -> Self {
        Self {
            core_state: p.state.clone(),
            core_stored: p.stored.clone(),
            key_graphs: Vec::new(),
            query_graphs: Vec::new(),
            dynamics_steps_run: Vec::new(),
            eta_effective: Vec::new(),
            energies: Vec::new(),
        }
    }
}

impl PatternStage for Diffusion<'_> {
    type Report = DiffusionReport;

    fn stage(&self, p: Patterns, masks: Masks) -> Result<Staged<DiffusionReport>> {
        let (module, graphs) = (self.module, self.graphs);
        let Patterns {
            stored,
            state,
            projection,
        } = &p;
        let c = &module.config;
        if c.dynamics_active() && projection.dim(2)? != state.dim(2)? {
            // The loop replaces the state by attention readouts of the projections (D7).
            return Err(HopfieldError::Mismatch {
                what: "the diffusion loop needs pattern_projection_size == input_size",
                lhs_arg: "state pattern",
                lhs: state.dims().to_vec(),
                rhs_arg: "pattern projection",
                rhs: projection.dims().to_vec(),
            }
            .into());
        }
        let n = stored.dim(0)?;
        if n == 0 {
            // An empty batch has no graphs to build: the plain association's (empty) result.
            let report = DiffusionReport::unchanged(&p);
            return Ok(Staged::patterns(p, report));
        }
        let mut ranges: Vec<(usize, usize)> = match c.graph_scope {
            GraphScope::PerSample => (0..n).map(|i| (i, 1)).collect(),
            GraphScope::BatchMean => vec![(0, n)],
        };
        let sf = |x: &Tensor, a: usize, len: usize| -> Result<Tensor> {
            x.narrow(0, a, len)?.transpose(0, 1)?.contiguous()
        };
        // Padded stored patterns take no part in the graph, the diffusion or the loop attention
        // (difflayers lets them smooth the real patterns, D8); per-sample graphs only.
        let paddings: Vec<Option<Padding>> =
            match (c.graph_scope, masks.stored_pattern_padding_mask) {
                (GraphScope::PerSample, Some(m))
                    if c.diffusion.attention_mode == AttentionMode::Dense =>
                {
                    ranges
                        .iter()
                        .map(|&(a, _)| Padding::of_row(m, a))
                        .collect::<Result<_>>()?
                }
                _ => vec![None; ranges.len()],
            };
        match graphs {
            Some(gs) => {
                let s = stored.dim(1)?;
                let nodes: Vec<usize> = paddings
                    .iter()
                    .map(|p| p.as_ref().map_or(s, Padding::kept_count))
                    .collect();
                module.check_graphs(gs, stored, state, &nodes)?;
            }
            None => {
                // One lookup per group on every call: room for all of them, or LRU would evict
                // each group's graph just before the next call asks for it.
                module.key_cache.ensure_capacity(ranges.len());
                module.query_cache.ensure_capacity(ranges.len());
            }
        }
        // One batch-mean graph whose samples nothing else couples (no adaptive eta, which reads
        // the whole batch's associations; no energy stop, which stops the batch as one): given
        // the graph, each sample's diffuse -> attend loop is its own, so the graph is found (or
        // built) once and the samples run as groups of one in parallel, as per-sample graphs
        // do. The same operations on the same values; as one group of small batched ops the
        // batch of 8 x 256 ran 1.7-2x slower than per-sample graphs.
        let shared = if c.graph_scope == GraphScope::BatchMean
            && n > 1
            && c.dynamics_active()
            && !c.diffusion.adaptive_eta
            && c.diffusion.energy_stop_tol == 0.0
        {
            let given = GroupGraphs {
                key: graphs.and_then(|gs| gs.keys.first()),
                query: graphs.and_then(|gs| gs.queries.first()),
            };
            let (k, q) = module.group_graphs(&sf(stored, 0, n)?, &sf(state, 0, n)?, given)?;
            ranges = (0..n).map(|i| (i, 1)).collect();
            Some((k, q))
        } else {
            None
        };
        let paddings = match shared {
            Some(_) => vec![None; ranges.len()],
            None => paddings,
        };
        // The groups are independent (own graphs, own dynamics) and each is many small ops:
        // run them in parallel, one rayon task per group.
        let groups: Vec<Group> = ranges
            .par_iter()
            .zip(paddings.par_iter())
            .enumerate()
            .map(|(i, (&(a, len), pad))| -> Result<Group> {
                let (k, q, v) = (
                    sf(stored, a, len)?,
                    sf(state, a, len)?,
                    sf(projection, a, len)?,
                );
                let given = match &shared {
                    Some((k, q)) => GroupGraphs {
                        key: Some(k),
                        query: q.as_ref(),
                    },
                    None => GroupGraphs {
                        key: graphs.and_then(|gs| gs.keys.get(i)),
                        query: graphs.and_then(|gs| gs.queries.get(i)),
                    },
                };
                match pad {
                    None => module.run_group(k, q, &v, given),
                    Some(p) => {
                        let mut g = module.run_group(p.kept(&k, 0)?, q, &p.kept(&v, 0)?, given)?;
                        g.stored = p.restore(&g.stored, &k, 0)?;
                        Ok(g)
                    }
                }
            })
            .collect::<Result<_>>()?;
        let bm = |xs: Vec<&Tensor>| -> Result<Tensor> {
            let parts: Vec<Tensor> = xs
                .iter()
                .map(|x| x.transpose(0, 1))
                .collect::<Result<_>>()?;
            Tensor::cat(&parts, 0)
        };
        let core_state = bm(groups.iter().map(|g| &g.state).collect())?;
        let core_stored = bm(groups.iter().map(|g| &g.stored).collect())?;
        // Split batch-mean samples are one group again from here: one logit diffusion over the
        // batch, one graph, one report entry.
        let (groups, ranges, paddings) = match shared {
            Some(_) => (
                groups.into_iter().take(1).collect(),
                vec![(0, n)],
                vec![None],
            ),
            None => (groups, ranges, paddings),
        };
        let operators: Vec<Option<Arc<dyn DiffusionOperator>>> =
            groups.iter().map(|g| g.logit_op.clone()).collect();
        let stored = core_stored.dim(1)?;
        let logits = operators.iter().any(Option::is_some).then(|| {
            Box::new(LogitDiffusion {
                ranges,
                operators,
                paddings,
                stored,
            }) as Box<dyn LogitTransform>
        });
        let report = DiffusionReport {
            core_state: core_state.clone(),
            core_stored: core_stored.clone(),
            key_graphs: groups.iter().filter_map(|g| g.key_graph.clone()).collect(),
            query_graphs: groups
                .iter()
                .filter_map(|g| g.query_graph.clone())
                .collect(),
            dynamics_steps_run: groups.iter().map(|g| g.steps).collect(),
            eta_effective: groups.iter().map(|g| g.eta).collect(),
            energies: groups.into_iter().map(|g| g.energies).collect(),
        };
        Ok(Staged {
            patterns: Patterns {
                stored: core_stored,
                state: core_state,
                projection: p.projection,
            },
            logits,
            report,
        })
    }
}

/// The graphs a caller passed for one group (`None`: from the module's caches).
#[derive(Clone, Copy, Default)]
struct GroupGraphs<'a> {
    key: Option<&'a Arc<CachedGraph>>,
    query: Option<&'a Arc<CachedGraph>>,
}

/// The state of one group's dynamics, sequence-first.
struct Group {
    state: Tensor,
    stored: Tensor,
    key_graph: Option<Arc<CachedGraph>>,
    query_graph: Option<Arc<CachedGraph>>,
    logit_op: Option<Arc<dyn DiffusionOperator>>,
    steps: usize,
    eta: f64,
    energies: Vec<f64>,
}

/// The detached mean over the batch of a sequence-first `(S, B, E)` group: what its graph is
/// built on. A group of one sample (per-sample graphs) is that sample as is: candle's strided
/// mean over a dimension of 1 still reduced every element (3.4% of a cached (8, 256, 64)
/// forward).
fn batch_mean(x: &Tensor) -> Result<Tensor> {
    let x = x.detach();
    if x.dim(1)? == 1 {
        x.squeeze(1)
    } else {
        x.mean(1)
    }
}

impl DiffusedHopfield {
    /// The loop attention's beta: difflayers takes a scalar `scaling` as is, anything else as 1.
    fn beta0(&self) -> f64 {
        match &self.config.hopfield.scaling {
            Some(Scaling::Scalar(b)) => *b,
            _ => 1.0,
        }
    }

    /// The key graph of a group of samples (sequence-first `(S, B, E)` stored patterns) and, with
    /// `diffuse_query` in the loop, its query graph: the caller's, else from the caches. Graphs
    /// are built on detached batch means: constants for autograd.
    fn group_graphs(
        &self,
        stored: &Tensor,
        state: &Tensor,
        given: GroupGraphs,
    ) -> Result<(Arc<CachedGraph>, Option<Arc<CachedGraph>>)> {
        let kg = match given.key {
            Some(k) => k.clone(),
            None => self.key_cache.get(&batch_mean(stored)?)?,
        };
        let query = self.config.diffusion.diffuse_query && self.config.dynamics_active();
        let qg = match (query, given.query) {
            (false, _) => None,
            (true, Some(q)) => Some(q.clone()),
            (true, None) => Some(self.query_cache.get(&batch_mean(state)?)?),
        };
        Ok((kg, qg))
    }

    /// Runs the graph construction and the diffuse -> attend loop of one group of samples
    /// (sequence-first `(S, B, E)` / `(L, B, E)`).
    fn run_group(
        &self,
        stored: Tensor,
        state: Tensor,
        projection: &Tensor,
        given: GroupGraphs,
    ) -> Result<Group> {
        let c = &self.config.diffusion;
        let mut g = Group {
            state,
            stored,
            key_graph: None,
            query_graph: None,
            logit_op: None,
            steps: 0,
            eta: c.eta,
            energies: Vec::new(),
        };
        let dynamics = self.config.dynamics_active();
        let logits_diffused = c.use_logit_diffusion && c.eta > 0.0;
        if !dynamics && !logits_diffused {
            return Ok(g);
        }
        let (kg, qg) = self.group_graphs(&g.stored, &g.state, given)?;
        let mut op_k = kg.operator.clone();
        let mut op_q = qg.as_ref().map(|q| q.operator.clone());
        if c.adaptive_eta && dynamics {
            let logits = g
                .state
                .transpose(0, 1)?
                .contiguous()?
                .matmul(&g.stored.transpose(0, 1)?.transpose(1, 2)?.contiguous()?)?
                .detach();
            let eff =
                compute_adaptive_eta(&logits, c.eta, c.adaptive_temperature, c.adaptive_threshold)?;
            if (eff - c.eta).abs() / (c.eta + 1e-9) > 0.05 {
                g.eta = eff;
                op_k = op_k.with_params(eff, 1)?;
                op_q = op_q.map(|o| o.with_params(eff, 1)).transpose()?;
            }
        }
        if logits_diffused {
            g.logit_op = Some(kg.operator.with_params(c.logit_eta.unwrap_or(c.eta), 1)?);
        }
        if dynamics {
            if c.attention_mode == AttentionMode::Graph && g.state.dim(0)? != g.stored.dim(0)? {
                return Err(HopfieldError::Mismatch {
                    what: "graph attention pairs state i with stored node i (L == S)",
                    lhs_arg: "state pattern",
                    lhs: g.state.dims().to_vec(),
                    rhs_arg: "stored pattern",
                    rhs: g.stored.dims().to_vec(),
                }
                .into());
            }
            let mut engine = DynamicsEngine::new(op_k)
                .attention(AttentionOperator::new(self.beta0(), c.attention_mode))
                .steps(c.steps);
            if let Some(q) = op_q {
                engine = engine.query_op(q);
            }
            if c.energy_stop_tol > 0.0 {
                engine = engine.energy_tracker(EnergyTracker::new(
                    self.beta0(),
                    c.eta,
                    c.energy_stop_tol,
                ));
            }
            let w = kg.graph.matrix();
            let factored = c.diffusion_mode == DiffusionMode::Factored;
            let inputs = DynamicsInputs {
                adj_indices: Some(&kg.neighbours),
                laplacian: if factored {
                    None
                } else {
                    kg.laplacian.as_ref()
                },
                weights: factored.then_some(&w),
                degrees: factored.then_some(&kg.degrees),
                diffuse_query: c.diffuse_query,
                diffuse_key: c.diffuse_key,
            };
            let out = engine.run_dynamics(&g.state, &g.stored, projection, &inputs)?;
            g.state = out.query;
            g.stored = out.key;
            g.steps = out.steps_run;
            g.energies = engine
                .tracker()
                .map(|t| t.history().to_vec())
                .unwrap_or_default();
        }
        g.key_graph = Some(kg);
        g.query_graph = qg;
        Ok(g)
    }

    /// Checks a caller's graphs against the groups of this call: `nodes[i]` stored (unpadded)
    /// and `states` state patterns per group.
    fn check_graphs(
        &self,
        graphs: &Graphs,
        stored: &Tensor,
        state: &Tensor,
        nodes: &[usize],
    ) -> Result<()> {
        let groups = nodes.len();
        let what = match self.config.graph_scope {
            GraphScope::PerSample => "one graph per sample (graph_scope per_sample)",
            GraphScope::BatchMean => "one graph for the batch (graph_scope batch_mean)",
        };
        let count = |arg, got: usize, patterns: &'static str, t: &Tensor| -> Result<()> {
            if got == groups {
                return Ok(());
            }
            Err(HopfieldError::Mismatch {
                what,
                lhs_arg: arg,
                lhs: vec![got],
                rhs_arg: patterns,
                rhs: t.dims().to_vec(),
            }
            .into())
        };
        count("graphs.keys", graphs.keys.len(), "stored pattern", stored)?;
        if !graphs.queries.is_empty() {
            count(
                "graphs.queries",
                graphs.queries.len(),
                "state pattern",
                state,
            )?;
        }
        let want = self.graph_config();
        let states = state.dim(1)?;
        let sets = graphs
            .keys
            .iter()
            .zip(nodes)
            .map(|(g, &n)| ("graphs.keys", g, n))
            .chain(graphs.queries.iter().map(|g| ("graphs.queries", g, states)));
        for (i, (arg, g, n)) in sets.enumerate() {
            let i = if arg == "graphs.keys" { i } else { i - groups };
            if g.graph.n() != n {
                return Err(HopfieldError::Mismatch {
                    what: "a graph needs one node per (unpadded) pattern of its group",
                    lhs_arg: if arg == "graphs.keys" {
                        "key graph (group, nodes)"
                    } else {
                        "query graph (group, nodes)"
                    },
                    lhs: vec![i, g.graph.n()],
                    rhs_arg: if arg == "graphs.keys" {
                        "stored patterns (group, unpadded count)"
                    } else {
                        "state patterns (group, count)"
                    },
                    rhs: vec![i, n],
                }
                .into());
            }
            if g.graph.dtype() != stored.dtype() {
                return Err(HopfieldError::DtypeMismatch {
                    arg,
                    dtype: format!("{:?}", g.graph.dtype()),
                    model: format!("{:?}", stored.dtype()),
                }
                .into());
            }
            let op = &g.operator;
            if op.mode() != want.diffusion_mode || op.eta() != want.eta || op.steps() != 1 {
                return Err(HopfieldError::Config {
                    field: "graphs",
                    reason: format!(
                        "{arg}[{i}] was built for mode {:?}, eta {}, steps {}, but this module \
                         diffuses with mode {:?}, eta {}, steps 1 (build graphs with \
                         DiffusedHopfield::graph_config())",
                        op.mode(),
                        op.eta(),
                        op.steps(),
                        want.diffusion_mode,
                        want.eta
                    ),
                }
                .into());
            }
        }
        Ok(())
    }
}
