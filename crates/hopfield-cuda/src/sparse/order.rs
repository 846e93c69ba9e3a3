//! Node orders that put a graph's neighbours near each other in memory, and the matrix
//! permuted into such an order.
//!
//! A product `W x` reads, for every stored entry, the row of `x` of its column. When the nodes
//! are numbered without regard to the graph (a shuffled dataset, patterns in arrival order),
//! those rows are scattered over all of `x`: every entry is a cache miss and, for rows of a
//! KiB, a TLB miss, and the kernel runs at a tenth of the memory bandwidth. Numbered in a
//! breadth-first order, neighbours sit a few rows apart and the gathers hit cache.
//! [`CsrMatrix::locality_order`] computes such an order (reverse Cuthill-McKee), and
//! [`CsrMatrix::permuted`] renumbers the matrix. A product of the permuted matrix with the
//! permuted `x` gives the permuted result bit for bit: each row sums the same entries in the
//! same order.

use super::{CsrMatrix, SparseError};
use candle_core::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::collections::VecDeque;
use std::sync::Arc;

impl CsrMatrix {
    /// A numbering of the nodes in which neighbours are close: `order[new] = old`. Reverse
    /// Cuthill-McKee on the symmetrised pattern (entries in either direction link two nodes;
    /// values are ignored): each connected component is walked breadth-first from a node of
    /// low degree far from the rest (a pseudo-peripheral node, found by repeated sweeps),
    /// neighbours taken in increasing degree, and the whole order reversed. O(nnz log k) time,
    /// O(N + nnz) memory.
    ///
    /// Compute it once per graph, renumber with [`Self::permuted`], and keep patterns (rows of
    /// `x`) in the same order: the products then read neighbours' rows from nearby memory.
    ///
    /// ```
    /// use hopfield_cuda::sparse::CsrMatrix;
    /// // A path 0 - 2 - 1 - 3 stored with its nodes shuffled.
    /// let w = CsrMatrix::new(
    ///     4,
    ///     vec![0, 1, 3, 5, 6],
    ///     vec![2, 2, 3, 0, 1, 1],
    ///     vec![1.0; 6],
    /// )?;
    /// let order = w.locality_order();
    /// let mut sorted = order.clone();
    /// sorted.sort();
    /// assert_eq!(sorted, vec![0, 1, 2, 3]); // a permutation
    /// let p = w.permuted(&order)?;
    /// assert_eq!(p.bandwidth(), 1); // the path, numbered along itself
    /// assert_eq!(w.bandwidth(), 2);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn locality_order(&self) -> Vec<u32> {
        let adj = self.symmetric_pattern();
        let n = self.n();
        let degree = |i: usize| adj.row_ptr[i + 1] - adj.row_ptr[i];
        let mut order = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        // Components are started from their lowest-degree node, in node order.
        let mut by_degree: Vec<u32> = (0..n as u32).collect();
        by_degree.sort_by_key(|&i| (degree(i as usize), i));
        let mut level = vec![u32::MAX; n];
        for &s in &by_degree {
            if seen[s as usize] {
                continue;
            }
            let start = adj.peripheral(s as usize, &mut level);
            let first = order.len();
            seen[start] = true;
            order.push(start as u32);
            let mut head = first;
            let mut next = Vec::new();
            while head < order.len() {
                let v = order[head] as usize;
                head += 1;
                next.clear();
                next.extend(
                    adj.neighbours(v)
                        .iter()
                        .copied()
                        .filter(|&u| !seen[u as usize]),
                );
                next.sort_by_key(|&u| (degree(u as usize), u));
                for &u in &next {
                    seen[u as usize] = true;
                    order.push(u);
                }
            }
        }
        order.reverse();
        order
    }

    /// The matrix renumbered by `order` (`order[new] = old`, a permutation of `0..N`): `P W P^T`,
    /// row `new` holding old row `order[new]` with its columns renumbered, entries in their
    /// stored order (so `permuted(W) (P x) = P (W x)` exactly). Errors:
    /// [`SparseError::InvalidCsr`] when `order` is not a permutation of `0..N`.
    ///
    /// ```
    /// use hopfield_cuda::sparse::CsrMatrix;
    /// // [[0, 2], [0, 3]] with its two nodes swapped: [[3, 0], [2, 0]]
    /// let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 1], vec![2.0, 3.0])?;
    /// let p = w.permuted(&[1, 0])?;
    /// assert_eq!(p.row(0), (&[0u32][..], &[3.0][..]));
    /// assert_eq!(p.row(1), (&[0u32][..], &[2.0][..]));
    /// assert!(w.permuted(&[0, 0]).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn permuted(&self, order: &[u32]) -> Result<CsrMatrix> {
        let n = self.n();
        let inverse = inverse_permutation(order, n)?;
        let mut row_ptr = Vec::with_capacity(n + 1);
        row_ptr.push(0);
        let mut cols = Vec::with_capacity(self.nnz());
        let mut vals = Vec::with_capacity(self.nnz());
        for &old in order {
            let (c, v) = self.row(old as usize);
            cols.extend(c.iter().map(|&j| inverse[j as usize]));
            vals.extend_from_slice(v);
            row_ptr.push(cols.len());
        }
        Ok(CsrMatrix::from_valid(n, row_ptr, cols, vals))
    }

    /// The largest `|i - j|` over stored entries (0 for a diagonal or empty matrix): how far
    /// apart in memory a row's gathered rows can be.
    pub fn bandwidth(&self) -> usize {
        (0..self.n())
            .flat_map(|i| self.row(i).0.iter().map(move |&j| i.abs_diff(j as usize)))
            .max()
            .unwrap_or(0)
    }

    /// The pattern of `W + W^T` without the diagonal, each neighbour once.
    fn symmetric_pattern(&self) -> Pattern {
        let n = self.n();
        let t = self.transpose();
        let mut row_ptr = Vec::with_capacity(n + 1);
        row_ptr.push(0);
        let mut cols = Vec::with_capacity(2 * self.nnz());
        for i in 0..n {
            let start = cols.len();
            cols.extend(self.row(i).0.iter().chain(t.row(i).0));
            let row = &mut cols[start..];
            row.sort_unstable();
            let mut kept = 0;
            for r in 0..row.len() {
                if row[r] as usize != i && (kept == 0 || row[kept - 1] != row[r]) {
                    row[kept] = row[r];
                    kept += 1;
                }
            }
            cols.truncate(start + kept);
            row_ptr.push(cols.len());
        }
        Pattern { row_ptr, cols }
    }
}

