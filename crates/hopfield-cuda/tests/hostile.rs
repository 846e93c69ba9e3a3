//! Hostile input to hopfield-cuda's public ops (issue 12): random shapes (zeros included),
//! dtypes, value scales (NaN and inf included) and parameters. Every call returns a typed error
//! or a finite result; none panics. A longer run:
//!
//! ```text
//! PROPTEST_CASES=5000 cargo test --release -p hopfield-cuda --test hostile
//! ```

use candle_core::{DType, Device, Tensor};
use hopfield_cuda::retrieval::{
    retrieve, retrieve_composed, retrieve_packed, retrieve_projected, retrieve_with_lse,
    PackedSizes, Projections, Retrieval,
};
use proptest::prelude::*;

#[path = "support/hostile.rs"]
mod support;
use support::{outcome, tensor};

/// Errors must be the workspace's typed errors.
fn typed(e: &candle_core::Error) -> bool {
    hopfield_cuda::KernelError::find(e).is_some()
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        3 => Just(DType::F32),
        2 => Just(DType::F64),
        1 => Just(DType::F16),
        1 => Just(DType::BF16),
        1 => Just(DType::U32),
        1 => Just(DType::U8),
    ]
}

fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => Just(1.0),
        1 => Just(0.0),
        1 => Just(1e20),
        1 => Just(1e38),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

