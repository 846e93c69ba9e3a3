//! Compressed sparse row matrices with f64 host values, and the one differentiable sparse product.
//!
//! A [`Csr`] holds a graph's weights exactly once, on the host, whatever the tensors' dtype and
//! device, in a shared `hopfield_cuda::sparse::CsrMatrix`. [`Csr::matmul`] multiplies it with a
//! dense tensor through `hopfield_cuda::sparse::spmm` (fused on the CPU and CUDA, composed
//! elsewhere), so gradients flow to the dense operand while the graph stays a constant. Cost
//! O(nnz * d) time per product; the transpose for backward passes is built once.

use crate::prefetch::prefetch;
use crate::{check, top_k_into, GraphError};
use candle_core::{DType, Device, Result, Tensor};
use hopfield_cuda::sparse::CsrMatrix;
use rayon::prelude::*;

/// Rows per parallel task of the transposed lookups ([`Csr::is_symmetric`], [`Csr::asymmetry`]).
const TRANSPOSED_ROWS: usize = 4096;

/// How duplicate (row, column) entries are merged when a [`Csr`] is built from triplets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Keep the largest value (difflayers' `max(M, M^T)` symmetrisation).
    Max,
    /// Add the values.
    Sum,
}

/// A square N x N sparse matrix in CSR form; columns sorted within each row, no duplicates.
///
/// The arrays live once in a shared [`CsrMatrix`] (cloning a `Csr` is an `Arc` clone; products
/// read the arrays in place and every backward pass reuses one cached transpose).
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    mat: CsrMatrix,
}

impl Csr {
    fn from_parts(n: usize, row_ptr: Vec<usize>, col_idx: Vec<u32>, values: Vec<f64>) -> Self {
        match CsrMatrix::new(n, row_ptr, col_idx, values) {
            Ok(mat) => Self { mat },
            // Only `assemble` calls this, with arrays it built to the format.
            Err(e) => unreachable!("Csr arrays broke the CSR format: {e}"),
        }
    }

