//! Stored patterns hidden by a padding mask stay out of the diffusion (D8): the graph, the
//! dynamics and logit diffusion see only the kept patterns, and the padded ones are put back
//! unchanged afterwards, so padding never changes the result.

use candle_core::{Result, Tensor};

/// The stored patterns of one sample that its padding mask keeps, and how to put them back.
#[derive(Debug, Clone)]
pub(super) struct Padding {
    kept: Tensor,
    masked: Tensor,
    inverse: Tensor,
}

impl Padding {
    /// `None` when row `n` of the `(N, S)` mask masks nothing (or everything: then there is
    /// nothing to diffuse and the patterns pass unchanged to the core, which masks them).
    pub(super) fn of_row(mask: &Tensor, n: usize) -> Result<Option<Self>> {
        let row = mask
            .get(n)?
            .to_dtype(candle_core::DType::U32)?
            .to_vec1::<u32>()?;
        let kept: Vec<u32> = (0..row.len() as u32)
            .filter(|&i| row[i as usize] == 0)
            .collect();
        let masked: Vec<u32> = (0..row.len() as u32)
            .filter(|&i| row[i as usize] != 0)
            .collect();
        if kept.is_empty() || masked.is_empty() {
            return Ok(None);
        }
        // Position of pattern i in [kept..., masked...].
        let mut inverse = vec![0u32; row.len()];
        for (pos, &i) in kept.iter().chain(&masked).enumerate() {
            inverse[i as usize] = pos as u32;
        }
        let dev = mask.device();
        Ok(Some(Self {
            kept: Tensor::new(kept.as_slice(), dev)?,
            masked: Tensor::new(masked.as_slice(), dev)?,
            inverse: Tensor::new(inverse.as_slice(), dev)?,
        }))
    }

    /// How many patterns the mask keeps.
    pub(super) fn kept_count(&self) -> usize {
        self.kept.elem_count()
    }

    /// The kept patterns along `dim`.
    pub(super) fn kept(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        x.contiguous()?.index_select(&self.kept, dim)
    }

    /// `processed` (the kept patterns) back in place, the masked ones taken from `original`.
    pub(super) fn restore(
        &self,
        processed: &Tensor,
        original: &Tensor,
        dim: usize,
    ) -> Result<Tensor> {
        let masked = original.contiguous()?.index_select(&self.masked, dim)?;
        Tensor::cat(&[processed, &masked], dim)?.index_select(&self.inverse, dim)
    }
}
