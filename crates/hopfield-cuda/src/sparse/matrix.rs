//! [`CsrMatrix`]: the sparse matrix the kernels read, held once and shared.

use super::SparseError;
use candle_core::{DType, Device, DeviceLocation, Result, Tensor};
use std::sync::{Arc, Mutex, OnceLock};

/// A square N x N matrix in compressed sparse row form with f64 values, shared by reference.
///
/// Cloning is an `Arc` clone: the arrays are stored once however many ops, graphs and backward
/// passes hold the matrix. What the kernels derive from it is built on first use and cached with
/// it: the transpose (for backward passes), f32 values (so f32 products read 4-byte weights), and
/// per device and dtype the arrays the CUDA kernels and the composed fallback read.
///
/// ```
/// use hopfield_cuda::sparse::CsrMatrix;
/// // [[0, 2], [1, 0]]
/// let a = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 0], vec![2.0, 1.0])?;
/// assert_eq!(a.nnz(), 2);
/// let t = a.transpose();
/// assert_eq!(t.row(0), (&[1u32][..], &[1.0][..]));
/// assert!(a.transpose().shares_storage(t)); // built once
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct CsrMatrix {
    inner: Arc<Inner>,
}

struct Inner {
    n: usize,
    row_ptr: Vec<usize>,
    col_idx: Vec<u32>,
    values: Vec<f64>,
    values_f32: OnceLock<Vec<f32>>,
    transpose: OnceLock<CsrMatrix>,
    locality: OnceLock<Option<super::Locality>>,
    mean_distance: OnceLock<f64>,
    device: Mutex<Vec<DeviceArrays>>,
}

/// The matrix as tensors on one device, in one value dtype.
#[derive(Clone)]
pub(crate) struct DeviceArrays {
    location: DeviceLocation,
    dtype: DType,
    /// Row of each entry (nnz,), U32: the composed path's scatter index.
    pub rows: Tensor,
    /// Row pointers (N + 1,), U32 (the CUDA kernels' form; only built when nnz fits u32).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub row_ptr: Option<Tensor>,
    /// Column of each entry (nnz,), U32.
    pub cols: Tensor,
    /// Values (nnz, 1) in `dtype`.
    pub vals: Tensor,
}

impl std::fmt::Debug for CsrMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrMatrix")
            .field("n", &self.n())
            .field("nnz", &self.nnz())
            .field("transpose_cached", &self.transpose_is_cached())
            .finish()
    }
}

impl PartialEq for CsrMatrix {
    fn eq(&self, o: &Self) -> bool {
        self.shares_storage(o)
            || (self.inner.n == o.inner.n
                && self.inner.row_ptr == o.inner.row_ptr
                && self.inner.col_idx == o.inner.col_idx
                && self.inner.values == o.inner.values)
    }
}

impl CsrMatrix {
    /// From CSR arrays: `row_ptr` (N + 1 non-decreasing offsets from 0 to nnz), `col_idx` and
    /// `values` (nnz each, columns < N). Columns need not be sorted; duplicates are summed by the
    /// products. Values are not checked (a caller may store an infinity on purpose; products
    /// propagate it). Errors: [`SparseError::InvalidCsr`] naming the first broken invariant.
    ///
    /// ```
    /// use hopfield_cuda::sparse::{CsrMatrix, SparseError};
    /// let e = CsrMatrix::new(2, vec![0, 1, 1], vec![2], vec![1.0]).unwrap_err();
    /// assert!(matches!(SparseError::find(&e), Some(SparseError::InvalidCsr(_))));
    /// ```
    pub fn new(n: usize, row_ptr: Vec<usize>, col_idx: Vec<u32>, values: Vec<f64>) -> Result<Self> {
        let bad = |m: String| -> Result<Self> { Err(SparseError::InvalidCsr(m).into()) };
        // n + 1 without overflow: an absurd n is a length mismatch, not a panic.
        if n.checked_add(1) != Some(row_ptr.len()) {
            return bad(format!(
                "row_ptr has {} entries for n = {n} (needs n + 1)",
                row_ptr.len()
            ));
        }
        if row_ptr[0] != 0 || row_ptr[n] != col_idx.len() || col_idx.len() != values.len() {
            return bad(format!(
                "row_ptr runs from {} to {} but there are {} columns and {} values",
                row_ptr[0],
                row_ptr[n],
                col_idx.len(),
                values.len()
            ));
        }
        if let Some(i) = (0..n).find(|&i| row_ptr[i] > row_ptr[i + 1]) {
            return bad(format!("row_ptr decreases at row {i}"));
        }
        if let Some(p) = col_idx.iter().position(|&c| c as usize >= n) {
            return bad(format!(
                "col_idx[{p}] = {} is out of range for n = {n}",
                col_idx[p]
            ));
        }
        Ok(Self::from_valid(n, row_ptr, col_idx, values))
    }

