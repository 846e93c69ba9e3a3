//! The stopping rule of hflayers' iterated updates, per (sample, head): one source of truth for the
//! explicit loop (which forms the associations) and the fused loop (which measures their change
//! from log-sum-exps), so both take the same decisions.

use crate::config::{CoreConfig, OnNoConvergence};
use crate::error::HopfieldError;
use candle_core::{Device, Result, Tensor};

/// Which (sample, head) pairs run another step: those within their step budget and, after the
/// first step, whose association still changed by more than eps. Deciding per pair (not over the
/// batch, hflayers quirk Q11) keeps every result independent of batch composition.
pub(crate) struct Schedule {
    heads: usize,
    max_steps: Vec<Option<usize>>,
    eps: Vec<f64>,
    cap: usize,
    on_no_convergence: OnNoConvergence,
    active: Vec<bool>,
    /// Update steps run after the first association, index `n * H + h`.
    pub steps_run: Vec<usize>,
    unconverged: usize,
}

impl Schedule {
    /// All `n * heads` pairs active, no step run yet.
    pub fn new(cfg: &CoreConfig, n: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            heads,
            max_steps: cfg.update_steps_max.per_head(heads)?,
            eps: cfg.update_steps_eps.per_head(heads)?,
            cap: cfg.max_convergence_steps,
            on_no_convergence: cfg.on_no_convergence,
            active: vec![true; n * heads],
            steps_run: vec![0; n * heads],
            unconverged: 0,
        })
    }

    /// Every loop is bounded by `max_convergence_steps`, an explicit step count included: a
    /// count of `usize::MAX` with a tiny eps would otherwise never stop in f32.
    fn within(&self, h: usize, t: usize) -> bool {
        t < self.max_steps[h].map_or(self.cap, |m| m.min(self.cap))
    }

    /// Whether stopping at the step bound while still changing means "did not converge": for
    /// "until convergence", and for explicit step counts the cap cut short.
    fn capped(&self, h: usize) -> bool {
        self.max_steps[h].is_none_or(|m| m > self.cap)
    }

    /// Whether iteration `t` decides anything: some active pair may step, or (until convergence,
    /// at the cap) its change decides whether it counts as unconverged. If not, stop without
    /// computing the change.
    pub fn needed(&self, t: usize) -> bool {
        self.active.iter().enumerate().any(|(i, a)| {
            let h = i % self.heads;
            *a && (self.within(h, t) || self.capped(h))
        })
    }

    /// Applies iteration `t`'s decisions given each pair's association change (`None` before
    /// the first step); returns whether any pair takes another step.
    pub fn advance(&mut self, t: usize, change: Option<&[f64]>) -> bool {
        let mut any = false;
        for i in 0..self.active.len() {
            let h = i % self.heads;
            let moving = change.is_none_or(|c| c[i] > self.eps[h]);
            let within = self.within(h, t);
            let a = self.active[i];
            if a && moving && !within && self.capped(h) {
                self.unconverged += 1;
            }
            self.active[i] = a && moving && within;
            if self.active[i] {
                self.steps_run[i] += 1;
                any = true;
            }
        }
        any
    }

    /// `next` where the pair is still active, `current` where it stopped (finished pairs keep
    /// their state or association). `pair_shape` places `(N, H)` in the tensors' layout, e.g.
    /// `(n, heads, 1, 1)` or `(n, 1, heads, 1)`.
    pub fn select(
        &self,
        next: Tensor,
        current: &Tensor,
        pair_shape: (usize, usize, usize, usize),
        dev: &Device,
    ) -> Result<Tensor> {
        if self.active.iter().all(|a| *a) {
            return Ok(next);
        }
        let keep: Vec<u8> = self.active.iter().map(|a| u8::from(*a)).collect();
        Tensor::from_vec(keep, pair_shape, dev)?
            .broadcast_as(next.shape())?
            .where_cond(&next, current)
    }

    /// False only if some pair stopped at the cap still changing.
    pub fn converged(&self) -> bool {
        self.unconverged == 0
    }

    /// The error of [`OnNoConvergence::Error`] when some pair hit the cap still changing.
    pub fn check(&self) -> Result<()> {
        if self.unconverged > 0 && self.on_no_convergence == OnNoConvergence::Error {
            return Err(HopfieldError::NotConverged {
                cap: self.cap,
                unconverged: self.unconverged,
            }
            .into());
        }
        Ok(())
    }
}
