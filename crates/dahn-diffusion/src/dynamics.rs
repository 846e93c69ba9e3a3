//! [`DynamicsEngine`]: the diffuse -> attend loop, and [`compute_adaptive_eta`].

use crate::{validate, AttentionOperator, DiffusionError, DiffusionOperator, EnergyTracker};
use candle_core::{DType, Result, Tensor, D};
use dahn_graph::GraphMatrix;
use std::sync::Arc;

/// Graph tensors and switches for [`DynamicsEngine::run_dynamics`] (difflayers' keyword
/// arguments; `diffuse_query` and `diffuse_key` default to true, as difflayers).
#[derive(Debug, Clone)]
pub struct DynamicsInputs<'a> {
    /// Neighbour table for graph attention.
    pub adj_indices: Option<&'a Tensor>,
    /// Laplacian for the energy (takes precedence over W/deg).
    pub laplacian: Option<&'a GraphMatrix>,
    /// Adjacency for the factored energy.
    pub weights: Option<&'a GraphMatrix>,
    /// Degrees for the factored energy.
    pub degrees: Option<&'a Tensor>,
    /// Diffuse Q each step.
    pub diffuse_query: bool,
    /// Diffuse K each step.
    pub diffuse_key: bool,
}

impl Default for DynamicsInputs<'_> {
    fn default() -> Self {
        Self {
            adj_indices: None,
            laplacian: None,
            weights: None,
            degrees: None,
            diffuse_query: true,
            diffuse_key: true,
        }
    }
}

/// Result of [`DynamicsEngine::run_dynamics`].
#[derive(Debug, Clone)]
pub struct DynamicsOutput {
    /// Final queries.
    pub query: Tensor,
    /// Final (diffused) keys.
    pub key: Tensor,
    /// Loop steps run (fewer than `steps` after an energy stop).
    pub steps_run: usize,
}

/// difflayers' `DynamicsEngine(diffusion_op, attention_op, steps, energy_tracker,
/// query_diffusion_op)`. `steps` defaults to the operator's `steps`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dahn_diffusion::{AttentionOperator, DynamicsEngine, DynamicsInputs, SimpleDiffusion};
/// let l = Tensor::new(&[[1f64, -1.], [-1., 1.]], &Device::Cpu)?;
/// let op = std::sync::Arc::new(SimpleDiffusion::new(l.into(), 0.1)?);
/// let mut engine = DynamicsEngine::new(op).attention(AttentionOperator::default()).steps(2);
/// let k = Tensor::new(&[[1f64, 0.], [0., 1.]], &Device::Cpu)?;
/// let out = engine.run_dynamics(&k, &k, &k, &DynamicsInputs { diffuse_query: false, ..Default::default() })?;
/// assert_eq!((out.steps_run, out.query.dims()), (2, &[2usize, 2][..]));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DynamicsEngine {
    op: Arc<dyn DiffusionOperator>,
    query_op: Option<Arc<dyn DiffusionOperator>>,
    attention: Option<AttentionOperator>,
    steps: usize,
    tracker: Option<EnergyTracker>,
}

impl DynamicsEngine {
    /// An engine around `op` (steps = `op.steps()`, no attention, no tracker).
    pub fn new(op: Arc<dyn DiffusionOperator>) -> Self {
        let steps = op.steps();
        Self {
            op,
            query_op: None,
            attention: None,
            steps,
            tracker: None,
        }
    }

    /// Sets the attention operator (required by `run_dynamics`).
    pub fn attention(mut self, a: AttentionOperator) -> Self {
        self.attention = Some(a);
        self
    }

    /// Sets the number of loop steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Sets the energy tracker.
    pub fn energy_tracker(mut self, t: EnergyTracker) -> Self {
        self.tracker = Some(t);
        self
    }

    /// Sets a separate operator for the queries (default: the key operator).
    pub fn query_op(mut self, op: Arc<dyn DiffusionOperator>) -> Self {
        self.query_op = Some(op);
        self
    }

    /// The tracker (its history holds the energies of the last run).
    pub fn tracker(&self) -> Option<&EnergyTracker> {
        self.tracker.as_ref()
    }