/// Graphs with fewer nodes are used as numbered: their operand rows stay in cache anyway.
pub const LOCALITY_MIN_NODES: usize = 1 << 15;

/// A matrix renumbered into its [`CsrMatrix::locality_order`], kept with the matrix
/// ([`CsrMatrix::locality`]) when the order brings neighbours at least four times closer on
/// average (mean `|i - j|` over the stored entries) and the graph has at least
/// [`LOCALITY_MIN_NODES`] nodes: then a product in this order, with the operand's rows permuted
/// in and the result's permuted back, costs two row gathers more but reads neighbours from nearby
/// memory (3x faster on a shuffled 10^5-node lattice, `docs/dahn-performance.md`). A graph whose
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

fn gather_rows<T: Copy + Default + Send + Sync>(src: &[T], take: &[u32]) -> Vec<T> {
    let m = src.len() / take.len().max(1);
    if m == 0 {
        return Vec::new();
    }
    let rows = crate::rows::rows_per_task(m);
    crate::rows::par_vec(src.len(), rows * m, |t, o| {
        for (o, &r) in o.chunks_exact_mut(m).zip(&take[t * rows..]) {
            o.copy_from_slice(&src[r as usize * m..][..m]);
        }
    })
}

impl CustomOp1 for PermuteRows {
    fn name(&self) -> &'static str {
        "sparse-permute-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let take = &self.take[..];
        let v = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::F16(v) => {
                CpuStorage::F16(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::BF16(v) => {
                CpuStorage::BF16(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::U32(v) => {
                CpuStorage::U32(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::I64(v) => {
                CpuStorage::I64(gather_rows(crate::rows::contiguous(v, l)?, take))
            }
            CpuStorage::U8(v) => CpuStorage::U8(gather_rows(crate::rows::contiguous(v, l)?, take)),
            _ => candle_core::bail!("Locality: rows of this dtype are not permuted on the CPU"),
        };
        Ok((v, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(permute_rows(g, &self.back, &self.take)?))
    }
}

/// Mean `|i - j|` over the stored entries (0 for none).
fn mean_distance(a: &CsrMatrix) -> f64 {
    let total: f64 = (0..a.n())
        .map(|i| {
            a.row(i)
                .0
                .iter()
                .map(|&j| i.abs_diff(j as usize) as f64)
                .sum::<f64>()
        })
        .sum();
    total / a.nnz().max(1) as f64
}

/// The [`Locality`] rule: large graphs whose order brings neighbours 4x closer.
pub(super) fn build_locality(a: &CsrMatrix) -> Option<Locality> {
    if a.n() < LOCALITY_MIN_NODES || a.nnz() == 0 {
        return None;
    }
    let order = a.locality_order();
    let matrix = a.permuted(&order).ok()?;
    if mean_distance(&matrix) * 4.0 > mean_distance(a) {
        return None;
    }
    let inverse = inverse_permutation(&order, a.n()).ok()?;
    Some(Locality {
        order: Arc::new(order),
        inverse: Arc::new(inverse),
        matrix,
    })
}

/// `inverse[old] = new` for `order[new] = old`, or an error naming what breaks the permutation.
fn inverse_permutation(order: &[u32], n: usize) -> Result<Vec<u32>> {
    let bad = |m: String| SparseError::InvalidCsr(m).into();
    if order.len() != n {
        return Err(bad(format!(
            "a node order for n = {n} needs {n} entries, got {}",
            order.len()
        )));
    }
    let mut inverse = vec![u32::MAX; n];
    for (new, &old) in order.iter().enumerate() {
        match inverse.get_mut(old as usize) {
            None => {
                return Err(bad(format!(
                    "node order entry {new} is {old}, out of range for n = {n}"
                )))
            }
            Some(s) if *s != u32::MAX => {
                return Err(bad(format!("node order names node {old} twice")))
            }
            Some(s) => *s = new as u32,
        }
    }
    Ok(inverse)
}

/// An unweighted symmetric adjacency structure.
struct Pattern {
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
}

impl Pattern {
    fn neighbours(&self, i: usize) -> &[u32] {
        &self.cols[self.row_ptr[i]..self.row_ptr[i + 1]]
    }

    /// A node of `s`'s component far from the rest: breadth-first sweeps, each restarted from
    /// the lowest-degree node of the previous sweep's last level, while the depth grows (the
    /// George-Liu heuristic; a few sweeps at most in practice, capped at 8). `level` is
    /// scratch of N entries, left as `u32::MAX` for every node.
    fn peripheral(&self, s: usize, level: &mut [u32]) -> usize {
        let (mut start, mut depth) = (s, 0);
        let mut visited = Vec::new();
        for _ in 0..8 {
            visited.clear();
            let mut queue = VecDeque::from([start]);
            level[start] = 0;
            visited.push(start);
            let mut last = 0;
            while let Some(v) = queue.pop_front() {
                last = level[v];
                for &u in self.neighbours(v) {
                    if level[u as usize] == u32::MAX {
                        level[u as usize] = level[v] + 1;
                        visited.push(u as usize);
                        queue.push_back(u as usize);
                    }
                }
            }
            let far = visited
                .iter()
                .copied()
                .filter(|&v| level[v] == last)
                .min_by_key(|&v| (self.row_ptr[v + 1] - self.row_ptr[v], v))
                .unwrap_or(start);
            for &v in &visited {
                level[v] = u32::MAX;
            }
            if last <= depth {
                break;
            }
            depth = last;
            start = far;
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of `n` nodes numbered by a stride coprime to `n` (so neighbours are far apart in
    /// the numbering), plus the nodes' links in both directions.
    fn shuffled_ring(n: usize, stride: usize) -> CsrMatrix {
        let label = |i: usize| ((i * stride) % n) as u32;
        let mut rows = vec![Vec::new(); n];
        for i in 0..n {
            let (a, b) = (label(i), label((i + 1) % n));
            rows[a as usize].push(b);
            rows[b as usize].push(a);
        }
        let mut row_ptr = vec![0];
        let mut cols = Vec::new();
        for r in rows {
            cols.extend(r);
            row_ptr.push(cols.len());
        }
        let vals = (0..cols.len()).map(|p| 1.0 + p as f64 / 7.0).collect();
        CsrMatrix::new(n, row_ptr, cols, vals).unwrap()
    }

    #[test]
    fn a_shuffled_ring_comes_back_with_bandwidth_two() {
        let w = shuffled_ring(1000, 377);
        assert!(w.bandwidth() > 300, "{}", w.bandwidth());
        let order = w.locality_order();
        let p = w.permuted(&order).unwrap();
        // A ring walked breadth-first from one node: two fronts, each new node next to one
        // numbered at most two before it.
        assert!(p.bandwidth() <= 2, "{}", p.bandwidth());
        assert_eq!(p.nnz(), w.nnz());
    }

    #[test]
    fn every_component_and_isolated_node_is_numbered_once() {
        // Two paths (0-3, 1-4) and isolated nodes 2 and 5; one directed entry 6 -> 0.
        let w = CsrMatrix::new(
            7,
            vec![0, 1, 2, 2, 3, 4, 4, 5],
            vec![3, 4, 0, 1, 0],
            vec![1.0; 5],
        )
        .unwrap();
        let mut order = w.locality_order();
        order.sort();
        assert_eq!(order, (0..7).collect::<Vec<u32>>());
    }

    #[test]
    fn permuted_products_are_the_permuted_products_bit_for_bit() {
        use crate::sparse::spmm;
        use candle_core::{Device, Tensor};
        let w = shuffled_ring(300, 101);
        let order = w.locality_order();
        let p = w.permuted(&order).unwrap();
        let x = Tensor::randn(0f32, 1., (300, 40), &Device::Cpu).unwrap();
        let idx = Tensor::new(order.as_slice(), &Device::Cpu).unwrap();
        let want = spmm(&w, &x).unwrap().index_select(&idx, 0).unwrap();
        let got = spmm(&p, &x.index_select(&idx, 0).unwrap()).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

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

    #[test]
    fn orders_that_are_not_permutations_are_refused() {
        let w = shuffled_ring(4, 1);
        for bad in [&[0u32, 1, 2][..], &[0, 1, 2, 4], &[0, 1, 1, 3]] {
            let e = w.permuted(bad).unwrap_err();
            assert!(
                matches!(SparseError::find(&e), Some(SparseError::InvalidCsr(_))),
                "{e}"
            );
        }
    }
}
