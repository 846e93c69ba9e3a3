//! Logit diffusion (difflayers' `use_logit_diffusion`, which always crashes there, D2): the
//! association logits of every head are diffused over the key graph of their group before the
//! softmax, at every update step.

use super::padding::Padding;
use crate::stage::LogitTransform;
use candle_core::{Result, Tensor};
use dahn_diffusion::DiffusionOperator;
use std::sync::Arc;

/// The logit diffusion of one call: per group of samples, its batch range and the operator of
/// its key graph (`None`: that group's logits pass unchanged).
pub(super) struct LogitDiffusion {
    /// `(first sample, samples)` of each group.
    pub(super) ranges: Vec<(usize, usize)>,
    pub(super) operators: Vec<Option<Arc<dyn DiffusionOperator>>>,
    /// The stored patterns each group's graph was built on (its padding mask's kept ones).
    pub(super) paddings: Vec<Option<Padding>>,
    /// Stored patterns S per sample: logit columns past it are the zero pattern, no node.
    pub(super) stored: usize,
}

impl LogitTransform for LogitDiffusion {
    fn transform(&self, logits: &Tensor) -> Result<Tensor> {
        let s = self.stored;
        let mut parts = Vec::with_capacity(self.ranges.len());
        for ((&(a, len), op), pad) in self.ranges.iter().zip(&self.operators).zip(&self.paddings) {
            let part = logits.narrow(0, a, len)?;
            let Some(op) = op else {
                parts.push(part);
                continue;
            };
            // (B, H, L, S') -> nodes first (n, B*H*L); the zero pattern (if any) and padded
            // patterns are no nodes.
            let (b, h, l, s_all) = part.dims4()?;
            let cols = part.narrow(3, 0, s)?;
            let nodes = match pad {
                Some(p) => p.kept(&cols, 3)?,
                None => cols.clone(),
            };
            let n_nodes = nodes.dim(3)?;
            let flat = nodes.reshape((b * h * l, n_nodes))?.t()?.contiguous()?;
            let diffused = op.apply(&flat)?.t()?.reshape((b, h, l, n_nodes))?;
            let diffused = match pad {
                Some(p) => p.restore(&diffused, &cols, 3)?,
                None => diffused,
            };
            parts.push(if s_all > s {
                Tensor::cat(&[&diffused, &part.narrow(3, s, s_all - s)?], 3)?
            } else {
                diffused
            });
        }
        Tensor::cat(&parts, 0)
    }
}
