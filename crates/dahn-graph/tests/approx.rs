//! The approximate (NN-descent) kNN builder against the exact one: recall, same semantics
//! (cosine weights, positive only, no self loops, symmetric max), reproducibility, typed errors.

use candle_core::{DType, Device, Result, Tensor};
use dahn_graph::{
    brute_force_rows, knn_approx_from_patterns, knn_from_patterns, nn_descent, GraphBuilder,
    GraphError, KnnMethod, NnDescent,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `clusters` Gaussian blobs in d dims (centres N(0, 1), spread 0.3): the kind of data a kNN
/// graph is built for.
fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move || {
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let centres: Vec<f64> = (0..clusters * d).map(|_| normal()).collect();
    let v: Vec<f32> = (0..n * d)
        .map(|e| (centres[(e / d) % clusters * d + e % d] + 0.3 * normal()) as f32)
        .collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu)
}

#[test]
fn recall_against_exact_on_clustered_data() -> Result<()> {
    let (n, k) = (1500, 8);
    let x = clustered(n, 16, 20, 1)?;
    let lists = nn_descent(&x, k, &NnDescent::default())?;
    let rows: Vec<usize> = (0..n).collect();
    let exact = brute_force_rows(&x, &rows, k)?;
    let recall = lists.recall(&rows, &exact)?;
    assert!(recall >= 0.9, "recall@{k} = {recall}");

    // The symmetrised graphs: most exact edges are present, with the exact weights.
    let a = knn_approx_from_patterns(&x, k, &NnDescent::default())?;
    let e = knn_from_patterns(&x, k, None)?;
    assert!(a.is_symmetric());
    let (mut kept, mut total) = (0, 0);
    for i in 0..n {
        let (cols, vals) = a.row(i);
        assert!(!cols.contains(&(i as u32)), "no self loops");
        assert!(vals.iter().all(|&v| v > 0.0), "positive weights only");
        let (ecols, evals) = e.row(i);
        for (&j, &w) in ecols.iter().zip(evals) {
            total += 1;
            let got = a.get(i, j as usize);
            if got > 0.0 {
                kept += 1;
                assert!((got - w).abs() < 1e-5, "({i},{j}): {got} vs exact {w}");
            }
        }
    }
    assert!(
        kept as f64 >= 0.9 * total as f64,
        "{kept}/{total} exact edges"
    );
    Ok(())
}

#[test]
fn builder_switch_gives_the_same_graph_type() -> Result<()> {
    let x = clustered(500, 8, 5, 2)?.to_dtype(DType::F64)?;
    let exact = GraphBuilder::new().k(4).build(&x)?;
    let approx = GraphBuilder::new()
        .k(4)
        .method(KnnMethod::NnDescent(NnDescent::default()))
        .build(&x)?;
    assert_eq!(
        (approx.n(), approx.k(), approx.dtype()),
        (500, 4, DType::F64)
    );
    assert_eq!(approx.neighbours()?.dims(), exact.neighbours()?.dims());
    // f64 patterns: f64 weights, equal to the exact ones wherever both have the edge.
    for i in 0..500 {
        for (&j, &w) in exact
            .adjacency()
            .row(i)
            .0
            .iter()
            .zip(exact.adjacency().row(i).1)
        {
            let got = approx.adjacency().get(i, j as usize);
            assert!(got == 0.0 || (got - w).abs() < 1e-12);
        }
    }
    Ok(())
}

#[test]
fn small_sets_are_exact() -> Result<()> {
    // N - 1 within twice the pool: every pair is compared, so the graph equals the exact one.
    let x = clustered(40, 6, 3, 3)?;
    for k in [1, 3, 39, 100] {
        let a = knn_approx_from_patterns(&x, k, &NnDescent::default())?;
        let e = knn_from_patterns(&x, k, None)?;
        assert_eq!(a.nnz(), e.nnz(), "k {k}");
        for i in 0..40 {
            assert_eq!(a.row(i).0, e.row(i).0, "k {k} row {i}");
        }
    }
    let one = Tensor::new(&[[1f32, 2.]], &Device::Cpu)?;
    assert_eq!(
        knn_approx_from_patterns(&one, 3, &NnDescent::default())?.nnz(),
        0
    );
    Ok(())
}

