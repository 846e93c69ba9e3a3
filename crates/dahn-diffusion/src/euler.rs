//! Explicit Euler diffusion: [`SimpleDiffusion`] `(I - eta L) X` and [`IterativeDiffusion`]
//! `(I - eta L)^T X` with difflayers' early-stop guard. One step implementation serves both.

use crate::validate;
use crate::{DiffusionMode, DiffusionOperator};
use candle_core::{Result, Tensor};
use dahn_graph::GraphMatrix;
use std::sync::Arc;

/// `X -> (I - eta L) X`: dense L gives a precomputed dense `I - eta L` (as difflayers), sparse L
/// is applied as `X - eta (L X)` in O(nnz d).
#[derive(Debug, Clone)]
struct EulerStep {
    eta: f64,
    laplacian: GraphMatrix,
    propagator: GraphMatrix,
}

impl EulerStep {
    fn new(laplacian: GraphMatrix, eta: f64, what: &'static str) -> Result<Self> {
        validate::eta(what, eta)?;
        laplacian.validate()?;
        let diag = laplacian.diagonal()?;
        // Symmetric up to rounding: a normalised sparse Laplacian is not bit-symmetric, and an
        // exact test skipped the bound for every one of them.
        let symmetric = validate::symmetry(what, &laplacian)?.is_ok();
        validate::euler_stability(what, eta, &diag, symmetric)?;
        let propagator = match &laplacian {
            GraphMatrix::Dense(l) => {
                let n = l.dim(0)?;
                GraphMatrix::Dense((Tensor::eye(n, l.dtype(), l.device())? - (l * eta)?)?)
            }
            GraphMatrix::Sparse(_) => laplacian.clone(),
        };
        Ok(Self {
            eta,
            laplacian,
            propagator,
        })
    }

    fn n(&self) -> usize {
        self.laplacian.n()
    }

    fn step(&self, x: &Tensor) -> Result<Tensor> {
        match &self.propagator {
            GraphMatrix::Dense(_) => self.propagator.matmul(x),
            GraphMatrix::Sparse(_) => x - (self.laplacian.matmul(x)? * self.eta)?,
        }
    }
}

/// One explicit Euler step `X' = (I - eta L) X` (difflayers' `SimpleDiffusion`; `steps` is 1).
/// A result that is not finite (finite input, huge eta or entries) is [`DiffusionError::Diverged`](crate::DiffusionError::Diverged).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{DiffusionOperator, SimpleDiffusion};
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
/// let op = SimpleDiffusion::new(l.into(), 0.25)?;
/// let x = Tensor::new(&[[1f64], [0.]], &Device::Cpu)?;
/// assert_eq!(op.apply(&x)?.to_vec2::<f64>()?, vec![vec![0.75], vec![0.25]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SimpleDiffusion {
    step: EulerStep,
}

impl SimpleDiffusion {
    /// Precomputes the operator on the Laplacian `l` (dense or sparse). Errors: eta < 0 or not
    /// finite, L not square/float/finite, provably unstable: `eta * max_i L_ii > 2` for L
    /// symmetric up to rounding, `eta * mean_i L_ii > 2` for any L ([`DiffusionError::Unstable`](crate::DiffusionError::Unstable)).
    pub fn new(l: GraphMatrix, eta: f64) -> Result<Self> {
        Ok(Self {
            step: EulerStep::new(l, eta, "SimpleDiffusion")?,
        })
    }
}

impl DiffusionOperator for SimpleDiffusion {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        validate::input("SimpleDiffusion input", x, self.step.n())?;
        if self.step.eta == 0.0 {
            return Ok(x.clone());
        }
        let y = self.step.step(x)?;
        validate::diverged(&y, 1)?;
        Ok(y)
    }
    fn eta(&self) -> f64 {
        self.step.eta
    }
    fn steps(&self) -> usize {
        1
    }
    fn mode(&self) -> DiffusionMode {
        DiffusionMode::Simple
    }
    fn n(&self) -> usize {
        self.step.n()
    }
    fn with_params(&self, eta: f64, _steps: usize) -> Result<Arc<dyn DiffusionOperator>> {
        Ok(Arc::new(Self::new(self.step.laplacian.clone(), eta)?))
    }
}

