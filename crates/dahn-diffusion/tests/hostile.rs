//! Hostile input (issue 12): every public entry point of dahn-diffusion returns a typed error
//! ([`DiffusionError`], or `dahn_graph::GraphError` from the graph layer) or a finite result, and
//! never panics, aborts or hangs.
//!
//! Plain `#[test]`s pin each reported bug (each failed, panicked or returned NaN before the fix);
//! property tests cover random shapes (zeros included), dtypes (f32, f64, f16, u32, i64),
//! extreme values (0, +-1e30, 1e-30, +-inf, NaN, f64::MAX, negatives), random configs (k, eta,
//! beta, steps, tolerances, modes), asymmetric graphs and neighbour tables out of range.
//! Property: `Ok` results are finite, errors are typed, nothing panics (proptest reports a panic
//! as a failure), and no loop runs more than `MAX_STEPS` steps.
//!
//! 48 cases per property by default (a few seconds in debug). A longer run:
//! `PROPTEST_CASES=2000 cargo test -p dahn-diffusion --test hostile`.

use candle_core::{DType, Device, Result, Tensor};
use dahn_diffusion::{
    apply_diffusion, compute_adaptive_eta, create_operator, symmetric_eigen, AttentionMode,
    AttentionOperator, DiffusionConfig, DiffusionError, DiffusionMode, DiffusionOperator,
    DynamicsEngine, DynamicsInputs, EnergyTracker, FactoredDiffusion, GraphCache,
    IterativeDiffusion, SimpleDiffusion, SpectralDiffusion, MAX_STEPS,
};
use dahn_graph::{
    laplacian, normalized_laplacian, GraphBuilder, GraphError, GraphMatrix, KnnMethod, NnDescent,
};
use proptest::prelude::*;
use std::sync::Arc;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    ProptestConfig::with_cases(cases)
}

fn all_finite(t: &Tensor) -> bool {
    // Integer results are finite by construction; floats through the library's own scan.
    !t.dtype().is_float() || hopfield_cuda::all_finite(t).unwrap_or(false)
}

fn is_typed(e: &candle_core::Error) -> bool {
    DiffusionError::find(e).is_some() || GraphError::find(e).is_some()
}

fn typed<T>(r: Result<T>) -> std::result::Result<Option<T>, TestCaseError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            prop_assert!(is_typed(&e), "untyped error: {e}");
            Ok(None)
        }
    }
}

/// The property: Ok and finite, or a typed error.
fn typed_or_finite(r: Result<Tensor>) -> std::result::Result<Option<Tensor>, TestCaseError> {
    let t = typed(r)?;
    if let Some(t) = &t {
        prop_assert!(all_finite(t), "Ok but not finite: {t}");
    }
    Ok(t)
}

/// A tensor whose `Debug` shows its values (useful minimal failing inputs).
#[derive(Clone)]
struct Shown(Tensor);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::ops::Deref for Shown {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -2.0f64..2.0,
        1 => Just(0.0),
        1 => Just(1e30),
        1 => Just(-1e30),
        1 => Just(1e-30),
        1 => Just(f64::MAX),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NAN),
        1 => Just(300.0),
    ]
}

fn param() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0f64..1.0,
        1 => Just(0.0),
        1 => Just(2.5),
        1 => Just(-1.0),
        1 => Just(1e10),
        1 => Just(1e300),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NAN),
    ]
}

fn steps() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..5, 1 => Just(MAX_STEPS + 1), 1 => Just(usize::MAX)]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        4 => Just(DType::F64),
        3 => Just(DType::F32),
        2 => Just(DType::F16),
        1 => Just(DType::U32),
        1 => Just(DType::I64),
    ]
}

fn tensor(dims: Vec<usize>) -> impl Strategy<Value = Shown> {
    let len: usize = dims.iter().product();
    (prop::collection::vec(value(), len), dtype()).prop_map(move |(v, dt)| {
        Shown(
            Tensor::from_vec(v, dims.clone(), &Device::Cpu)
                .and_then(|t| t.to_dtype(dt))
                .unwrap(),
        )
    })
}

/// Inputs for an `n`-node operator: mostly (n, d) or (n, B, d), sometimes the wrong N or rank.
fn input(n: usize) -> impl Strategy<Value = Shown> {
    prop_oneof![
        4 => (0usize..4).prop_map(move |d| vec![n, d]),
        2 => (0usize..3, 0usize..3).prop_map(move |(b, d)| vec![n, b, d]),
        1 => (0usize..5).prop_map(|m| vec![m, 2]),
        1 => Just(vec![n]),
    ]
    .prop_flat_map(tensor)
}