#[test]
fn a_seed_gives_the_same_graph_whatever_the_threads() -> Result<()> {
    let x = clustered(1200, 16, 10, 4)?;
    let p = NnDescent::default().seed(42);
    let a = nn_descent(&x, 8, &p)?;
    let b = nn_descent(&x, 8, &p)?;
    assert_eq!(a, b);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let c = pool.install(|| nn_descent(&x, 8, &p))?;
    assert_eq!(a, c, "3 threads");
    Ok(())
}

#[test]
fn bad_input_is_a_typed_error() -> Result<()> {
    let p = NnDescent::default();
    let x = clustered(10, 3, 2, 5)?;
    let e = knn_approx_from_patterns(&x, 0, &p).unwrap_err();
    assert_eq!(GraphError::find(&e), Some(&GraphError::InvalidK(0)));
    let e = GraphBuilder::new()
        .k(0)
        .approximate(p)
        .build(&x)
        .unwrap_err();
    assert_eq!(GraphError::find(&e), Some(&GraphError::InvalidK(0)));
    let nan = Tensor::new(&[[1f32, f32::NAN], [1., 0.]], &Device::Cpu)?;
    let e = nn_descent(&nan, 1, &p).unwrap_err();
    assert!(matches!(
        GraphError::find(&e),
        Some(GraphError::NonFinite { .. })
    ));
    let e = brute_force_rows(&x, &[10], 1).unwrap_err();
    assert!(matches!(
        GraphError::find(&e),
        Some(GraphError::IndexOutOfRange {
            index: 10,
            bound: 10,
            ..
        })
    ));
    let e = nn_descent(&Tensor::zeros((2, 2, 2), DType::F32, &Device::Cpu)?, 1, &p).unwrap_err();
    assert!(matches!(
        GraphError::find(&e),
        Some(GraphError::Rank { .. })
    ));
    let e = nn_descent(&Tensor::zeros((0, 2), DType::F32, &Device::Cpu)?, 1, &p).unwrap_err();
    assert!(matches!(
        GraphError::find(&e),
        Some(GraphError::Empty { .. })
    ));
    Ok(())
}

#[test]
fn defaults_find_the_neighbours_of_uniform_high_dimensional_data() -> Result<()> {
    // Uniform 64-d points (no structure: the case of `knn_approx`), more than a leaf: the
    // forest (automatic tree count) and the descent together, against brute force.
    let (n, d, k) = (4000, 64, 8);
    let mut rng = StdRng::seed_from_u64(11);
    let v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?;
    let p = NnDescent::default();
    assert!(p.tree_count(n) > 1);
    let rows: Vec<usize> = (0..n).step_by(13).collect();
    let exact = brute_force_rows(&x, &rows, k)?;
    let recall = nn_descent(&x, k, &p)?.recall(&rows, &exact)?;
    assert!(recall >= 0.95, "recall@{k} = {recall}");
    // The forest alone, fewer trees: worse, but far above a random start (~pool / N).
    let forest = nn_descent(&x, k, &p.trees(Some(2)).max_iters(0))?.recall(&rows, &exact)?;
    assert!(
        forest > 0.3 && forest < recall,
        "forest {forest}, full {recall}"
    );
    Ok(())
}

/// Sign patterns (cosines are multiples of 2/d) tie at every rank: a search that keeps another
/// of the tied neighbours than brute force did misses by id, not by similarity.
#[test]
fn recall_with_ties_counts_equally_near_neighbours() -> Result<()> {
    let (n, d, k) = (3000, 24, 8);
    let mut rng = StdRng::seed_from_u64(5);
    let v: Vec<f32> = (0..n * d)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?;
    let rows: Vec<usize> = (0..n).step_by(7).collect();
    let exact = brute_force_rows(&x, &rows, k)?;
    let lists = nn_descent(&x, k, &NnDescent::default())?;
    let (by_id, with_ties) = (
        lists.recall(&rows, &exact)?,
        lists.recall_with_ties(&rows, &exact, 1e-6)?,
    );
    assert!(with_ties >= 0.95, "recall with ties {with_ties}");
    assert!(
        by_id < with_ties - 0.1,
        "by id {by_id}, with ties {with_ties}"
    );
    // Not vacuous: a search that found nothing near is not rescued by the ties.
    let far = nn_descent(&x, k, &NnDescent::default().trees(Some(0)).max_iters(0))?;
    let far = far.recall_with_ties(&rows, &exact, 1e-6)?;
    assert!(far < 0.3, "random lists {far}");
    Ok(())
}
