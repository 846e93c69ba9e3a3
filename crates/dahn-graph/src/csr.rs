//! Compressed sparse row matrices with f64 host values, and the one differentiable sparse product.
//!
//! A [`Csr`] holds a graph's weights exactly once, on the host, whatever the tensors' dtype and
//! device. [`Csr::matmul`] multiplies it with a dense tensor using only differentiable candle ops
//! (`index_select` of the neighbour rows, a weighted `index_add`), so gradients flow to the dense
//! operand while the graph stays a constant. Cost O(nnz * d) time and memory per product.

use crate::{check, top_k_into, GraphError};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::Mutex;

/// How duplicate (row, column) entries are merged when a [`Csr`] is built from triplets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Keep the largest value (difflayers' `max(M, M^T)` symmetrisation).
    Max,
    /// Add the values.
    Sum,
}

/// Index/value tensors of a [`Csr`] for one dtype and device, built on first use.
#[derive(Debug, Clone)]
struct SpmmTensors {
    dtype: DType,
    device: Device,
    rows: Tensor,
    cols: Tensor,
    vals: Tensor,
}

/// A square N x N sparse matrix in CSR form; columns sorted within each row, no duplicates.
#[derive(Debug)]
pub struct Csr {
    n: usize,
    row_ptr: Vec<usize>,
    col_idx: Vec<u32>,
    values: Vec<f64>,
    tensors: Mutex<Option<SpmmTensors>>,
}

impl Clone for Csr {
    fn clone(&self) -> Self {
        Self::from_parts(
            self.n,
            self.row_ptr.clone(),
            self.col_idx.clone(),
            self.values.clone(),
        )
    }
}

impl PartialEq for Csr {
    fn eq(&self, o: &Self) -> bool {
        self.n == o.n
            && self.row_ptr == o.row_ptr
            && self.col_idx == o.col_idx
            && self.values == o.values
    }
}

impl Csr {
    fn from_parts(n: usize, row_ptr: Vec<usize>, col_idx: Vec<u32>, values: Vec<f64>) -> Self {
        Self {
            n,
            row_ptr,
            col_idx,
            values,
            tensors: Mutex::new(None),
        }
    }

    /// Builds an N x N matrix from `(row, col, value)` triplets, merging duplicates with `merge`.
    ///
    /// ```
    /// use dahn_graph::{Csr, Merge};
    /// let a = Csr::from_triplets(3, vec![(0, 1, 0.5), (1, 0, 0.5), (0, 1, 0.7)], Merge::Max);
    /// assert_eq!(a.nnz(), 2);
    /// assert_eq!(a.get(0, 1), 0.7);
    /// ```
    pub fn from_triplets(n: usize, mut t: Vec<(u32, u32, f64)>, merge: Merge) -> Self {
        // Counting sort by row, then a per-row sort by column: O(nnz log(row length)).
        let mut row_ptr = vec![0usize; n + 1];
        for &(r, _, _) in &t {
            row_ptr[r as usize + 1] += 1;
        }
        for i in 0..n {
            row_ptr[i + 1] += row_ptr[i];
        }
        let mut next = row_ptr.clone();
        let mut sorted = vec![(0u32, 0f64); t.len()];
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
        let mut row_ptr = Vec::with_capacity(n + 1);
        row_ptr.push(0);
        let nnz: usize = rows.iter().map(Vec::len).sum();
        let mut col_idx = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        for row in rows {
            for (c, v) in row {
                col_idx.push(c);
                values.push(v);
            }
            row_ptr.push(col_idx.len());
        }
        Self::from_parts(n, row_ptr, col_idx, values)
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
        let n = check::square(a, "Csr::from_dense")?;
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
        Ok(Self::from_triplets(n, t, Merge::Sum))
    }

