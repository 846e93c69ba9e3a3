//! [`SpectralDiffusion`]: the heat kernel `H = U exp(-eta Lambda) U^T`, `X' = H X`.

use crate::eigen::symmetric_eigen;
use crate::validate;
use crate::{DiffusionError, DiffusionMode, DiffusionOperator};
use candle_core::{DType, Device, Result, Tensor};
use dahn_graph::GraphMatrix;
use std::sync::Arc;

/// Exact heat-kernel diffusion (difflayers' `SpectralDiffusion`), stable for every eta >= 0. The
/// eigendecomposition of L (only its lower triangle is read, as `torch.linalg.eigh`; L should be
/// symmetric) is computed once in f64 on the host (difflayers does it in float32, D1) and kept,
/// so [`with_params`](DiffusionOperator::with_params) only rebuilds H. O(N^3) setup, O(N^2 d) per
/// call: for small graphs.
///
/// Hostile input: L must be symmetric up to rounding ([`DiffusionError::NotSymmetric`] names the
/// worst pair; the lower triangle alone would silently describe another matrix). Eigenvalues
/// that are negative by rounding only are taken as 0 when `exp(-eta lambda)` would overflow
/// (huge eta); a genuinely negative one (L not positive semi-definite) whose kernel overflows is
/// [`DiffusionError::Overflow`]. N x N buffers that cannot be allocated are
/// [`DiffusionError::TooLarge`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{DiffusionOperator, SpectralDiffusion};
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?; // eigenvalues 0 and 2
/// let op = SpectralDiffusion::new(&l.into(), 0.5)?;
/// let y = op.apply(&Tensor::new(&[[1f64], [0.]], &Device::Cpu)?)?.to_vec2::<f64>()?;
/// let e = (-1f64).exp();
/// assert!((y[0][0] - (1. + e) / 2.).abs() < 1e-15 && (y[1][0] - (1. - e) / 2.).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SpectralDiffusion {
    eta: f64,
    n: usize,
    eigenvalues: Arc<Vec<f64>>,
    eigenvectors: Arc<Vec<f64>>,
    device: Device,
    kernel: Tensor,
}

impl SpectralDiffusion {
    /// Eigendecomposes `l` (dense or sparse; densified) and builds the kernel for `eta`.
    pub fn new(l: &GraphMatrix, eta: f64) -> Result<Self> {
        let what = "SpectralDiffusion";
        validate::eta(what, eta)?;
        l.validate()?;
        validate::require_symmetric(what, l)?;
        let n = l.n();
        // The densified L, U and the kernel: three N x N f64 buffers at once.
        validate::can_allocate(what, &[n, n, 3], 8)?;
        let device = match l {
            GraphMatrix::Dense(t) => t.device().clone(),
            GraphMatrix::Sparse(_) => Device::Cpu,
        };
        let host = l
            .to_dense(DType::F64, &Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let (lam, u) = symmetric_eigen(&host, n)?;
        Self::from_eigen(Arc::new(lam), Arc::new(u), n, eta, device)
    }

    fn from_eigen(
        eigenvalues: Arc<Vec<f64>>,
        eigenvectors: Arc<Vec<f64>>,
        n: usize,
        eta: f64,
        device: Device,
    ) -> Result<Self> {
        let mut h = heat_kernel(&eigenvalues, &eigenvectors, n, eta, 0.0);
        if h.iter().any(|v| !v.is_finite()) {
            // A Laplacian is PSD; eigenvalues of size rounding below 0 blow up exp(-eta lambda)
            // for huge eta: read them as 0.
            let max = eigenvalues.iter().fold(0f64, |m, l| m.max(l.abs()));
            h = heat_kernel(
                &eigenvalues,
                &eigenvectors,
                n,
                eta,
                64.0 * f64::EPSILON * n.max(1) as f64 * max,
            );
            if h.iter().any(|v| !v.is_finite()) {
                return Err(DiffusionError::Overflow {
                    what: "SpectralDiffusion: exp(-eta L) (L has a negative eigenvalue)",
                    dtype: "F64".into(),
                }
                .into());
            }
        }
        let kernel = Tensor::from_vec(h, (n, n), &Device::Cpu)?.to_device(&device)?;
        Ok(Self {
            eta,
            n,
            eigenvalues,
            eigenvectors,
            device,
            kernel,
        })
    }

    /// The eigenvalues of L (unsorted).
    pub fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }

