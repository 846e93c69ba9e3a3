//! [`Locality`]: a large graph's products run in its locality order when that pays, with the
//! operand's rows permuted in and the result's permuted back.

use super::cpu::prefetch_row;
use super::order::inverse_permutation;
use super::{CsrMatrix, SparseError};
use crate::rows::write_uninit;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// Graphs with fewer nodes are used as numbered: their operand rows stay in cache anyway.
pub const LOCALITY_MIN_NODES: usize = 1 << 15;

/// A matrix renumbered into its [`CsrMatrix::locality_order`], kept with the matrix
/// ([`CsrMatrix::locality`]) when the order brings neighbours at least four times closer on
/// average (mean `|i - j|` over the stored entries) and the graph has at least
/// [`LOCALITY_MIN_NODES`] nodes: then a product in this order, with the operand's rows permuted
/// in and the result's permuted back, costs two row gathers more but reads neighbours from nearby
/// memory (2-3x faster on a shuffled 10^5-node lattice, `docs/dahn-performance.md`). A graph whose
/// neighbours no numbering brings together (random links) keeps its numbering. Products in this
/// order equal the direct ones bit for bit: rows sum the same entries in the same order.
///
/// ```
/// use hopfield_cuda::sparse::{diffusion_step, CsrMatrix, LOCALITY_MIN_NODES};
/// use candle_core::{Device, Tensor};
/// // A ring numbered with a stride: neighbours are 377 rows apart, and far more at scale.
/// let n = LOCALITY_MIN_NODES + 1;
/// let label = |i: usize| ((i * 377) % n) as u32;
/// let mut rows = vec![Vec::new(); n];
/// for i in 0..n {
///     let (a, b) = (label(i), label((i + 1) % n));
///     rows[a as usize].push(b);
///     rows[b as usize].push(a);
/// }
/// let row_ptr = std::iter::once(0)
///     .chain(rows.iter().scan(0, |s, r| { *s += r.len(); Some(*s) }))
///     .collect();
/// let cols: Vec<u32> = rows.concat();
/// let w = CsrMatrix::new(n, row_ptr, cols.clone(), vec![0.5; cols.len()])?;
/// let loc = w.locality().expect("a shuffled ring has locality to find");
/// assert!(loc.matrix().bandwidth() <= 2);
/// let x = Tensor::randn(0f32, 1., (n, 4), &Device::Cpu)?;
/// let deg = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?;
/// let direct = diffusion_step(&w, &deg, 0.25, &x)?;
/// let reordered = loc.from_order(&diffusion_step(
///     loc.matrix(),
///     &loc.to_order(&deg)?,
///     0.25,
///     &loc.to_order(&x)?,
/// )?)?;
/// assert_eq!(reordered.to_vec2::<f32>()?, direct.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Locality {
    order: Arc<Vec<u32>>,
    inverse: Arc<Vec<u32>>,
    matrix: CsrMatrix,
}

impl Locality {
    /// The renumbered matrix.
    pub fn matrix(&self) -> &CsrMatrix {
        &self.matrix
    }

    /// `order[new] = old`.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// `t` (first dimension N) with its rows in the locality order. Differentiable (the
    /// backward pass permutes back); on the CPU rows are copied in parallel, elsewhere it is an
    /// index select.
    pub fn to_order(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        permute_rows(t, &self.order, &self.inverse)
    }

    /// The inverse of [`Self::to_order`]: rows back in the matrix's own numbering.
    pub fn from_order(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        permute_rows(t, &self.inverse, &self.order)
    }
}

/// Row `i` of the result is row `take[i]` of `t`; `back` is the inverse permutation (the
/// backward pass).
fn permute_rows(
    t: &Tensor,
    take: &Arc<Vec<u32>>,
    back: &Arc<Vec<u32>>,
) -> candle_core::Result<Tensor> {
    if t.dims().first() != Some(&take.len()) {
        return Err(SparseError::Shape {
            op: "Locality",
            detail: format!(
                "the graph has {} nodes but the tensor has shape {:?} (expected ({}, ...))",
                take.len(),
                t.dims(),
                take.len()
            ),
        }
        .into());
    }
    if !t.device().is_cpu() {
        return t.index_select(&Tensor::new(take.as_slice(), t.device())?, 0);
    }
    t.contiguous()?.apply_op1(PermuteRows {
        take: take.clone(),
        back: back.clone(),
    })
}

/// The CPU row permutation: output rows in parallel chunks, each a copy of one input row. (A
/// candle index select took 50-60 ms each way for a 100 MB operand, more than the ordered
/// product it served.)
struct PermuteRows {
    take: Arc<Vec<u32>>,
    back: Arc<Vec<u32>>,
}

/// Rows ahead whose source row is prefetched.
const PREFETCH: usize = 4;

