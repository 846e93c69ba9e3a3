//! Input LayerNorm affine maps folded into the packed input projection, as one graph node.
//!
//! In self-association hflayers applies three input LayerNorms to one standardised input `z` and
//! then the packed projection `W_in`; an affine map followed by a linear one is linear, so part
//! `p` of the projection's rows (queries, keys, values) becomes
//! `(z * g_p + b_p) W_p^T + c_p = z (W_p diag(g_p))^T + (W_p b_p + c_p)`.
//! [`fold_input_affines`] builds `[W diag(g) | W b + c]`, the `(F, E + 1)` matrix that
//! [`super::retrieve_projected`] reads, in one pass with a one-pass backward. Composed from candle
//! ops the fold was three column scalings, a matrix-vector product and two concatenations, plus
//! their backward nodes: at E = 256 each of those is a candle elementwise op of >= 64K elements,
//! which candle runs on its own spinning thread pool, and `perf` put 4.5% of the (16, 512, 256, 8)
//! layer forward and ~11% of its backward in that pool's barrier wait.

use super::projected::Projections;
use crate::error::KernelError;
use crate::rows::{cpu_contiguous, storage_slice, tracked_grads};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

/// The affine parts of the three input LayerNorms whose outputs feed the packed projection:
/// `rows[p]` rows of `W_in` (queries, keys, values in order) see `z * weight[p] + bias[p]`; an
/// absent weight is 1, an absent bias 0.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::InputAffines;
/// let g = Tensor::new(&[2f32, 3.], &Device::Cpu)?;
/// let affines = InputAffines { rows: [4, 4, 4], weight: [Some(&g), None, None], bias: [None; 3] };
/// assert_eq!(affines.rows.iter().sum::<usize>(), 12);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct InputAffines<'a> {
    /// Rows of `W_in` per part.
    pub rows: [usize; 3],
    /// Per-feature scales, `(E)` each.
    pub weight: [Option<&'a Tensor>; 3],
    /// Per-feature shifts, `(E)` each.
    pub bias: [Option<&'a Tensor>; 3],
}

/// `[W diag(g_p) | W b_p + c]` per row part `p`, `(F, E + 1)`: the packed input projection `w`,
/// `(F, E)`, and its bias `c`, `(F)`, with the input LayerNorms' affine maps folded in (see the
/// module docs). Differentiable in `w`, `c` and every affine part; on the CPU (f32, f64) one graph
/// node, elsewhere [`fold_input_affines_composed`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{fold_input_affines, fold_input_affines_composed, InputAffines};
/// let dev = Device::Cpu;
/// let w = Tensor::randn(0f64, 1., (6, 4), &dev)?;
/// let g = Tensor::randn(0f64, 1., 4, &dev)?;
/// let b = Tensor::randn(0f64, 1., 4, &dev)?;
/// let affines = InputAffines { rows: [2, 2, 2], weight: [Some(&g); 3], bias: [None, Some(&b), None] };
/// let folded = fold_input_affines(&w, None, &affines)?;
/// assert_eq!(folded.dims(), &[6, 5]);
/// let composed = fold_input_affines_composed(&w, None, &affines)?;
/// assert!((folded - composed)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fold_input_affines(
    w: &Tensor,
    c: Option<&Tensor>,
    affines: &InputAffines,
) -> Result<Tensor> {
    let (f, e) = check(w, c, affines)?;
    if !(w.device().is_cpu() && matches!(w.dtype(), DType::F32 | DType::F64)) {
        return compose(w, c, affines, (f, e));
    }
    let (dtype, dev) = (w.dtype(), w.device());
    let c = match c {
        Some(c) => c.clone(),
        None => Tensor::zeros(f, dtype, dev)?,
    };
    // `[g_0 | b_0 | g_1 | b_1 | g_2 | b_2]`, `(6, E)`: the op's third input.
    let mut parts = Vec::with_capacity(6);
    for p in 0..3 {
        parts.push(match affines.weight[p] {
            Some(g) => g.reshape((1, e))?,
            None => Tensor::ones((1, e), dtype, dev)?,
        });
        parts.push(match affines.bias[p] {
            Some(b) => b.reshape((1, e))?,
            None => Tensor::zeros((1, e), dtype, dev)?,
        });
    }
    let gb = Tensor::cat(&parts, 0)?;
    w.contiguous()?
        .apply_op3(&c.contiguous()?, &gb, Fold { rows: affines.rows })
}