/// Finite patterns (N, d) in f64 or f32, some asymmetric adjacencies derived from them.
fn patterns() -> impl Strategy<Value = Shown> {
    (1usize..7, 1usize..4).prop_flat_map(|(n, d)| {
        (
            prop::collection::vec(
                prop_oneof![6 => -1.0f64..1.0, 1 => Just(0.0), 1 => Just(1e30)],
                n * d,
            ),
            prop_oneof![Just(DType::F64), Just(DType::F32)],
        )
            .prop_map(move |(v, dt)| {
                Shown(
                    Tensor::from_vec(v, (n, d), &Device::Cpu)
                        .and_then(|t| t.to_dtype(dt))
                        .unwrap(),
                )
            })
    })
}

/// A Laplacian: sparse (normalised or not) from a kNN graph, or dense from a possibly
/// asymmetric, possibly huge adjacency.
fn graph_matrix() -> impl Strategy<Value = (GraphMatrix, String)> {
    let sparse = (patterns(), 1usize..4, any::<bool>()).prop_map(|(x, k, normalized)| {
        let g = GraphBuilder::new().k(k).build(&x).unwrap();
        let l: GraphMatrix = g.laplacian(normalized).into();
        (l, format!("sparse normalized={normalized} of {}", x.0))
    });
    let dense = (1usize..5).prop_flat_map(|n| {
        (
            prop::collection::vec(
                prop_oneof![4 => 0.0f64..1.0, 1 => Just(0.0), 1 => Just(1e300)],
                n * n,
            ),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(v, symmetric, normalized)| {
                let a = Tensor::from_vec(v, (n, n), &Device::Cpu).unwrap();
                let a = if symmetric {
                    a.maximum(&a.t().unwrap()).unwrap()
                } else {
                    a
                };
                let l = if normalized {
                    normalized_laplacian(&a)
                } else {
                    laplacian(&a)
                };
                match l {
                    Ok(l) => (GraphMatrix::Dense(l), format!("dense of {a}")),
                    // Overflowing degrees: an identity-free zero Laplacian stands in.
                    Err(_) => (
                        GraphMatrix::Dense(
                            Tensor::zeros((n, n), DType::F64, &Device::Cpu).unwrap(),
                        ),
                        "zeros".into(),
                    ),
                }
            })
    });
    prop_oneof![sparse, dense]
}

