//! `DiffusedHopfield`'s graphs across calls (issue 8): a batch whose patterns did not change
//! builds no graph whatever its size, a changed sample rebuilds its own graph only, the caches
//! evict the least recently used pattern sets at their bound, and graphs passed in by the caller
//! give the cached result or a typed error.

use candle_core::{DType, Device, ModuleT, Result, Tensor};
use candle_nn::VarMap;
use dahn_diffusion::{CachedGraph, DiffusionMode};
use hopfield_nn::diffused::Graphs;
use hopfield_nn::{
    DiffusedHopfield, DiffusedHopfieldConfig, GraphScope, HopfieldConfig, HopfieldError,
    HopfieldInput, Masks,
};
use rstest::rstest;
use std::sync::Arc;

mod common;
use common::{max_diff, randomize, vb};

fn config() -> DiffusedHopfieldConfig {
    DiffusedHopfieldConfig::new(HopfieldConfig::new(8).with_num_heads(2))
        .with_k_neighbors(3)
        .with_eta(0.2)
}

fn module(cfg: DiffusedHopfieldConfig, map: &VarMap) -> Result<DiffusedHopfield> {
    DiffusedHopfield::new(cfg, vb(map))
}

/// `x` with element `[n, 4, 3]` of each listed sample moved by 0.5 (a shift of a whole pattern
/// would vanish in the LayerNorm; one element does not).
fn perturb(x: &Tensor, samples: &[usize]) -> Result<Tensor> {
    let mut v = x.to_vec3::<f64>()?;
    for &n in samples {
        v[n][4][3] += 0.5;
    }
    Tensor::new(v, x.device())
}

#[rstest]
#[case::one(1)]
#[case::four(4)]
#[case::eight(8)]
fn an_unchanged_batch_builds_no_graph_on_later_calls(#[case] n: usize) -> Result<()> {
    let map = VarMap::new();
    let dh = module(config().with_diffuse(true, true), &map)?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (n, 9, 8), &Device::Cpu)?;
    let first = dh.forward_t(&x, false)?;
    assert_eq!((dh.graph_builds(), dh.query_graph_builds()), (n, n));
    for _ in 0..3 {
        let again = dh.forward_t(&x, false)?;
        assert_eq!(max_diff(&first, &again)?, 0.0);
    }
    assert_eq!((dh.graph_builds(), dh.query_graph_builds()), (n, n));
    Ok(())
}

#[rstest]
#[case::none(&[], 0)]
#[case::one(&[2], 1)]
#[case::two(&[0, 3], 2)]
#[case::all(&[0, 1, 2, 3], 4)]
fn changed_samples_rebuild_their_graphs_only(
    #[case] changed: &[usize],
    #[case] rebuilt: usize,
) -> Result<()> {
    let map = VarMap::new();
    let dh = module(config(), &map)?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (4, 9, 8), &Device::Cpu)?;
    let before = dh.forward_t(&x, false)?;
    assert_eq!(dh.graph_builds(), 4);
    let y = perturb(&x, changed)?;
    let after = dh.forward_t(&y, false)?;
    assert_eq!(dh.graph_builds(), 4 + rebuilt);
    // Unchanged samples give bit-identical outputs (per-sample graphs), changed ones differ.
    for s in 0..4 {
        let d = max_diff(&before.get(s)?, &after.get(s)?)?;
        assert_eq!(d == 0.0, !changed.contains(&s), "sample {s}: {d}");
    }
    // Both versions stay cached (2 x 4 sets fit the default capacity).
    dh.forward_t(&x, false)?;
    dh.forward_t(&y, false)?;
    assert_eq!(dh.graph_builds(), 4 + rebuilt);
    Ok(())
}