/// [`fold_input_affines`] from candle ops: the reference the fused op is tested against, and the
/// path on devices without the fused op.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{fold_input_affines_composed, InputAffines};
/// let w = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
/// let g = Tensor::new(&[10f64, 100.], &Device::Cpu)?;
/// let affines = InputAffines { rows: [1, 1, 0], weight: [Some(&g), None, None], bias: [None; 3] };
/// let folded = fold_input_affines_composed(&w, None, &affines)?;
/// assert_eq!(folded.to_vec2::<f64>()?, vec![vec![10., 200., 0.], vec![3., 4., 0.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fold_input_affines_composed(
    w: &Tensor,
    c: Option<&Tensor>,
    affines: &InputAffines,
) -> Result<Tensor> {
    let fe = check(w, c, affines)?;
    compose(w, c, affines, fe)
}

/// [`fold_input_affines_composed`] on checked arguments, `(F, E)` being `w`'s shape.
fn compose(
    w: &Tensor,
    c: Option<&Tensor>,
    affines: &InputAffines,
    (f, e): (usize, usize),
) -> Result<Tensor> {
    let mut ws = Vec::with_capacity(3);
    let mut bs = Vec::with_capacity(3);
    let mut r0 = 0;
    for p in 0..3 {
        let rows = affines.rows[p];
        let wp = w.narrow(0, r0, rows)?;
        ws.push(match affines.weight[p] {
            Some(g) => wp.broadcast_mul(&g.reshape((1, e))?)?,
            None => wp.clone(),
        });
        bs.push(match affines.bias[p] {
            Some(b) => wp.matmul(&b.reshape((e, 1))?)?,
            None => Tensor::zeros((rows, 1), w.dtype(), w.device())?,
        });
        r0 += rows;
    }
    let mut b = Tensor::cat(&bs, 0)?;
    if let Some(c) = c {
        b = (b + c.reshape((f, 1))?)?;
    }
    Tensor::cat(&[Tensor::cat(&ws, 0)?, b], 1)
}

/// `(F, E)` after checking `w` is 2-D, `c` is `(F)`, the parts' rows add up to `F` and every
/// affine part is `(E)`, all in `w`'s dtype.
fn check(w: &Tensor, c: Option<&Tensor>, affines: &InputAffines) -> Result<(usize, usize)> {
    let shape_err = |arg: &'static str, expected: String, t: &Tensor| -> candle_core::Error {
        KernelError::Shape {
            op: "fold_input_affines",
            arg,
            expected,
            got: t.dims().to_vec(),
        }
        .into()
    };
    let (f, e) = w
        .dims2()
        .map_err(|_| shape_err("w_in", "(F, E)".into(), w))?;
    let total: usize = affines.rows.iter().sum();
    if total != f {
        return Err(shape_err(
            "w_in",
            format!("{total} rows (the affine parts' rows {:?})", affines.rows),
            w,
        ));
    }
    if let Some(c) = c {
        if c.dims() != [f] {
            return Err(shape_err(
                "b_in",
                format!("({f}) for w_in {:?}", w.dims()),
                c,
            ));
        }
        crate::error::expect_same_dtype("fold_input_affines", ("b_in", c), ("w_in", w))?;
    }
    for t in affines.weight.iter().chain(&affines.bias).flatten() {
        if t.dims() != [e] {
            return Err(shape_err(
                "LayerNorm weight or bias",
                format!("({e}) for w_in {:?}", w.dims()),
                t,
            ));
        }
        crate::error::expect_same_dtype(
            "fold_input_affines",
            ("LayerNorm affine", t),
            ("w_in", w),
        )?;
    }
    Ok((f, e))
}

/// The fused op: inputs `w (F, E)`, `c (F)`, `gb (6, E)`; output `(F, E + 1)`.
struct Fold {
    rows: [usize; 3],
}