fn mode() -> impl Strategy<Value = DiffusionMode> {
    prop_oneof![
        Just(DiffusionMode::Simple),
        Just(DiffusionMode::Iterative),
        Just(DiffusionMode::Spectral),
        Just(DiffusionMode::Factored),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn operators((l, _desc) in graph_matrix(), m in mode(), eta in param(), steps in steps(),
                 x in (1usize..7).prop_flat_map(input), eta2 in param(), steps2 in steps()) {
        // Laplacians whose rows do not sum to 0 are legitimately rejected by factored mode.
        if let Some(op) = typed(create_operator(m, &l, eta, steps))? {
            typed_or_finite(op.apply(&x))?;
            if let Some(op2) = typed(op.with_params(eta2, steps2))? {
                typed_or_finite(op2.apply(&x))?;
            }
        }
        typed_or_finite(apply_diffusion(&x, &l, eta, m, steps))?;
        if let Some(it) = typed(IterativeDiffusion::new(l.clone(), eta, steps))? {
            typed_or_finite(it.early_stop_tol(eta2).apply(&x))?;
        }
    }

    #[test]
    fn factored_from_graph(x in patterns(), k in 1usize..5, eta in param(), steps in steps(),
                           deg in (1usize..7).prop_flat_map(|n| tensor(vec![n])),
                           y in (1usize..7).prop_flat_map(input)) {
        let g = GraphBuilder::new().k(k).build(&x).unwrap();
        if let Some(op) = typed(FactoredDiffusion::from_graph(g.matrix(), &g.degrees().unwrap(), eta, steps))? {
            typed_or_finite(op.apply(&x))?;
            typed_or_finite(op.apply(&y))?;
        }
        typed(FactoredDiffusion::from_graph(g.matrix(), &deg, eta, steps))?;
    }

    #[test]
    fn graph_cache(x in prop_oneof![patterns(), (0usize..5, 0usize..3).prop_flat_map(|(n, d)| tensor(vec![n, d]))],
                   k in prop_oneof![1usize..5, Just(0usize), Just(usize::MAX)], m in mode(), eta in param(),
                   steps in steps(), normalized in any::<bool>(),
                   approx in prop::option::of((prop::option::of(0usize..3), 0usize..3,
                       prop_oneof![Just(0usize), Just(3), Just(usize::MAX)],
                       prop_oneof![Just(0.001), Just(f64::NAN), Just(-1.0)]))) {
        let mut cfg = DiffusionConfig::default().k_neighbors(k).mode(m).eta(eta).steps(steps)
            .normalized_laplacian(normalized);
        // The approximate graph with hostile search parameters (pool, leaf, iterations, delta).
        if let Some((pool, leaf, max_iters, delta)) = approx {
            let p = NnDescent { pool, leaf, max_iters, delta, ..NnDescent::default() };
            cfg = cfg.knn_method(KnnMethod::NnDescent(p));
        }
        if let Some(cache) = typed(GraphCache::new(cfg))? {
            if let Some(g) = typed(cache.get(&x))? {
                typed_or_finite(g.operator.apply(&x))?;
                prop_assert!(all_finite(&g.degrees));
            }
        }
    }

    #[test]
    fn attention(shape in prop_oneof![
                    (0usize..4, 0usize..4, 0usize..3, 0usize..3).prop_map(|(l, s, d, dv)| (vec![l, d], vec![s, d], vec![s, dv])),
                    (1usize..4, 0usize..3, 1usize..3).prop_map(|(n, b, d)| (vec![n, b, d], vec![n, b, d], vec![n, b, d])),
                    (0usize..3, 0usize..3, 0usize..3).prop_map(|(a, b, c)| (vec![a, b], vec![b, c], vec![c])),
                 ],
                 seed_q in prop::collection::vec(value(), 64), dt in dtype(), beta in param(),
                 graph in any::<bool>(), adj in prop::collection::vec(-1i64..5, 0..12), kk in 0usize..4) {
        let (qd, kd, vd) = shape;
        let mk = |dims: &[usize], off: usize| {
            let n: usize = dims.iter().product();
            let v: Vec<f64> = (0..n).map(|i| seed_q[(i + off) % seed_q.len()]).collect();
            Tensor::from_vec(v, dims, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
        };
        let (q, k, v) = (mk(&qd, 0), mk(&kd, 7), mk(&vd, 13));
        let rows = qd[0];
        let table: Vec<i64> = (0..rows * kk).map(|i| adj.get(i).copied().unwrap_or(0)).collect();
        let table = Tensor::from_vec(table, (rows, kk), &Device::Cpu).unwrap();
        let mode = if graph { AttentionMode::Graph } else { AttentionMode::Dense };
        typed_or_finite(AttentionOperator::new(beta, mode).forward(&q, &k, &v, Some(&table)))?;
        typed_or_finite(AttentionOperator::new(beta, mode).forward(&q, &k, &v, None))?;
    }

    #[test]
    fn dynamics_and_energy(x in patterns(), m in mode(), eta in param(), steps in steps(),
                           beta in param(), tol in param(), q in (0usize..4, 1usize..4).prop_flat_map(|(l, d)| tensor(vec![l, d]))) {
        let cfg = DiffusionConfig::default().k_neighbors(2).mode(m).eta(0.1).steps(2);
        let g = GraphCache::new(cfg).unwrap().get(&x).unwrap();
        let l = g.laplacian.clone().unwrap_or_else(|| g.graph.laplacian(false).into());
        let mut engine = DynamicsEngine::new(g.operator.clone())
            .attention(AttentionOperator::new(beta, AttentionMode::Dense))
            .steps(steps)
            .energy_tracker(EnergyTracker::new(beta, eta, tol));
        let inputs = DynamicsInputs { laplacian: Some(&l), diffuse_query: false, ..Default::default() };
        if let Some(out) = typed(engine.run_dynamics(&q, &x, &x, &inputs))? {
            prop_assert!(all_finite(&out.query) && all_finite(&out.key));
            prop_assert!(out.steps_run <= MAX_STEPS);
        }
        if let Some(h) = engine.tracker() {
            prop_assert!(h.history().iter().all(|e| e.is_finite()));
        }
        typed_or_finite(engine.run_diffusion(&x, Some(&l), Some(&x)))?;
        let mut t = EnergyTracker::new(beta, eta, tol);
        if let Some((e, _)) = typed(t.step(&q, &x, &l))? {
            prop_assert!(e.is_finite());
        }
        if let Some((e, _)) = typed(t.step_factored(&q, &x, &g.graph.matrix(), &g.degrees))? {
            prop_assert!(e.is_finite());
        }
    }

    #[test]
    fn adaptive_eta(logits in (0usize..4, 0usize..4).prop_flat_map(|(a, b)| tensor(vec![a, b])),
                    base in param(), temp in param(), thr in param()) {
        if let Some(eta) = typed(compute_adaptive_eta(&logits, base, temp, thr))? {
            prop_assert!(eta.is_finite() && eta >= 0.0, "{eta}");
        }
    }

    #[test]
    fn eigen(n in 0usize..5, extra in 0usize..2, v in prop::collection::vec(value(), 0..30)) {
        let len = (n * n + extra).min(v.len());
        if let Some((lam, u)) = typed(symmetric_eigen(&v[..len], n))? {
            prop_assert!(lam.iter().chain(&u).all(|x| x.is_finite()));
        }
    }
}

// ---- pinned reported bugs -------------------------------------------------------------------

fn err_of<T>(r: Result<T>) -> DiffusionError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => DiffusionError::find(&e)
            .unwrap_or_else(|| panic!("untyped: {e}"))
            .clone(),
    }
}

