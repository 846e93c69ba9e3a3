//! [`FactoredDiffusion`]: `X' = (1 - eta deg) X + eta W X`, Laplacian-free, O(nnz d) per step.

use crate::validate;
use crate::{DiffusionError, DiffusionMode, DiffusionOperator};
use candle_core::{DType, Result, Tensor};
use dahn_graph::{Csr, GraphMatrix, Merge};
use std::sync::Arc;

/// Factored diffusion (difflayers' `FactoredDiffusion`): `steps` times
/// `X <- (1 - eta deg) * X + eta W X` (with a sparse W one fused
/// `hopfield_cuda::sparse::diffusion_step` per step), i.e. `(I - eta (diag(deg) - W)) X` (always the
/// unnormalised Laplacian of (W, deg), as difflayers, D5). With a sparse W each step costs
/// O(nnz d) time and memory; `deg` is used as given (it need not equal W's row sums). Two or
/// more steps on a sparse graph of 2^15 nodes or more whose numbering scatters its neighbours
/// run in the graph's locality order (`hopfield_cuda::sparse::Locality`, found once per graph,
/// the operand permuted in and back once per call): the same result bit for bit, each step 2-3x
/// faster on such graphs. A single step uses that order only when the graph already has it (an
/// earlier call of two or more steps, or `CsrMatrix::locality()` called once up front for a
/// graph that will be diffused many times): building it (~0.1 s at 10^5 nodes) costs several
/// single steps, the permutations alone less than one saves.
///
/// Stability (documented check, B10/D12): with W symmetric (up to rounding),
/// `lambda_max(diag(deg) - W) >= max_i (deg_i - W_ii)`, so `eta * max_i (deg_i - W_ii) > 2` is
/// rejected as provably unstable; for any W, `eta * mean_i (deg_i - W_ii) > 2` is (the trace
/// bound). A result that is not finite is [`DiffusionError::Diverged`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{DiffusionOperator, FactoredDiffusion};
/// use dahn_graph::GraphMatrix;
/// let w = Tensor::new(&[[0f64, 1.], [1., 0.]], &Device::Cpu)?;
/// let deg = Tensor::new(&[1f64, 1.], &Device::Cpu)?;
/// let op = FactoredDiffusion::from_graph(GraphMatrix::Dense(w), &deg, 0.25, 1)?;
/// let y = op.apply(&Tensor::new(&[[1f64], [0.]], &Device::Cpu)?)?;
/// assert_eq!(y.to_vec2::<f64>()?, vec![vec![0.75], vec![0.25]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FactoredDiffusion {
    eta: f64,
    steps: usize,
    weights: GraphMatrix,
    degrees: Tensor,
}

impl FactoredDiffusion {
    /// From adjacency `w` (dense or sparse) and degrees `deg` (N,) (difflayers'
    /// `precompute_from_graph`). Errors: shapes, integer dtypes, non-finite values, eta, `steps >
    /// MAX_STEPS`, provable instability.
    pub fn from_graph(w: GraphMatrix, deg: &Tensor, eta: f64, steps: usize) -> Result<Self> {
        validate::eta("FactoredDiffusion", eta)?;
        validate::steps("FactoredDiffusion", steps)?;
        w.validate()?;
        let n = w.n();
        if deg.dims() != [n] {
            return Err(DiffusionError::ShapeMismatch(format!(
                "FactoredDiffusion: W is {n} x {n} but deg has shape {:?}",
                deg.dims()
            ))
            .into());
        }
        validate::float("FactoredDiffusion degrees", deg)?;
        validate::finite("FactoredDiffusion degrees", deg)?;
        let d = deg.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let wd = w.diagonal()?;
        // diag(deg) - W is symmetric iff W is (up to rounding).
        let symmetric = validate::symmetry("FactoredDiffusion", &w)?.is_ok();
        let ldiag: Vec<f64> = d.iter().zip(&wd).map(|(a, b)| a - b).collect();
        validate::euler_stability("FactoredDiffusion", eta, &ldiag, symmetric)?;
        Ok(Self {
            eta,
            steps,
            weights: w,
            degrees: deg.detach(),
        })
    }