fn param() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => Just(0.5),
        1 => Just(0.0),
        1 => Just(-1.0),
        1 => Just(1e39),
        1 => Just(1e300),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The retrieval entry points: sizes with zeros, mismatched dtypes, masks of any shape and
    /// values, NaN/huge betas.
    #[test]
    fn retrieval_never_panics_or_returns_nan(
        (n, l, s, h, d) in (0usize..3, 0usize..5, 0usize..6, 1usize..3, 0usize..5),
        (dq, dk) in (dtype(), dtype()),
        (sc, beta, seed) in (scale(), param(), any::<u64>()),
        mask in 0u8..5,
        which in 0u8..4,
    ) {
        let r = outcome(typed, || {
            let q = tensor(&[n, l, h, d], dq, sc, seed)?;
            let k = tensor(&[n, s, h, d], dk, 1.0, seed + 1)?;
            let m = match mask {
                1 => Some(tensor(&[l, s], DType::F32, 1.0, seed + 2)?),
                2 => Some(Tensor::full(f32::NAN, (l, s), &Device::Cpu)?),
                3 => Some(Tensor::full(f32::NEG_INFINITY, (l, s), &Device::Cpu)?),
                4 => Some(Tensor::zeros((l + 1, s), DType::F32, &Device::Cpu)?),
                _ => None,
            };
            let cfg = Retrieval::new(beta).with_mask(m).with_zero_association(seed % 2 == 0);
            match which {
                0 => retrieve(&q, &k, &k, &cfg),
                1 => retrieve_with_lse(&q, &k, &k, &cfg).map(|r| r.0),
                2 => retrieve_composed(&q, &k, &k, &cfg).map(|r| r.0),
                _ => {
                    let sizes = PackedSizes { heads: h, hd: d, pd: d };
                    let qkv = tensor(&[n, l, sizes.features()], dq, sc, seed)?;
                    retrieve_packed(&qkv, sizes, &cfg)
                }
            }
        });
        r.map_err(|e| TestCaseError::fail(format!("{e}: ({n},{l},{s},{h},{d}) {dq:?}/{dk:?} x{sc} beta {beta} mask {mask} entry {which}")))?;
    }

    /// The projected retrieval with weights of any size and scale.
    #[test]
    fn projected_never_panics_or_returns_nan(
        (n, l, e, h, d, o) in (0usize..3, 0usize..5, 0usize..5, 1usize..3, 0usize..4, 0usize..4),
        dt in dtype(),
        (sc, wsc, seed) in (scale(), scale(), any::<u64>()),
        wrong in any::<bool>(),
    ) {
        let r = outcome(typed, || {
            let sizes = PackedSizes { heads: h, hd: d, pd: d };
            let z = tensor(&[n, l, e], dt, sc, seed)?;
            let w_in = tensor(&[sizes.features() + usize::from(wrong), e], dt, wsc, seed + 1)?;
            let w_out = tensor(&[o, h * d], dt, 1.0, seed + 2)?;
            let b_out = tensor(&[o], dt, 1.0, seed + 3)?;
            let proj = Projections { w_in: &w_in, b_in: None, w_out: &w_out, b_out: Some(&b_out) };
            retrieve_projected(&z, proj, sizes, &Retrieval::new(0.5))
        });
        r.map_err(|e| TestCaseError::fail(format!("{e}: ({n},{l},{e},{h},{d},{o}) {dt:?} x{sc} w x{wsc}")))?;
    }

    /// The row ops and the fused linear.
    #[test]
    fn row_ops_never_panic_or_return_nan(
        dims in prop::collection::vec(0usize..5, 1..4),
        dt in dtype(),
        (sc, eps, seed) in (scale(), param(), any::<u64>()),
        op in 0u8..4,
    ) {
        // A GEMM propagates non-finite inputs (and may overflow to inf) as IEEE arithmetic
        // does; the modules check their inputs and outputs. So for `linear` only panics count.
        let x_finite = tensor(&dims, dt, sc, seed)
            .and_then(|x| hopfield_cuda::all_finite(&x))
            .unwrap_or(true);
        if op == 3 && (!x_finite || sc >= 1e38) {
            return Ok(());
        }
        let r = outcome(typed, || {
            let x = tensor(&dims, dt, sc, seed)?;
            match op {
                0 => hopfield_cuda::masked_softmax(&x),
                1 => hopfield_cuda::masked_softmax_composed(&x),
                2 => hopfield_cuda::normalize(&x, eps),
                _ => {
                    let last = *dims.last().unwrap_or(&0);
                    let w = tensor(&[3, last], dt, 1.0, seed + 1)?;
                    hopfield_cuda::linear(&x, &w, None)
                }
            }
        });
        r.map_err(|e| TestCaseError::fail(format!("{e}: {dims:?} {dt:?} x{sc} eps {eps} op {op}")))?;
    }

    /// The Energy Transformer's energy gradients: sizes with zeros, mismatched shapes and dtypes,
    /// any beta. Like `linear` they are GEMMs that propagate non-finite inputs as IEEE
    /// arithmetic does (the modules check inputs and results), so with such inputs, or betas
    /// that overflow, only panics and untyped errors count.
    #[test]
    fn energy_gradients_never_panic(
        (b, l, d, h, z) in (0usize..3, 0usize..5, 0usize..5, 0usize..3, 0usize..3),
        (dx, dw) in (dtype(), dtype()),
        (sc, beta, seed) in (scale(), param(), any::<u64>()),
        (bad_shape, exclude_self, op) in (0u8..4, any::<bool>(), 0u8..4),
    ) {
        let benign = sc.abs() <= 1.0 && beta.abs() <= 1.0;
        let r = outcome(
            typed,
            || {
                let x = tensor(&[b, l, d], dx, sc, seed)?;
                let bt = Tensor::full(beta, h, &Device::Cpu)?.to_dtype(dw)?;
                let wd = if bad_shape == 1 { d + 1 } else { d };
                let wq = tensor(&[h, z, wd], dw, 1.0, seed + 1)?;
                let wk = if bad_shape == 2 { tensor(&[h, z + 1, d], dw, 1.0, seed + 2)? } else { wq.clone() };
                let g = match op {
                    0 => hopfield_cuda::attention_energy_grad(&x, &wq, &wk, &bt, exclude_self)?,
                    1 => hopfield_cuda::attention_energy_grad_composed(&x, &wq, &wk, &bt, exclude_self)?,
                    _ => {
                        let rows = x.reshape((b * l, d))?;
                        let w = tensor(&[wd, h + z], dw, 1.0, seed + 3)?;
                        let kind = if op == 2 {
                            hopfield_cuda::HopfieldEnergyKind::Relu
                        } else {
                            hopfield_cuda::HopfieldEnergyKind::Softmax
                        };
                        let beta = if bad_shape == 3 { bt } else { Tensor::full(beta, 1, &Device::Cpu)?.to_dtype(dw)? };
                        hopfield_cuda::hopfield_energy_grad(&rows, &w, &beta, kind)?
                    }
                };
                if benign {
                    Ok(g)
                } else {
                    // Only the absence of panics and untyped errors is asserted here.
                    Ok(Tensor::zeros(1, DType::F32, &Device::Cpu)?)
                }
            },
        );
        r.map_err(|e| TestCaseError::fail(format!("{e}: ({b},{l},{d},{h},{z}) {dx:?}/{dw:?} x{sc} beta {beta} bad {bad_shape} op {op}")))?;
    }
}

/// The sparse module's typed errors.
fn sparse_typed(e: &candle_core::Error) -> bool {
    typed(e) || hopfield_cuda::sparse::SparseError::find(e).is_some()
}

