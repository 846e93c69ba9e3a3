//! The CUDA kernels of entmax (feature `cuda`): `kernels/entmax.cu`, compiled to PTX by `build.rs`
//! and launched through candle's re-exported cudarc, one block per row. f32 and f64 are computed
//! in their own type, f16 and bf16 in f32. Same semantics as the CPU op (see the module docs and
//! the kernel file's header): exact zeros off the support, `-inf` masked, fully masked rows all
//! zeros, and NaN/`+inf` logits the same typed error (the kernel flags such rows; the forward
//! copies the flags back, one byte per row, which waits for the kernel).

use crate::cuda_view::contiguous_view;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx_entmax.rs"));
}

const MODULE: &str = "hopfield_entmax";
/// Most threads per block (one block per row; shorter rows get fewer, a multiple of 32).
const MAX_THREADS: usize = 256;

/// Whether the kernels take logits of this dtype and shape: non-empty (an empty grid is an
/// invalid launch; the composed path returns empty inputs as they are), rows within the grid's
/// x limit and a row length whose counts fit the kernels' 32-bit integers.
pub(super) fn supported(dtype: DType, dims: &[usize]) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) && shape_supported(dims)
}

fn shape_supported(dims: &[usize]) -> bool {
    let n = dims.last().copied().unwrap_or(0);
    let rows = dims.iter().product::<usize>().checked_div(n).unwrap_or(0);
    n > 0 && rows > 0 && rows <= i32::MAX as usize && n <= i32::MAX as usize
}

fn unsupported(dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "entmax: the CUDA kernels take f32, f64, f16 and bf16, got {dtype:?}"
    ))
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(unsupported(other)),
    }
}

/// (rows, row length) of `(..., n)` data whose alpha holds one value per row, checked.
fn rows_of(l: &Layout, la: &Layout) -> Result<(usize, usize)> {
    let n = l.dims().last().copied().unwrap_or(0);
    let rows = l.shape().elem_count().checked_div(n).unwrap_or(0);
    if !shape_supported(l.dims()) {
        candle_core::bail!(
            "entmax: the CUDA kernels cannot take logits of shape {:?}",
            l.dims()
        );
    }
    if la.shape().elem_count() != rows {
        candle_core::bail!(
            "entmax: {} alphas for {rows} rows (shape {:?})",
            la.shape().elem_count(),
            l.dims()
        );
    }
    Ok((rows, n))
}

fn config(rows: usize, n: usize) -> LaunchConfig {
    let threads = n.div_ceil(32).clamp(1, MAX_THREADS / 32) * 32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The forward: logits `(..., n)` and one alpha per row; the result has the logits' shape.
pub(super) fn forward(
    z: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    match z.0.dtype() {
        DType::F32 => forward_typed::<f32>(z, a),
        DType::F64 => forward_typed::<f64>(z, a),
        DType::F16 => forward_typed::<half::f16>(z, a),
        DType::BF16 => forward_typed::<half::bf16>(z, a),
        other => Err(unsupported(other)),
    }
}

fn forward_typed<T: CudaDType + DeviceRepr>(
    z: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (rows, n) = rows_of(z.1, a.1)?;
    let dev = z.0.device().clone();
    let zs = contiguous_view::<T>("entmax", z.0, z.1)?;
    let al = contiguous_view::<T>("entmax", a.0, a.1)?;
    // SAFETY: the kernel writes every element of p and every row's flag.
    let p = unsafe { dev.alloc::<T>(rows * n) }?;
    let bad = unsafe { dev.alloc::<u8>(rows) }?;
    let name = format!("entmax_fwd_{}", suffix(z.0.dtype())?);
    let func = dev.get_or_load_custom_func(&name, MODULE, ptx::ENTMAX)?;
    let n64 = n as i64;
    let mut b = func.builder();
    b.arg(&zs).arg(&al).arg(&n64).arg(&p).arg(&bad);
    // SAFETY: argument types and order match entmax_fwd_* in entmax.cu.
    unsafe { b.launch(config(rows, n)) }.w()?;
    if dev.clone_dtoh(&bad)?.iter().any(|f| *f != 0) {
        return Err(super::bad_logits(z.1.dims()));
    }
    Ok((CudaStorage::wrap_cuda_slice(p, dev), z.1.shape().clone()))
}

/// Which backward kernel: the logits' gradient (shaped like p) or alpha's (one per row, shaped
/// like alpha).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grad {
    Logits,
    Alpha,
}

