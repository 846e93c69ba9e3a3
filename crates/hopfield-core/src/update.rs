//! The Hopfield update rule `xi <- softmax(beta K^T xi)`, iterated per (sample, head) under one
//! stopping rule (`steps.rs`): explicitly, forming each association (what `forward_full` and the
//! association getters return), and on the fused kernels, where the state update is a retrieval
//! with the keys as values and the association is never formed.

use crate::config::CoreConfig;
use crate::error::HopfieldError;
use crate::forward::LogitTransform;
use crate::steps::Schedule;
use candle_core::{DType, Result, Tensor};
use hopfield_cuda::retrieval::{association_change, retrieve_with_lse, Retrieval};

/// hflayers' iterated updates on the fused kernels: the state `(N, L, H, hd)` is replaced by
/// `xi(state) k` (a retrieval with the keys as values) per (sample, head) until its budget is
/// spent or the association changed by at most eps, measured by
/// [`association_change`] from the two states' log-sum-exps, so no association is formed.
/// Same decisions as the explicit loop of [`hopfield_core_forward_mapped`] (which forms them),
/// up to rounding at the eps boundary. Returns the final state.
pub(crate) fn fused_update_steps(
    q: &Tensor,
    k: &Tensor,
    spec: &Retrieval,
    cfg: &CoreConfig,
) -> Result<Tensor> {
    let (n, heads) = (q.dim(0)?, q.dim(2)?);
    let mut schedule = Schedule::new(cfg, n, heads)?;
    let mut state = q.clone();
    // The previous state and its log-sum-exp, for the convergence test.
    let mut prev: Option<(Tensor, Tensor)> = None;
    let mut t = 0usize;
    while schedule.needed(t) {
        let (next, lse) = retrieve_with_lse(&state, k, k, spec)?;
        let lse = lse.detach();
        let change = match &prev {
            Some((ps, pl)) => Some(association_change(&state, &lse, ps, pl, k, spec)?),
            None => None,
        };
        if !schedule.advance(t, change.as_deref()) {
            break;
        }
        let next = schedule.select(next, &state, (n, 1, heads, 1), q.device())?;
        prev = Some((std::mem::replace(&mut state, next), lse));
        t += 1;
    }
    schedule.check()?;
    Ok(state)
}

/// The explicit iteration of hflayers' `hopfield_core_forward`: forms the association
/// `xi = softmax(beta q k^T [mapped] + mask)` `(N, H, L, S')`, then, per (sample, head) under the
/// stopping rule, replaces the state by `xi k` (not re-projected) and associates again until the
/// budget is spent or the association changed by at most eps (Frobenius norm). `q` and `k` are
/// heads-major `(N, H, T, d)`, `k` including the zero pattern when there is one. Returns the
/// final association and the schedule (steps run, convergence).
pub(crate) fn explicit_updates(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    cfg: &CoreConfig,
    transform: Option<&dyn LogitTransform>,
) -> Result<(Tensor, Schedule)> {
    let (n, heads) = (q.dim(0)?, q.dim(1)?);
    let (dtype, dev) = (q.dtype(), q.device());
    let kt = k.transpose(2, 3)?.contiguous()?;
    let betas = cfg.scaling.per_head(heads)?;
    let beta = Tensor::new(betas.as_slice(), dev)?
        .to_dtype(dtype)?
        .reshape((1, heads, 1, 1))?;
    if !hopfield_cuda::all_finite(&beta)? {
        return Err(HopfieldError::Config {
            field: "scaling",
            reason: format!("beta {betas:?} does not fit the model's dtype {dtype:?}"),
        }
        .into());
    }

    let associate = |state: &Tensor| -> Result<Tensor> {
        let logits = state.broadcast_mul(&beta)?.matmul(&kt)?;
        // Same semantics as the fused kernel: NaN or +inf logits (inputs too large for the
        // dtype) are an error, not a softmax of infinities.
        hopfield_cuda::expect_logits_in_range(&logits, state.dims())?;
        let logits = match transform {
            Some(t) => t.transform(&logits)?,
            None => logits,
        };
        match mask {
            Some(m) => cfg.association.apply(&logits.broadcast_add(m)?),
            None => cfg.association.apply(&logits),
        }
    };

    let mut schedule = Schedule::new(cfg, n, heads)?;
    let mut xi = associate(q)?;
    let mut prev: Option<Tensor> = None;
    let mut t = 0usize;
    while schedule.needed(t) {
        let change = match &prev {
            Some(p) => Some(
                (&xi - p)?
                    .sqr()?
                    .sum((2, 3))?
                    .sqrt()?
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?,
            ),
            None => None,
        };
        if !schedule.advance(t, change.as_deref()) {
            break;
        }
        let state = xi.matmul(k)?;
        let next = associate(&state)?;
        let next = schedule.select(next, &xi, (n, heads, 1, 1), dev)?;
        prev = Some(std::mem::replace(&mut xi, next));
        t += 1;
    }
    schedule.check()?;
    Ok((xi, schedule))
}