/// No panic, and an error (if any) typed. The sparse kernels let non-finite inputs propagate
/// (documented: their callers check), so `Ok` results are not required to be finite here.
fn no_panic<T>(
    what: &str,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> std::result::Result<Option<T>, TestCaseError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Err(_) => Err(TestCaseError::fail(format!("{what}: panic"))),
        Ok(Err(e)) if sparse_typed(&e) => Ok(None),
        Ok(Err(e)) => Err(TestCaseError::fail(format!("{what}: untyped error {e}"))),
        Ok(Ok(t)) => Ok(Some(t)),
    }
}

fn index() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..7, 1 => Just(usize::MAX)]
}

fn weight() -> impl Strategy<Value = f64> {
    prop_oneof![4 => Just(0.5), 1 => Just(-2.0), 1 => Just(f64::NAN), 1 => Just(f64::INFINITY), 1 => Just(1e300)]
}

/// CSR arrays `(n, row_ptr, col_idx, values)`: anything (mostly invalid), or a valid matrix of
/// up to 6 nodes built from triplets (with hostile values).
fn csr_arrays() -> impl Strategy<Value = (usize, Vec<usize>, Vec<u32>, Vec<f64>)> {
    let any = (
        index(),
        prop::collection::vec(index(), 0..8),
        prop::collection::vec(prop_oneof![0u32..7, Just(u32::MAX)], 0..8),
        prop::collection::vec(weight(), 0..8),
    );
    let valid = (0usize..7).prop_flat_map(|n| {
        let idx = 0..n.max(1) as u32;
        prop::collection::vec((idx.clone(), idx, weight()), 0..(3 * n + 1)).prop_map(
            move |mut t| {
                t.retain(|e| (e.0 as usize) < n);
                t.sort_by_key(|e| (e.0, e.1));
                t.dedup_by_key(|e| (e.0, e.1));
                let mut row_ptr = vec![0usize; n + 1];
                for e in &t {
                    row_ptr[e.0 as usize + 1] += 1;
                }
                for i in 0..n {
                    row_ptr[i + 1] += row_ptr[i];
                }
                (
                    n,
                    row_ptr,
                    t.iter().map(|e| e.1).collect(),
                    t.iter().map(|e| e.2).collect(),
                )
            },
        )
    });
    prop_oneof![any, valid]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// CSR arrays of any lengths and contents (row pointers out of order or beyond the columns,
    /// columns beyond n, an absurd n), then every sparse entry point on what `new` accepts,
    /// with operands of any shape, dtype and scale, any eta and any renumbering.
    #[test]
    fn sparse_matrices_and_products_never_panic(
        (n, row_ptr, col_idx, values) in csr_arrays(),
        m in 0usize..3,
        rows in prop_oneof![Just(None), (0usize..7).prop_map(Some)],
        dt in dtype(),
        sc in scale(),
        eta in param(),
        order in prop::collection::vec(0u32..8, 0..8),
    ) {
        let Some(a) = no_panic("CsrMatrix::new", || {
            hopfield_cuda::sparse::CsrMatrix::new(n, row_ptr, col_idx, values)
        })? else {
            return Ok(());
        };
        use hopfield_cuda::sparse::{diffusion_step, spmm, spmm_composed, diffusion_step_composed};
        // The matrix's own N mostly, any other sometimes.
        let rows = rows.unwrap_or(a.n());
        let x = tensor(&[rows, m], dt, sc, 3).unwrap();
        let deg = tensor(&[rows], dt, sc, 4).unwrap();
        no_panic("spmm", || spmm(&a, &x))?;
        no_panic("spmm_composed", || spmm_composed(&a, &x))?;
        no_panic("diffusion_step", || diffusion_step(&a, &deg, eta, &x))?;
        no_panic("diffusion_step_composed", || diffusion_step_composed(&a, &deg, eta, &x))?;
        no_panic("permuted", || a.permuted(&order))?;
        no_panic("locality_order", || Ok(a.locality_order()))?;
        no_panic("bandwidth", || Ok(a.bandwidth()))?;
        no_panic("transpose", || Ok(a.transpose().nnz()))?;
        // (Below LOCALITY_MIN_NODES: None; the order's own shape checks are unit-tested.)
        no_panic("locality", || Ok(a.locality().is_some()))?;
    }
}

/// `n = usize::MAX`: `n + 1` overflowed (a panic in debug builds; in release an empty
/// `row_ptr` passed the length check and the next check indexed it).
#[test]
fn csr_of_absurd_size_is_typed_not_an_overflow() {
    for row_ptr in [vec![], vec![0]] {
        let e =
            hopfield_cuda::sparse::CsrMatrix::new(usize::MAX, row_ptr, vec![], vec![]).unwrap_err();
        assert!(matches!(
            hopfield_cuda::sparse::SparseError::find(&e),
            Some(hopfield_cuda::sparse::SparseError::InvalidCsr(_))
        ));
    }
}