    /// `steps` times: `K = op(K)` if `diffuse_key`; `Q = query_op(Q)` if `diffuse_query`;
    /// `Q = attention(Q, K, V, adj)`; then, with a tracker, the energy of (Q, K) with the
    /// Laplacian if given, else with (W, deg) if given, stopping after a step that signals
    /// `|dE| < tol` (that step is kept). The tracker is reset first. Differentiable w.r.t. Q, K, V.
    /// Errors: `steps > MAX_STEPS` ([`crate::MAX_STEPS`]), and whatever the operators, the
    /// attention and the tracker report (all typed).
    pub fn run_dynamics(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: &DynamicsInputs,
    ) -> Result<DynamicsOutput> {
        let attention = self.attention.ok_or(DiffusionError::Missing(
            "run_dynamics needs an AttentionOperator",
        ))?;
        validate::steps("DynamicsEngine::run_dynamics", self.steps)?;
        // Validated once here (not only inside the loop): with steps = 0 they are returned as is.
        for (t, what) in [
            (q, "run_dynamics: Q"),
            (k, "run_dynamics: K"),
            (v, "run_dynamics: V"),
        ] {
            validate::float(what, t)?;
            validate::finite(what, t)?;
        }
        if let Some(t) = self.tracker.as_mut() {
            t.reset();
        }
        let (mut q, mut k) = (q.clone(), k.clone());
        let mut steps_run = 0;
        for _ in 0..self.steps {
            if inputs.diffuse_key {
                k = self.op.apply(&k)?;
            }
            if inputs.diffuse_query {
                q = self.query_op.as_ref().unwrap_or(&self.op).apply(&q)?;
            }
            q = attention.forward(&q, &k, v, inputs.adj_indices)?;
            steps_run += 1;
            let stop = match (
                self.tracker.as_mut(),
                inputs.laplacian,
                inputs.weights,
                inputs.degrees,
            ) {
                (Some(t), Some(l), _, _) => t.step(&q, &k, l)?.1,
                (Some(t), None, Some(w), Some(d)) => t.step_factored(&q, &k, w, d)?.1,
                _ => false,
            };
            if stop {
                break;
            }
        }
        Ok(DynamicsOutput {
            query: q,
            key: k,
            steps_run,
        })
    }

    /// Diffuses one tensor: `steps` applications of the operator, with the tracker's energy
    /// `step(q_ref, X, L)` after each and the same stop rule when a tracker, `l` and `q_ref` are
    /// given. Unlike difflayers, which applies the operator only once when tracking is off (B14/D22),
    /// this always runs `steps` applications, so turning tracking on never changes the result.
    /// Errors: `steps > MAX_STEPS`, and the operator's and tracker's typed errors.
    pub fn run_diffusion(
        &mut self,
        x: &Tensor,
        l: Option<&GraphMatrix>,
        q_ref: Option<&Tensor>,
    ) -> Result<Tensor> {
        validate::steps("DynamicsEngine::run_diffusion", self.steps)?;
        validate::input("run_diffusion: X", x, self.op.n())?;
        if let Some(t) = self.tracker.as_mut() {
            t.reset();
        }
        let mut x = x.clone();
        for _ in 0..self.steps {
            x = self.op.apply(&x)?;
            if let (Some(t), Some(l), Some(q)) = (self.tracker.as_mut(), l, q_ref) {
                if t.step(q, &x, l)?.1 {
                    break;
                }
            }
        }
        Ok(x)
    }
}