    /// [`Self::new`] without the O(nnz) checks, for callers that built the arrays themselves.
    pub(crate) fn from_valid(
        n: usize,
        row_ptr: Vec<usize>,
        col_idx: Vec<u32>,
        values: Vec<f64>,
    ) -> Self {
        debug_assert_eq!(row_ptr.len(), n + 1);
        debug_assert_eq!(row_ptr[n], col_idx.len());
        Self {
            inner: Arc::new(Inner {
                n,
                row_ptr,
                col_idx,
                values,
                values_f32: OnceLock::new(),
                transpose: OnceLock::new(),
                locality: OnceLock::new(),
                mean_distance: OnceLock::new(),
                device: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Number of rows (= columns).
    pub fn n(&self) -> usize {
        self.inner.n
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.inner.col_idx.len()
    }

    /// Row offsets (N + 1).
    pub fn row_ptr(&self) -> &[usize] {
        &self.inner.row_ptr
    }

    /// Column of each stored entry, row by row.
    pub fn col_idx(&self) -> &[u32] {
        &self.inner.col_idx
    }

    /// Value of each stored entry, row by row.
    pub fn values(&self) -> &[f64] {
        &self.inner.values
    }

    /// Columns and values of row `i` (empty for `i >= n`).
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        if i >= self.n() {
            return (&[], &[]);
        }
        let r = self.inner.row_ptr[i]..self.inner.row_ptr[i + 1];
        (&self.inner.col_idx[r.clone()], &self.inner.values[r])
    }

    /// Whether `self` and `other` are the same stored matrix (clones of one another).
    pub fn shares_storage(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The transpose, built on the first call (a counting sort, O(N + nnz); columns come out
    /// sorted) and cached: later calls and every backward pass return the same stored matrix.
    pub fn transpose(&self) -> &CsrMatrix {
        self.inner.transpose.get_or_init(|| self.build_transpose())
    }

    /// The matrix in its locality order, when that order pays (built on the first call and
    /// cached; see [`Locality`](super::Locality)).
    pub fn locality(&self) -> Option<&super::Locality> {
        self.inner
            .locality
            .get_or_init(|| super::locality::build_locality(self))
            .as_ref()
    }

    /// The locality order if [`Self::locality`] has already been called and found that it
    /// pays; never builds it. For callers to whom one use does not repay the build (a single
    /// diffusion step) but an order already at hand does.
    ///
    /// ```
    /// use hopfield_cuda::sparse::CsrMatrix;
    /// let w = CsrMatrix::new(2, vec![0, 1, 2], vec![1, 0], vec![1.0, 1.0])?;
    /// assert!(w.cached_locality().is_none());
    /// let _ = w.locality(); // decided (a 2-node graph: not worth it) and cached
    /// assert!(w.cached_locality().is_none());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn cached_locality(&self) -> Option<&super::Locality> {
        self.inner.locality.get().and_then(Option::as_ref)
    }

    /// Mean `|i - j|` over the stored entries (0 for none): how far apart in `x` a row's
    /// gathers lie. Computed on first use and cached.
    pub(crate) fn mean_distance(&self) -> f64 {
        *self.inner.mean_distance.get_or_init(|| {
            let total: f64 = (0..self.n())
                .map(|i| {
                    self.row(i)
                        .0
                        .iter()
                        .map(|&j| i.abs_diff(j as usize) as f64)
                        .sum::<f64>()
                })
                .sum();
            total / self.nnz().max(1) as f64
        })
    }

    /// Whether the transpose has been built.
    pub fn transpose_is_cached(&self) -> bool {
        self.inner.transpose.get().is_some()
    }

    fn build_transpose(&self) -> CsrMatrix {
        let (n, nnz) = (self.n(), self.nnz());
        let mut row_ptr = vec![0usize; n + 1];
        for &c in self.col_idx() {
            row_ptr[c as usize + 1] += 1;
        }
        for i in 0..n {
            row_ptr[i + 1] += row_ptr[i];
        }
        let mut next = row_ptr.clone();
        let mut cols = vec![0u32; nnz];
        let mut vals = vec![0f64; nnz];
        // Rows visited in order, so each transposed row's columns come out sorted.
        for i in 0..n {
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                let p = &mut next[j as usize];
                cols[*p] = i as u32;
                vals[*p] = x;
                *p += 1;
            }
        }
        CsrMatrix::from_valid(n, row_ptr, cols, vals)
    }

    /// The values rounded to f32 once, so f32 products stream 4-byte weights (the same values the
    /// per-entry `as f32` conversion would give).
    pub(crate) fn values_f32(&self) -> &[f32] {
        self.inner
            .values_f32
            .get_or_init(|| self.values().iter().map(|&v| v as f32).collect())
    }

    /// The matrix as tensors on `device` in `dtype`, built on first use per (device, dtype).
    pub(crate) fn device_arrays(&self, dtype: DType, device: &Device) -> Result<DeviceArrays> {
        let location = device.location();
        let mut cache = self.inner.device.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = cache
            .iter()
            .find(|d| d.dtype == dtype && d.location == location)
        {
            return Ok(d.clone());
        }
        let nnz = self.nnz();
        let mut rows = Vec::with_capacity(nnz);
        for i in 0..self.n() {
            let len = self.inner.row_ptr[i + 1] - self.inner.row_ptr[i];
            rows.extend(std::iter::repeat_n(i as u32, len));
        }
        let row_ptr = if nnz <= u32::MAX as usize {
            let rp: Vec<u32> = self.row_ptr().iter().map(|&p| p as u32).collect();
            Some(Tensor::from_vec(rp, self.n() + 1, device)?)
        } else {
            None
        };
        let d = DeviceArrays {
            location,
            dtype,
            rows: Tensor::from_vec(rows, nnz, device)?,
            row_ptr,
            cols: Tensor::from_vec(self.col_idx().to_vec(), nnz, device)?,
            vals: Tensor::from_vec(self.values().to_vec(), (nnz, 1), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        };
        cache.push(d.clone());
        Ok(d)
    }
}