    /// From an unnormalised Laplacian `L = diag(deg) - W`: `deg = diag(L)`, `W = diag(deg) - L`
    /// (difflayers' `precompute(L)` fallback). Where difflayers guesses "normalised" from
    /// `max diag(L) <= 1.5` and rejects valid small-degree Laplacians (B9/D11), we check the
    /// defining property instead: every row of `D - W` sums to 0 (relative tolerance 1e-5), else
    /// [`DiffusionError::NotUnnormalizedLaplacian`].
    pub fn from_laplacian(l: &GraphMatrix, eta: f64, steps: usize) -> Result<Self> {
        l.validate()?;
        let sums = l.row_sums()?;
        let diag = l.diagonal()?;
        let scale = diag.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        if let Some((row, &sum)) = sums
            .iter()
            .enumerate()
            .find(|(_, s)| s.abs() > 1e-5 * scale)
        {
            return Err(DiffusionError::NotUnnormalizedLaplacian { row, sum }.into());
        }
        let (w, deg) = match l {
            GraphMatrix::Dense(t) => {
                let n = t.dim(0)?;
                let deg = Tensor::from_vec(diag, n, t.device())?.to_dtype(t.dtype())?;
                let w = (Tensor::eye(n, t.dtype(), t.device())?
                    .broadcast_mul(&deg.unsqueeze(1)?)?
                    - t)?;
                (GraphMatrix::Dense(w), deg)
            }
            GraphMatrix::Sparse(c) => {
                let mut t = Vec::with_capacity(c.nnz());
                for i in 0..c.n() {
                    let (cols, vals) = c.row(i);
                    t.extend(
                        cols.iter()
                            .zip(vals)
                            .filter(|(&j, _)| j as usize != i)
                            .map(|(&j, &v)| (i as u32, j, -v)),
                    );
                }
                let w = Csr::from_triplets(c.n(), t, Merge::Sum)?;
                let deg = Tensor::from_vec(diag, c.n(), &candle_core::Device::Cpu)?;
                (GraphMatrix::from(w), deg)
            }
        };
        Self::from_graph(w, &deg, eta, steps)
    }

    /// The adjacency.
    pub fn weights(&self) -> &GraphMatrix {
        &self.weights
    }

    /// The degrees.
    pub fn degrees(&self) -> &Tensor {
        &self.degrees
    }
}

/// `W X` overflowing inside the loop is the iteration diverging (X was checked finite).
fn diverged_at(e: candle_core::Error, steps: usize) -> candle_core::Error {
    match dahn_graph::GraphError::find(&e) {
        Some(
            dahn_graph::GraphError::Overflow { .. } | dahn_graph::GraphError::NonFinite { .. },
        ) => DiffusionError::Diverged { steps }.into(),
        _ => e,
    }
}