#[test]
fn the_least_recently_used_sample_is_evicted_at_the_bound() -> Result<()> {
    let map = VarMap::new();
    let dh = module(config().with_graph_cache_capacity(2), &map)?;
    randomize(&map)?;
    let xs: Vec<Tensor> = (0..3)
        .map(|_| Tensor::randn(0f64, 1., (1, 9, 8), &Device::Cpu))
        .collect::<Result<_>>()?;
    for x in &xs {
        dh.forward_t(x, false)?;
    }
    assert_eq!(dh.graph_builds(), 3);
    dh.forward_t(&xs[2], false)?; // kept
    dh.forward_t(&xs[1], false)?; // kept
    assert_eq!(dh.graph_builds(), 3);
    dh.forward_t(&xs[0], false)?; // evicted by xs[2]
    assert_eq!(dh.graph_builds(), 4);
    // A batch larger than the bound still hits on its next call: the bound grows to the batch.
    let batch = Tensor::randn(0f64, 1., (5, 9, 8), &Device::Cpu)?;
    dh.forward_t(&batch, false)?;
    dh.forward_t(&batch, false)?;
    assert_eq!(dh.graph_builds(), 9);
    Ok(())
}

#[test]
fn a_zero_cache_capacity_is_a_config_error() {
    let e = module(config().with_graph_cache_capacity(0), &VarMap::new()).unwrap_err();
    assert!(
        matches!(
            HopfieldError::find(&e),
            Some(HopfieldError::Config {
                field: "graph_cache_capacity",
                ..
            })
        ),
        "{e}"
    );
}