impl Fold {
    /// The part of each row.
    fn parts(&self) -> impl Iterator<Item = usize> + '_ {
        (0..3).flat_map(|p| std::iter::repeat_n(p, self.rows[p]))
    }

    fn forward<T: WithDType>(&self, w: &[T], c: &[T], gb: &[T], e: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(c.len() * (e + 1));
        for ((row, &ci), p) in w.chunks_exact(e).zip(c).zip(self.parts()) {
            let (g, b) = (
                &gb[2 * p * e..(2 * p + 1) * e],
                &gb[(2 * p + 1) * e..(2 * p + 2) * e],
            );
            let mut shift = ci;
            for ((&x, &gj), &bj) in row.iter().zip(g).zip(b) {
                out.push(x * gj);
                shift += x * bj;
            }
            out.push(shift);
        }
        out
    }

    /// `(dw, dc, dgb)` from the output gradient `d`, `(F, E + 1)`.
    fn backward<T: WithDType>(
        &self,
        w: &[T],
        gb: &[T],
        d: &[T],
        e: usize,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let mut dw = Vec::with_capacity(w.len());
        let mut dc = Vec::with_capacity(w.len() / e.max(1));
        let mut dgb = vec![T::zero(); 6 * e];
        for ((row, drow), p) in w
            .chunks_exact(e)
            .zip(d.chunks_exact(e + 1))
            .zip(self.parts())
        {
            let (g, b) = (
                &gb[2 * p * e..(2 * p + 1) * e],
                &gb[(2 * p + 1) * e..(2 * p + 2) * e],
            );
            let ds = drow[e];
            dc.push(ds);
            let (dg, db) = dgb[2 * p * e..(2 * p + 2) * e].split_at_mut(e);
            for j in 0..e {
                dw.push(drow[j] * g[j] + ds * b[j]);
                dg[j] += drow[j] * row[j];
                db[j] += ds * row[j];
            }
        }
        (dw, dc, dgb)
    }

    fn grads<T: WithDType>(
        &self,
        args: [&Tensor; 3],
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (_, e) = args[0].dims2()?;
        let grad = grad.contiguous()?;
        let guards = [args[0], args[2], &grad].map(|t| t.storage_and_layout());
        let data = |i: usize| -> Result<&[T]> {
            storage_slice(&guards[i].0, guards[i].1, "fold_input_affines")
        };
        let (dw, dc, dgb) = self.backward(data(0)?, data(1)?, data(2)?, e);
        tracked_grads(args, [dw, dc, dgb])
    }
}

impl CustomOp3 for Fold {
    fn name(&self) -> &'static str {
        "hopfield-fold-input-affines"
    }

    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        lw: &Layout,
        c: &CpuStorage,
        lc: &Layout,
        gb: &CpuStorage,
        lgb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (f, e) = lw.shape().dims2()?;
        let storage = match w.dtype() {
            DType::F32 => CpuStorage::F32(self.forward::<f32>(
                cpu_contiguous(w, lw)?,
                cpu_contiguous(c, lc)?,
                cpu_contiguous(gb, lgb)?,
                e,
            )),
            DType::F64 => CpuStorage::F64(self.forward::<f64>(
                cpu_contiguous(w, lw)?,
                cpu_contiguous(c, lc)?,
                cpu_contiguous(gb, lgb)?,
                e,
            )),
            other => {
                candle_core::bail!("fold_input_affines: CPU op supports f32 and f64, got {other:?}")
            }
        };
        Ok((storage, Shape::from((f, e + 1))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        c: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dw, dc, dgb] = match w.dtype() {
            DType::F32 => self.grads::<f32>([w, c, gb], grad)?,
            DType::F64 => self.grads::<f64>([w, c, gb], grad)?,
            other => {
                candle_core::bail!("fold_input_affines: CPU op supports f32 and f64, got {other:?}")
            }
        };
        Ok((dw, dc, dgb))
    }
}