impl DiffusionOperator for FactoredDiffusion {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.weights.n();
        validate::input("FactoredDiffusion input", x, n)?;
        if self.eta == 0.0 || self.steps == 0 {
            return Ok(x.clone());
        }
        let deg = self.degrees.to_dtype(x.dtype())?.to_device(x.device())?;
        let mut x = x.clone();
        match &self.weights {
            // One fused pass per step (hopfield_cuda::sparse); a step that overflows leaves
            // inf/NaN that the check below reports as Diverged.
            GraphMatrix::Sparse(c) => match if self.steps >= 2 {
                c.sparse().locality()
            } else {
                c.sparse().cached_locality()
            } {
                // A large graph numbered without regard to its neighbours: the steps run in its
                // locality order (rows permuted in once and back once), where they read
                // neighbours from nearby memory; bit for bit the same result. The order costs
                // several single steps to build, so one step uses it only when it exists.
                Some(loc) => {
                    let deg = loc.to_order(&deg)?;
                    let mut xp = loc.to_order(&x)?;
                    for _ in 0..self.steps {
                        xp = hopfield_cuda::sparse::diffusion_step(
                            loc.matrix(),
                            &deg,
                            self.eta,
                            &xp,
                        )?;
                    }
                    x = loc.from_order(&xp)?;
                }
                None => {
                    for _ in 0..self.steps {
                        x = hopfield_cuda::sparse::diffusion_step(c.sparse(), &deg, self.eta, &x)?;
                    }
                }
            },
            GraphMatrix::Dense(_) => {
                let mut shape = vec![n];
                shape.resize(x.rank(), 1);
                let keep = (1.0 - (deg * self.eta)?)?.reshape(shape)?;
                for t in 0..self.steps {
                    let wx = self.weights.matmul(&x).map_err(|e| diverged_at(e, t + 1))?;
                    x = (x.broadcast_mul(&keep)? + (wx * self.eta)?)?;
                }
            }
        }
        validate::diverged(&x, self.steps)?;
        Ok(x)
    }
    fn eta(&self) -> f64 {
        self.eta
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn mode(&self) -> DiffusionMode {
        DiffusionMode::Factored
    }
    fn n(&self) -> usize {
        self.weights.n()
    }
    fn with_params(&self, eta: f64, steps: usize) -> Result<Arc<dyn DiffusionOperator>> {
        Ok(Arc::new(Self::from_graph(
            self.weights.clone(),
            &self.degrees,
            eta,
            steps,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleDiffusion;
    use candle_core::{Device, Var};
    use dahn_graph::GraphBuilder;

    fn patterns() -> Result<Tensor> {
        Tensor::new(
            &[
                [1f64, 0.2, 0.1],
                [0.9, 0.3, 0.0],
                [0.1, 1.0, 0.2],
                [0.0, 0.8, 0.5],
                [0.3, 0.3, 1.0],
                [0.5, 0.5, 0.5],
            ],
            &Device::Cpu,
        )
    }

    /// A graph large enough for the locality order, numbered so that it pays: the steps run
    /// in that order and give the direct steps' result bit for bit, and the same gradient.
    /// A ring just large enough for the locality order, its nodes numbered by a stride so
    /// that neighbours are far apart, with `weight(i)` on the link from node i.
    fn shuffled_ring(weight: impl Fn(usize) -> f64) -> Result<(usize, Csr)> {
        let n = hopfield_cuda::sparse::LOCALITY_MIN_NODES + 11;
        let label = |i: usize| ((i * 7919) % n) as u32;
        let t: Vec<(u32, u32, f64)> = (0..n)
            .flat_map(|i| {
                let (a, b) = (label(i), label((i + 1) % n));
                [(a, b, weight(i)), (b, a, weight(i))]
            })
            .collect();
        Ok((n, Csr::from_triplets(n, t, Merge::Sum)?))
    }

    #[test]
    fn large_shuffled_graphs_step_in_their_locality_order() -> Result<()> {
        let (n, w) = shuffled_ring(|i| 0.5 + (i % 5) as f64 / 10.0)?;
        assert!(w.sparse().locality().is_some());
        let deg = w.degrees(DType::F64, &Device::Cpu)?;
        let (eta, steps) = (0.3, 3);
        let op = FactoredDiffusion::from_graph(GraphMatrix::from(w.clone()), &deg, eta, steps)?;
        let x0 = Tensor::randn(0f64, 1., (n, 3), &Device::Cpu)?;
        let (xa, xb) = (Var::from_tensor(&x0)?, Var::from_tensor(&x0)?);
        let got = op.apply(xa.as_tensor())?;
        let mut want = xb.as_tensor().clone();
        for _ in 0..steps {
            want = hopfield_cuda::sparse::diffusion_step(w.sparse(), &deg, eta, &want)?;
        }
        assert_eq!(got.to_vec2::<f64>()?, want.to_vec2::<f64>()?);
        let c = Tensor::randn(0f64, 1., (n, 3), &Device::Cpu)?;
        let ga = (got * &c)?.sum_all()?.backward()?;
        let gb = (want * &c)?.sum_all()?.backward()?;
        let diff = (ga.get(xa.as_tensor()).unwrap() - gb.get(xb.as_tensor()).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        // The backward pass ran on the renumbered matrix: its transpose was built.
        let loc = w.sparse().locality().unwrap();
        assert!(loc.matrix().transpose_is_cached());
        Ok(())
    }

    /// One step runs as numbered on a graph whose locality order was never built (and does
    /// not build it), and through the order once it exists: the same result bit for bit both
    /// ways, and the same gradient.
    #[test]
    fn one_step_uses_the_locality_order_only_once_it_exists() -> Result<()> {
        let (n, w) = shuffled_ring(|_| 0.5)?;
        let deg = w.degrees(DType::F64, &Device::Cpu)?;
        let op = FactoredDiffusion::from_graph(GraphMatrix::from(w.clone()), &deg, 0.3, 1)?;
        let x0 = Tensor::randn(0f64, 1., (n, 2), &Device::Cpu)?;
        let want = hopfield_cuda::sparse::diffusion_step(w.sparse(), &deg, 0.3, &x0)?;
        let c = Tensor::randn(0f64, 1., (n, 2), &Device::Cpu)?;
        let grad = |y: &Tensor, x: &Var| -> Result<Vec<Vec<f64>>> {
            let g = (y * &c)?.sum_all()?.backward()?;
            g.get(x.as_tensor()).unwrap().to_vec2::<f64>()
        };
        let x = Var::from_tensor(&x0)?;
        let direct = op.apply(x.as_tensor())?;
        assert_eq!(direct.to_vec2::<f64>()?, want.to_vec2::<f64>()?);
        let g_direct = grad(&direct, &x)?;
        assert!(w.sparse().cached_locality().is_none());

        let loc = w.sparse().locality().expect("a shuffled ring pays");
        assert!(!loc.matrix().transpose_is_cached());
        let x = Var::from_tensor(&x0)?;
        let ordered = op.apply(x.as_tensor())?;
        assert_eq!(ordered.to_vec2::<f64>()?, want.to_vec2::<f64>()?);
        let g_ordered = grad(&ordered, &x)?;
        // The backward pass ran on the renumbered matrix.
        assert!(loc.matrix().transpose_is_cached());
        for (a, b) in g_direct.iter().flatten().zip(g_ordered.iter().flatten()) {
            assert!((a - b).abs() < 1e-12, "{a} {b}");
        }
        Ok(())
    }

    #[test]
    fn sparse_factored_equals_simple_on_unnormalized_laplacian() -> Result<()> {
        let g = GraphBuilder::new().k(2).build(&patterns()?)?;
        let fac = FactoredDiffusion::from_graph(g.matrix(), &g.degrees()?, 0.2, 2)?;
        let simple = SimpleDiffusion::new(g.laplacian(false).into(), 0.2)?;
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
        let a = fac.apply(x.as_tensor())?;
        let b = simple.apply(&simple.apply(x.as_tensor())?)?;
        assert!((&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        let ga = a.sum_all()?.backward()?;
        let gb = b.sum_all()?.backward()?;
        let d = (ga.get(x.as_tensor()).unwrap() - gb.get(x.as_tensor()).unwrap())?;
        assert!(d.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        // From the Laplacian (dense and sparse) gives the same operator.
        let l = g.laplacian(false);
        let c = FactoredDiffusion::from_laplacian(
            &l.to_dense(DType::F64, &Device::Cpu)?.into(),
            0.2,
            2,
        )?
        .apply(x.as_tensor())?;
        let s = FactoredDiffusion::from_laplacian(&l.into(), 0.2, 2)?.apply(x.as_tensor())?;
        assert!((&a - c)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        assert!((&a - s)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-14);
        Ok(())
    }

    #[test]
    fn small_degree_laplacian_is_accepted_and_normalized_rejected() -> Result<()> {
        // B9/D11: max degree 0.3 <= 1.5 is a valid unnormalised Laplacian.
        let l = Tensor::new(&[[0.3f64, -0.3], [-0.3, 0.3]], &Device::Cpu)?;
        let op = FactoredDiffusion::from_laplacian(&l.into(), 0.5, 1)?;
        let y = op
            .apply(&Tensor::new(&[[1f64], [0.]], &Device::Cpu)?)?
            .to_vec2::<f64>()?;
        assert!((y[0][0] - 0.85).abs() < 1e-15);
        let g = GraphBuilder::new().k(2).build(&patterns()?)?;
        let e = FactoredDiffusion::from_laplacian(&g.laplacian(true).into(), 0.1, 1).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::NotUnnormalizedLaplacian { .. })
        ));
        Ok(())
    }

    #[test]
    fn large_k_instability_is_rejected() -> Result<()> {
        // D12: degrees near N - 1 with eta = 0.1 amplify; max degree > 20 -> eta * deg > 2.
        let n = 30;
        let x = Tensor::ones((n, 4), DType::F64, &Device::Cpu)?;
        let x = (x + Tensor::randn(0f64, 0.05, (n, 4), &Device::Cpu)?)?;
        let g = GraphBuilder::new().k(n).build(&x)?;
        let e = FactoredDiffusion::from_graph(g.matrix(), &g.degrees()?, 0.1, 1).unwrap_err();
        assert!(matches!(
            DiffusionError::find(&e),
            Some(DiffusionError::Unstable { .. })
        ));
        Ok(())
    }
}
