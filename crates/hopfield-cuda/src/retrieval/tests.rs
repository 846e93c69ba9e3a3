#![allow(clippy::too_many_arguments)] // rstest tables
use super::*;
use crate::test_util::max_diff;
use crate::KernelError;
use candle_core::{Device, Var};
use rstest::rstest;

/// Seeded inputs (candle's CPU RNG cannot be seeded): a small LCG.
fn det(shape: (usize, usize, usize, usize), seed: u64, dtype: DType) -> Tensor {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

struct Case {
    n: usize,
    l: usize,
    s: usize,
    h: usize,
    hd: usize,
    pd: usize,
}

fn mask_for(c: &Case, kind: &str, dtype: DType) -> Option<Tensor> {
    let inf = f64::NEG_INFINITY;
    let dev = Device::Cpu;
    match kind {
        "none" => None,
        // (L, S) additive with some -inf and finite values, and one fully masked row.
        "assoc" => {
            let mut v = vec![0f64; c.l * c.s];
            for r in 0..c.l {
                for j in 0..c.s {
                    v[r * c.s + j] = if (r + 2 * j) % 5 == 0 {
                        inf
                    } else {
                        0.1 * ((r * 7 + j) % 3) as f64
                    };
                }
            }
            if c.l > 1 {
                for j in 0..c.s {
                    v[c.s + j] = inf;
                }
            }
            Some(
                Tensor::from_vec(v, (c.l, c.s), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
        }
        // Padding (N, 1, 1, S): sample 0 loses its last pattern, sample 1 (if any) all of them.
        "padding" => {
            let mut v = vec![0f64; c.n * c.s];
            v[c.s - 1] = inf;
            if c.n > 1 {
                for j in 0..c.s {
                    v[c.s + j] = inf;
                }
            }
            Some(
                Tensor::from_vec(v, (c.n, 1, 1, c.s), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
        }
        // Per (N, H) 3-D association mask.
        "full" => {
            let len = c.n * c.h * c.l * c.s;
            let v: Vec<f64> = (0..len)
                .map(|i| {
                    if i % 7 == 3 {
                        inf
                    } else {
                        0.05 * (i % 4) as f64
                    }
                })
                .collect();
            Some(
                Tensor::from_vec(v, (c.n, c.h, c.l, c.s), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
        }
        _ => unreachable!(),
    }
}

fn check_case(c: Case, mask: &str, zero: bool, per_head: bool, dtype: DType, tol: f64) {
    let q = Var::from_tensor(&det((c.n, c.l, c.h, c.hd), 1, dtype)).unwrap();
    let k = Var::from_tensor(&det((c.n, c.s, c.h, c.hd), 2, dtype)).unwrap();
    let v = Var::from_tensor(&det((c.n, c.s, c.h, c.pd), 3, dtype)).unwrap();
    let betas: Vec<f64> = if per_head {
        (0..c.h).map(|h| 0.5 + 1.5 * h as f64).collect()
    } else {
        vec![2.0]
    };
    let cfg = Retrieval::new(1.0)
        .with_head_betas(betas)
        .with_mask(mask_for(&c, mask, dtype))
        .with_zero_association(zero);
    let cot = det((c.n, c.l, c.h, c.pd), 4, dtype);
    let cot_lse = det((c.n, c.h, c.l, 1), 5, dtype).squeeze(3).unwrap();
    let run = |fused: bool| {
        let (o, lse) = if fused {
            retrieve_with_lse(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg).unwrap()
        } else {
            retrieve_composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg).unwrap()
        };
        // Rows with lse = -inf have no gradient through lse in either path.
        let finite = lse.ne(f64::NEG_INFINITY).unwrap();
        let lse_safe = finite.where_cond(&lse, &lse.zeros_like().unwrap()).unwrap();
        let loss = ((&o * &cot).unwrap().sum_all().unwrap()
            + (&lse_safe * &cot_lse).unwrap().sum_all().unwrap())
        .unwrap();
        let gr = loss.backward().unwrap();
        let grads: Vec<Tensor> = [&q, &k, &v]
            .iter()
            .map(|x| gr.get(x.as_tensor()).unwrap().clone())
            .collect();
        (o, lse, grads)
    };
    let (o1, l1, g1) = run(true);
    let (o2, l2, g2) = run(false);
    assert!(max_diff(&o1, &o2) < tol, "output {}", max_diff(&o1, &o2));
    let l1f = l1
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let l2f = l2
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (a, b) in l1f.iter().zip(&l2f) {
        assert!(a == b || (a - b).abs() < tol, "lse {a} vs {b}");
    }
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        // Relative to the gradient's size: f32 sums over S stored patterns in two different
        // orders differ by a few ulps of their largest terms (an absolute 2e-5 failed about once
        // in a dozen full-suite runs, at 2.0027e-5, for a case whose gradients reach ~3-4).
        let scale = 1.0 + max_diff(b, &b.zeros_like().unwrap());
        let d = max_diff(a, b);
        assert!(d < tol * scale, "grad {i}: {d} (scale {scale})");
    }
    assert!(o1
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

#[rstest]
#[case(2, 5, 7, 3, 4, 6)]
#[case(1, 1, 1, 1, 3, 2)] // L = 1, S = 1
#[case(2, 33, 130, 2, 16, 16)] // S not a multiple of the block, L not of the query block
#[case(1, 3, 300, 1, 8, 5)] // few tasks: stored patterns split into chunks
#[case(3, 17, 64, 4, 32, 8)]
#[case(4, 300, 70, 4, 24, 20)] // several query blocks per task, ragged tiles of P V
fn fused_matches_composed_f64(
    #[case] n: usize,
    #[case] l: usize,
    #[case] s: usize,
    #[case] h: usize,
    #[case] hd: usize,
    #[case] pd: usize,
    #[values("none", "assoc", "padding", "full")] mask: &str,
    #[values(false, true)] zero: bool,
) {
    let c = Case { n, l, s, h, hd, pd };
    check_case(c, mask, zero, h > 1, DType::F64, 1e-12);
}

#[rstest]
#[case(2, 40, 200, 4, 16, 16)]
#[case(1, 2, 1000, 2, 64, 64)]
#[case(2, 70, 150, 3, 32, 40)] // whole 8 x 32 tiles of the AVX-512 micro-kernels and ragged ones
#[case(2, 24, 150, 2, 32, 40)] // a narrow (32-query) block, output transposed
#[case(3, 5, 300, 2, 64, 24)] // a narrow block with few queries, output row-major
fn fused_matches_composed_f32(
    #[case] n: usize,
    #[case] l: usize,
    #[case] s: usize,
    #[case] h: usize,
    #[case] hd: usize,
    #[case] pd: usize,
    #[values("none", "padding", "assoc")] mask: &str,
) {
    let c = Case { n, l, s, h, hd, pd };
    check_case(c, mask, true, true, DType::F32, 2e-5);
}

/// Every instruction-set build of the kernels (generic, AVX2+FMA, AVX-512, as far as this CPU
/// runs them) agrees with the composed path.
#[test]
fn every_instruction_set_matches_composed() {
    use crate::simd::{available_isas, FORCE_ISA};
    use std::sync::atomic::Ordering;
    for isa in available_isas() {
        FORCE_ISA.store(isa, Ordering::Relaxed);
        for (mask, zero) in [("none", false), ("full", true)] {
            let c = Case {
                n: 4,
                l: 300,
                s: 70,
                h: 4,
                hd: 24,
                pd: 20,
            };
            check_case(c, mask, zero, true, DType::F64, 1e-12);
            let c = Case {
                n: 2,
                l: 40,
                s: 200,
                h: 2,
                hd: 16,
                pd: 16,
            };
            check_case(c, mask, zero, true, DType::F32, 2e-5);
        }
    }
    FORCE_ISA.store(0, Ordering::Relaxed);
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let (n, l, s, h, hd, pd) = (2, 3, 70, 2, 4, 3);
    let q = det((n, l, h, hd), 11, DType::F64);
    let k = det((n, s, h, hd), 12, DType::F64);
    let v = det((n, s, h, pd), 13, DType::F64);
    let cot = det((n, l, h, pd), 14, DType::F64);
    let cot_lse = det((n, h, l, 1), 15, DType::F64).squeeze(3)?;
    let cfg = Retrieval::new(1.0)
        .with_head_betas(vec![1.5, 3.0])
        .with_zero_association(true);
    let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<f64> {
        let (o, lse) = retrieve_with_lse(q, k, v, &cfg)?;
        ((o * &cot)?.sum_all()? + (lse * &cot_lse)?.sum_all()?)?.to_scalar::<f64>()
    };
    let vars = [
        Var::from_tensor(&q)?,
        Var::from_tensor(&k)?,
        Var::from_tensor(&v)?,
    ];
    let (o, lse) = retrieve_with_lse(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
        &cfg,
    )?;
    let grads = ((o * &cot)?.sum_all()? + (lse * &cot_lse)?.sum_all()?)?.backward()?;
    let eps = 1e-6;
    for (i, var) in vars.iter().enumerate() {
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        // A spread of coordinates, including the last.
        for idx in (0..base.len())
            .step_by(base.len() / 9 + 1)
            .chain([base.len() - 1])
        {
            let bump = |delta: f64| -> Result<f64> {
                let mut b = base.clone();
                b[idx] += delta;
                let t = Tensor::from_vec(b, var.as_tensor().shape(), &Device::Cpu)?;
                let mut args = [q.clone(), k.clone(), v.clone()];
                args[i] = t;
                loss(&args[0], &args[1], &args[2])
            };
            let numeric = (bump(eps)? - bump(-eps)?) / (2.0 * eps);
            assert!(
                (numeric - analytic[idx]).abs() < 1e-7 * (1.0 + numeric.abs()),
                "input {i} coord {idx}: {numeric} vs {}",
                analytic[idx]
            );
        }
    }
    Ok(())
}

#[test]
fn strided_views_are_read_in_place() -> Result<()> {
    // A packed q/k/v product (N, L, 3, H, hd) read as three views, and a static input shared by
    // every head (head stride 0).
    let (n, l, h, hd) = (2, 9, 3, 5);
    let packed = det((n, l, 3 * h, hd), 21, DType::F64).reshape((n, l, 3, h, hd))?;
    let q = packed.narrow(2, 0, 1)?.squeeze(2)?;
    let k = packed.narrow(2, 1, 1)?.squeeze(2)?;
    let v = packed.narrow(2, 2, 1)?.squeeze(2)?;
    assert!(!q.is_contiguous());
    let cfg = Retrieval::new(0.7);
    let (a, la) = retrieve_with_lse(&q, &k, &v, &cfg)?;
    let (b, lb) = retrieve_composed(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, &cfg)?;
    assert!(max_diff(&a, &b) < 1e-13 && max_diff(&la, &lb) < 1e-13);
    let stat = det((n, l, 1, hd), 22, DType::F64).broadcast_as((n, l, h, hd))?;
    let (a, _) = retrieve_with_lse(&q, &stat, &stat, &cfg)?;
    let (b, _) = retrieve_composed(
        &q.contiguous()?,
        &stat.contiguous()?,
        &stat.contiguous()?,
        &cfg,
    )?;
    assert!(max_diff(&a, &b) < 1e-13);
    Ok(())
}

#[test]
fn fully_masked_rows_give_zero_output_and_zero_gradients() -> Result<()> {
    let (n, l, s, h, hd) = (1, 2, 5, 1, 3);
    let q = Var::from_tensor(&det((n, l, h, hd), 31, DType::F64))?;
    let k = Var::from_tensor(&det((n, s, h, hd), 32, DType::F64))?;
    let v = Var::from_tensor(&det((n, s, h, hd), 33, DType::F64))?;
    let mask = Tensor::full(f64::NEG_INFINITY, (l, s), &Device::Cpu)?;
    let cfg = Retrieval::new(1.0).with_mask(Some(mask));
    let (o, lse) = retrieve_with_lse(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg)?;
    assert!(o.flatten_all()?.to_vec1::<f64>()?.iter().all(|x| *x == 0.0));
    assert!(lse
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .all(|x| *x == f64::NEG_INFINITY));
    let g = o.sum_all()?.backward()?;
    for x in [&q, &k, &v] {
        let gx = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert!(gx.iter().all(|x| *x == 0.0));
    }
    Ok(())
}

#[test]
fn bad_shapes_are_errors() {
    let q = det((2, 3, 2, 4), 1, DType::F32);
    let k = det((2, 5, 2, 4), 2, DType::F32);
    let v = det((2, 6, 2, 4), 3, DType::F32);
    let e = retrieve(&q, &k, &v, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`value` must be (N, S, H, pd) = (2, 5, 2, pd)"),
        "{e}"
    );
    assert!(KernelError::find(&retrieve(&q, &k, &v, &Retrieval::new(1.0)).unwrap_err()).is_some());
    let e = retrieve(
        &q,
        &k,
        &k,
        &Retrieval::new(1.0).with_head_betas(vec![1.0; 3]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`beta` must be 1 value or one per head (2), got [3]"),
        "{e}"
    );
    let m = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
    let e = retrieve(&q, &k, &k, &Retrieval::new(1.0).with_mask(Some(m)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`mask` must be broadcastable to (N, H, L, S) = (2, 2, 3, 5)"),
        "{e}"
    );
    // Integer inputs are an error naming the dtype, not a panic inside a kernel or candle op.
    let qi = q.to_dtype(DType::U32).unwrap();
    let e = retrieve(&qi, &qi, &qi, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("floating point") && e.contains("U32"), "{e}");
    let packed = Tensor::zeros((1, 2, 6), DType::I64, &Device::Cpu).unwrap();
    let sizes = PackedSizes {
        heads: 1,
        hd: 2,
        pd: 2,
    };
    let e = retrieve_packed(&packed, sizes, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("floating point"), "{e}");
}

#[test]
fn empty_inputs_do_not_panic() -> Result<()> {
    // No stored patterns: every row is "fully masked", output 0 and lse -inf; no queries or
    // samples: empty results.
    for (n, l, s) in [(2, 3, 0), (2, 0, 4), (0, 3, 4)] {
        let q = Var::from_tensor(&det((n, l, 2, 3), 1, DType::F32))?;
        let k = det((n, s, 2, 3), 2, DType::F32);
        let (o, lse) = retrieve_with_lse(q.as_tensor(), &k, &k, &Retrieval::new(1.0))?;
        assert_eq!(o.dims(), &[n, l, 2, 3]);
        assert!(o.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| *x == 0.0));
        assert!(lse
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|x| *x == f32::NEG_INFINITY));
        let g = o.sum_all()?.backward()?;
        assert_eq!(g.get(q.as_tensor()).unwrap().dims(), &[n, l, 2, 3]);
    }
    Ok(())
}

/// The packed op agrees with the three-input op on the same data: outputs and the gradient of
/// the packed tensor (its three column blocks against dq, dk, dv), for hd != pd, masks, the
/// zero pattern, and a packed input that is itself a strided view (row stride > features).
#[rstest]
#[case(2, 33, 2, 8, 8, "none", false, 0)]
#[case(3, 70, 4, 6, 10, "full", true, 0)]
#[case(1, 5, 1, 3, 2, "assoc", false, 7)]
#[case(2, 300, 2, 16, 16, "padding", true, 3)]
fn packed_matches_separate(
    #[case] n: usize,
    #[case] l: usize,
    #[case] h: usize,
    #[case] hd: usize,
    #[case] pd: usize,
    #[case] mask: &str,
    #[case] zero: bool,
    #[case] extra_cols: usize,
) {
    let sizes = PackedSizes { heads: h, hd, pd };
    let f = sizes.features();
    let wide = det((n, l, f + extra_cols, 1), 7, DType::F64)
        .squeeze(3)
        .unwrap();
    let wide = Var::from_tensor(&wide).unwrap();
    let qkv = wide.as_tensor().narrow(2, extra_cols, f).unwrap();
    let c = Case {
        n,
        l,
        s: l,
        h,
        hd,
        pd,
    };
    let cfg = Retrieval::new(1.0)
        .with_head_betas((0..h).map(|i| 0.3 + 0.4 * i as f64).collect())
        .with_mask(mask_for(&c, mask, DType::F64))
        .with_zero_association(zero);
    let cot = det((n, l, h * pd, 1), 4, DType::F64).squeeze(3).unwrap();
    let o1 = retrieve_packed(&qkv, sizes, &cfg).unwrap();
    let g1 = (&o1 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
    let g1 = g1.get(wide.as_tensor()).unwrap().clone();
    let part = |from: usize, d: usize| {
        qkv.narrow(2, from, h * d)
            .unwrap()
            .reshape((n, l, h, d))
            .unwrap()
    };
    let (q, k, v) = (part(0, hd), part(h * hd, hd), part(2 * h * hd, pd));
    let (o2, _) = retrieve_with_lse(&q, &k, &v, &cfg).unwrap();
    let o2 = o2.reshape((n, l, h * pd)).unwrap();
    let g2 = (&o2 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = g2.get(wide.as_tensor()).unwrap().clone();
    assert_eq!(o1.dims(), &[n, l, h * pd]);
    assert_eq!(g1.dims(), &[n, l, f + extra_cols]);
    assert!(max_diff(&o1, &o2) < 1e-12, "output {}", max_diff(&o1, &o2));
    assert!(
        max_diff(&g1, &g2) < 1e-12,
        "gradient {}",
        max_diff(&g1, &g2)
    );
}

/// `retrieve` (the output alone, the lse kept inside the op for the backward pass) and
/// `retrieve_with_lse` agree on the output and on every input gradient; an untracked input gets
/// no gradient.
#[rstest]
#[case("none", false)]
#[case("full", true)]
fn output_only_matches_with_lse(#[case] mask: &str, #[case] zero: bool) {
    let c = Case {
        n: 2,
        l: 40,
        s: 70,
        h: 3,
        hd: 8,
        pd: 5,
    };
    let q = Var::from_tensor(&det((c.n, c.l, c.h, c.hd), 1, DType::F64)).unwrap();
    let k = Var::from_tensor(&det((c.n, c.s, c.h, c.hd), 2, DType::F64)).unwrap();
    let v = det((c.n, c.s, c.h, c.pd), 3, DType::F64);
    let cfg = Retrieval::new(0.7)
        .with_mask(mask_for(&c, mask, DType::F64))
        .with_zero_association(zero);
    let cot = det((c.n, c.l, c.h, c.pd), 4, DType::F64);
    let o1 = retrieve(q.as_tensor(), k.as_tensor(), &v, &cfg).unwrap();
    let (o2, _) = retrieve_with_lse(q.as_tensor(), k.as_tensor(), &v, &cfg).unwrap();
    assert_eq!(o1.dims(), &[c.n, c.l, c.h, c.pd]);
    assert!(max_diff(&o1, &o2) < 1e-15);
    let g1 = (&o1 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&o2 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
    for x in [&q, &k] {
        let (a, b) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(a, b) < 1e-13, "{}", max_diff(a, b));
    }
    assert!(g1.get(&v).is_none());
}

#[test]
fn packed_rejects_a_wrong_feature_count() {
    let qkv = Tensor::zeros((2, 3, 10), DType::F32, &Device::Cpu).unwrap();
    let sizes = PackedSizes {
        heads: 2,
        hd: 2,
        pd: 2,
    };
    let err = retrieve_packed(&qkv, sizes, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("12 features"), "{err}");
}

/// The fused association change agrees with forming both associations, for masks (a fully masked
/// row included), the zero pattern, per-head betas and sizes off the block grid.
#[rstest]
#[case(2, 5, 7, 3, 4)]
#[case(1, 70, 130, 2, 16)]
#[case(3, 33, 64, 1, 8)]
fn association_change_matches_composed(
    #[case] n: usize,
    #[case] l: usize,
    #[case] s: usize,
    #[case] h: usize,
    #[case] hd: usize,
    #[values("none", "assoc", "padding", "full")] mask: &str,
    #[values(false, true)] zero: bool,
) {
    let c = Case {
        n,
        l,
        s,
        h,
        hd,
        pd: hd,
    };
    let a = det((n, l, h, hd), 1, DType::F64);
    let k = det((n, s, h, hd), 2, DType::F64);
    let cfg = Retrieval::new(1.0)
        .with_head_betas((0..h).map(|i| 1.5 + i as f64).collect())
        .with_mask(mask_for(&c, mask, DType::F64))
        .with_zero_association(zero);
    let (b, lse_a) = retrieve_with_lse(&a, &k, &k, &cfg).unwrap();
    let (_, lse_b) = retrieve_with_lse(&b, &k, &k, &cfg).unwrap();
    let fused = association_change(&a, &lse_a, &b, &lse_b, &k, &cfg).unwrap();
    let reference = association_change_composed(&a, &b, &k, &cfg).unwrap();
    assert_eq!(fused.len(), n * h);
    for (x, y) in fused.iter().zip(&reference) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    assert!(
        fused.iter().any(|x| *x > 1e-3),
        "the states should differ: {fused:?}"
    );
    // f32 through the same kernel.
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let cfg32 = cfg.clone().with_mask(mask_for(&c, mask, DType::F32));
    let fused32 =
        association_change(&f(&a), &f(&lse_a), &f(&b), &f(&lse_b), &f(&k), &cfg32).unwrap();
    for (x, y) in fused32.iter().zip(&reference) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

/// The CUDA kernels against the CPU kernels (f64 reference) on a GPU: outputs, lse and all three
/// gradients, with a per-(sample, head) mask, the zero pattern, per-head betas and sizes off the
/// block grid, in f32, f16 and bf16. Skipped (passing) where no GPU is present.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu() {
    let Ok(gpu) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let c = Case {
        n: 2,
        l: 70,
        s: 45,
        h: 3,
        hd: 24,
        pd: 20,
    };
    let run = |dev: &Device, dtype: DType| {
        let on = |t: Tensor| {
            Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap()
        };
        let q = on(det((c.n, c.l, c.h, c.hd), 1, DType::F64));
        let k = on(det((c.n, c.s, c.h, c.hd), 2, DType::F64));
        let v = on(det((c.n, c.s, c.h, c.pd), 3, DType::F64));
        let mask = mask_for(&c, "full", DType::F64)
            .map(|m| m.to_dtype(dtype).unwrap().to_device(dev).unwrap());
        let cfg = Retrieval::new(1.0)
            .with_head_betas(vec![0.5, 1.0, 2.0])
            .with_mask(mask)
            .with_zero_association(true);
        let cot = det((c.n, c.l, c.h, c.pd), 4, DType::F64)
            .to_dtype(dtype)
            .unwrap()
            .to_device(dev)
            .unwrap();
        let (o, lse) =
            retrieve_with_lse(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cfg).unwrap();
        let finite = lse.ne(f64::NEG_INFINITY).unwrap();
        let lse_safe = finite.where_cond(&lse, &lse.zeros_like().unwrap()).unwrap();
        let loss = ((&o * &cot).unwrap().sum_all().unwrap() + lse_safe.sum_all().unwrap()).unwrap();
        let gr = loss.backward().unwrap();
        let mut outs = vec![o, lse_safe];
        for x in [&q, &k, &v] {
            outs.push(gr.get(x.as_tensor()).unwrap().clone());
        }
        outs.into_iter()
            .map(|t| {
                t.to_device(&Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let reference = run(&Device::Cpu, DType::F64);
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 3e-2), (DType::BF16, 2e-1)] {
        let got = run(&gpu, dtype);
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            let d = max_diff(a, b);
            assert!(d < tol, "{dtype:?} result {i}: {d}");
        }
    }
}

/// The one-node projected retrieval agrees with its three steps (linear, packed retrieval,
/// linear) on outputs and on the gradients of the input and all four weights, with and without
/// biases, masks, the zero pattern and per-head betas, in f64 and f32. Each case runs twice
/// with different data, so a reused scratch buffer cannot leak the first call's values into the
/// second.
#[rstest]
#[case(2, 33, 12, 2, 8, 8, 5, "none", false, true, DType::F64, 1e-12)]
#[case(3, 70, 7, 4, 6, 10, 9, "full", true, false, DType::F64, 1e-12)]
#[case(1, 5, 3, 1, 3, 2, 1, "assoc", false, true, DType::F64, 1e-12)]
#[case(2, 130, 16, 2, 16, 16, 16, "padding", true, true, DType::F32, 2e-4)]
// Few tasks over many stored patterns: each task's patterns split into chunks merged afterwards
// (the input bias added as the chunks load their blocks).
#[case(1, 300, 8, 1, 8, 8, 4, "none", false, true, DType::F64, 1e-12)]
#[case(1, 300, 32, 1, 32, 32, 8, "assoc", true, true, DType::F32, 2e-4)]
fn projected_matches_steps(
    #[case] n: usize,
    #[case] l: usize,
    #[case] e: usize,
    #[case] h: usize,
    #[case] hd: usize,
    #[case] pd: usize,
    #[case] o: usize,
    #[case] mask: &str,
    #[case] zero: bool,
    #[case] bias: bool,
    #[case] dtype: DType,
    #[case] tol: f64,
) {
    let sizes = PackedSizes { heads: h, hd, pd };
    let f = sizes.features();
    let c = Case {
        n,
        l,
        s: l,
        h,
        hd,
        pd,
    };
    let cfg = Retrieval::new(1.0)
        .with_head_betas((0..h).map(|i| 0.3 + 0.4 * i as f64).collect())
        .with_mask(mask_for(&c, mask, dtype))
        .with_zero_association(zero);
    let var = |shape: (usize, usize), seed: u64| {
        let t = det((shape.0, shape.1, 1, 1), seed, dtype);
        Var::from_tensor(&t.reshape(shape).unwrap()).unwrap()
    };
    for round in 0..2u64 {
        let z =
            Var::from_tensor(&det((n, l, e, 1), 10 + round, dtype).squeeze(3).unwrap()).unwrap();
        let w_in = var((f, e), 20 + round);
        let b_in = var((f, 1), 30 + round);
        let w_out = var((o, h * pd), 40 + round);
        let b_out = var((o, 1), 50 + round);
        let (bi, bo) = (
            b_in.as_tensor().squeeze(1).unwrap(),
            b_out.as_tensor().squeeze(1).unwrap(),
        );
        let (bi, bo) = if bias {
            (Some(&bi), Some(&bo))
        } else {
            (None, None)
        };
        let proj = Projections {
            w_in: w_in.as_tensor(),
            b_in: bi,
            w_out: w_out.as_tensor(),
            b_out: bo,
        };
        let cot = det((n, l, o, 1), 60 + round, dtype).squeeze(3).unwrap();
        let y1 = retrieve_projected(z.as_tensor(), proj, sizes, &cfg).unwrap();
        let qkv = crate::linear(z.as_tensor(), w_in.as_tensor(), bi).unwrap();
        let out = retrieve_packed(&qkv, sizes, &cfg).unwrap();
        let y2 = crate::linear(&out, w_out.as_tensor(), bo).unwrap();
        assert_eq!(y1.dims(), &[n, l, o]);
        assert!(max_diff(&y1, &y2) < tol, "output {}", max_diff(&y1, &y2));
        let g1 = (&y1 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &cot).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("z", &z), ("w_in", &w_in), ("w_out", &w_out)];
        if bias {
            vars.extend([("b_in", &b_in), ("b_out", &b_out)]);
        }
        for (name, x) in vars {
            let (a, b) = (
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            // Relative to the gradient's size: f32 gradients of the weights sum many rows.
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let scale = scale.to_scalar::<f64>().unwrap().max(1.0);
            assert!(
                max_diff(a, b) < tol * scale,
                "{name}: {} (scale {scale})",
                max_diff(a, b)
            );
        }
    }
}

/// Gradients reach only tracked inputs, and the output of an untracked (eval) call is the
/// same as a tracked one's.
#[test]
fn projected_untracked_inputs_get_no_gradient() -> Result<()> {
    let sizes = PackedSizes {
        heads: 2,
        hd: 4,
        pd: 4,
    };
    let z = det((2, 9, 6, 1), 1, DType::F64).squeeze(3)?;
    let w_in = Var::from_tensor(
        &det((sizes.features(), 6, 1, 1), 2, DType::F64).reshape((sizes.features(), 6))?,
    )?;
    let w_out = det((6, 8, 1, 1), 3, DType::F64).reshape((6, 8))?;
    let cfg = Retrieval::new(0.5);
    fn proj<'a>(w_in: &'a Tensor, w_out: &'a Tensor) -> Projections<'a> {
        Projections {
            w_in,
            b_in: None,
            w_out,
            b_out: None,
        }
    }
    let tracked = retrieve_projected(&z, proj(w_in.as_tensor(), &w_out), sizes, &cfg)?;
    let frozen = w_in.as_tensor().detach();
    let eval = retrieve_projected(&z, proj(&frozen, &w_out), sizes, &cfg)?;
    assert!(max_diff(&tracked, &eval) < 1e-15);
    let g = tracked.sum_all()?.backward()?;
    assert!(g.get(w_in.as_tensor()).is_some());
    assert!(g.get(&z).is_none() && g.get(&w_out).is_none());
    Ok(())
}

#[test]
fn projected_rejects_mismatched_weights() {
    let dev = Device::Cpu;
    let sizes = PackedSizes {
        heads: 2,
        hd: 2,
        pd: 2,
    };
    let z = Tensor::zeros((2, 3, 5), DType::F32, &dev).unwrap();
    let w_in = Tensor::zeros((12, 4), DType::F32, &dev).unwrap();
    let w_out = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
    let proj = Projections {
        w_in: &w_in,
        b_in: None,
        w_out: &w_out,
        b_out: None,
    };
    let err = retrieve_projected(&z, proj, sizes, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w_in` must be [12, 5]"), "{err}");
}

/// Hostile input to the retrieval (issue 12): NaN and +inf masks, overflowing logits and a beta
/// the dtype cannot hold are typed errors; f16 inputs compute in f32 and stay finite.
#[test]
fn hostile_inputs_are_typed_errors_or_finite() -> Result<()> {
    let dev = Device::Cpu;
    let q = det((2, 3, 1, 4), 1, DType::F32);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    for (v, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "+inf")] {
        let cfg = Retrieval::new(1.0).with_mask(Some(Tensor::full(v, (3, 3), &dev)?));
        let e = err(retrieve(&q, &q, &q, &cfg));
        assert!(e.contains("`mask`") && e.contains(what), "{e}");
    }
    let big = (&q * 1e20)?;
    let e = err(retrieve(&big, &big, &big, &Retrieval::new(1.0)));
    assert!(
        e.contains("overflowed F32") && e.contains("6 row(s)"),
        "{e}"
    );
    let e = err(retrieve_composed(&big, &big, &big, &Retrieval::new(1.0)).map(|r| r.0));
    assert!(e.contains("overflowed F32"), "{e}");
    let e = err(retrieve(&q, &q, &q, &Retrieval::new(1e39)));
    assert!(e.contains("`beta`"), "{e}");
    // f16: beta 1e6 does not fit f16 but does f32, where the kernel computes.
    let h = (&q * 300.)?.to_dtype(DType::F16)?;
    let out = retrieve(&h, &h, &h, &Retrieval::new(1e3))?;
    assert_eq!(out.dtype(), DType::F16);
    assert!(crate::all_finite(&out)?);
    assert_eq!(retrieval_path(DType::F16, &dev), RetrievalPath::Fused);
    let ids = Tensor::zeros((2, 3, 1, 4), DType::U32, &dev)?;
    let e = err(retrieve(&ids, &ids, &ids, &Retrieval::new(1.0)));
    assert!(e.contains("`query` must be floating point"), "{e}");
    Ok(())
}

/// The packed and projected entry points report overflow too, and hand their scratch buffers
/// back (a later call with sane inputs still works).
#[test]
fn projected_overflow_is_an_error_and_recovers() -> Result<()> {
    let sizes = PackedSizes {
        heads: 1,
        hd: 4,
        pd: 4,
    };
    let z = (det((1, 5, 4, 1), 1, DType::F32).squeeze(3)? * 1e20)?;
    let w_in = det((sizes.features(), 4, 1, 1), 2, DType::F32).reshape((sizes.features(), 4))?;
    let w_out = det((4, 4, 1, 1), 3, DType::F32).reshape((4, 4))?;
    let proj = Projections {
        w_in: &w_in,
        b_in: None,
        w_out: &w_out,
        b_out: None,
    };
    let e = retrieve_projected(&z, proj, sizes, &Retrieval::new(1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overflowed"), "{e}");
    let z = (z * 1e-20)?;
    let y = retrieve_projected(&z, proj, sizes, &Retrieval::new(1.0))?;
    assert!(crate::all_finite(&y)?);
    Ok(())
}

/// The forward's running maximum moves lazily (only once a block's logits exceed it by more than
/// 8): logits that climb slowly across the stored-pattern blocks (the maximum lags behind for a
/// few blocks), climb fast (it moves every block), or fall, all give the composed results.
#[rstest]
#[case(0.05, DType::F64, 1e-12)]
#[case(0.6, DType::F64, 1e-12)]
#[case(-0.3, DType::F64, 1e-12)]
#[case(0.05, DType::F32, 2e-5)]
#[case(0.6, DType::F32, 2e-5)]
fn lazy_running_maximum_matches_composed(
    #[case] step: f64,
    #[case] dtype: DType,
    #[case] tol: f64,
) -> Result<()> {
    let (n, l, s, h, d) = (1, 70, 400, 2, 8);
    let dev = Device::Cpu;
    // Query rows near the first axis; key j along it with length step * j, so the logits of
    // every query grow (or fall) linearly over the stored patterns.
    let q = (det((n, l, h, d), 1, DType::F64) * 0.1)?.broadcast_add(&Tensor::from_vec(
        (0..d).map(|i| f64::from(u8::from(i == 0))).collect(),
        (1, 1, 1, d),
        &dev,
    )?)?;
    let ramp = Tensor::from_vec(
        (0..s).map(|j| step * j as f64).collect::<Vec<f64>>(),
        (1, s, 1, 1),
        &dev,
    )?;
    let k = (det((n, s, h, d), 2, DType::F64) * 0.1)?.broadcast_add(&ramp)?;
    let v = det((n, s, h, d), 3, DType::F64);
    let [q, k, v] = [q, k, v].map(|t| t.to_dtype(dtype).unwrap());
    let cfg = Retrieval::new(1.0);
    let (o1, l1) = retrieve_with_lse(&q, &k, &v, &cfg)?;
    let (o2, l2) = retrieve_composed(&q, &k, &v, &cfg)?;
    let scale = 1.0 + max_diff(&l2, &l2.zeros_like()?);
    assert!(max_diff(&o1, &o2) < tol, "output {}", max_diff(&o1, &o2));
    assert!(
        max_diff(&l1, &l2) < tol * scale,
        "lse {}",
        max_diff(&l1, &l2)
    );
    Ok(())
}