/// The backward from the forward result `p`, its cotangent `g` (both `(..., n)`) and the alphas.
pub(super) fn backward(
    p: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
    which: Grad,
) -> Result<(CudaStorage, Shape)> {
    match p.0.dtype() {
        DType::F32 => backward_typed::<f32>(p, g, a, which),
        DType::F64 => backward_typed::<f64>(p, g, a, which),
        DType::F16 => backward_typed::<half::f16>(p, g, a, which),
        DType::BF16 => backward_typed::<half::bf16>(p, g, a, which),
        other => Err(unsupported(other)),
    }
}

fn backward_typed<T: CudaDType + DeviceRepr>(
    p: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
    which: Grad,
) -> Result<(CudaStorage, Shape)> {
    let (rows, n) = rows_of(p.1, a.1)?;
    if g.1.dims() != p.1.dims() {
        candle_core::bail!(
            "entmax backward: gradient {:?} for a result {:?}",
            g.1.dims(),
            p.1.dims()
        );
    }
    let dev = p.0.device().clone();
    let ps = contiguous_view::<T>("entmax", p.0, p.1)?;
    let gs = contiguous_view::<T>("entmax", g.0, g.1)?;
    let al = contiguous_view::<T>("entmax", a.0, a.1)?;
    let (kernel, len, shape) = match which {
        Grad::Logits => ("entmax_bwd", rows * n, p.1.shape().clone()),
        Grad::Alpha => ("entmax_alpha_bwd", rows, a.1.shape().clone()),
    };
    // SAFETY: the kernel writes every element (every entry of dz, or one dalpha per row).
    let out = unsafe { dev.alloc::<T>(len) }?;
    let name = format!("{kernel}_{}", suffix(p.0.dtype())?);
    let func = dev.get_or_load_custom_func(&name, MODULE, ptx::ENTMAX)?;
    let n64 = n as i64;
    let mut b = func.builder();
    b.arg(&ps).arg(&gs).arg(&al).arg(&n64).arg(&out);
    // SAFETY: argument types and order match entmax_bwd_* / entmax_alpha_bwd_* in entmax.cu.
    unsafe { b.launch(config(rows, n)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}

/// The kernels against the CPU op (the reference, itself checked against finite differences and
/// the `entmax` package) on a GPU: values, exact zeros, masks, fully masked and constant rows,
/// rows shorter than a warp and longer than a block, per-row alphas, both gradients and the
/// typed error. Each test returns early (passing) where no GPU is present.
#[cfg(test)]
mod tests {
    use super::super::{entmax, entmax_learnable, fused_supported};
    use crate::error::KernelError;
    use candle_core::{DType, Device, Tensor, Var};
    use rstest::rstest;

    fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(_) => {
                eprintln!("no CUDA device: skipped");
                None
            }
        }
    }

    /// `(rows, n)` logits, f64 on the CPU, rows >= 3: deterministic values in `(-scale, scale)`,
    /// every 7th column masked (`-inf`), row 1 fully masked and row 2 constant.
    fn logits(rows: usize, n: usize, scale: f64, seed: u64) -> Tensor {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f64> = (0..rows * n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (r, c) = (i / n, i % n);
                if r == 1 || c % 7 == 3 {
                    f64::NEG_INFINITY
                } else if r == 2 {
                    0.25
                } else {
                    ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
                }
            })
            .collect();
        Tensor::from_vec(v, (rows, n), &Device::Cpu).unwrap()
    }

    fn host(t: &Tensor) -> Vec<f64> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }

    /// Every entry within `tol` of the reference, relative to the reference's largest magnitude
    /// (at least 1); with `zero_tol`, an entry is exactly 0 where the reference is, and nonzero
    /// where it is not, except for entries within `zero_tol` of 0 (at the threshold).
    fn assert_close(got: &Tensor, want: &Tensor, tol: f64, zero_tol: Option<f64>, what: &str) {
        let (g, w) = (host(got), host(want));
        assert_eq!(g.len(), w.len(), "{what}: lengths");
        let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!((a - b).abs() <= tol * scale, "{what} [{i}]: {a} vs {b}");
            if let Some(zt) = zero_tol {
                if (*a == 0.0) != (*b == 0.0) {
                    assert!(
                        a.abs().max(b.abs()) < zt,
                        "{what} [{i}]: zero pattern {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Fixed alphas (the closed-form ones and bisection), f64 and f32, against the CPU op on the
    /// same dtype: rows of 5 (one warp, mostly idle), 37 and 700 (a full block striding the row).
    #[rstest]
    #[case(2.0)]
    #[case(1.5)]
    #[case(1.3)]
    #[case(1.7)]
    #[case(1.05)]
    fn forward_matches_cpu(#[case] alpha: f64) {
        let Some(gpu) = gpu() else { return };
        for (rows, n, scale) in [(6, 5, 1.0), (5, 37, 3.0), (4, 700, 3.0)] {
            let z = logits(rows, n, scale, (rows * n) as u64);
            for (dtype, tol, zero_tol) in [(DType::F64, 1e-12, 1e-12), (DType::F32, 1e-4, 1e-6)] {
                let zc = z.to_dtype(dtype).unwrap();
                let zg = zc.to_device(&gpu).unwrap();
                assert!(fused_supported(&zg));
                let want = entmax(&zc, alpha).unwrap();
                let got = entmax(&zg, alpha).unwrap();
                assert_eq!(got.dims(), want.dims());
                let what = format!("alpha {alpha} {dtype:?} ({rows}, {n})");
                assert_close(&got, &want, tol, Some(zero_tol), &what);
                let p = host(&got);
                // The fully masked row is all zeros, masked entries are exactly 0, and every
                // other row sums to 1.
                assert!(p[n..2 * n].iter().all(|v| *v == 0.0), "{what}");
                assert!((0..rows * n)
                    .filter(|i| i % n % 7 == 3)
                    .all(|i| p[i] == 0.0));
                for r in (0..rows).filter(|r| *r != 1) {
                    let s: f64 = p[r * n..(r + 1) * n].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{what} row {r} sums to {s}");
                }
            }
        }
        // A 3-D input with a sharp row: the sparse modes keep a handful of the 300 entries.
        let z = (logits(6, 300, 1.0, 7) * 8.0)
            .unwrap()
            .reshape((2, 3, 300))
            .unwrap();
        let want = entmax(&z, alpha).unwrap();
        let got = entmax(&z.to_device(&gpu).unwrap(), alpha).unwrap();
        assert_close(&got, &want, 1e-12, Some(1e-12), "3-D");
    }

    /// Per-row alphas (learnable) in f64 and f32: p and the gradients of the logits and of each
    /// row's alpha against the CPU op's, masked and fully masked rows included.
    #[test]
    fn gradients_match_cpu() {
        let Some(gpu) = gpu() else { return };
        let (rows, n) = (8, 45);
        let z = logits(rows, n, 2.0, 11);
        let alphas = [2.0, 1.5, 1.3, 1.7, 1.05, 1.9, 1.5, 2.0];
        let a = Tensor::from_slice(&alphas, (rows, 1), &Device::Cpu).unwrap();
        let w = (logits(rows, n, 1.0, 12).clamp(-1.0, 1.0).unwrap() + 0.3).unwrap();
        let run = |dev: &Device, dtype: DType| -> Vec<Tensor> {
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
            let zv = Var::from_tensor(&on(&z)).unwrap();
            let av = Var::from_tensor(&on(&a)).unwrap();
            let p = entmax_learnable(zv.as_tensor(), av.as_tensor()).unwrap();
            let g = (&p * on(&w))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let dz = g.get(zv.as_tensor()).unwrap().clone();
            let da = g.get(av.as_tensor()).unwrap().clone();
            vec![p, dz, da]
        };
        for (dtype, tols) in [
            (DType::F64, [1e-12, 1e-10, 1e-9]),
            (DType::F32, [1e-4, 1e-3, 2e-2]),
        ] {
            let want = run(&Device::Cpu, dtype);
            let got = run(&gpu, dtype);
            for (i, what) in ["p", "dz", "dalpha"].iter().enumerate() {
                let zero_tol = (i < 2).then_some(if dtype == DType::F64 { 1e-12 } else { 1e-6 });
                assert_close(
                    &got[i],
                    &want[i],
                    tols[i],
                    zero_tol,
                    &format!("{dtype:?} {what}"),
                );
            }
            // The fully masked row: zero gradients, zero dalpha.
            assert!(host(&got[1])[n..2 * n].iter().all(|v| *v == 0.0));
            assert_eq!(host(&got[2])[1], 0.0);
        }
    }

    /// f16 and bf16 (computed in f32) against the CPU op in f64 on the rounded inputs: p and the
    /// logits' gradient. (dalpha amplifies the half-precision rounding of the stored p by
    /// 1/(alpha-1)^2; it is compared in f32 and f64 above.)
    #[test]
    fn half_precision_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        let (rows, n) = (6, 130);
        let z = logits(rows, n, 3.0, 21);
        let w = logits(rows, n, 1.0, 22).clamp(-1.0, 1.0).unwrap();
        for (dtype, tol) in [(DType::F16, 5e-3), (DType::BF16, 4e-2)] {
            for alpha in [2.0, 1.5, 1.3] {
                let run = |dev: &Device, dt: DType| -> Vec<Tensor> {
                    let on = |t: &Tensor| {
                        let r = t.to_dtype(dtype).unwrap().to_dtype(dt).unwrap();
                        r.to_device(dev).unwrap()
                    };
                    let zv = Var::from_tensor(&on(&z)).unwrap();
                    let p = entmax(zv.as_tensor(), alpha).unwrap();
                    let g = (&p * on(&w))
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    vec![p, g.get(zv.as_tensor()).unwrap().clone()]
                };
                let want = run(&Device::Cpu, DType::F64);
                let got = run(&gpu, dtype);
                assert_eq!(got[0].dtype(), dtype);
                for (i, what) in ["p", "dz"].iter().enumerate() {
                    let what = format!("{dtype:?} alpha {alpha} {what}");
                    assert_close(&got[i], &want[i], tol, None, &what);
                }
            }
        }
    }

    /// NaN and `+inf` logits are the CPU path's typed error, for every kernel flavour.
    #[test]
    fn bad_logits_are_typed_errors() {
        let Some(gpu) = gpu() else { return };
        for dtype in [DType::F64, DType::F32, DType::F16] {
            for v in [f64::NAN, f64::INFINITY] {
                let z = Tensor::new(&[[0f64, 1., 2.], [0., v, 1.]], &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_device(&gpu)
                    .unwrap();
                let a = Tensor::new(&[[1.3f64], [1.3]], &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_device(&gpu)
                    .unwrap();
                for r in [
                    entmax(&z, 2.0),
                    entmax(&z, 1.5),
                    entmax(&z, 1.3),
                    entmax_learnable(&z, &a),
                ] {
                    let e = r.unwrap_err();
                    assert!(
                        matches!(KernelError::find(&e), Some(KernelError::Values { .. })),
                        "{dtype:?} {v}: {e}"
                    );
                }
            }
        }
    }
}
