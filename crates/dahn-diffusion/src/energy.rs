//! [`EnergyTracker`]: per-step energy of the diffuse-attend dynamics and the early-stop rule.

use crate::{validate, DiffusionError};
use candle_core::{DType, Result, Tensor, D};
use dahn_graph::GraphMatrix;

/// difflayers' `EnergyTracker(beta, eta, tol)`. The energy is difflayers' (not the log-sum-exp
/// Hopfield energy its README names, D20):
/// `E = -mean(beta Qb Kb^T) + eta tr(Kb^T L Kb) / N_K`, where Qb, Kb are Q, K for 2-D inputs and
/// their means over the batch dimension 1 for (rows, B, d) inputs. [`step_factored`](Self::step_factored)
/// uses `L = diag(deg) - W`. Each step appends E to the history; the stop signal is
/// `tol > 0 && |E_t - E_(t-1)| < tol`. Values are host f64 (no gradient), as difflayers;
/// [`energy`](Self::energy) gives the differentiable tensor.
///
/// Errors (typed, at each call since the fields are public): `beta`, `eta` not finite, `tol`
/// not finite and >= 0; Q or K not float, empty, with NaN/inf, or of widths that disagree; a
/// Laplacian or degrees that do not match K's rows; an energy that overflows the dtype.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::EnergyTracker;
/// let q = Tensor::new(&[[1f64, 0.]], &Device::Cpu)?;
/// let k = Tensor::new(&[[1f64, 0.], [0., 1.]], &Device::Cpu)?;
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
/// let mut t = EnergyTracker::new(2.0, 0.5, 0.0);
/// let (e, stop) = t.step(&q, &k, &l.into())?;
/// // -mean(2 * [1, 0]) + 0.5 * tr(K^T L K) / 2 = -1 + 0.5 * 2 / 2
/// assert_eq!((e, stop), (-0.5, false));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyTracker {
    /// Inverse temperature of the affinity term.
    pub beta: f64,
    /// Weight of the smoothness term.
    pub eta: f64,
    /// Early-stop tolerance (0 disables).
    pub tol: f64,
    history: Vec<f64>,
}

fn batch_mean(x: &Tensor, what: &'static str) -> Result<Tensor> {
    let m = match x.rank() {
        2 => x.clone(),
        3 => {
            if x.dim(1)? == 0 {
                return Err(DiffusionError::Empty {
                    what,
                    shape: x.dims().to_vec(),
                }
                .into());
            }
            x.mean(1)?
        }
        _ => {
            return Err(DiffusionError::ShapeMismatch(format!(
                "{what}: expected 2-D or 3-D, got {:?}",
                x.dims()
            ))
            .into())
        }
    };
    validate::float(what, x)?;
    if m.dim(0)? == 0 {
        // Both terms are means over rows: undefined without rows.
        return Err(DiffusionError::Empty {
            what,
            shape: x.dims().to_vec(),
        }
        .into());
    }
    validate::finite(what, x)?;
    Ok(m)
}

impl EnergyTracker {
    /// A tracker with an empty history.
    pub fn new(beta: f64, eta: f64, tol: f64) -> Self {
        Self {
            beta,
            eta,
            tol,
            history: Vec::new(),
        }
    }

    /// The energies recorded since the last reset.
    pub fn history(&self) -> &[f64] {
        &self.history
    }

    /// Clears the history.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Whether the last two energies differ by less than `tol` (`tol > 0`).
    pub fn should_stop(&self) -> bool {
        let h = &self.history;
        self.tol > 0.0 && h.len() >= 2 && (h[h.len() - 1] - h[h.len() - 2]).abs() < self.tol
    }

    fn check_params(&self) -> Result<()> {
        validate::param("EnergyTracker", "beta", self.beta, false)?;
        validate::param("EnergyTracker", "eta", self.eta, false)?;
        validate::param("EnergyTracker", "tol", self.tol, true)
    }

    fn affinity(&self, qb: &Tensor, kb: &Tensor) -> Result<Tensor> {
        if qb.dtype() != kb.dtype() {
            return Err(DiffusionError::ShapeMismatch(format!(
                "energy: Q ({:?}) and K ({:?}) have different dtypes",
                qb.dtype(),
                kb.dtype()
            ))
            .into());
        }
        if qb.dim(1)? != kb.dim(1)? {
            return Err(DiffusionError::ShapeMismatch(format!(
                "energy: Q {:?} and K {:?} differ in width",
                qb.dims(),
                kb.dims()
            ))
            .into());
        }
        (qb.matmul(&kb.t()?)? * self.beta)?.mean_all()?.neg()
    }