fn gather_rows<T: Copy + Send + Sync>(src: &[T], take: &[u32]) -> Vec<T> {
    let m = src.len() / take.len().max(1);
    if m == 0 {
        return Vec::new();
    }
    let rows = crate::rows::rows_per_task(m);
    // SAFETY: every output row is written whole, a copy of one input row.
    unsafe {
        crate::rows::par_vec_uninit(src.len(), rows * m, |t, o| {
            let take = &take[t * rows..];
            for (i, o) in o.chunks_exact_mut(m).enumerate() {
                // The source rows lie anywhere: request one a few rows ahead, so that its
                // misses overlap the copies before it.
                if let Some(&r) = take.get(i + PREFETCH) {
                    prefetch_row(&src[r as usize * m..][..m]);
                }
                write_uninit(o, &src[take[i] as usize * m..][..m]);
            }
        })
    }
}

impl CustomOp1 for PermuteRows {
    fn name(&self) -> &'static str {
        "sparse-permute-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let take = &self.take[..];
        macro_rules! permuted {
            ($($dtype:ident),*) => {
                match s {
                    $(CpuStorage::$dtype(v) => {
                        CpuStorage::$dtype(gather_rows(crate::rows::contiguous(v, l)?, take))
                    })*
                    _ => candle_core::bail!("Locality: rows of this dtype are not permuted on the CPU"),
                }
            };
        }
        let v = permuted!(F32, F64, F16, BF16, U32, I64, U8);
        Ok((v, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(permute_rows(g, &self.back, &self.take)?))
    }
}

/// The [`Locality`] rule: large graphs whose order brings neighbours 4x closer.
pub(super) fn build_locality(a: &CsrMatrix) -> Option<Locality> {
    if a.n() < LOCALITY_MIN_NODES || a.nnz() == 0 {
        return None;
    }
    let order = a.locality_order();
    let matrix = a.permuted(&order).ok()?;
    if matrix.mean_distance() * 4.0 > a.mean_distance() {
        return None;
    }
    let inverse = inverse_permutation(&order, a.n()).ok()?;
    Some(Locality {
        order: Arc::new(order),
        inverse: Arc::new(inverse),
        matrix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::order::tests::shuffled_ring;

    #[test]
    fn locality_is_kept_only_where_it_pays() {
        // Small: used as numbered.
        assert!(shuffled_ring(1000, 377).locality().is_none());
        // Large and shuffled: renumbered, and the order and its inverse agree.
        let w = shuffled_ring(LOCALITY_MIN_NODES + 7, 377);
        let loc = w.locality().expect("locality");
        assert!(loc.matrix().bandwidth() <= 2);
        assert!(loc
            .inverse
            .iter()
            .enumerate()
            .all(|(old, &new)| loc.order()[new as usize] as usize == old));
        assert!(std::ptr::eq(loc, w.locality().unwrap()), "built once");
        // Large, already in order: nothing to gain.
        assert!(shuffled_ring(LOCALITY_MIN_NODES + 7, 1)
            .locality()
            .is_none());
        // Large, random links: no order brings them together.
        let n = LOCALITY_MIN_NODES;
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut cols = Vec::new();
        for _ in 0..n * 4 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            cols.push((s % n as u64) as u32);
        }
        let rp = (0..=n).map(|i| 4 * i).collect();
        let r = CsrMatrix::new(n, rp, cols, vec![1.0; 4 * n]).unwrap();
        assert!(r.locality().is_none());
    }

    #[test]
    fn rows_permute_there_and_back_with_gradients() {
        use candle_core::{DType, Device, Var};
        let w = shuffled_ring(LOCALITY_MIN_NODES + 3, 101);
        let loc = w.locality().unwrap();
        let n = w.n();
        let x =
            Var::from_tensor(&Tensor::randn(0f64, 1., (n, 2, 3), &Device::Cpu).unwrap()).unwrap();
        let p = loc.to_order(x.as_tensor()).unwrap();
        let idx = Tensor::new(loc.order(), &Device::Cpu).unwrap();
        let want = x.as_tensor().index_select(&idx, 0).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(flat(&p), flat(&want));
        assert_eq!(flat(&loc.from_order(&p).unwrap()), flat(x.as_tensor()));
        // d/dx sum(c * P x) = P^T c.
        let c = Tensor::randn(0f64, 1., (n, 2, 3), &Device::Cpu).unwrap();
        let g = (&p * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            flat(g.get(x.as_tensor()).unwrap()),
            flat(&loc.from_order(&c).unwrap())
        );
        let h = x.as_tensor().to_dtype(DType::F16).unwrap();
        let back = loc.from_order(&loc.to_order(&h).unwrap()).unwrap();
        assert_eq!(
            back.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            h.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        );
        let e = loc.to_order(&Tensor::zeros((5, 2), DType::F32, &Device::Cpu).unwrap());
        assert!(matches!(
            SparseError::find(&e.unwrap_err()),
            Some(SparseError::Shape { .. })
        ));
    }
}