/// [`super::retrieve_projected`] with the input LayerNorms' affine maps folded into `proj.w_in`
/// and `proj.b_in` ([`fold_input_affines`]): self-association of the standardised input `z`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use hopfield_cuda::retrieval::{retrieve_projected, retrieve_projected_affine, InputAffines, PackedSizes, Projections, Retrieval};
/// let dev = Device::Cpu;
/// let sizes = PackedSizes { heads: 2, hd: 3, pd: 4 };
/// let z = Tensor::randn(0f64, 1., (2, 5, 6), &dev)?;
/// let w_in = Tensor::randn(0f64, 1., (sizes.features(), 6), &dev)?;
/// let w_out = Tensor::randn(0f64, 1., (6, 8), &dev)?;
/// let g = Tensor::randn(0f64, 1., 6, &dev)?;
/// let proj = Projections { w_in: &w_in, b_in: None, w_out: &w_out, b_out: None };
/// let affines = InputAffines { rows: [6, 6, 8], weight: [Some(&g); 3], bias: [None; 3] };
/// let cfg = Retrieval::new(0.5);
/// let y = retrieve_projected_affine(&z, proj, &affines, sizes, &cfg)?;
/// let zg = z.broadcast_mul(&g)?;
/// let y2 = retrieve_projected(&zg, proj, sizes, &cfg)?;
/// assert!((y - y2)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn retrieve_projected_affine(
    z: &Tensor,
    proj: Projections,
    affines: &InputAffines,
    sizes: super::PackedSizes,
    cfg: &super::Retrieval,
) -> Result<Tensor> {
    let wb_in = fold_input_affines(proj.w_in, proj.b_in, affines)?;
    let e = proj.w_in.dim(1)?;
    super::projected::retrieve_projected_wb(z, &wb_in, e, proj, sizes, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_grads_match_finite_differences, max_diff, random_var as var};
    use candle_core::{Device, Var};

    /// Fused and composed agree on values and on every gradient, with parts of unequal size
    /// (and an empty one), absent weights and biases, and with and without the projection bias.
    #[test]
    fn fused_matches_composed() -> Result<()> {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            for (rows, with_c) in [([3, 3, 4], true), ([2, 0, 5], false), ([4, 4, 4], false)] {
                let f: usize = rows.iter().sum();
                let e = 5;
                let w = var(&[f, e], dtype)?;
                let c = var(&[f], dtype)?;
                let g: Vec<Var> = (0..3).map(|_| var(&[e], dtype)).collect::<Result<_>>()?;
                let b: Vec<Var> = (0..3).map(|_| var(&[e], dtype)).collect::<Result<_>>()?;
                let affines = InputAffines {
                    rows,
                    weight: [Some(g[0].as_tensor()), None, Some(g[2].as_tensor())],
                    bias: [None, Some(b[1].as_tensor()), Some(b[2].as_tensor())],
                };
                let cb = with_c.then(|| c.as_tensor());
                let y1 = fold_input_affines(w.as_tensor(), cb, &affines)?;
                let y2 = fold_input_affines_composed(w.as_tensor(), cb, &affines)?;
                assert_eq!(y1.dims(), &[f, e + 1]);
                assert!(max_diff(&y1, &y2) < tol);
                let cot = Tensor::randn(0f64, 1., (f, e + 1), &Device::Cpu)?.to_dtype(dtype)?;
                let g1 = (&y1 * &cot)?.sum_all()?.backward()?;
                let g2 = (&y2 * &cot)?.sum_all()?.backward()?;
                let mut vars = vec![&w, &g[0], &g[2], &b[1], &b[2]];
                if with_c {
                    vars.push(&c);
                }
                for v in vars {
                    let (a, r) = (
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(v.as_tensor()).unwrap(),
                    );
                    assert!(max_diff(a, r) < tol, "{dtype:?} {rows:?}");
                }
            }
        }
        Ok(())
    }

    /// The gradient of a scalar function of the fold matches central finite differences (f64).
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (f, e) = (5, 3);
        let w = var(&[f, e], DType::F64)?;
        let g = var(&[e], DType::F64)?;
        let b = var(&[e], DType::F64)?;
        let cot = Tensor::randn(0f64, 1., (f, e + 1), &Device::Cpu)?;
        let loss = |[w, g, b]: [&Tensor; 3]| -> Result<Tensor> {
            let affines = InputAffines {
                rows: [2, 1, 2],
                weight: [Some(g), Some(g), None],
                bias: [Some(b), None, Some(b)],
            };
            (fold_input_affines(w, None, &affines)? * &cot)?.sum_all()
        };
        assert_grads_match_finite_differences([&w, &g, &b], loss, 1e-7)
    }

    #[test]
    fn bad_shapes_are_typed_errors_naming_the_sizes() -> Result<()> {
        let w = Tensor::zeros((6, 4), DType::F32, &Device::Cpu)?;
        let g = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        let rows_off = InputAffines {
            rows: [2, 2, 1],
            weight: [None; 3],
            bias: [None; 3],
        };
        let err = fold_input_affines(&w, None, &rows_off)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 rows") && err.contains("[6, 4]"), "{err}");
        let short = InputAffines {
            rows: [2, 2, 2],
            weight: [Some(&g), None, None],
            bias: [None; 3],
        };
        let err = fold_input_affines(&w, None, &short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(4)") && err.contains("[3]"), "{err}");
        Ok(())
    }
}