    /// The energy with Laplacian `l` as a differentiable 0-d tensor.
    pub fn energy(&self, q: &Tensor, k: &Tensor, l: &GraphMatrix) -> Result<Tensor> {
        self.check_params()?;
        let (qb, kb) = (batch_mean(q, "energy: Q")?, batch_mean(k, "energy: K")?);
        let n = kb.dim(0)? as f64;
        let smooth = (kb.clone() * l.matmul(&kb)?)?.sum_all()?;
        let e = (self.affinity(&qb, &kb)? + (smooth * (self.eta / n))?)?;
        validate::no_overflow("energy", &e)?;
        Ok(e)
    }

    /// The energy with `L = diag(deg) - W` as a differentiable 0-d tensor.
    pub fn energy_factored(
        &self,
        q: &Tensor,
        k: &Tensor,
        w: &GraphMatrix,
        deg: &Tensor,
    ) -> Result<Tensor> {
        self.check_params()?;
        let (qb, kb) = (batch_mean(q, "energy: Q")?, batch_mean(k, "energy: K")?);
        let n = kb.dim(0)?;
        if deg.dims() != [n] {
            return Err(DiffusionError::ShapeMismatch(format!(
                "energy: K has {n} rows but the degrees have shape {:?} (expected [{n}])",
                deg.dims()
            ))
            .into());
        }
        validate::float("energy: degrees", deg)?;
        validate::finite("energy: degrees", deg)?;
        let deg = deg.to_dtype(kb.dtype())?;
        let deg_term = (kb.sqr()?.sum(D::Minus1)? * deg)?.sum_all()?;
        let wk = (w.matmul(&kb)? * &kb)?.sum_all()?;
        let e = (self.affinity(&qb, &kb)? + ((deg_term - wk)? * (self.eta / n as f64))?)?;
        validate::no_overflow("energy", &e)?;
        Ok(e)
    }

    fn record(&mut self, e: Tensor) -> Result<(f64, bool)> {
        let e = e.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.history.push(e);
        Ok((e, self.should_stop()))
    }

    /// Records the energy of (Q, K) with Laplacian `l`; returns (E, stop).
    pub fn step(&mut self, q: &Tensor, k: &Tensor, l: &GraphMatrix) -> Result<(f64, bool)> {
        let e = self.energy(&q.detach(), &k.detach(), l)?;
        self.record(e)
    }

    /// Records the energy of (Q, K) with `L = diag(deg) - W`; returns (E, stop).
    pub fn step_factored(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        w: &GraphMatrix,
        deg: &Tensor,
    ) -> Result<(f64, bool)> {
        let e = self.energy_factored(&q.detach(), &k.detach(), w, deg)?;
        self.record(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use dahn_graph::{Csr, GraphBuilder};

    #[test]
    fn factored_equals_laplacian_energy_and_stop_rule() -> Result<()> {
        let x = Tensor::new(
            &[[1f64, 0.2], [0.9, 0.3], [0.1, 1.0], [0.0, 0.8], [0.6, 0.6]],
            &Device::Cpu,
        )?;
        let g = GraphBuilder::new().k(2).build(&x)?;
        let q = Tensor::new(
            &[[[0.5f64, 1.0], [1.0, 0.0]], [[0.2, 0.3], [0.1, 0.9]]],
            &Device::Cpu,
        )?; // (2, 2, 2)
        let k = Tensor::stack(&[&x, &(&x * 2.0)?], 1)?; // (5, 2, 2)
        let mut a = EnergyTracker::new(0.7, 0.3, 1e-3);
        let mut b = a.clone();
        let l: Csr = g.laplacian(false);
        let (ea, _) = a.step(&q, &k, &l.into())?;
        let (eb, _) = b.step_factored(&q, &k, &g.matrix(), &g.degrees()?)?;
        assert!((ea - eb).abs() < 1e-14);
        // Independent check of the affinity term on batch means: Kb = 1.5 x, Qb = mean over dim 1.
        let qb = [[0.75, 0.5], [0.15, 0.6]];
        let xs = x.to_vec2::<f64>()?;
        let aff: f64 = qb
            .iter()
            .flat_map(|qr| {
                xs.iter()
                    .map(move |xr| 1.5 * (qr[0] * xr[0] + qr[1] * xr[1]))
            })
            .sum::<f64>()
            / 10.0;
        let lk = g
            .laplacian(false)
            .to_dense(DType::F64, &Device::Cpu)?
            .to_vec2::<f64>()?;
        let mut tr = 0.0;
        for c in 0..2 {
            for i in 0..5 {
                for j in 0..5 {
                    tr += 2.25 * xs[i][c] * lk[i][j] * xs[j][c];
                }
            }
        }
        assert!((ea - (-0.7 * aff + 0.3 * tr / 5.0)).abs() < 1e-13);
        assert!(!a.should_stop());
        a.step(&q, &k, &g.laplacian(false).into())?;
        assert!(a.should_stop(), "identical energies stop when tol > 0");
        assert_eq!(a.history().len(), 2);
        Ok(())
    }
}