fn random_patterns(n: usize, d: usize, seed: u64) -> Result<Tensor> {
    // A small LCG: the test must not depend on the global RNG.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n * d)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.3
        })
        .collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu)
}

#[test]
fn not_bit_symmetric_sparse_laplacian_still_gets_the_stability_check() -> Result<()> {
    // A normalised sparse Laplacian is symmetric only up to rounding; the exact test skipped the
    // bound, so eta = 2.5 (>= 2 / lambda_max) was accepted and diverged silently.
    let mut pinned = false;
    for seed in 0..50 {
        let g = GraphBuilder::new()
            .k(3)
            .build(&random_patterns(12, 4, seed)?)?;
        let l = g.laplacian(true);
        if l.is_symmetric() {
            continue;
        }
        pinned = true;
        let e = err_of(SimpleDiffusion::new(l.clone().into(), 2.5));
        assert!(matches!(e, DiffusionError::Unstable { .. }), "{e}");
        let e = err_of(IterativeDiffusion::new(l.into(), 2.5, 3));
        assert!(matches!(e, DiffusionError::Unstable { .. }), "{e}");
        break;
    }
    assert!(pinned, "no seed gave a non-bit-symmetric Laplacian");
    Ok(())
}

#[test]
fn asymmetric_graphs_with_huge_eta_are_rejected() -> Result<()> {
    let dev = Device::Cpu;
    // L of a directed graph (row sums as degrees): not symmetric, the old check was skipped.
    let a = Tensor::new(&[[0f64, 1., 0.], [0., 0., 1.], [1., 1., 0.]], &dev)?;
    let l = laplacian(&a)?;
    let x = Tensor::new(&[[1f64], [0.], [0.]], &dev)?;
    let e = err_of(SimpleDiffusion::new(l.clone().into(), 1e6));
    assert!(matches!(e, DiffusionError::Unstable { .. }), "{e}");
    let e = err_of(FactoredDiffusion::from_graph(
        GraphMatrix::Dense(a.clone()),
        &a.sum(1)?,
        1e6,
        3,
    ));
    assert!(matches!(e, DiffusionError::Unstable { .. }), "{e}");
    // Spectral reads only the lower triangle: an asymmetric L is a typed error with the numbers.
    let e = err_of(SpectralDiffusion::new(&l.clone().into(), 0.5));
    match e {
        DiffusionError::NotSymmetric { defect, .. } => assert_eq!(defect, 1.0),
        e => panic!("{e}"),
    }
    // A stable eta on the asymmetric L is still applied, and gives finite values.
    let y = SimpleDiffusion::new(l.into(), 0.1)?.apply(&x)?;
    assert!(all_finite(&y));
    Ok(())
}

#[test]
fn spectral_with_huge_eta_is_finite() -> Result<()> {
    // exp(-eta lambda) for an eigenvalue -1e-17 (rounding) and eta = 1e300 was inf, then NaN.
    for seed in 0..5 {
        let g = GraphBuilder::new()
            .k(3)
            .build(&random_patterns(10, 3, seed)?)?;
        for normalized in [true, false] {
            let l: GraphMatrix = g.laplacian(normalized).into();
            let op = SpectralDiffusion::new(&l, 1e300)?;
            assert!(all_finite(op.kernel()), "seed {seed}");
            let y = op.apply(&random_patterns(10, 2, 99)?)?;
            assert!(all_finite(&y));
        }
    }
    Ok(())
}