    /// Number of rows (= columns).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// All stored values, row by row.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Columns and values of row `i`.
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let r = self.row_ptr[i]..self.row_ptr[i + 1];
        (&self.col_idx[r.clone()], &self.values[r])
    }

    /// Entry (i, j), 0 if absent.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (c, v) = self.row(i);
        c.binary_search(&(j as u32)).map(|p| v[p]).unwrap_or(0.0)
    }

    /// Row sums (the degrees `A 1`).
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.row(i).1.iter().sum()).collect()
    }

    /// The diagonal.
    pub fn diagonal(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.get(i, i)).collect()
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut t = Vec::with_capacity(self.nnz());
        for i in 0..self.n {
            let (c, v) = self.row(i);
            t.extend(c.iter().zip(v).map(|(&j, &x)| (j, i as u32, x)));
        }
        Self::from_triplets(self.n, t, Merge::Sum)
    }

    /// Whether the matrix equals its transpose exactly.
    pub fn is_symmetric(&self) -> bool {
        (0..self.n).all(|i| {
            let (c, v) = self.row(i);
            c.iter().zip(v).all(|(&j, &x)| self.get(j as usize, i) == x)
        })
    }

    /// The dense (N, N) matrix in `dtype` on `device` (O(N^2) memory: small graphs only).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut d = vec![0f64; self.n * self.n];
        for i in 0..self.n {
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                d[i * self.n + j as usize] = x;
            }
        }
        Tensor::from_vec(d, (self.n, self.n), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// Row sums as an (N,) tensor.
    pub fn degrees(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.row_sums(), self.n, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// `L = diag(A 1) - A` (`normalized == false`) or `D^-1/2 (D - A) D^-1/2` with `D^-1/2 = 0`
    /// for zero-degree nodes (their row and column are all zero), as a sparse matrix. Same values
    /// as [`crate::laplacian`] / [`crate::normalized_laplacian`] on the dense matrix.
    pub fn laplacian(&self, normalized: bool) -> Self {
        let d = self.row_sums();
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
        let mut t = Vec::with_capacity(self.nnz() + self.n);
        for i in 0..self.n {
            let diag = d[i] * r[i] * r[i];
            if diag != 0.0 {
                t.push((i as u32, i as u32, diag));
            }
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                t.push((i as u32, j, -r[i] * x * r[j as usize]));
            }
        }
        Self::from_triplets(self.n, t, Merge::Sum)
    }

    /// Per row, the `k` columns of largest weight in descending order (ties: lower column first),
    /// as an (N, k) `U32` tensor: difflayers' `adj_indices = topk(W, k)`. A row with fewer than `k`
    /// stored entries is padded with its own index (the node attends to itself), where difflayers
    /// picks arbitrary zero-weight nodes (bug B12/D19).
    pub fn neighbour_table(&self, k: usize, device: &Device) -> Result<Tensor> {
        let rows: Vec<Vec<u32>> = (0..self.n)
            .into_par_iter()
            .map(|i| {
                let (c, v) = self.row(i);
                let mut sel = Vec::with_capacity(k);
                top_k_into(v, k, None, &mut sel);
                let mut out: Vec<u32> = sel.iter().map(|&(p, _)| c[p]).collect();
                out.resize(k, i as u32);
                out
            })
            .collect();
        Tensor::from_vec(rows.concat(), (self.n, k), &Device::Cpu)?.to_device(device)
    }

    fn spmm_tensors(&self, dtype: DType, device: &Device) -> Result<SpmmTensors> {
        let mut guard = self.tensors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = guard.as_ref() {
            if t.dtype == dtype && t.device.same_device(device) {
                return Ok(t.clone());
            }
        }
        let mut rows = Vec::with_capacity(self.nnz());
        for i in 0..self.n {
            rows.extend(std::iter::repeat_n(
                i as u32,
                self.row_ptr[i + 1] - self.row_ptr[i],
            ));
        }
        let nnz = self.nnz();
        let t = SpmmTensors {
            dtype,
            device: device.clone(),
            rows: Tensor::from_vec(rows, nnz, device)?,
            cols: Tensor::from_vec(self.col_idx.clone(), nnz, device)?,
            vals: Tensor::from_vec(self.values.clone(), (nnz, 1), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        };
        *guard = Some(t.clone());
        Ok(t)
    }

    /// `A x` for `x` of shape (N, m) or (N, B, d) (the batch columns share the matrix), in `x`'s
    /// dtype. Differentiable w.r.t. `x`; the matrix is a constant.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::{Csr, Merge};
    /// let a = Csr::from_triplets(2, vec![(0, 1, 2.0), (1, 1, 1.0)], Merge::Sum);
    /// let x = Tensor::new(&[[1f64, 0.], [3., 4.]], &Device::Cpu)?;
    /// assert_eq!(a.matmul(&x)?.to_vec2::<f64>()?, vec![vec![6., 8.], vec![3., 4.]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if !(dims.len() == 2 || dims.len() == 3) || dims[0] != self.n {
            return Err(GraphError::ShapeMismatch(format!(
                "sparse matmul: matrix is {n} x {n}, operand has shape {dims:?} (expected ({n}, d) or ({n}, B, d))",
                n = self.n
            ))
            .into());
        }
        let m: usize = dims[1..].iter().product();
        let x2 = x.reshape((self.n, m))?.contiguous()?;
        let out = if self.nnz() == 0 || m == 0 {
            x2.zeros_like()?
        } else if x2.device().is_cpu() && matches!(x2.dtype(), DType::F32 | DType::F64) {
            // CPU: a direct CSR kernel (rayon over rows), O(nnz m) with no gathered copy.
            x2.apply_op1(SpmmOp::new(self))?
        } else {
            // Other devices/dtypes: the same product from differentiable gather/scatter ops.
            let t = self.spmm_tensors(x.dtype(), x.device())?;
            let gathered = x2.index_select(&t.cols, 0)?.broadcast_mul(&t.vals)?;
            x2.zeros_like()?.index_add(&t.rows, &gathered, 0)?
        };
        out.reshape(dims)
    }
}

