//! [`GraphMatrix`]: an adjacency or Laplacian held either dense (small N, differentiable) or sparse.

use crate::{check, Csr, GraphError};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// A square graph matrix (adjacency `W` or Laplacian `L`), dense or sparse. The diffusion
/// operators multiply with it without caring which.
#[derive(Debug, Clone)]
pub enum GraphMatrix {
    /// A dense (N, N) tensor; products are ordinary (differentiable) matmuls.
    Dense(Tensor),
    /// A CSR matrix; products are O(nnz * d), see [`Csr::matmul`].
    Sparse(Arc<Csr>),
}

impl From<Tensor> for GraphMatrix {
    fn from(t: Tensor) -> Self {
        GraphMatrix::Dense(t)
    }
}

impl From<Csr> for GraphMatrix {
    fn from(c: Csr) -> Self {
        GraphMatrix::Sparse(Arc::new(c))
    }
}

impl From<Arc<Csr>> for GraphMatrix {
    fn from(c: Arc<Csr>) -> Self {
        GraphMatrix::Sparse(c)
    }
}

impl GraphMatrix {
    /// Checks that the matrix is square, float and finite (one reduction for a dense matrix).
    pub fn validate(&self) -> Result<()> {
        match self {
            GraphMatrix::Dense(t) => check::square("graph matrix", t).map(|_| ()),
            GraphMatrix::Sparse(c) => {
                if c.values().iter().all(|v| v.is_finite()) {
                    Ok(())
                } else {
                    Err(GraphError::NonFinite {
                        what: "graph matrix",
                    }
                    .into())
                }
            }
        }
    }

    /// N.
    pub fn n(&self) -> usize {
        match self {
            GraphMatrix::Dense(t) => t.dims().first().copied().unwrap_or(0),
            GraphMatrix::Sparse(c) => c.n(),
        }
    }

    /// `M x` for `x` (N, m) or (N, B, d); the result has `x`'s shape and dtype. Errors (typed):
    /// a non-square or integer matrix or operand, shapes that disagree, a non-finite product
    /// (see [`Csr::matmul`]).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use dahn_graph::GraphMatrix;
    /// let m = GraphMatrix::Dense(Tensor::new(&[[0f64, 1.], [1., 0.]], &Device::Cpu)?);
    /// let x = Tensor::new(&[[[1f64], [2.]], [[3.], [4.]]], &Device::Cpu)?; // (2, 2, 1)
    /// assert_eq!(m.matmul(&x)?.to_vec3::<f64>()?, vec![vec![vec![3.], vec![4.]], vec![vec![1.], vec![2.]]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            GraphMatrix::Sparse(c) => c.matmul(x),
            GraphMatrix::Dense(m) => {
                let n = check::square_dims("graph matrix", m)?;
                check::float_dtype("graph matrix", m)?;
                check::float_dtype("graph matrix product: operand", x)?;
                let dims = x.dims().to_vec();
                if !(dims.len() == 2 || dims.len() == 3) || dims[0] != n {
                    return Err(GraphError::ShapeMismatch(format!(
                        "graph matrix is {n} x {n}, operand has shape {dims:?} (expected ({n}, d) or ({n}, B, d))"
                    ))
                    .into());
                }
                let m = m.to_dtype(x.dtype())?;
                let cols: usize = dims[1..].iter().product();
                let out = m.matmul(&x.reshape((n, cols))?)?;
                check::finite_product("graph matrix product: operand", &out, x)?;
                out.reshape(dims)
            }
        }
    }

    /// The dense matrix (converting a sparse one: O(N^2) memory, [`GraphError::TooLarge`] when it
    /// cannot be had).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            GraphMatrix::Dense(t) => t.to_dtype(dtype)?.to_device(device),
            GraphMatrix::Sparse(c) => c.to_dense(dtype, device),
        }
    }

    /// The largest `|M_ij - M_ji|` as `(i, j, M_ij, M_ji)`, `None` when exactly symmetric;
    /// with [`Self::max_abs`], what a caller needs to test symmetry up to rounding.
    pub fn asymmetry(&self) -> Result<Option<(usize, usize, f64, f64)>> {
        match self {
            GraphMatrix::Dense(t) => {
                let n = check::square_dims("graph matrix", t)?;
                let host = check::host_f64(t)?;
                let mut worst: Option<(usize, usize, f64, f64)> = None;
                for i in 0..n {
                    for j in 0..i {
                        let (x, y) = (host[i * n + j], host[j * n + i]);
                        if x != y && worst.is_none_or(|w| (x - y).abs() > (w.2 - w.3).abs()) {
                            worst = Some((i, j, x, y));
                        }
                    }
                }
                Ok(worst)
            }
            GraphMatrix::Sparse(c) => Ok(c.asymmetry()),
        }
    }

    /// The largest absolute entry, on the host.
    pub fn max_abs(&self) -> Result<f64> {
        match self {
            GraphMatrix::Dense(t) => {
                Ok(check::host_f64(t)?.iter().fold(0.0, |m, v| m.max(v.abs())))
            }
            GraphMatrix::Sparse(c) => Ok(c.max_abs()),
        }
    }

    /// The diagonal, on the host.
    pub fn diagonal(&self) -> Result<Vec<f64>> {
        match self {
            GraphMatrix::Dense(t) => {
                let n = check::square_dims("graph matrix", t)?;
                let host = check::host_f64(t)?;
                Ok((0..n).map(|i| host[i * n + i]).collect())
            }
            GraphMatrix::Sparse(c) => Ok(c.diagonal()),
        }
    }

    /// Row sums, on the host.
    pub fn row_sums(&self) -> Result<Vec<f64>> {
        match self {
            GraphMatrix::Dense(t) => {
                let n = check::square_dims("graph matrix", t)?;
                let host = check::host_f64(t)?;
                Ok((0..n)
                    .map(|i| host[i * n..(i + 1) * n].iter().sum())
                    .collect())
            }
            GraphMatrix::Sparse(c) => Ok(c.row_sums()),
        }
    }

    /// The largest absolute row sum of the off-diagonal part plus the diagonal entry
    /// (a Gershgorin bound on the spectral radius), on the host.
    pub fn gershgorin_bound(&self) -> Result<f64> {
        if let GraphMatrix::Dense(t) = self {
            check::square_dims("graph matrix", t)?;
        }
        let n = self.n();
        let rows: Vec<f64> = match self {
            GraphMatrix::Dense(t) => {
                let host = check::host_f64(t)?;
                (0..n)
                    .map(|i| host[i * n..(i + 1) * n].iter().map(|v| v.abs()).sum())
                    .collect()
            }
            GraphMatrix::Sparse(c) => (0..n)
                .map(|i| c.row(i).1.iter().map(|v| v.abs()).sum())
                .collect(),
        };
        Ok(rows.into_iter().fold(0.0, f64::max))
    }
}