#[test]
fn non_finite_parameters_are_typed() -> Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f64, 0.], [0., 1.]], &dev)?;
    for beta in [f64::NAN, f64::INFINITY] {
        // Before: NaN output.
        let e =
            err_of(AttentionOperator::new(beta, AttentionMode::Dense).forward(&q, &q, &q, None));
        assert!(
            matches!(e, DiffusionError::InvalidConfig(ref m) if m.contains("beta")),
            "{e}"
        );
    }
    let l: GraphMatrix = Tensor::new(&[[1f64, -1.], [-1., 1.]], &dev)?.into();
    for (beta, eta, tol) in [
        (f64::NAN, 0.1, 0.0),
        (1.0, f64::INFINITY, 0.0),
        (1.0, 0.1, f64::NAN),
    ] {
        let e = err_of(EnergyTracker::new(beta, eta, tol).step(&q, &q, &l));
        assert!(matches!(e, DiffusionError::InvalidConfig(_)), "{e}");
    }
    // Before: returned NaN.
    let e = err_of(compute_adaptive_eta(&q, 0.1, f64::NAN, 1.0));
    assert!(
        matches!(e, DiffusionError::InvalidConfig(ref m) if m.contains("temperature")),
        "{e}"
    );
    let e = err_of(compute_adaptive_eta(&q, f64::INFINITY, 5.0, 1.0));
    assert!(
        matches!(e, DiffusionError::InvalidConfig(ref m) if m.contains("base_eta")),
        "{e}"
    );
    let op = IterativeDiffusion::new(l, 0.1, 3)?.early_stop_tol(f64::NAN);
    let e = err_of(op.apply(&q));
    assert!(
        matches!(e, DiffusionError::InvalidConfig(ref m) if m.contains("early_stop_tol")),
        "{e}"
    );
    Ok(())
}

#[test]
fn integer_inputs_are_typed_not_candle_panics() -> Result<()> {
    let dev = Device::Cpu;
    let l: GraphMatrix = Tensor::new(&[[1f64, -1.], [-1., 1.]], &dev)?.into();
    let xi = Tensor::new(&[[1u32, 2], [3, 4]], &dev)?;
    for op in [
        Arc::new(SimpleDiffusion::new(l.clone(), 0.1)?) as Arc<dyn DiffusionOperator>,
        Arc::new(SpectralDiffusion::new(&l, 0.1)?),
        Arc::new(FactoredDiffusion::from_laplacian(&l, 0.1, 2)?),
    ] {
        let e = err_of(op.apply(&xi));
        assert!(matches!(e, DiffusionError::DType { .. }), "{e}");
    }
    let e = err_of(AttentionOperator::default().forward(&xi, &xi, &xi, None));
    assert!(matches!(e, DiffusionError::DType { .. }), "{e}");
    let deg = Tensor::new(&[1u32, 1], &dev)?;
    let w = GraphMatrix::Dense(Tensor::new(&[[0f64, 1.], [1., 0.]], &dev)?);
    let e = err_of(FactoredDiffusion::from_graph(w, &deg, 0.1, 1));
    assert!(matches!(e, DiffusionError::DType { .. }), "{e}");
    Ok(())
}

#[test]
fn empty_inputs_are_typed_not_nan() -> Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f64, 0.]], &dev)?;
    let none = Tensor::zeros((0, 2), DType::F64, &dev)?;
    // Before: a softmax over no keys gave NaN (or zeros).
    let e = err_of(AttentionOperator::default().forward(&q, &none, &none, None));
    assert!(matches!(e, DiffusionError::Empty { .. }), "{e}");
    // Before: the mean entropy of no rows was NaN, returned as eta.
    let e = err_of(compute_adaptive_eta(&none, 0.1, 5.0, 1.0));
    assert!(matches!(e, DiffusionError::Empty { .. }), "{e}");
    let l: GraphMatrix = Tensor::zeros((0, 0), DType::F64, &dev)?.into();
    let e = err_of(EnergyTracker::new(1.0, 0.1, 0.0).step(&q, &none, &l));
    assert!(matches!(e, DiffusionError::Empty { .. }), "{e}");
    // No queries is a defined, empty result.
    let y = AttentionOperator::default().forward(&none, &q, &q, None)?;
    assert_eq!(y.dims(), &[0, 2]);
    Ok(())
}

