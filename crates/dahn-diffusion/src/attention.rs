//! [`AttentionOperator`]: dense `softmax(beta Q K^T) V` or kNN-graph-constrained attention.

use crate::{validate, AttentionMode, DiffusionError};
use candle_core::{Result, Tensor, D};
use hopfield_cuda::masked_softmax as softmax;
use hopfield_cuda::retrieval::{retrieve, Retrieval};
use hopfield_cuda::KernelError;

/// difflayers' `AttentionOperator(beta, mode)`. Inputs are (rows, d) or (rows, B, d) (batch
/// columns attend independently). Differentiable w.r.t. Q, K, V: dense mode is the fused retrieval
/// kernel of `hopfield-cuda` (no rows x rows logits in memory, FlashAttention-2 backward), graph mode
/// a fused softmax over each row's neighbours.
///
/// Graph mode: query i attends only to the keys `adj[i]` (softmax over those k entries), so Q and
/// K index the same nodes (rows of Q = rows of `adj`; entries of `adj` index K); one table serves
/// every batch column.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{AttentionMode, AttentionOperator};
/// let q = Tensor::new(&[[1f64, 0.], [0., 1.]], &Device::Cpu)?;
/// let v = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?;
/// let adj = Tensor::new(&[[1u32], [1]], &Device::Cpu)?;
/// let y = AttentionOperator::new(1.0, AttentionMode::Graph).forward(&q, &q, &v, Some(&adj))?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![3., 4.], vec![3., 4.]]); // one neighbour: weight 1
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOperator {
    /// Inverse temperature.
    pub beta: f64,
    /// Dense or graph.
    pub mode: AttentionMode,
}

impl Default for AttentionOperator {
    fn default() -> Self {
        Self {
            beta: 1.0,
            mode: AttentionMode::Dense,
        }
    }
}

fn mismatch(m: String) -> candle_core::Error {
    DiffusionError::ShapeMismatch(m).into()
}

impl AttentionOperator {
    /// An operator with this beta and mode.
    pub fn new(beta: f64, mode: AttentionMode) -> Self {
        Self { beta, mode }
    }

