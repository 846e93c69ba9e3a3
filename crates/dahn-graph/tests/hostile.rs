//! Hostile input (issue 12): every public entry point of dahn-graph returns a typed
//! [`GraphError`] or a finite result, and never panics, aborts or hangs.
//!
//! Two kinds of tests:
//! - plain `#[test]`s pinning each reported bug (each failed, panicked or returned NaN before the
//!   fix);
//! - property tests over random shapes (zeros included), dtypes (f32, f64, f16, u32, i64),
//!   extreme values (0, +-1e30, 1e-30, +-inf, NaN, f64::MAX, negatives), configs (k, block rows)
//!   and out-of-range triplets. Property: `Ok` results are finite, errors are typed
//!   (`GraphError::find` recovers them), nothing panics (proptest reports a panic as a failure).
//!
//! The property tests run 48 cases each (a few seconds in debug). A longer run:
//! `PROPTEST_CASES=2000 cargo test -p dahn-graph --test hostile`.

use candle_core::{DType, Device, Result, Tensor};
use dahn_graph::{
    brute_force_rows, cosine_similarity, knn_approx_from_patterns, knn_from_patterns, knn_graph,
    laplacian, nn_descent, normalize_rows, normalized_laplacian, Csr, Graph, GraphBuilder,
    GraphError, GraphMatrix, KnnLists, LaplacianBuilder, Merge, NnDescent,
};
use proptest::prelude::*;

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

/// The property: Ok and finite, or a typed error.
fn typed_or_finite(r: Result<Tensor>) -> std::result::Result<(), TestCaseError> {
    match r {
        Ok(t) => prop_assert!(all_finite(&t), "Ok but not finite: {t}"),
        Err(e) => prop_assert!(GraphError::find(&e).is_some(), "untyped error: {e}"),
    }
    Ok(())
}

fn typed<T>(r: Result<T>) -> std::result::Result<Option<T>, TestCaseError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            prop_assert!(GraphError::find(&e).is_some(), "untyped error: {e}");
            Ok(None)
        }
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -2.0f64..2.0,
        1 => Just(0.0),
        1 => Just(1e30),
        1 => Just(-1e30),
        1 => Just(1e-30),
        1 => Just(f64::MAX),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        1 => Just(300.0),
        1 => Just(1e-310),
        1 => Just(-f64::MAX),
    ]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        3 => Just(DType::F64),
        3 => Just(DType::F32),
        2 => Just(DType::F16),
        1 => Just(DType::BF16),
        1 => Just(DType::U32),
        1 => Just(DType::I64),
    ]
}

/// A tensor whose `Debug` shows its values, so that proptest's minimal failing input is useful.
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

/// A tensor of `dims` in `dtype` with hostile values (cast from f64: may become inf or saturate).
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

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => (0usize..7, 0usize..5).prop_map(|(n, d)| vec![n, d]),
        1 => (0usize..4).prop_map(|n| vec![n]),
        1 => (0usize..4, 0usize..3, 0usize..3).prop_map(|(a, b, c)| vec![a, b, c]),
    ]
}

fn square() -> impl Strategy<Value = Shown> {
    prop_oneof![
        4 => (0usize..6).prop_map(|n| vec![n, n]),
        1 => (0usize..4, 0usize..4).prop_map(|(a, b)| vec![a, b]),
    ]
    .prop_flat_map(tensor)
}

fn k() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1usize..8, Just(1 << 40), Just(usize::MAX)]
}

fn triplets() -> impl Strategy<Value = (usize, Vec<(u32, u32, f64)>)> {
    (0usize..6).prop_flat_map(|n| {
        let idx = 0u32..(n as u32 + 2); // out of range sometimes
        (
            Just(n),
            prop::collection::vec((idx.clone(), idx, value()), 0..12),
        )
    })
}