#[rstest]
#[case::per_sample(GraphScope::PerSample, false, false)]
#[case::per_sample_queries(GraphScope::PerSample, true, false)]
#[case::per_sample_padded(GraphScope::PerSample, false, true)]
#[case::batch_mean(GraphScope::BatchMean, false, false)]
#[case::batch_mean_queries(GraphScope::BatchMean, true, false)]
fn graphs_passed_in_give_the_cached_result(
    #[case] scope: GraphScope,
    #[case] queries: bool,
    #[case] padded: bool,
) -> Result<()> {
    let map = VarMap::new();
    let cfg = config()
        .with_graph_scope(scope)
        .with_diffuse(true, queries)
        .with_logit_diffusion(true, Some(0.1));
    let cached = module(cfg.clone(), &map)?;
    let given = module(cfg, &map)?;
    randomize(&map)?;
    let dev = Device::Cpu;
    let (stored, state) = (
        Tensor::randn(0f64, 1., (3, 9, 8), &dev)?,
        Tensor::randn(0f64, 1., (3, 5, 8), &dev)?,
    );
    let pad = Tensor::new(
        &[
            [0u8, 0, 1, 0, 0, 0, 0, 0, 1],
            [0; 9],
            [1, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        &dev,
    )?;
    let masks = || Masks {
        stored_pattern_padding_mask: padded.then_some(&pad),
        association_mask: None,
    };
    let input = || HopfieldInput::Triple {
        stored: &stored,
        state: &state,
        projection: &stored,
    };
    let out = cached.forward_full(input(), masks(), false)?;
    let graphs = Graphs::new(out.key_graphs.clone()).with_queries(out.query_graphs.clone());
    let groups = if scope == GraphScope::PerSample { 3 } else { 1 };
    assert_eq!(graphs.keys.len(), groups);
    assert_eq!(graphs.queries.len(), if queries { groups } else { 0 });
    if padded {
        assert_eq!(
            graphs.keys.iter().map(|g| g.graph.n()).collect::<Vec<_>>(),
            [7, 9, 8]
        );
    }
    let again = given.forward_with_graphs(input(), &graphs, masks(), false)?;
    assert_eq!(max_diff(&out.hopfield.output, &again.hopfield.output)?, 0.0);
    assert_eq!((given.graph_builds(), given.query_graph_builds()), (0, 0));
    for (a, b) in out.key_graphs.iter().zip(&again.key_graphs) {
        assert!(Arc::ptr_eq(a, b));
    }
    Ok(())
}

/// A 3-sample batch and graphs built for it by hand with the module's graph config.
struct Case {
    dh: DiffusedHopfield,
    x: Tensor,
    keys: Vec<Arc<CachedGraph>>,
}

fn case() -> Result<Case> {
    let map = VarMap::new();
    let dh = module(config(), &map)?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (3, 9, 8), &Device::Cpu)?;
    let keys = (0..3)
        .map(|n| {
            Ok(Arc::new(CachedGraph::build(
                &x.get(n)?,
                &dh.graph_config(),
            )?))
        })
        .collect::<Result<_>>()?;
    Ok(Case { dh, x, keys })
}

fn err_with(c: &Case, graphs: &Graphs) -> candle_core::Error {
    c.dh.forward_with_graphs(HopfieldInput::Single(&c.x), graphs, Masks::default(), false)
        .unwrap_err()
}

#[rstest]
#[case::too_few(2)]
#[case::too_many(4)]
fn a_graph_count_other_than_the_batch_is_a_typed_error(#[case] count: usize) -> Result<()> {
    let c = case()?;
    let keys = (0..count).map(|i| c.keys[i % 3].clone()).collect();
    let e = err_with(&c, &Graphs::new(keys));
    assert_eq!(
        HopfieldError::find(&e),
        Some(&HopfieldError::Mismatch {
            what: "one graph per sample (graph_scope per_sample)",
            lhs_arg: "graphs.keys",
            lhs: vec![count],
            rhs_arg: "stored pattern",
            rhs: vec![3, 9, 8],
        }),
        "{e}"
    );
    let e = err_with(
        &c,
        &Graphs::new(c.keys.clone()).with_queries(c.keys[..1].to_vec()),
    );
    assert!(
        e.to_string()
            .contains("graphs.queries has shape [1] but state pattern has shape [3, 9, 8]"),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_graph_of_other_patterns_is_a_typed_error() -> Result<()> {
    let c = case()?;
    let mut keys = c.keys.clone();
    let other = Tensor::randn(0f64, 1., (7, 8), &Device::Cpu)?;
    keys[1] = Arc::new(CachedGraph::build(&other, &c.dh.graph_config())?);
    let e = err_with(&c, &Graphs::new(keys));
    assert_eq!(
        HopfieldError::find(&e),
        Some(&HopfieldError::Mismatch {
            what: "a graph needs one node per (unpadded) pattern of its group",
            lhs_arg: "key graph (group, nodes)",
            lhs: vec![1, 7],
            rhs_arg: "stored patterns (group, unpadded count)",
            rhs: vec![1, 9],
        }),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_graph_of_another_dtype_or_config_is_a_typed_error() -> Result<()> {
    let c = case()?;
    let mut keys = c.keys.clone();
    keys[2] = Arc::new(CachedGraph::build(
        &c.x.get(2)?.to_dtype(DType::F32)?,
        &c.dh.graph_config(),
    )?);
    let e = err_with(&c, &Graphs::new(keys));
    assert!(
        matches!(
            HopfieldError::find(&e),
            Some(HopfieldError::DtypeMismatch { arg: "graphs.keys", dtype, model })
                if dtype == "F32" && model == "F64"
        ),
        "{e}"
    );
    for other in [
        c.dh.graph_config().mode(DiffusionMode::Simple),
        c.dh.graph_config().eta(0.3),
        c.dh.graph_config().steps(2),
    ] {
        let mut keys = c.keys.clone();
        keys[0] = Arc::new(CachedGraph::build(&c.x.get(0)?, &other)?);
        let e = err_with(&c, &Graphs::new(keys));
        assert!(
            matches!(
                HopfieldError::find(&e),
                Some(HopfieldError::Config { field: "graphs", reason })
                    if reason.starts_with("graphs.keys[0] was built for")
            ),
            "{e}"
        );
    }
    Ok(())
}