    /// Applies attention; `adj` (rows of Q, k) integer neighbour table is required in graph mode
    /// and ignored in dense mode. Errors (typed): ranks/shapes that disagree, a missing or
    /// out-of-range neighbour table, a non-finite `beta`, integer or mixed dtypes, no keys (or a
    /// neighbour table with no columns: a softmax over nothing), NaN/inf in Q, K or V, and logits
    /// `beta Q K^T` that overflow ([`DiffusionError::Overflow`]). No queries (or d = 0) is a
    /// defined result: an empty output (respectively the mean of the selected V rows).
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        adj: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        let rank = qd.len();
        if !(rank == 2 || rank == 3) || kd.len() != rank || vd.len() != rank {
            return Err(mismatch(format!(
                "attention: Q {qd:?}, K {kd:?}, V {vd:?} must all be 2-D or all 3-D"
            )));
        }
        if qd[rank - 1] != kd[rank - 1]
            || kd[0] != vd[0]
            || (rank == 3 && (qd[1] != kd[1] || kd[1] != vd[1]))
        {
            return Err(mismatch(format!(
                "attention: Q {qd:?}, K {kd:?}, V {vd:?} disagree (Q and K share d, K and V share rows{})",
                if rank == 3 { ", all share B" } else { "" }
            )));
        }
        validate::param("attention", "beta", self.beta, false)?;
        for (t, what) in [
            (q, "attention: Q"),
            (k, "attention: K"),
            (v, "attention: V"),
        ] {
            validate::float(what, t)?;
        }
        if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            return Err(mismatch(format!(
                "attention: Q, K, V dtypes {:?}, {:?}, {:?} differ",
                q.dtype(),
                k.dtype(),
                v.dtype()
            )));
        }
        if kd[0] == 0 {
            return Err(DiffusionError::Empty {
                what: "attention: K (no keys to attend to)",
                shape: kd.to_vec(),
            }
            .into());
        }
        validate::finite("attention: V", v)?;
        // No queries, no batch columns or no value features: a defined empty result (reductions
        // over empty tensors are errors inside candle).
        let mut out_dims = qd[..rank - 1].to_vec();
        out_dims.push(vd[rank - 1]);
        if out_dims.contains(&0) {
            return Tensor::zeros(out_dims, q.dtype(), q.device());
        }
        let out = match self.mode {
            AttentionMode::Dense => self.dense(q, k, v)?,
            AttentionMode::Graph => {
                let adj = adj.ok_or(DiffusionError::Missing(
                    "graph attention needs a neighbour table",
                ))?;
                self.graph(q, k, v, adj)?
            }
        };
        // A convex combination of finite V rows; only rounding at the dtype's limit can overflow.
        validate::no_overflow("attention: weighted sum of V", &out)?;
        Ok(out)
    }

    /// The softmax of logits that must be finite: one reduction over them; Q and K are only read
    /// when they are not (which input, or an overflow of `beta Q K^T`).
    fn softmax(&self, logits: &Tensor, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        if !hopfield_cuda::all_finite(logits)? {
            validate::finite("attention: Q", q)?;
            validate::finite("attention: K", k)?;
            validate::no_overflow("attention: logits beta Q K^T", logits)?;
        }
        softmax(logits)
    }

    fn dense(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        // The fused retrieval kernel (online softmax over blocks of keys, with its own backward):
        // the (rows of Q) x (rows of K) logits, the big tensor of the composed form, never exist.
        // Batch columns are the kernel's heads: (rows, B, d) is its (1, L, H, d) view as it is.
        let as_heads = |t: &Tensor| -> Result<Tensor> {
            if t.rank() == 2 {
                t.unsqueeze(1)?.unsqueeze(0)
            } else {
                t.unsqueeze(0)
            }
        };
        let cfg = Retrieval::new(self.beta);
        match retrieve(&as_heads(q)?, &as_heads(k)?, &as_heads(v)?, &cfg) {
            Ok(out) => {
                let mut dims = q.dims().to_vec();
                *dims.last_mut().expect("rank >= 2") = v.dim(D::Minus1)?;
                out.reshape(dims)
            }
            // The kernel reports non-finite logits, or a beta the dtype cannot hold (finite in
            // f64, infinite in f32): name the input, else the overflow of beta Q K^T.
            Err(e)
                if KernelError::find(&e).is_some_and(|k| {
                    matches!(k, KernelError::Overflow { .. } | KernelError::Param { .. })
                }) =>
            {
                validate::finite("attention: Q", q)?;
                validate::finite("attention: K", k)?;
                Err(DiffusionError::Overflow {
                    what: "attention: logits beta Q K^T",
                    dtype: format!("{:?}", q.dtype()),
                }
                .into())
            }
            Err(e) => Err(e),
        }
    }

    fn graph(&self, q: &Tensor, k: &Tensor, v: &Tensor, adj: &Tensor) -> Result<Tensor> {
        let n = q.dim(0)?;
        let (rows, kk) = adj
            .dims2()
            .map_err(|_| mismatch(format!("neighbour table must be 2-D, got {:?}", adj.dims())))?;
        if kk == 0 && rows > 0 {
            return Err(DiffusionError::Empty {
                what: "attention: neighbour table (no neighbours to attend to)",
                shape: adj.dims().to_vec(),
            }
            .into());
        }
        if rows != n || adj.dtype().is_float() {
            return Err(mismatch(format!(
                "neighbour table {:?} ({:?}) must be an integer (rows of Q = {n}, k) table",
                adj.dims(),
                adj.dtype()
            )));
        }
        // The gathered (n, k, B, d) neighbour keys and values are the big buffers here.
        let cols: usize =
            k.dims()[1..].iter().product::<usize>() + v.dims()[1..].iter().product::<usize>();
        validate::can_allocate(
            "attention: gathered neighbours",
            &[n, kk, cols],
            k.dtype().size_in_bytes(),
        )?;
        // index_select needs contiguous operands.
        let (k, v) = (&k.contiguous()?, &v.contiguous()?);
        let flat = adj.flatten_all()?.contiguous()?;
        if flat.elem_count() > 0 {
            let wide = flat.to_dtype(candle_core::DType::F64)?;
            let max = wide.max_all()?.to_scalar::<f64>()?;
            let min = wide.min_all()?.to_scalar::<f64>()?;
            if min < 0.0 || max >= k.dim(0)? as f64 {
                return Err(mismatch(format!(
                    "neighbour table entries must lie in 0..{} (rows of K), found {min}..={max}",
                    k.dim(0)?
                )));
            }
        }
        if q.rank() == 2 {
            let d = k.dim(1)?;
            let kn = k.index_select(&flat, 0)?.reshape((n, kk, d))?;
            let vn = v.index_select(&flat, 0)?.reshape((n, kk, v.dim(1)?))?;
            let logits = (q.unsqueeze(1)?.broadcast_mul(&kn)?.sum(D::Minus1)? * self.beta)?;
            let p = self.softmax(&logits, q, k)?;
            return p.unsqueeze(2)?.broadcast_mul(&vn)?.sum(1);
        }
        let (b, d, dv) = (k.dim(1)?, k.dim(2)?, v.dim(2)?);
        let kn = k.index_select(&flat, 0)?.reshape((n, kk, b, d))?;
        let vn = v.index_select(&flat, 0)?.reshape((n, kk, b, dv))?;
        let logits = (q.unsqueeze(1)?.broadcast_mul(&kn)?.sum(D::Minus1)? * self.beta)?; // (n, kk, b)
        let p = self
            .softmax(&logits.transpose(1, 2)?, q, k)?
            .transpose(1, 2)?; // over kk
        p.unsqueeze(3)?.broadcast_mul(&vn)?.sum(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: &[f64], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
    }

    #[test]
    fn graph_with_all_neighbours_equals_dense() -> Result<()> {
        let q = t(
            &(0..12).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(),
            &[4, 3],
        )?;
        let k = t(
            &(0..12).map(|i| (i as f64 * 0.71).cos()).collect::<Vec<_>>(),
            &[4, 3],
        )?;
        let v = t(&(0..8).map(|i| i as f64).collect::<Vec<_>>(), &[4, 2])?;
        let adj = Tensor::new(
            &[[3u32, 0, 1, 2], [0, 1, 2, 3], [2, 3, 1, 0], [1, 0, 3, 2]],
            &Device::Cpu,
        )?;
        let dense = AttentionOperator::new(1.3, AttentionMode::Dense).forward(&q, &k, &v, None)?;
        let graph =
            AttentionOperator::new(1.3, AttentionMode::Graph).forward(&q, &k, &v, Some(&adj))?;
        assert!((dense - graph)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        Ok(())
    }

    /// Dense mode (the fused retrieval kernel) and graph mode over all neighbours (composed ops)
    /// agree on the gradients too, for 2-D and batched inputs.
    #[test]
    fn dense_gradients_equal_the_composed_ones() -> Result<()> {
        use candle_core::Var;
        for dims in [vec![5usize, 3], vec![5, 2, 3]] {
            let n: usize = dims.iter().product();
            let var = |f: fn(f64) -> f64| {
                Var::from_tensor(&t(&(0..n).map(|i| f(i as f64)).collect::<Vec<_>>(), &dims)?)
            };
            let (q, k, v) = (
                var(|i| (i * 0.37).sin())?,
                var(|i| (i * 0.71).cos())?,
                var(|i| (i * 0.13).sin() * 2.0)?,
            );
            let all: Vec<u32> = (0..5).flat_map(|_| 0..5u32).collect();
            let adj = Tensor::from_vec(all, (5, 5), &Device::Cpu)?;
            let cot = t(
                &(0..n).map(|i| (i as f64 * 1.3).cos()).collect::<Vec<_>>(),
                &dims,
            )?;
            let grads = |mode, a: Option<&Tensor>| -> Result<Vec<Tensor>> {
                let y = AttentionOperator::new(1.1, mode).forward(&q, &k, &v, a)?;
                let g = (y * &cot)?.sum_all()?.backward()?;
                Ok([&q, &k, &v]
                    .map(|x| g.get(x).expect("gradient").clone())
                    .to_vec())
            };
            let dense = grads(AttentionMode::Dense, None)?;
            let graph = grads(AttentionMode::Graph, Some(&adj))?;
            for (a, b) in dense.iter().zip(&graph) {
                assert!((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
            }
        }
        Ok(())
    }

    #[test]
    fn batch_columns_are_independent() -> Result<()> {
        let q = t(
            &(0..24).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(),
            &[4, 2, 3],
        )?;
        let v = t(
            &(0..16).map(|i| i as f64 * 0.1).collect::<Vec<_>>(),
            &[4, 2, 2],
        )?;
        let adj = Tensor::new(&[[1i64, 2], [0, 3], [3, 1], [2, 0]], &Device::Cpu)?;
        for (mode, a) in [
            (AttentionMode::Dense, None),
            (AttentionMode::Graph, Some(&adj)),
        ] {
            let op = AttentionOperator::new(0.9, mode);
            let y = op.forward(&q, &q, &v, a)?;
            for b in 0..2 {
                let col = |x: &Tensor| x.narrow(1, b, 1).and_then(|c| c.squeeze(1));
                let yb = op.forward(&col(&q)?, &col(&q)?, &col(&v)?, a)?;
                assert!((col(&y)? - yb)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-15);
            }
        }
        Ok(())
    }

    /// A beta that is finite in f64 but not in the inputs' dtype is the overflow of the logits,
    /// a typed error of this crate (as it was with the composed attention).
    #[test]
    fn a_beta_too_large_for_the_dtype_is_an_overflow() -> Result<()> {
        let q = Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?;
        let e = AttentionOperator::new(1e300, AttentionMode::Dense)
            .forward(&q, &q, &q, None)
            .unwrap_err();
        assert!(
            matches!(
                DiffusionError::find(&e),
                Some(DiffusionError::Overflow { .. })
            ),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn bad_inputs_are_typed_errors() -> Result<()> {
        let q = Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?;
        let k = Tensor::zeros((4, 3), DType::F64, &Device::Cpu)?;
        let op = AttentionOperator::new(1.0, AttentionMode::Graph);
        let e = op.forward(&q, &k, &k, None).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::ShapeMismatch(_))
        ));
        let e = op.forward(&q, &q, &q, None).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::Missing(_))
        ));
        let adj = Tensor::new(&[[5u32], [0], [1]], &Device::Cpu)?;
        let e = op.forward(&q, &q, &q, Some(&adj)).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::ShapeMismatch(_))
        ));
        Ok(())
    }
}