/// A valid CSR matrix (in-range indices, finite values, possibly huge or negative).
fn csr() -> impl Strategy<Value = Csr> {
    (1usize..6).prop_flat_map(|n| {
        let idx = 0u32..n as u32;
        let v = prop_oneof![
            4 => -2.0f64..2.0,
            1 => Just(f64::MAX),
            1 => Just(1e300),
            1 => Just(1e-300),
        ];
        prop::collection::vec((idx.clone(), idx, v), 0..14)
            .prop_map(move |t| Csr::from_triplets(n, t, Merge::Max).unwrap())
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn similarity_and_normalisation(x in shape().prop_flat_map(tensor)) {
        typed_or_finite(cosine_similarity(&x))?;
        typed_or_finite(normalize_rows(&x))?;
    }

    #[test]
    fn knn_paths(x in shape().prop_flat_map(tensor), k in k(), block in prop::option::of(prop_oneof![0usize..4, Just(usize::MAX)])) {
        if let Some(a) = typed(knn_from_patterns(&x, k, block))? {
            prop_assert!(a.values().iter().all(|v| v.is_finite()));
            prop_assert!(a.is_symmetric());
        }
        typed_or_finite(knn_graph(&x, k))?;
        let mut b = GraphBuilder::new().k(k);
        if let Some(r) = block { b = b.block_rows(r); }
        if let Some(g) = typed(b.build(&x))? {
            typed_or_finite(g.weights())?;
            typed_or_finite(g.degrees())?;
            typed(g.neighbours())?;
            for normalized in [false, true] {
                let l = g.laplacian(normalized);
                prop_assert!(l.values().iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn dense_laplacians(a in square()) {
        typed_or_finite(laplacian(&a))?;
        typed_or_finite(normalized_laplacian(&a))?;
        typed_or_finite(LaplacianBuilder::new().build(&a))?;
        if let Some(c) = typed(Csr::from_dense(&a))? {
            typed(c.try_laplacian(false))?;
            if let Some(l) = typed(c.try_laplacian(true))? {
                prop_assert!(l.values().iter().all(|v| v.is_finite()), "{:?}", l.values());
            }
            if c.values().iter().all(|&v| v >= 0.0) {
                // Non-negative weights: the normalised Laplacian is always representable.
                let l = c.laplacian(true);
                prop_assert!(l.values().iter().all(|v| v.is_finite()), "{:?}", l.values());
            }
            typed(LaplacianBuilder::new().build_sparse(&c))?;
        }
        let m = GraphMatrix::Dense(a.0.clone());
        typed(m.validate())?;
        typed(m.diagonal())?;
        typed(m.row_sums())?;
        typed(m.gershgorin_bound())?;
        typed(m.asymmetry())?;
        typed_or_finite(m.matmul(&a))?;
    }

    #[test]
    fn triplets_are_validated((n, t) in triplets()) {
        let in_range = t.iter().all(|&(r, c, v)| (r as usize) < n && (c as usize) < n && v.is_finite());
        for merge in [Merge::Max, Merge::Sum] {
            match Csr::from_triplets(n, t.clone(), merge) {
                Ok(a) => {
                    prop_assert!(in_range);
                    prop_assert!(a.values().iter().all(|v| v.is_finite()));
                    prop_assert_eq!(a.get(n, 0), 0.0);
                    prop_assert_eq!(a.get(0, (1usize << 32) + 1), 0.0);
                    prop_assert_eq!(a.row(n + 3).0.len(), 0);
                }
                Err(e) => prop_assert!(GraphError::find(&e).is_some(), "untyped error: {e}"),
            }
        }
    }

    #[test]
    fn approximate_paths(
        x in shape().prop_flat_map(tensor),
        k in k(),
        pool in prop::option::of(prop_oneof![0usize..3, Just(usize::MAX)]),
        cand in prop::option::of(prop_oneof![0usize..3, Just(usize::MAX)]),
        trees in prop::option::of(0usize..3),
        leaf in prop_oneof![0usize..3, Just(1024usize), Just(usize::MAX)],
        max_iters in prop_oneof![0usize..3, Just(usize::MAX)],
        delta in prop_oneof![Just(0.001), Just(0.0), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY)],
    ) {
        let p = NnDescent { seed: 1, pool, max_candidates: cand, trees, leaf, max_iters, delta };
        if let Some(lists) = typed(nn_descent(&x, k, &p))? {
            prop_assert!(lists.validate().is_ok());
            let rows: Vec<usize> = (0..lists.n).collect();
            if let Some(exact) = typed(brute_force_rows(&x, &rows, k))? {
                let r = typed(lists.recall(&rows, &exact))?.unwrap();
                prop_assert!((0.0..=1.0).contains(&r), "recall {r}");
                let t = typed(lists.recall_with_ties(&rows, &exact, 1e-9))?.unwrap();
                prop_assert!((r..=1.0).contains(&t), "recall {r}, with ties {t}");
            }
        }
        if let Some(a) = typed(knn_approx_from_patterns(&x, k, &p))? {
            prop_assert!(a.values().iter().all(|v| v.is_finite() && *v > 0.0));
            prop_assert!(a.is_symmetric());
        }
        typed(GraphBuilder::new().k(k).approximate(p).build(&x))?;
    }

    #[test]
    fn hand_built_knn_lists(
        n in 0usize..5,
        k in 0usize..4,
        ids in prop::collection::vec(prop_oneof![0u32..7, Just(KnnLists::EMPTY)], 0..16),
        sims in prop::collection::vec(value(), 0..16),
        rows in prop::collection::vec(0usize..7, 0..5),
        eps in prop_oneof![Just(0.0), Just(1e-6), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY)],
    ) {
        let lists = KnnLists { n, k, indices: ids, similarities: sims };
        for i in 0..8 {
            let (a, b) = lists.row(i);
            prop_assert_eq!(a.len(), b.len());
        }
        let valid = typed(lists.validate())?.is_some();
        if let Some(c) = typed(lists.to_csr())? {
            prop_assert!(valid);
            prop_assert!(c.values().iter().all(|v| v.is_finite() && *v > 0.0));
        }
        let exact = KnnLists { n: rows.len(), ..lists.clone() };
        for r in [lists.recall(&rows, &lists), lists.recall(&rows, &exact), lists.recall_with_ties(&rows, &exact, eps)] {
            if let Some(r) = typed(r)? {
                prop_assert!((0.0..=1.0).contains(&r), "recall {r}");
            }
        }
    }

    #[test]
    fn sparse_products_and_views(a in csr(), x in shape().prop_flat_map(tensor), k in k()) {
        typed_or_finite(a.matmul(&x))?;
        typed_or_finite(GraphMatrix::from(a.clone()).matmul(&x))?;
        typed(a.neighbour_table(k, &Device::Cpu))?;
        typed(Graph::from_csr(a.clone(), k, DType::F32, &Device::Cpu))?;
        typed(a.try_laplacian(false))?;
        if let Some(l) = typed(a.try_laplacian(true))? {
            prop_assert!(l.values().iter().all(|v| v.is_finite()), "{:?}", l.values());
        }
        if a.values().iter().all(|&v| v >= 0.0) {
            let l = a.laplacian(true);
            prop_assert!(l.values().iter().all(|v| v.is_finite()), "{:?}", l.values());
        }
        typed_or_finite(a.to_dense(DType::F64, &Device::Cpu))?;
        let t = a.transpose().unwrap();
        prop_assert_eq!(t.transpose().unwrap(), a);
    }
}

// ---- pinned reported bugs -------------------------------------------------------------------

fn err_of<T: std::fmt::Debug>(r: Result<T>) -> GraphError {
    let e = r.unwrap_err();
    GraphError::find(&e)
        .unwrap_or_else(|| panic!("untyped: {e}"))
        .clone()
}

#[test]
fn from_triplets_out_of_range_row_is_typed_not_a_panic() {
    let e = err_of(Csr::from_triplets(
        3,
        vec![(0, 1, 1.0), (5, 0, 1.0)],
        Merge::Sum,
    ));
    match e {
        GraphError::IndexOutOfRange { what, index, bound } => {
            assert!(what.contains("triplets[1].row"), "{what}");
            assert_eq!((index, bound), (5, 3));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn from_triplets_out_of_range_col_is_typed_not_stored() {
    // Before: accepted, stored as column 3 of a 3 x 3 matrix (out-of-bounds later).
    let e = err_of(Csr::from_triplets(3, vec![(0, 3, 1.0)], Merge::Sum));
    assert!(
        matches!(e, GraphError::IndexOutOfRange { ref what, index: 3, bound: 3 } if what.contains(".col")),
        "{e}"
    );
}

#[test]
fn from_triplets_non_finite_and_overflowing_merge_are_typed() {
    let e = err_of(Csr::from_triplets(2, vec![(0, 1, f64::NAN)], Merge::Sum));
    assert!(matches!(e, GraphError::NonFinite { .. }), "{e}");
    let e = err_of(Csr::from_triplets(
        2,
        vec![(0, 1, f64::MAX), (0, 1, f64::MAX)],
        Merge::Sum,
    ));
    assert!(matches!(e, GraphError::Overflow { .. }), "{e}");
    let e = err_of(Csr::from_triplets(
        u32::MAX as usize + 1,
        vec![],
        Merge::Sum,
    ));
    assert!(matches!(e, GraphError::TooLarge { .. }), "{e}");
}

fn huge_adjacency(dtype: DType) -> Result<Tensor> {
    let big = match dtype {
        DType::F16 => 40000.0,
        DType::F32 => 3e38,
        _ => 1e308,
    };
    Tensor::new(
        &[[0.0, big, big], [big, 0.0, 1.0], [big, 1.0, 0.0]],
        &Device::Cpu,
    )?
    .to_dtype(dtype)
}

#[test]
fn dense_laplacian_degree_overflow_is_typed_not_nan() -> Result<()> {
    for dtype in [DType::F64, DType::F32, DType::F16] {
        let a = huge_adjacency(dtype)?;
        // Before: diag(inf) put NaN (0 * inf) everywhere off the diagonal.
        let e = err_of(laplacian(&a));
        assert!(matches!(e, GraphError::Overflow { .. }), "{dtype:?}: {e}");
        // Normalised: scale-invariant, so computed stably; equals the Laplacian of A / max.
        let l = normalized_laplacian(&a)?;
        assert!(all_finite(&l), "{dtype:?}: {l}");
        let small = (a.to_dtype(DType::F64)? / 1e300)?;
        let want = normalized_laplacian(&small)?;
        let diff = (l.to_dtype(DType::F64)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 2e-3, "{dtype:?}: {diff}");
    }
    Ok(())
}

#[test]
fn sparse_laplacian_degree_overflow_is_typed_or_stable() -> Result<()> {
    let a = Csr::from_dense(&huge_adjacency(DType::F64)?)?;
    let e = err_of(a.try_laplacian(false));
    assert!(matches!(e, GraphError::Overflow { .. }), "{e}");
    // Before: d = inf, d^-1/2 = 0 and the diagonal d * 0 * 0 = NaN.
    let l = a.laplacian(true);
    assert!(l.values().iter().all(|v| v.is_finite()), "{:?}", l.values());
    assert!((l.get(0, 0) - 1.0).abs() < 1e-12);
    let e = err_of(LaplacianBuilder::new().normalized(false).build_sparse(&a));
    assert!(matches!(e, GraphError::Overflow { .. }), "{e}");
    Ok(())
}

#[test]
fn f16_similarity_of_large_patterns_is_not_zeroed() -> Result<()> {
    // Before: |x|^2 = 90000 overflows f16 (max 65504), the norm is inf and the rows become 0.
    let x = Tensor::new(&[[300f32, 0.0], [300.0, 10.0]], &Device::Cpu)?.to_dtype(DType::F16)?;
    let s = cosine_similarity(&x)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    assert!(s[0][1] > 0.99, "{s:?}");
    let x = Tensor::new(&[[1e200f64, 1e200], [0.0, 0.0]], &Device::Cpu)?;
    let n = normalize_rows(&x)?.to_vec2::<f64>()?;
    assert!((n[0][0] - 0.5f64.sqrt()).abs() < 1e-15, "{n:?}");
    assert_eq!(n[1], vec![0.0, 0.0]);
    Ok(())
}

#[test]
fn integer_and_scalar_inputs_are_typed_not_candle_panics() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1u32, 2], [3, 4]], &dev)?;
    // Before: candle panics ("no unary function for u32") inside the square root.
    assert!(matches!(
        err_of(normalize_rows(&x)),
        GraphError::DType { .. }
    ));
    assert!(matches!(
        err_of(normalize_rows(&Tensor::new(1f32, &dev)?)),
        GraphError::Rank { .. }
    ));
    let a = Csr::from_triplets(2, vec![(0, 1, 1.0)], Merge::Sum)?;
    assert!(matches!(err_of(a.matmul(&x)), GraphError::DType { .. }));
    assert!(matches!(
        err_of(Graph::from_csr(a, 1, DType::U8, &dev)),
        GraphError::DType { .. }
    ));
    Ok(())
}

#[test]
fn absurd_k_is_typed_not_an_abort() -> Result<()> {
    let a = Csr::from_triplets(3, vec![(0, 1, 1.0), (1, 0, 1.0)], Merge::Sum)?;
    // Before: Vec::with_capacity(k) per row: "capacity overflow" or a failed allocation.
    for k in [1usize << 62, usize::MAX] {
        assert!(matches!(
            err_of(a.neighbour_table(k, &Device::Cpu)),
            GraphError::TooLarge { .. }
        ));
        assert!(matches!(
            err_of(Graph::from_csr(a.clone(), k, DType::F32, &Device::Cpu)),
            GraphError::TooLarge { .. }
        ));
    }
    // k from a config far beyond N is clamped (2 N k no longer overflows).
    let x = Tensor::new(&[[1f64, 0.], [0.9, 0.1], [0., 1.]], &Device::Cpu)?;
    assert_eq!(
        knn_from_patterns(&x, usize::MAX, None)?,
        knn_from_patterns(&x, 2, None)?
    );
    Ok(())
}

#[test]
fn non_square_dense_graph_matrix_is_typed_not_an_index_panic() -> Result<()> {
    // Before: diagonal()/row_sums() indexed past the end of a (3, 1) matrix.
    let m = GraphMatrix::Dense(Tensor::zeros((3, 1), DType::F64, &Device::Cpu)?);
    assert!(matches!(err_of(m.diagonal()), GraphError::NotSquare { .. }));
    assert!(matches!(err_of(m.row_sums()), GraphError::NotSquare { .. }));
    assert!(matches!(
        err_of(m.gershgorin_bound()),
        GraphError::NotSquare { .. }
    ));
    let x = Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?;
    assert!(matches!(err_of(m.matmul(&x)), GraphError::NotSquare { .. }));
    Ok(())
}

#[test]
fn csr_get_does_not_alias_columns_beyond_u32() -> Result<()> {
    let a = Csr::from_triplets(2, vec![(0, 1, 7.0)], Merge::Sum)?;
    // Before: j = 2^32 + 1 was truncated to column 1.
    assert_eq!(a.get(0, (1usize << 32) + 1), 0.0);
    assert_eq!(a.get(0, 1), 7.0);
    assert_eq!(a.get(5, 0), 0.0);
    Ok(())
}

#[test]
fn products_that_overflow_are_typed() -> Result<()> {
    let a = Csr::from_triplets(2, vec![(0, 0, 1e300), (0, 1, 1e300)], Merge::Sum)?;
    let x = Tensor::new(&[[1e300f64], [1e300]], &Device::Cpu)?;
    assert!(matches!(err_of(a.matmul(&x)), GraphError::Overflow { .. }));
    let nan = Tensor::new(&[[f64::NAN], [0.0]], &Device::Cpu)?;
    assert!(matches!(
        err_of(a.matmul(&nan)),
        GraphError::NonFinite { .. }
    ));
    Ok(())
}

/// Lists built by hand whose storage is shorter than n * k: slicing a row panicked.
#[test]
fn knn_lists_with_short_storage_are_typed_not_a_panic() {
    let short = KnnLists {
        n: 3,
        k: 2,
        indices: vec![1, 2, 0],
        similarities: vec![0.5; 3],
    };
    assert!(matches!(
        err_of(short.to_csr()),
        GraphError::ShapeMismatch(_)
    ));
    assert_eq!(short.row(1), (&[][..], &[][..]));
    // No entries, an absurd n: typed (a row loop would have run for ever).
    let absurd = KnnLists {
        n: usize::MAX,
        k: 0,
        indices: vec![],
        similarities: vec![],
    };
    assert!(absurd.validate().is_ok());
    err_of(absurd.to_csr());
    let exact = KnnLists {
        n: 1,
        k: 2,
        indices: vec![1, 2],
        similarities: vec![0.5; 2],
    };
    assert!(matches!(
        err_of(short.recall(&[2], &exact)),
        GraphError::ShapeMismatch(_)
    ));
}

/// recall with a row outside the lists, or exact lists for another number of rows, panicked on
/// a slice index.
#[test]
fn recall_of_rows_outside_the_lists_is_typed_not_a_panic() -> Result<()> {
    let x = Tensor::new(&[[1f32, 0.], [1., 0.1], [0., 1.], [0.1, 1.]], &Device::Cpu)?;
    let lists = nn_descent(&x, 1, &NnDescent::default())?;
    let exact = brute_force_rows(&x, &[0, 1], 1)?;
    assert_eq!(lists.recall(&[0, 1], &exact)?, 1.0);
    assert!(matches!(
        err_of(lists.recall(&[0, 9], &exact)),
        GraphError::IndexOutOfRange {
            index: 9,
            bound: 4,
            ..
        }
    ));
    assert!(matches!(
        err_of(lists.recall(&[0], &exact)),
        GraphError::ShapeMismatch(_)
    ));
    assert!(matches!(
        err_of(lists.recall_with_ties(&[0, 1], &exact, f64::NAN)),
        GraphError::InvalidArgument(_)
    ));
    Ok(())
}

/// A delta that never stops the descent (NaN, negative) with max_iters = usize::MAX ran for
/// ever once the lists stopped changing; the descent now ends at its fixed point, with the
/// lists a bounded run finds.
#[test]
fn descent_without_a_stopping_delta_ends_at_its_fixed_point() -> Result<()> {
    let x = Tensor::randn(0f32, 1., (300, 6), &Device::Cpu)?;
    let p = NnDescent::default().pool(Some(4)).trees(Some(0));
    let bounded = nn_descent(&x, 2, &p.max_iters(200).delta(0.0))?;
    for delta in [f64::NAN, -1.0] {
        let endless = nn_descent(&x, 2, &p.max_iters(usize::MAX).delta(delta))?;
        assert_eq!(endless, bounded);
    }
    Ok(())
}

/// A `block_rows` far beyond the data (one N x N tile) is capped at 2^25 similarities per tile
/// (here 2796 rows of 12000): the same graph as the default blocks.
#[test]
fn huge_block_rows_are_capped_and_give_the_same_graph() -> Result<()> {
    let x = Tensor::randn(0f32, 1., (12_000, 2), &Device::Cpu)?;
    let capped = knn_from_patterns(&x, 3, Some(usize::MAX))?;
    assert_eq!(capped, knn_from_patterns(&x, 3, None)?);
    Ok(())
}