/// `steps` Euler steps with difflayers' guard: stop at the first step whose change
/// `||X_new - X||_F` (over the whole tensor, all batch columns) is below `early_stop_tol`, and
/// return the X *before* that step (the sub-tolerance update is discarded, as difflayers). A step
/// producing NaN/inf is a typed error ([`DiffusionError::Diverged`](crate::DiffusionError::Diverged)) instead of a silent NaN.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{DiffusionOperator, IterativeDiffusion};
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
/// let op = IterativeDiffusion::new(l.into(), 0.25, 2)?;
/// let x = Tensor::new(&[[1f64], [0.]], &Device::Cpu)?;
/// assert_eq!(op.apply(&x)?.to_vec2::<f64>()?, vec![vec![0.625], vec![0.375]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct IterativeDiffusion {
    step: EulerStep,
    steps: usize,
    early_stop_tol: f64,
}

impl IterativeDiffusion {
    /// difflayers' default guard tolerance.
    pub const DEFAULT_TOL: f64 = 1e-6;

    /// `steps` steps with the default tolerance 1e-6. Errors as [`SimpleDiffusion::new`], and
    /// `steps > MAX_STEPS` ([`crate::MAX_STEPS`]).
    pub fn new(l: GraphMatrix, eta: f64, steps: usize) -> Result<Self> {
        validate::steps("IterativeDiffusion", steps)?;
        Ok(Self {
            step: EulerStep::new(l, eta, "IterativeDiffusion")?,
            steps,
            early_stop_tol: Self::DEFAULT_TOL,
        })
    }

    /// Sets the early-stop tolerance (0 disables the guard; NaN or a negative value is a typed
    /// error when the operator is applied).
    pub fn early_stop_tol(mut self, tol: f64) -> Self {
        self.early_stop_tol = tol;
        self
    }

    /// Applies the operator and also returns the number of steps whose update was kept.
    pub fn apply_counted(&self, x: &Tensor) -> Result<(Tensor, usize)> {
        validate::input("IterativeDiffusion input", x, self.step.n())?;
        validate::param(
            "IterativeDiffusion",
            "early_stop_tol",
            self.early_stop_tol,
            true,
        )?;
        if self.step.eta == 0.0 || self.steps == 0 {
            return Ok((x.clone(), 0));
        }
        let mut x = x.clone();
        for t in 0..self.steps {
            let next = self.step.step(&x)?;
            let change = (&next - &x)?
                .detach()
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?
                .sqrt();
            let change = if change.is_finite() {
                change
            } else {
                // The squares can overflow the dtype (f16 near 256) while X itself is fine.
                validate::diverged(&next, t + 1)?;
                stable_norm(&(&next - &x)?.detach())?
            };
            if change < self.early_stop_tol {
                return Ok((x, t));
            }
            x = next;
        }
        Ok((x, self.steps))
    }
}