    /// The (N, N) f64 kernel H.
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }
}

/// `U exp(-eta Lambda) U^T`, with eigenvalues in `(-clamp, 0)` taken as 0.
fn heat_kernel(lam: &[f64], u: &[f64], n: usize, eta: f64, clamp: f64) -> Vec<f64> {
    let w: Vec<f64> = lam
        .iter()
        .map(|&l| if l < 0.0 && -l <= clamp { 0.0 } else { l })
        .map(|l| (-eta * l).exp())
        .collect();
    let mut h = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..n).map(|k| u[i * n + k] * w[k] * u[j * n + k]).sum();
            h[i * n + j] = s;
            h[j * n + i] = s;
        }
    }
    h
}

impl DiffusionOperator for SpectralDiffusion {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        validate::input("SpectralDiffusion input", x, self.n)?;
        if self.eta == 0.0 {
            return Ok(x.clone());
        }
        GraphMatrix::Dense(self.kernel.to_dtype(x.dtype())?.to_device(x.device())?).matmul(x)
    }
    fn eta(&self) -> f64 {
        self.eta
    }
    fn steps(&self) -> usize {
        1
    }
    fn mode(&self) -> DiffusionMode {
        DiffusionMode::Spectral
    }
    fn n(&self) -> usize {
        self.n
    }
    fn with_params(&self, eta: f64, _steps: usize) -> Result<Arc<dyn DiffusionOperator>> {
        validate::eta("SpectralDiffusion", eta)?;
        Ok(Arc::new(Self::from_eigen(
            self.eigenvalues.clone(),
            self.eigenvectors.clone(),
            self.n,
            eta,
            self.device.clone(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dahn_graph::GraphBuilder;

    /// Independent reference: exp(-eta L) by a Taylor series with scaling and squaring.
    fn expm(l: &[Vec<f64>], eta: f64) -> Vec<Vec<f64>> {
        let n = l.len();
        let mul = |a: &Vec<Vec<f64>>, b: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| (0..n).map(|k| a[i][k] * b[k][j]).sum())
                        .collect()
                })
                .collect()
        };
        let s = 6;
        let a: Vec<Vec<f64>> = l
            .iter()
            .map(|r| r.iter().map(|v| -eta * v / f64::from(1 << s)).collect())
            .collect();
        let mut term: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
            .collect();
        let mut sum = term.clone();
        for k in 1..30 {
            term = mul(&term, &a)
                .into_iter()
                .map(|r| r.into_iter().map(|v| v / k as f64).collect())
                .collect();
            for i in 0..n {
                for j in 0..n {
                    sum[i][j] += term[i][j];
                }
            }
        }
        for _ in 0..s {
            sum = mul(&sum, &sum);
        }
        sum
    }

    #[test]
    fn kernel_equals_matrix_exponential() -> Result<()> {
        let x = Tensor::new(
            &[
                [1f64, 0.2, 0.1],
                [0.9, 0.3, 0.0],
                [0.1, 1.0, 0.2],
                [0.0, 0.8, 0.5],
                [0.3, 0.3, 1.0],
            ],
            &Device::Cpu,
        )?;
        let g = GraphBuilder::new().k(2).build(&x)?;
        for (normalized, eta) in [(true, 0.7), (false, 2.0)] {
            let l = g.laplacian(normalized).to_dense(DType::F64, &Device::Cpu)?;
            let op = SpectralDiffusion::new(&l.clone().into(), eta)?;
            let want = expm(&l.to_vec2::<f64>()?, eta);
            let got = op.kernel().to_vec2::<f64>()?;
            for i in 0..5 {
                for j in 0..5 {
                    assert!((got[i][j] - want[i][j]).abs() < 1e-12, "{i},{j}");
                }
            }
            let again = op.with_params(0.1, 1)?;
            let want = expm(&l.to_vec2::<f64>()?, 0.1);
            let y = again
                .apply(&Tensor::eye(5, DType::F64, &Device::Cpu)?)?
                .to_vec2::<f64>()?;
            assert!((y[1][3] - want[1][3]).abs() < 1e-12);
        }
        Ok(())
    }
}