/// Entropy-gated eta: `base_eta * sigmoid(temperature * (H - threshold))` with `H` the mean over
/// all rows of `-sum p log(p + 1e-9)`, `p = softmax(logits, -1)` (difflayers'
/// `compute_adaptive_eta`; a host f64, no gradient). Errors (typed): logits that are not float,
/// rank 0, without rows or columns, or hold NaN/inf; `base_eta` not finite and >= 0;
/// `temperature` or `threshold` not finite.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let uniform = Tensor::zeros((1, 4), candle_core::DType::F64, &Device::Cpu)?;
/// let eta = dahn_diffusion::compute_adaptive_eta(&uniform, 0.2, 5.0, 4f64.ln())?;
/// assert!((eta - 0.1).abs() < 1e-7); // H = ln 4 (up to the 1e-9): sigmoid(0) = 1/2
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn compute_adaptive_eta(
    logits: &Tensor,
    base_eta: f64,
    temperature: f64,
    threshold: f64,
) -> Result<f64> {
    let what = "compute_adaptive_eta";
    validate::param(what, "base_eta", base_eta, true)?;
    validate::param(what, "temperature", temperature, false)?;
    validate::param(what, "threshold", threshold, false)?;
    validate::float("adaptive eta logits", logits)?;
    if logits.rank() == 0 || logits.elem_count() == 0 {
        // The mean entropy of no rows (or a softmax over no entries) is undefined.
        return Err(DiffusionError::Empty {
            what: "adaptive eta logits",
            shape: logits.dims().to_vec(),
        }
        .into());
    }
    validate::finite("adaptive eta logits", logits)?;
    let p = candle_nn::ops::softmax(&logits.detach().to_dtype(DType::F64)?, D::Minus1)?;
    let h = (p.clone() * (p + 1e-9)?.log()?)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()?
        .to_scalar::<f64>()?;
    let s = 1.0 / (1.0 + (-temperature * (h - threshold)).exp());
    Ok(base_eta * s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttentionMode, SimpleDiffusion};
    use candle_core::Device;

    fn setup() -> Result<(Arc<dyn DiffusionOperator>, GraphMatrix, Tensor)> {
        let l = Tensor::new(
            &[[1f64, -1., 0.], [-1., 2., -1.], [0., -1., 1.]],
            &Device::Cpu,
        )?;
        let k = Tensor::new(&[[1f64, 0.], [0.5, 0.5], [0., 1.]], &Device::Cpu)?;
        Ok((
            Arc::new(SimpleDiffusion::new(l.clone().into(), 0.2)?),
            l.into(),
            k,
        ))
    }

    #[test]
    fn run_dynamics_matches_manual_loop() -> Result<()> {
        let (op, l, k) = setup()?;
        let q = Tensor::new(&[[1f64, 0.2]], &Device::Cpu)?;
        let attn = AttentionOperator::new(2.0, AttentionMode::Dense);
        let mut e = DynamicsEngine::new(op.clone())
            .attention(attn)
            .steps(3)
            .energy_tracker(EnergyTracker::new(2.0, 0.2, 0.0));
        let out = e.run_dynamics(
            &q,
            &k,
            &k,
            &DynamicsInputs {
                laplacian: Some(&l),
                diffuse_query: false,
                ..Default::default()
            },
        )?;
        let (mut mq, mut mk) = (q.clone(), k.clone());
        for _ in 0..3 {
            mk = op.apply(&mk)?;
            mq = attn.forward(&mq, &mk, &k, None)?;
        }
        assert_eq!(out.query.to_vec2::<f64>()?, mq.to_vec2::<f64>()?);
        assert_eq!(out.key.to_vec2::<f64>()?, mk.to_vec2::<f64>()?);
        assert_eq!(e.tracker().unwrap().history().len(), 3);
        Ok(())
    }

    #[test]
    fn run_diffusion_applies_steps_with_or_without_tracking() -> Result<()> {
        let (op, l, k) = setup()?;
        let plain = DynamicsEngine::new(op.clone())
            .steps(3)
            .run_diffusion(&k, None, None)?;
        let tracked = DynamicsEngine::new(op.clone())
            .steps(3)
            .energy_tracker(EnergyTracker::new(1.0, 0.2, 0.0))
            .run_diffusion(&k, Some(&l), Some(&k))?;
        let manual = op.apply(&op.apply(&op.apply(&k)?)?)?;
        assert_eq!(plain.to_vec2::<f64>()?, manual.to_vec2::<f64>()?);
        assert_eq!(tracked.to_vec2::<f64>()?, manual.to_vec2::<f64>()?);
        Ok(())
    }

    #[test]
    fn adaptive_eta_extremes() -> Result<()> {
        let peaked = Tensor::new(&[[100f64, 0., 0.]], &Device::Cpu)?;
        let eta = compute_adaptive_eta(&peaked, 0.5, 5.0, 1.0)?;
        assert!((eta - 0.5 / (1.0 + 5f64.exp())).abs() < 1e-9);
        let nan = Tensor::new(&[[f64::NAN, 0.]], &Device::Cpu)?;
        assert!(compute_adaptive_eta(&nan, 0.5, 5.0, 1.0).is_err());
        Ok(())
    }
}