/// `A x` as a candle CustomOp on CPU; its backward is the product with `A^T`.
struct SpmmOp {
    n: usize,
    row_ptr: Arc<Vec<usize>>,
    col_idx: Arc<Vec<u32>>,
    values: Arc<Vec<f64>>,
}

impl SpmmOp {
    fn new(a: &Csr) -> Self {
        Self {
            n: a.n,
            row_ptr: Arc::new(a.row_ptr.clone()),
            col_idx: Arc::new(a.col_idx.clone()),
            values: Arc::new(a.values.clone()),
        }
    }

    fn run<T: WithDType>(&self, x: &[T], m: usize) -> Vec<T> {
        let mut out = vec![T::zero(); self.n * m];
        out.par_chunks_mut(m.max(1)).enumerate().for_each(|(i, o)| {
            for p in self.row_ptr[i]..self.row_ptr[i + 1] {
                let w = T::from_f64(self.values[p]);
                let xr = &x[self.col_idx[p] as usize * m..][..m];
                for (a, &b) in o.iter_mut().zip(xr) {
                    *a += w * b;
                }
            }
        });
        out
    }
}

impl CustomOp1 for SpmmOp {
    fn name(&self) -> &'static str {
        "csr-spmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("csr-spmm: non-contiguous input".into()))?;
        let m = l.dims()[1];
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end], m)),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(&v[start..end], m)),
            _ => return Err(candle_core::Error::Msg("csr-spmm: f32/f64 only".into())),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let t = Csr::from_parts(
            self.n,
            (*self.row_ptr).clone(),
            (*self.col_idx).clone(),
            (*self.values).clone(),
        )
        .transpose();
        Ok(Some(grad_res.contiguous()?.apply_op1(SpmmOp::new(&t))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

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
        let t = a.transpose();
        assert_eq!(t.get(2, 0), 1.0);
        assert_eq!(t.transpose(), a);
        let m = Csr::from_triplets(2, vec![(0, 1, 1.0), (0, 1, 3.0)], Merge::Max);
        assert_eq!(m.get(0, 1), 3.0);
        let s = Csr::from_triplets(2, vec![(0, 1, 1.0), (0, 1, 3.0)], Merge::Sum);
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
}