#[test]
fn step_counts_from_a_config_are_bounded() -> Result<()> {
    let l: GraphMatrix = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?.into();
    let x = Tensor::new(&[[1f64], [0.]], &Device::Cpu)?;
    // Before: accepted, and run for 2^64 steps (the early stop need not trigger: tol = 0).
    for steps in [MAX_STEPS + 1, usize::MAX] {
        let e = err_of(IterativeDiffusion::new(l.clone(), 0.1, steps));
        assert!(
            matches!(e, DiffusionError::InvalidConfig(ref m) if m.contains("MAX_STEPS")),
            "{e}"
        );
        let e = err_of(DiffusionConfig::default().steps(steps).validate());
        assert!(matches!(e, DiffusionError::InvalidConfig(_)), "{e}");
        let op = Arc::new(SimpleDiffusion::new(l.clone(), 0.1)?);
        let e = err_of(
            DynamicsEngine::new(op)
                .steps(steps)
                .run_diffusion(&x, None, None),
        );
        assert!(matches!(e, DiffusionError::InvalidConfig(_)), "{e}");
    }
    Ok(())
}

#[test]
fn eta_zero_still_validates_the_input() -> Result<()> {
    let l: GraphMatrix = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?.into();
    let nan = Tensor::new(&[[f64::NAN], [0.]], &Device::Cpu)?;
    // Before: Ok(NaN).
    let e = err_of(apply_diffusion(&nan, &l, 0.0, DiffusionMode::Simple, 1));
    assert!(matches!(e, DiffusionError::NonFinite { .. }), "{e}");
    let bad = Tensor::zeros((3, 1), DType::F64, &Device::Cpu)?;
    let e = err_of(apply_diffusion(&bad, &l, 0.0, DiffusionMode::Simple, 1));
    assert!(matches!(e, DiffusionError::ShapeMismatch(_)), "{e}");
    Ok(())
}

#[test]
fn symmetric_eigen_with_a_wrong_length_is_typed_not_an_index_panic() {
    let e = err_of(symmetric_eigen(&[1.0, 2.0, 3.0], 2));
    assert!(matches!(e, DiffusionError::ShapeMismatch(_)), "{e}");
    let e = err_of(symmetric_eigen(&[f64::NAN], 1));
    assert!(matches!(e, DiffusionError::NonFinite { .. }), "{e}");
    // Huge entries: the sum of squares overflowed and ended the sweeps at once (wrong values).
    let (mut lam, _) = symmetric_eigen(&[1e300, 1e300, 1e300, 1e300], 2).unwrap();
    lam.sort_by(f64::total_cmp);
    assert!(
        lam[0].abs() < 1e290 && (lam[1] / 2e300 - 1.0).abs() < 1e-12,
        "{lam:?}"
    );
}

#[test]
fn overflowing_results_are_typed_not_nan() -> Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f64, 0.], [0., 1.]], &dev)?;
    // beta Q K^T = inf: the softmax gave NaN.
    let e = err_of(AttentionOperator::new(1e308, AttentionMode::Dense).forward(
        &(&q * 1e10)?,
        &q,
        &q,
        None,
    ));
    assert!(matches!(e, DiffusionError::Overflow { .. }), "{e}");
    // f16 values near the top of the range: one factored step overflows to inf.
    let w = GraphMatrix::Dense(Tensor::new(&[[0f64, 1.], [1., 0.]], &dev)?);
    let op = FactoredDiffusion::from_graph(w, &Tensor::new(&[1f64, 1.], &dev)?, 1.0, 1)?;
    let x = Tensor::new(&[[60000f32], [60000.]], &dev)?.to_dtype(DType::F16)?;
    let _ = op.apply(&x).map(|y| assert!(all_finite(&y)));
    Ok(())
}

#[test]
fn f16_iterative_diffusion_is_not_reported_diverged() -> Result<()> {
    // ||X_new - X||^2 overflowed f16 (65504) although X stays bounded: a false Diverged.
    let dev = Device::Cpu;
    let l: GraphMatrix = Tensor::new(&[[1f64, -1.], [-1., 1.]], &dev)?.into();
    let x = Tensor::new(&[[400f32, -400.], [-400., 400.]], &dev)?.to_dtype(DType::F16)?;
    let y = IterativeDiffusion::new(l, 0.25, 2)?.apply(&x)?;
    assert!(all_finite(&y));
    Ok(())
}
