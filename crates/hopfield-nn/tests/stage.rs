//! The `PatternStage` extension point of `Hopfield`: a stage that changes nothing is exactly
//! `forward_full`, the stage sees the normalised batch-major patterns, and a logit transform acts
//! before the softmax at every update step.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;
use hopfield_nn::stage::{LogitTransform, PatternStage, Patterns, Staged};
use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};

mod common;
use common::{max_diff, randomize, vb};

/// Passes the patterns on, with `logits` as the transform, and reports the shapes it saw.
struct Pass<L: Fn() -> Option<Box<dyn LogitTransform>>> {
    logits: L,
}

impl<L: Fn() -> Option<Box<dyn LogitTransform>>> PatternStage for Pass<L> {
    type Report = [Vec<usize>; 3];
    fn stage(&self, p: Patterns, _masks: Masks) -> Result<Staged<Self::Report>> {
        let report = [
            p.stored.dims().to_vec(),
            p.state.dims().to_vec(),
            p.projection.dims().to_vec(),
        ];
        Ok(Staged {
            patterns: p,
            logits: (self.logits)(),
            report,
        })
    }
}

struct Scale(f64);
impl LogitTransform for Scale {
    fn transform(&self, logits: &Tensor) -> Result<Tensor> {
        logits * self.0
    }
}

fn cfg() -> HopfieldConfig {
    let mut c = HopfieldConfig::new(8)
        .with_num_heads(2)
        .with_update_steps_max(Some(3))
        .with_update_steps_eps(1e-300); // every step runs
    c.batch_first = false;
    c.add_zero_association = true;
    c
}

fn inputs() -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    // Sequence-first (batch_first = false): (T, N, E).
    let stored = Tensor::randn(0f64, 1., (7, 2, 8), &dev)?;
    let state = Tensor::randn(0f64, 1., (4, 2, 8), &dev)?;
    let mask = Tensor::new(&[[0u8, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0]], &dev)?;
    Ok((stored, state, mask))
}

#[test]
fn a_stage_that_changes_nothing_is_forward_full() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(cfg(), vb(&map))?;
    randomize(&map)?;
    let (stored, state, mask) = inputs()?;
    let input = HopfieldInput::from((&stored, &state, &stored));
    let masks = Masks {
        stored_pattern_padding_mask: Some(&mask),
        association_mask: None,
    };
    let plain = h.forward_full(input, masks, false)?;
    let (staged, seen) = h.forward_staged(input, &Pass { logits: || None }, masks, false)?;
    assert_eq!(max_diff(&plain.output, &staged.output)?, 0.0);
    assert_eq!(max_diff(&plain.association, &staged.association)?, 0.0);
    assert_eq!(plain.steps_run, staged.steps_run);
    // Batch-major whatever the module's layout.
    assert_eq!(seen, [vec![2, 7, 8], vec![2, 4, 8], vec![2, 7, 8]]);
    // The identity as a transform takes the same (explicit) path.
    let identity = Pass {
        logits: || Some(Box::new(Scale(1.0)) as Box<dyn LogitTransform>),
    };
    let (mapped, _) = h.forward_staged(input, &identity, masks, false)?;
    assert_eq!(max_diff(&plain.output, &mapped.output)?, 0.0);
    Ok(())
}

#[test]
fn a_logit_transform_acts_before_the_softmax_at_every_step() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(cfg().with_scaling(0.5), vb(&map))?;
    randomize(&map)?;
    // Same weights (same VarMap), twice the beta.
    let sharp = Hopfield::new(cfg().with_scaling(1.0), vb(&map))?;
    let (stored, state, mask) = inputs()?;
    let input = HopfieldInput::from((&stored, &state, &stored));
    let masks = Masks {
        stored_pattern_padding_mask: Some(&mask),
        association_mask: None,
    };
    let double = Pass {
        logits: || Some(Box::new(Scale(2.0)) as Box<dyn LogitTransform>),
    };
    let (doubled, _) = h.forward_staged(input, &double, masks, false)?;
    let want = sharp.forward_full(input, masks, false)?;
    assert!(max_diff(&doubled.output, &want.output)? < 1e-12);
    assert!(max_diff(&doubled.association, &want.association)? < 1e-12);
    // And it is not a no-op.
    let plain = h.forward_full(input, masks, false)?;
    assert!(max_diff(&doubled.output, &plain.output)? > 1e-6);
    Ok(())
}
