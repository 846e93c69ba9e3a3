//! The sparse kernels against their composed forms and finite differences.

use candle_core::{DType, Device, Result, Tensor, Var};
use hopfield_cuda::sparse::{
    diffusion_step, diffusion_step_composed, spmm, spmm_composed, CsrMatrix, SparseError,
};
use hopfield_cuda::KernelError;
use rstest::rstest;

/// A deterministic kNN-like graph: row i has up to `k` distinct neighbours (no self loops unless
/// n = 1) and every `empty`-th row is empty (`empty = 0`: none).
fn graph(n: usize, k: usize, empty: usize) -> CsrMatrix {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut rp, mut ci, mut v) = (vec![0usize], vec![], vec![]);
    for i in 0..n {
        if !(empty > 0 && i % empty == 0) {
            let mut cols: Vec<u32> = (0..k).map(|_| (next() % n as u64) as u32).collect();
            cols.sort_unstable();
            cols.dedup();
            for c in cols {
                ci.push(c);
                v.push(0.1 + (next() % 1000) as f64 / 1000.0);
            }
        }
        rp.push(ci.len());
    }
    CsrMatrix::new(n, rp, ci, v).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), b.len());
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max))
}

fn dense(n: usize, b: usize, seed: f64, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..n * b)
        .map(|i| ((i as f64 + seed) * 0.7311).sin())
        .collect();
    Tensor::from_vec(v, (n, b), &Device::Cpu)?.to_dtype(dtype)
}

fn degrees(a: &CsrMatrix, dtype: DType) -> Result<Tensor> {
    let d: Vec<f64> = (0..a.n()).map(|i| a.row(i).1.iter().sum()).collect();
    Tensor::from_vec(d, a.n(), &Device::Cpu)?.to_dtype(dtype)
}

#[rstest]
#[case::single_node(1, 1, 0, 3)]
#[case::single_empty_node(1, 1, 1, 2)]
#[case::one_column(7, 3, 0, 1)]
#[case::empty_rows(50, 4, 5, 5)]
#[case::all_rows_empty(9, 3, 1, 4)]
#[case::wide(120, 8, 7, 33)]
// The CPU kernel sums 32 columns at a time in registers: one slab, whole slabs, slabs and a
// tail, over several row tasks (16K output elements each).
#[case::one_slab(200, 5, 2, 32)]
#[case::whole_slabs(600, 6, 3, 64)]
#[case::slabs_and_tail(700, 8, 10, 70)]
#[case::zero_columns(6, 2, 0, 0)]
fn fused_step_equals_composed(
    #[case] n: usize,
    #[case] k: usize,
    #[case] empty: usize,
    #[case] b: usize,
    #[values(DType::F32, DType::F64)] dtype: DType,
) -> Result<()> {
    let a = graph(n, k, empty);
    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-13 };
    let x = Var::from_tensor(&dense(n, b, 1.0, dtype)?)?;
    let deg = Var::from_tensor(&degrees(&a, dtype)?)?;
    let c = dense(n, b, 5.0, dtype)?;
    let eta = 0.15;

    let fused = diffusion_step(&a, deg.as_tensor(), eta, x.as_tensor())?;
    let composed = diffusion_step_composed(&a, deg.as_tensor(), eta, x.as_tensor())?;
    assert!(max_rel(&fused, &composed)? <= tol);
    let gf = (&fused * &c)?.sum_all()?.backward()?;
    let gc = (&composed * &c)?.sum_all()?.backward()?;
    for v in [x.as_tensor(), deg.as_tensor()] {
        match (gf.get(v), gc.get(v)) {
            (Some(f), Some(c)) => assert!(max_rel(f, c)? <= tol),
            // With no columns the paths may differ in whether they report (empty or zero)
            // gradients at all.
            _ => assert_eq!(b, 0),
        }
    }

    let ys = spmm(&a, x.as_tensor())?;
    let yc = spmm_composed(&a, x.as_tensor())?;
    assert!(max_rel(&ys, &yc)? <= tol);
    let gs = (&ys * &c)?.sum_all()?.backward()?;
    let gc = (&yc * &c)?.sum_all()?.backward()?;
    if let (Some(s), Some(c)) = (gs.get(x.as_tensor()), gc.get(x.as_tensor())) {
        assert!(max_rel(s, c)? <= tol);
    }
    Ok(())
}

#[test]
fn spmm_backward_matches_finite_differences() -> Result<()> {
    let (n, b) = (30, 3);
    let a = graph(n, 4, 6);
    let x0 = dense(n, b, 2.0, DType::F64)?;
    let c = dense(n, b, 9.0, DType::F64)?;
    let loss = |x: &Tensor| -> Result<f64> {
        // Not linear in x, so the check sees more than W^T c.
        (spmm(&a, x)?.sqr()? * &c)?.sum_all()?.to_scalar::<f64>()
    };
    let x = Var::from_tensor(&x0)?;
    let g = (spmm(&a, x.as_tensor())?.sqr()? * &c)?
        .sum_all()?
        .backward()?;
    let g = g.get(x.as_tensor()).unwrap().to_vec2::<f64>()?;
    let base = x0.to_vec2::<f64>()?;
    let h = 1e-6;
    for i in (0..n).step_by(3) {
        for j in 0..b {
            let mut p = base.clone();
            p[i][j] += h;
            let mut m = base.clone();
            m[i][j] -= h;
            let fd = (loss(&Tensor::new(p, &Device::Cpu)?)?
                - loss(&Tensor::new(m, &Device::Cpu)?)?)
                / (2.0 * h);
            assert!(
                (fd - g[i][j]).abs() <= 1e-7 * (1.0 + fd.abs()),
                "({i}, {j}): {fd} vs {}",
                g[i][j]
            );
        }
    }
    Ok(())
}