/// `||d||_F` in f64 without overflow: `m ||d / m||` with `m = max |d|`.
fn stable_norm(d: &Tensor) -> Result<f64> {
    let d = d.to_dtype(candle_core::DType::F64)?;
    let m = d.abs()?.max_all()?.to_scalar::<f64>()?;
    if m == 0.0 || !m.is_finite() {
        return Ok(m);
    }
    Ok(m * (d / m)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

impl DiffusionOperator for IterativeDiffusion {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.apply_counted(x)?.0)
    }
    fn eta(&self) -> f64 {
        self.step.eta
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn mode(&self) -> DiffusionMode {
        DiffusionMode::Iterative
    }
    fn n(&self) -> usize {
        self.step.n()
    }
    fn with_params(&self, eta: f64, steps: usize) -> Result<Arc<dyn DiffusionOperator>> {
        Ok(Arc::new(
            Self::new(self.step.laplacian.clone(), eta, steps)?.early_stop_tol(self.early_stop_tol),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiffusionError;
    use candle_core::{Device, Var};
    use dahn_graph::{Csr, GraphBuilder};

    fn graph_and_x() -> Result<(dahn_graph::Graph, Tensor)> {
        let x = Tensor::new(
            &[
                [1f64, 0.2, 0.1],
                [0.9, 0.3, 0.0],
                [0.1, 1.0, 0.2],
                [0.0, 0.8, 0.5],
                [0.3, 0.3, 1.0],
                [0.5, 0.5, 0.5],
            ],
            &Device::Cpu,
        )?;
        Ok((GraphBuilder::new().k(2).build(&x)?, x))
    }

    #[test]
    fn sparse_and_dense_laplacians_agree_with_gradients() -> Result<()> {
        let (g, _) = graph_and_x()?;
        let lsp: Csr = g.laplacian(true);
        let lde = lsp.to_dense(candle_core::DType::F64, &Device::Cpu)?;
        let x = Var::new(
            &[
                [1f64, 2.],
                [0., 1.],
                [3., -1.],
                [0.5, 0.5],
                [2., 0.],
                [-1., 1.],
            ],
            &Device::Cpu,
        )?;
        let a = IterativeDiffusion::new(lsp.into(), 0.3, 3)?.apply(x.as_tensor())?;
        let b = IterativeDiffusion::new(lde.clone().into(), 0.3, 3)?.apply(x.as_tensor())?;
        assert!((&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        // Independent reference: (I - eta L)^3 x by host loops.
        let l = lde.to_vec2::<f64>()?;
        let mut r = x.as_tensor().to_vec2::<f64>()?;
        for _ in 0..3 {
            r = (0..6)
                .map(|i| {
                    (0..2)
                        .map(|c| r[i][c] - 0.3 * (0..6).map(|j| l[i][j] * r[j][c]).sum::<f64>())
                        .collect()
                })
                .collect();
        }
        let got = a.to_vec2::<f64>()?;
        for i in 0..6 {
            for c in 0..2 {
                assert!((got[i][c] - r[i][c]).abs() < 1e-14);
            }
        }
        let ga = a.sum_all()?.backward()?;
        let gb = b.sum_all()?.backward()?;
        let d = (ga.get(x.as_tensor()).unwrap() - gb.get(x.as_tensor()).unwrap())?;
        assert!(d.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        Ok(())
    }

    #[test]
    fn early_stop_discards_the_small_update() -> Result<()> {
        let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
        // x differs by 2e-7 between nodes: the first update is 0.5 * 2e-7 * sqrt(2) < 1e-6.
        let x = Tensor::new(&[[1f64], [1.0 + 2e-7]], &Device::Cpu)?;
        let op = IterativeDiffusion::new(l.into(), 0.25, 5)?;
        let (y, kept) = op.apply_counted(&x)?;
        assert_eq!(kept, 0);
        assert_eq!(y.to_vec2::<f64>()?, x.to_vec2::<f64>()?);
        Ok(())
    }

    #[test]
    fn unstable_eta_and_bad_shapes_are_typed_errors() -> Result<()> {
        let l = Tensor::new(&[[2f64, -2.], [-2., 2.]], &Device::Cpu)?;
        let e = SimpleDiffusion::new(l.clone().into(), 1.5).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::Unstable { .. })
        ));
        let op = SimpleDiffusion::new(l.into(), 0.1)?;
        let e = op
            .apply(&Tensor::zeros(
                (3, 2),
                candle_core::DType::F64,
                &Device::Cpu,
            )?)
            .unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::ShapeMismatch(_))
        ));
        let nan = Tensor::new(&[[f64::NAN], [0.]], &Device::Cpu)?;
        let e = op.apply(&nan).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::NonFinite { .. })
        ));
        Ok(())
    }

    #[test]
    fn eta_zero_is_identity_and_3d_is_per_column() -> Result<()> {
        let (g, _) = graph_and_x()?;
        let l: GraphMatrix = g.laplacian(true).into();
        let x = Tensor::arange(0f64, 24., &Device::Cpu)?.reshape((6, 2, 2))?;
        let id = SimpleDiffusion::new(l.clone(), 0.0)?.apply(&x)?;
        assert_eq!(id.to_vec3::<f64>()?, x.to_vec3::<f64>()?);
        let op = SimpleDiffusion::new(l, 0.4)?;
        let y = op.apply(&x)?;
        for b in 0..2 {
            let xb = x.narrow(1, b, 1)?.squeeze(1)?;
            let yb = y.narrow(1, b, 1)?.squeeze(1)?;
            assert!(
                (op.apply(&xb)? - yb)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?
                    < 1e-15
            );
        }
        Ok(())
    }
}