    /// The shared matrix the sparse kernels of `hopfield_cuda::sparse` read.
    ///
    /// ```
    /// use dahn_graph::{Csr, Merge};
    /// let a = Csr::from_triplets(2, vec![(0, 1, 2.0)], Merge::Sum)?;
    /// assert_eq!(a.sparse().nnz(), 1);
    /// assert!(a.clone().sparse().shares_storage(a.sparse()));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn sparse(&self) -> &CsrMatrix {
        &self.mat
    }

    /// Builds an N x N matrix from `(row, col, value)` triplets, merging duplicates with `merge`.
    ///
    /// Errors (typed, [`GraphError`]): a row or column `>= n` ([`GraphError::IndexOutOfRange`],
    /// naming the triplet), a NaN/infinite value ([`GraphError::NonFinite`]), duplicates whose
    /// [`Merge::Sum`] overflows ([`GraphError::Overflow`]), `n > u32::MAX` or memory that cannot
    /// be had ([`GraphError::TooLarge`]).
    ///
    /// ```
    /// use dahn_graph::{Csr, GraphError, Merge};
    /// let a = Csr::from_triplets(3, vec![(0, 1, 0.5), (1, 0, 0.5), (0, 1, 0.7)], Merge::Max)?;
    /// assert_eq!(a.nnz(), 2);
    /// assert_eq!(a.get(0, 1), 0.7);
    /// let e = Csr::from_triplets(3, vec![(0, 3, 1.0)], Merge::Sum).unwrap_err();
    /// assert!(matches!(GraphError::find(&e), Some(GraphError::IndexOutOfRange { index: 3, bound: 3, .. })));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_triplets(n: usize, t: Vec<(u32, u32, f64)>, merge: Merge) -> Result<Self> {
        check::node_count("Csr::from_triplets: n", n)?;
        for (p, &(r, c, v)) in t.iter().enumerate() {
            for (name, idx) in [("row", r), ("col", c)] {
                if idx as usize >= n {
                    return Err(GraphError::IndexOutOfRange {
                        what: format!("Csr::from_triplets: triplets[{p}].{name}"),
                        index: idx.into(),
                        bound: n as u64,
                    }
                    .into());
                }
            }
            if !v.is_finite() {
                return Err(GraphError::NonFinite {
                    what: "Csr::from_triplets: triplet values",
                }
                .into());
            }
        }
        let a = Self::assemble(n, t, merge)?;
        if let Some(p) = a.values().iter().position(|v| !v.is_finite()) {
            let row = a.mat.row_ptr().partition_point(|&q| q <= p) - 1;
            return Err(GraphError::Overflow {
                what: "Csr::from_triplets",
                detail: format!(
                    "merged duplicates of entry ({row}, {}) sum to {}",
                    a.mat.col_idx()[p],
                    a.values()[p]
                ),
            }
            .into());
        }
        Ok(a)
    }

    /// [`Self::from_triplets`] for triplets known to be in range (built inside the crate); only
    /// allocation can fail.
    fn assemble(n: usize, mut t: Vec<(u32, u32, f64)>, merge: Merge) -> Result<Self> {
        debug_assert!(t.iter().all(|e| (e.0 as usize) < n && (e.1 as usize) < n));
        // Counting sort by row, then a per-row sort by column: O(nnz log(row length)).
        let mut row_ptr = check::try_vec("Csr: row pointers", n + 1, 0usize)?;
        for &(r, _, _) in &t {
            row_ptr[r as usize + 1] += 1;
        }
        for i in 0..n {
            row_ptr[i + 1] += row_ptr[i];
        }
        let mut next = row_ptr.clone();
        let mut sorted = check::try_vec("Csr: entries", t.len(), (0u32, 0f64))?;
        for (r, c, v) in t.drain(..) {
            let p = &mut next[r as usize];
            sorted[*p] = (c, v);
            *p += 1;
        }
        let rows: Vec<Vec<(u32, f64)>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut row = sorted[row_ptr[i]..row_ptr[i + 1]].to_vec();
                row.sort_by_key(|e| e.0);
                let mut out: Vec<(u32, f64)> = Vec::with_capacity(row.len());
                for (c, v) in row {
                    match out.last_mut() {
                        Some(last) if last.0 == c => {
                            last.1 = match merge {
                                Merge::Max => last.1.max(v),
                                Merge::Sum => last.1 + v,
                            }
                        }
                        _ => out.push((c, v)),
                    }
                }
                out
            })
            .collect();
        let mut row_ptr = check::try_with_capacity("Csr: row pointers", n + 1)?;
        row_ptr.push(0);
        let nnz: usize = rows.iter().map(Vec::len).sum();
        let mut col_idx = check::try_with_capacity("Csr: column indices", nnz)?;
        let mut values = check::try_with_capacity("Csr: values", nnz)?;
        for row in rows {
            for (c, v) in row {
                col_idx.push(c);
                values.push(v);
            }
            row_ptr.push(col_idx.len());
        }
        Ok(Self::from_parts(n, row_ptr, col_idx, values))
    }

    /// The non-zero entries of a dense square matrix (e.g. a difflayers `sparse_coo` adjacency
    /// stored dense). Errors if `a` is not (N, N) or holds NaN/inf.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let a = Tensor::new(&[[0f64, 2.], [2., 0.]], &Device::Cpu)?;
    /// let csr = dahn_graph::Csr::from_dense(&a)?;
    /// assert_eq!(csr.nnz(), 2);
    /// assert_eq!(csr.to_dense(a.dtype(), a.device())?.to_vec2::<f64>()?, a.to_vec2::<f64>()?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_dense(a: &Tensor) -> Result<Self> {
        let n = check::square("Csr::from_dense", a)?;
        let host = check::host_f64(a)?;
        let mut t = Vec::new();
        for i in 0..n {
            for j in 0..n {
                let v = host[i * n + j];
                if v != 0.0 {
                    t.push((i as u32, j as u32, v));
                }
            }
        }
        Self::assemble(n, t, Merge::Sum)
    }

    /// Number of rows (= columns).
    pub fn n(&self) -> usize {
        self.mat.n()
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.mat.nnz()
    }

    /// All stored values, row by row.
    pub fn values(&self) -> &[f64] {
        self.mat.values()
    }

    /// Columns and values of row `i`; a row `i >= n` (outside the matrix) is empty.
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        self.mat.row(i)
    }

    /// Entry (i, j), 0 if absent or outside the matrix.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        // Out-of-range j must not be truncated to u32 and alias a column inside the matrix.
        let Ok(j) = u32::try_from(j) else { return 0.0 };
        let (c, v) = self.row(i);
        c.binary_search(&j).map(|p| v[p]).unwrap_or(0.0)
    }

    /// Row sums (the degrees `A 1`).
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.mat.n())
            .map(|i| self.row(i).1.iter().sum())
            .collect()
    }

    /// The diagonal.
    pub fn diagonal(&self) -> Vec<f64> {
        (0..self.mat.n()).map(|i| self.get(i, i)).collect()
    }

    /// The transpose: built on the first call (or the first backward pass through
    /// [`Self::matmul`]) and cached with the matrix, so later calls share it. Kept fallible for
    /// callers written against the building version.
    pub fn transpose(&self) -> Result<Self> {
        Ok(Self {
            mat: self.mat.transpose().clone(),
        })
    }

    /// A numbering of the nodes in which neighbours are close (`order[new] = old`; reverse
    /// Cuthill-McKee, see [`CsrMatrix::locality_order`]). Products with a graph whose nodes are
    /// numbered without regard to it (a shuffled dataset) gather rows from all over the operand
    /// and reach a sixth of the memory bandwidth; renumbered with [`Self::permuted`], with the
    /// patterns reordered to match, they read neighbours from nearby memory (2-3x faster on a
    /// 10^5-node graph, `docs/dahn-performance.md`).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::{Csr, Merge};
    /// // A path 0 - 2 - 1 - 3 with both directions stored.
    /// let t = [(0, 2), (2, 1), (1, 3)].iter().flat_map(|&(a, b)| [(a, b, 1.0), (b, a, 1.0)]);
    /// let w = Csr::from_triplets(4, t.collect(), Merge::Sum)?;
    /// let order = w.locality_order();
    /// let p = w.permuted(&order)?;
    /// // The same product, rows renumbered: (P W P^T)(P x) = P (W x).
    /// let x = Tensor::new(&[[1f64], [2.], [3.], [4.]], &Device::Cpu)?;
    /// let idx = Tensor::new(order.as_slice(), &Device::Cpu)?;
    /// let want = w.matmul(&x)?.index_select(&idx, 0)?;
    /// let got = p.matmul(&x.index_select(&idx, 0)?)?;
    /// assert_eq!(got.to_vec2::<f64>()?, want.to_vec2::<f64>()?);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn locality_order(&self) -> Vec<u32> {
        self.mat.locality_order()
    }

    /// The matrix renumbered by `order` (`order[new] = old`, a permutation of `0..N`):
    /// `P W P^T`, rows kept with sorted columns. Errors: `order` not a permutation of `0..N`
    /// (`hopfield_cuda::sparse::SparseError::InvalidCsr`, naming the entry).
    pub fn permuted(&self, order: &[u32]) -> Result<Self> {
        let p = self.mat.permuted(order)?;
        let (n, rp) = (p.n(), p.row_ptr());
        let mut entries: Vec<(u32, f64)> = p
            .col_idx()
            .iter()
            .copied()
            .zip(p.values().iter().copied())
            .collect();
        for i in 0..n {
            entries[rp[i]..rp[i + 1]].sort_unstable_by_key(|e| e.0);
        }
        let (cols, vals) = entries.into_iter().unzip();
        Ok(Self::from_parts(n, rp.to_vec(), cols, vals))
    }

    /// Whether the matrix equals its transpose exactly.
    pub fn is_symmetric(&self) -> bool {
        (0..self.mat.n())
            .into_par_iter()
            .step_by(TRANSPOSED_ROWS)
            .all(|r| {
                let rows = r..(r + TRANSPOSED_ROWS).min(self.mat.n());
                self.with_transposed(rows, |_, _, x, y| x == y)
            })
    }

    /// `f(i, j, A_ij, A_ji)` for each stored entry of `rows`, in order, while `f` returns true
    /// (false if it stopped). Each entry looks up its transpose in another row, a cache miss
    /// or three apiece on large graphs (10^6 nodes, 10^7 entries: ~1.3 s on one core), so the
    /// rows those lookups will read are prefetched: their pointers two stages ahead, then their
    /// columns and values.
    fn with_transposed(
        &self,
        rows: std::ops::Range<usize>,
        mut f: impl FnMut(usize, usize, f64, f64) -> bool,
    ) -> bool {
        const AHEAD: usize = 8;
        let (rp, ci, v) = (self.mat.row_ptr(), self.mat.col_idx(), self.mat.values());
        for i in rows {
            for p in rp[i]..rp[i + 1] {
                if let Some(&j) = ci.get(p + 2 * AHEAD) {
                    prefetch(&rp[j as usize]);
                }
                if let Some(&j) = ci.get(p + AHEAD) {
                    let start = rp[j as usize];
                    if start < ci.len() {
                        prefetch(&ci[start]);
                        prefetch(&v[start]);
                    }
                }
                let j = ci[p] as usize;
                if !f(i, j, v[p], self.get(j, i)) {
                    return false;
                }
            }
        }
        true
    }

    /// The pair (i, j) whose entries differ most from their transposes, as
    /// `(i, j, A_ij, A_ji)`; `None` when the matrix is exactly symmetric. Diffusion operators
    /// compare the difference with a rounding tolerance (a Laplacian normalised in floating point
    /// is symmetric only up to rounding).
    pub fn asymmetry(&self) -> Option<(usize, usize, f64, f64)> {
        type Pair = Option<(usize, usize, f64, f64)>;
        let defect = |w: &(usize, usize, f64, f64)| (w.2 - w.3).abs();
        // The first pair of largest defect in row-major order, as a sequential scan finds it:
        // each block's first largest, then the earlier of two equal blocks' (a later one
        // replaces only if strictly larger). Blocks of rows in parallel.
        let worst_of = |r: usize| -> Pair {
            let mut worst: Pair = None;
            let rows = r..(r + TRANSPOSED_ROWS).min(self.mat.n());
            self.with_transposed(rows, |i, j, x, y| {
                if x != y && worst.is_none_or(|w| (x - y).abs() > defect(&w)) {
                    worst = Some((i, j, x, y));
                }
                true
            });
            worst
        };
        (0..self.mat.n())
            .into_par_iter()
            .step_by(TRANSPOSED_ROWS)
            .map(worst_of)
            .reduce(
                || None,
                |a, b| match (a, b) {
                    (Some(a), Some(b)) if defect(&b) > defect(&a) => Some(b),
                    (None, b) => b,
                    (a, _) => a,
                },
            )
    }

    /// The largest absolute stored value (0 for an empty matrix).
    pub fn max_abs(&self) -> f64 {
        self.mat.values().iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    /// The dense (N, N) matrix in `dtype` on `device` (O(N^2) memory: small graphs only). Errors
    /// with [`GraphError::TooLarge`] when N x N cannot be allocated, instead of aborting.
    pub fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let what = "Csr::to_dense";
        let elems = check::checked_elems(what, &[self.mat.n(), self.mat.n()], 8)?;
        check::can_allocate(what, &[self.mat.n(), self.mat.n()], dtype)?;
        let mut d = check::try_vec(what, elems, 0f64)?;
        for i in 0..self.mat.n() {
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                d[i * self.mat.n() + j as usize] = x;
            }
        }
        Tensor::from_vec(d, (self.mat.n(), self.mat.n()), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// Row sums as an (N,) tensor.
    pub fn degrees(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.row_sums(), self.mat.n(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// `L = diag(A 1) - A` (`normalized == false`) or `D^-1/2 (D - A) D^-1/2` with `D^-1/2 = 0`
    /// for zero-degree nodes (their row and column are all zero), as a sparse matrix. Same values
    /// as [`crate::laplacian`] / [`crate::normalized_laplacian`] on the dense matrix.
    ///
    /// The normalised Laplacian is scale-invariant and is computed on rescaled weights when a
    /// degree would overflow f64, so it is finite for non-negative weights. An unnormalised
    /// degree beyond f64 is not representable (nor is `D^-1/2` of a tiny positive degree left by
    /// weights of mixed sign): it is stored as an infinity (the diffusion operators reject such a
    /// matrix), and [`Self::try_laplacian`] reports it as [`GraphError::Overflow`]. Memory: at most
    /// nnz + N entries; like a `Vec`, this aborts if they cannot be allocated (`try_laplacian`
    /// returns [`GraphError::TooLarge`] instead).
    pub fn laplacian(&self, normalized: bool) -> Self {
        match self.laplacian_inner(normalized) {
            Ok(l) => l,
            // Only allocation can fail: the same outcome as an infallible `Vec` allocation.
            Err(e) => {
                eprintln!("{e}");
                std::process::abort()
            }
        }
    }

    /// [`Self::laplacian`], with entries that overflow f64 as a typed [`GraphError::Overflow`]
    /// naming the row.
    ///
    /// ```
    /// use dahn_graph::{Csr, GraphError, Merge};
    /// let a = Csr::from_triplets(2, vec![(0, 1, f64::MAX), (0, 0, f64::MAX)], Merge::Sum)?;
    /// let e = a.try_laplacian(false).unwrap_err();
    /// assert!(matches!(GraphError::find(&e), Some(GraphError::Overflow { .. })));
    /// assert!(a.try_laplacian(true)?.values().iter().all(|v| v.is_finite()));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn try_laplacian(&self, normalized: bool) -> Result<Self> {
        let l = self.laplacian_inner(normalized)?;
        if let Some(p) = l.values().iter().position(|v| !v.is_finite()) {
            let i = l.mat.row_ptr().partition_point(|&q| q <= p) - 1;
            return Err(GraphError::Overflow {
                what: "Csr::laplacian",
                detail: format!(
                    "row {i} overflows f64 (degree {}, the row sum of the adjacency; weights of mixed sign can leave a tiny positive degree whose D^-1/2 overflows)",
                    self.row_sums()[i]
                ),
            }
            .into());
        }
        Ok(l)
    }

    fn laplacian_inner(&self, normalized: bool) -> Result<Self> {
        let mut d = self.row_sums();
        // D^-1/2 A D^-1/2 is invariant under A -> s A: with a power of two s that keeps every row
        // sum finite the entries are the same (up to underflow of weights ~2^-1000 below the max).
        let mut scale = (1.0, 1.0);
        if normalized && d.iter().any(|x| !x.is_finite()) {
            let longest = (0..self.mat.n())
                .map(|i| self.mat.row_ptr()[i + 1] - self.mat.row_ptr()[i])
                .max()
                .unwrap_or(1)
                .max(1);
            let (s1, s2) = check::pow2_halves(self.max_abs().log2() + (longest as f64).log2());
            scale = (s1, s2);
            d = (0..self.mat.n())
                .map(|i| self.row(i).1.iter().map(|v| v * s1 * s2).sum())
                .collect();
        }
        let r: Vec<f64> = d
            .iter()
            .map(|&x| {
                if normalized && x > 0.0 {
                    x.powf(-0.5)
                } else if normalized {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let mut t = check::try_with_capacity("Csr::laplacian", self.nnz() + self.mat.n())?;
        for i in 0..self.mat.n() {
            let diag = d[i] * r[i] * r[i];
            if diag != 0.0 {
                t.push((i as u32, i as u32, diag));
            }
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                let x = x * scale.0 * scale.1;
                t.push((i as u32, j, -r[i] * x * r[j as usize]));
            }
        }
        Self::assemble(self.mat.n(), t, Merge::Sum)
    }

    /// Per row, the `k` columns of largest weight in descending order (ties: lower column first),
    /// as an (N, k) `U32` tensor: difflayers' `adj_indices = topk(W, k)`. A row with fewer than `k`
    /// stored entries is padded with its own index (the node attends to itself), where difflayers
    /// picks arbitrary zero-weight nodes (bug B12/D19). `k = 0` gives an (N, 0) table; a `k`
    /// whose (N, k) table cannot be allocated is [`GraphError::TooLarge`] (not an abort).
    pub fn neighbour_table(&self, k: usize, device: &Device) -> Result<Tensor> {
        let what = "Csr::neighbour_table";
        let elems = check::checked_elems(what, &[self.mat.n(), k], 4)?;
        let mut table = check::try_vec(what, elems, 0u32)?;
        if k > 0 {
            table.par_chunks_mut(k).enumerate().for_each(|(i, out)| {
                let (c, v) = self.row(i);
                // At most the row's length is selected, whatever k is.
                let mut sel = Vec::with_capacity(k.min(v.len()));
                top_k_into(v, k, None, &mut sel);
                for (o, &(p, _)) in out.iter_mut().zip(&sel) {
                    *o = c[p];
                }
                out[sel.len()..].fill(i as u32);
            });
        }
        Tensor::from_vec(table, (self.mat.n(), k), &Device::Cpu)?.to_device(device)
    }

    /// `A x` for `x` of shape (N, m) or (N, B, d) (the batch columns share the matrix), in `x`'s
    /// dtype. Differentiable w.r.t. `x`; the matrix is a constant.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::{Csr, Merge};
    /// let a = Csr::from_triplets(2, vec![(0, 1, 2.0), (1, 1, 1.0)], Merge::Sum)?;
    /// let x = Tensor::new(&[[1f64, 0.], [3., 4.]], &Device::Cpu)?;
    /// assert_eq!(a.matmul(&x)?.to_vec2::<f64>()?, vec![vec![6., 8.], vec![3., 4.]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    ///
    /// Errors (typed): `x` of the wrong shape or an integer dtype, and a product that is not
    /// finite (NaN/inf in `x`: [`GraphError::NonFinite`]; finite `x` whose product overflows the
    /// dtype: [`GraphError::Overflow`]). One finiteness reduction over the result per call.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if !(dims.len() == 2 || dims.len() == 3) || dims[0] != self.mat.n() {
            return Err(GraphError::ShapeMismatch(format!(
                "sparse matmul: matrix is {n} x {n}, operand has shape {dims:?} (expected ({n}, d) or ({n}, B, d))",
                n = self.mat.n()
            ))
            .into());
        }
        check::float_dtype("sparse matmul: operand", x)?;
        // The shared kernel reads the arrays in place (no per-call copy) and differentiates
        // through the matrix's cached transpose.
        let out = hopfield_cuda::sparse::spmm(&self.mat, x)?;
        check::finite_product("sparse matmul: operand", &out, x)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn permuted_keeps_columns_sorted_and_the_entries() {
        // A shuffled ring of 50 nodes, both directions stored.
        let n = 50u32;
        let label = |i: u32| (i * 17) % n;
        let t: Vec<_> = (0..n)
            .flat_map(|i| {
                let (a, b) = (label(i), label((i + 1) % n));
                [(a, b, 1.0 + i as f64), (b, a, 1.0 + i as f64)]
            })
            .collect();
        let w = Csr::from_triplets(n as usize, t, Merge::Sum).unwrap();
        let order = w.locality_order();
        let p = w.permuted(&order).unwrap();
        let mut inverse = vec![0u32; n as usize];
        for (new, &old) in order.iter().enumerate() {
            inverse[old as usize] = new as u32;
        }
        for i in 0..n as usize {
            let (c, v) = p.row(i);
            assert!(c.windows(2).all(|w| w[0] < w[1]), "row {i}: {c:?}");
            let (oc, ov) = w.row(order[i] as usize);
            let mut want: Vec<(u32, f64)> = oc
                .iter()
                .map(|&j| inverse[j as usize])
                .zip(ov.iter().copied())
                .collect();
            want.sort_by_key(|e| e.0);
            assert_eq!(
                c.iter().copied().zip(v.iter().copied()).collect::<Vec<_>>(),
                want
            );
        }
        assert!(p.sparse().bandwidth() <= 2 && w.sparse().bandwidth() > 10);
        assert!(w.permuted(&order[1..]).is_err());
    }

    fn sample() -> Csr {
        Csr::from_triplets(
            4,
            vec![
                (0, 1, 0.5),
                (1, 0, 0.5),
                (1, 2, 0.25),
                (2, 1, 0.25),
                (3, 3, 2.0),
                (0, 2, 1.0),
            ],
            Merge::Sum,
        )
        .unwrap()
    }

    #[test]
    fn matmul_equals_dense_forward_and_backward() -> Result<()> {
        let a = sample();
        let dev = Device::Cpu;
        let dense = a.to_dense(DType::F64, &dev)?;
        let x = Var::new(&[[1f64, -2.0], [0.5, 3.0], [2.0, 1.0], [-1.0, 0.25]], &dev)?;
        let c = Tensor::new(&[[0.3f64, -1.0], [2.0, 0.5], [1.0, 1.5], [-0.7, 0.2]], &dev)?;
        let ys = a.matmul(x.as_tensor())?;
        let yd = dense.matmul(x.as_tensor())?;
        assert_eq!(ys.to_vec2::<f64>()?, yd.to_vec2::<f64>()?);
        let gs = (ys * &c)?.sum_all()?.backward()?;
        let gd = (yd * &c)?.sum_all()?.backward()?;
        let gs = gs.get(x.as_tensor()).unwrap().to_vec2::<f64>()?;
        let gd = gd.get(x.as_tensor()).unwrap().to_vec2::<f64>()?;
        for (a, b) in gs.iter().flatten().zip(gd.iter().flatten()) {
            assert!((a - b).abs() < 1e-15);
        }
        Ok(())
    }

    #[test]
    fn matmul_3d_shares_the_matrix_across_batch_columns() -> Result<()> {
        let a = sample();
        let x = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((4, 3, 2))?;
        let y = a.matmul(&x)?;
        for b in 0..3 {
            let xb = x.narrow(1, b, 1)?.squeeze(1)?;
            let yb = y.narrow(1, b, 1)?.squeeze(1)?;
            assert_eq!(yb.to_vec2::<f32>()?, a.matmul(&xb)?.to_vec2::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn matmul_shape_mismatch_is_typed() -> Result<()> {
        let e = sample()
            .matmul(&Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?)
            .unwrap_err();
        assert!(matches!(
            GraphError::find(&e),
            Some(GraphError::ShapeMismatch(_))
        ));
        Ok(())
    }

    #[test]
    fn transpose_symmetry_and_merge() {
        let a = sample();
        assert!(!a.is_symmetric());
        let t = a.transpose().unwrap();
        assert_eq!(t.get(2, 0), 1.0);
        assert_eq!(t.transpose().unwrap(), a);
        let m = Csr::from_triplets(2, vec![(0, 1, 1.0), (0, 1, 3.0)], Merge::Max).unwrap();
        assert_eq!(m.get(0, 1), 3.0);
        let s = Csr::from_triplets(2, vec![(0, 1, 1.0), (0, 1, 3.0)], Merge::Sum).unwrap();
        assert_eq!(s.get(0, 1), 4.0);
    }

    #[test]
    fn neighbour_table_pads_with_self() -> Result<()> {
        let t = sample()
            .neighbour_table(2, &Device::Cpu)?
            .to_vec2::<u32>()?;
        assert_eq!(t, vec![vec![2, 1], vec![0, 2], vec![1, 2], vec![3, 3]]);
        Ok(())
    }

    /// A symmetric ring of `n` nodes plus the one-directional entries `extra` (their
    /// transposes absent: each is one asymmetric pair, seen from its own row only).
    fn ring_with(n: u32, extra: &[(u32, u32, f64)]) -> Csr {
        let mut t: Vec<_> = (0..n)
            .flat_map(|i| {
                let j = (i + 1) % n;
                [(i, j, 1.0), (j, i, 1.0)]
            })
            .collect();
        t.extend_from_slice(extra);
        Csr::from_triplets(n as usize, t, Merge::Sum).unwrap()
    }

    /// The transposed lookups run in blocks of rows on several threads; the result is still
    /// the sequential scan's: the first pair (row-major) of largest defect, whichever block it
    /// lies in, and one asymmetric entry anywhere is found.
    #[test]
    fn symmetry_checks_across_row_blocks_match_a_sequential_scan() {
        let n = 5 * TRANSPOSED_ROWS as u32 + 7;
        let pair = |i: u32, j: u32, v: f64| Some((i as usize, j as usize, v, 0.0));
        assert!(ring_with(n, &[]).is_symmetric());
        assert_eq!(ring_with(n, &[]).asymmetry(), None);
        let last = ring_with(n, &[(n - 1, n - 3, 1.5)]);
        assert!(!last.is_symmetric());
        assert_eq!(last.asymmetry(), pair(n - 1, n - 3, 1.5));
        // Equal defects in three blocks: the earliest wins; a larger one later wins.
        let b = TRANSPOSED_ROWS as u32;
        let tied = [(b + 3, b + 9, 2.0), (3 * b, 3 * b + 9, 2.0), (10, 17, 2.0)];
        assert_eq!(ring_with(n, &tied).asymmetry(), pair(10, 17, 2.0));
        let mut larger = tied.to_vec();
        larger.push((4 * b + 1, 4 * b + 9, 3.5));
        assert_eq!(
            ring_with(n, &larger).asymmetry(),
            pair(4 * b + 1, 4 * b + 9, 3.5)
        );
        // Within a row too: two equal defects, the first in column order.
        let a = ring_with(n, &[(20, 25, 0.5), (20, 23, 0.5)]);
        assert_eq!(a.asymmetry(), pair(20, 23, 0.5));
    }
}