#[test]
fn transpose_is_built_once_and_shared() -> Result<()> {
    let a = graph(40, 5, 4);
    let shared = a.clone();
    assert!(!a.transpose_is_cached());
    let x = Var::from_tensor(&dense(40, 2, 0.0, DType::F32)?)?;
    let deg = degrees(&a, DType::F32)?;
    for _ in 0..3 {
        spmm(&a, x.as_tensor())?.sum_all()?.backward()?;
        diffusion_step(&a, &deg, 0.1, x.as_tensor())?
            .sum_all()?
            .backward()?;
    }
    // Built by the first backward pass, held by every clone, the same storage ever since.
    assert!(shared.transpose_is_cached());
    let t = a.transpose();
    assert!(t.shares_storage(shared.transpose()));
    // The transpose's entries are W's, swapped.
    for i in 0..a.n() {
        let (c, v) = a.row(i);
        for (&j, &w) in c.iter().zip(v) {
            let (tc, tv) = t.row(j as usize);
            let p = tc.binary_search(&(i as u32)).unwrap();
            assert_eq!(tv[p], w);
        }
    }
    Ok(())
}

#[test]
fn trailing_dimensions_share_the_matrix() -> Result<()> {
    let a = graph(10, 3, 0);
    let x = dense(10, 6, 3.0, DType::F64)?.reshape((10, 2, 3))?;
    let y = spmm(&a, &x)?;
    assert_eq!(y.dims(), &[10, 2, 3]);
    let y2 = spmm(&a, &x.reshape((10, 6))?)?.reshape((10, 2, 3))?;
    assert_eq!(max_rel(&y, &y2)?, 0.0);
    Ok(())
}

#[test]
fn half_precision_uses_the_composed_path() -> Result<()> {
    let a = graph(20, 4, 3);
    let x = dense(20, 4, 1.0, DType::F32)?;
    let deg = degrees(&a, DType::F32)?;
    let f32_step = diffusion_step(&a, &deg, 0.1, &x)?;
    let bf = diffusion_step(
        &a,
        &deg.to_dtype(DType::BF16)?,
        0.1,
        &x.to_dtype(DType::BF16)?,
    )?;
    assert!(max_rel(&bf, &f32_step)? < 3e-2);
    Ok(())
}

#[test]
fn bad_arguments_are_typed() -> Result<()> {
    let a = graph(4, 2, 0);
    let dev = Device::Cpu;
    let e = spmm(&a, &Tensor::zeros((3, 2), DType::F32, &dev)?).unwrap_err();
    assert!(matches!(
        SparseError::find(&e),
        Some(SparseError::Shape { .. })
    ));
    let e = spmm(&a, &Tensor::zeros((4, 2), DType::U32, &dev)?).unwrap_err();
    assert!(matches!(
        KernelError::find(&e),
        Some(KernelError::NotFloat { .. })
    ));
    let x = Tensor::zeros((4, 2), DType::F64, &dev)?;
    let e = diffusion_step(&a, &Tensor::zeros(4, DType::F32, &dev)?, 0.1, &x).unwrap_err();
    assert!(matches!(
        KernelError::find(&e),
        Some(KernelError::DtypeMismatch { .. })
    ));
    let e = diffusion_step(&a, &Tensor::zeros(5, DType::F64, &dev)?, 0.1, &x).unwrap_err();
    assert!(matches!(
        SparseError::find(&e),
        Some(SparseError::Shape { .. })
    ));
    let e = diffusion_step(&a, &Tensor::zeros(4, DType::F64, &dev)?, f64::NAN, &x).unwrap_err();
    assert!(matches!(
        KernelError::find(&e),
        Some(KernelError::Param { .. })
    ));
    for (rp, ci, v) in [
        (vec![0, 1], vec![0u32], vec![1.0]),
        (vec![0, 2, 1, 2, 2], vec![0, 1], vec![1.0, 1.0]),
        (vec![0, 1, 1, 1, 1], vec![4], vec![1.0]),
    ] {
        let e = CsrMatrix::new(4, rp, ci, v).unwrap_err();
        assert!(matches!(
            SparseError::find(&e),
            Some(SparseError::InvalidCsr(_))
        ));
    }
    Ok(())
}

/// The CUDA kernels against the CPU ones; skips without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu() -> Result<()> {
    let Ok(gpu) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return Ok(());
    };
    let a = graph(300, 8, 7);
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let x = dense(300, 37, 1.0, dtype)?;
        let deg = degrees(&a, dtype)?;
        let xg = Var::from_tensor(&x.to_device(&gpu)?)?;
        let y = diffusion_step(&a, &deg.to_device(&gpu)?, 0.2, xg.as_tensor())?;
        assert!(
            max_rel(
                &y.to_device(&Device::Cpu)?,
                &diffusion_step(&a, &deg, 0.2, &x)?
            )? <= tol
        );
        let s = spmm(&a, xg.as_tensor())?;
        assert!(max_rel(&s.to_device(&Device::Cpu)?, &spmm(&a, &x)?)? <= tol);
        let g = s.sum_all()?.backward()?;
        let gc = spmm(
            a.transpose(),
            &Tensor::ones((300, 37), dtype, &Device::Cpu)?,
        )?;
        assert!(
            max_rel(
                &g.get(xg.as_tensor()).unwrap().to_device(&Device::Cpu)?,
                &gc
            )? <= tol
        );
    }
    Ok(())
}
