//! Hostile input to hopfield-core's functional API (issue 12): the three entry points
//! (`hopfield_core_forward`, `hopfield_core_output`, `hopfield_core_output_shared`) over random
//! sizes (zeros included), dtypes, value scales (NaN and inf included), betas, step rules and
//! masks. Every call returns a typed error or a finite result; none panics or hangs. A longer
//! run:
//!
//! ```text
//! PROPTEST_CASES=3000 cargo test --release -p hopfield-core --test hostile
//! ```

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_core::*;
use proptest::prelude::*;

#[path = "../../hopfield-cuda/tests/support/hostile.rs"]
mod support;
use support::{outcome, tensor};

/// Errors must be the workspace's typed errors.
fn typed(e: &candle_core::Error) -> bool {
    HopfieldError::find(e).is_some() || hopfield_cuda::KernelError::find(e).is_some()
}

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    l: usize,
    s: usize,
    e: usize,
    heads: usize,
    input: DType,
    scale: f64,
    beta: f64,
    steps: UpdateSteps,
    zero: bool,
    mask: u8,
    entry: u8,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0usize..3, 0usize..4, 0usize..5, prop_oneof![Just(2usize), Just(4), Just(6)]),
        (1usize..3, prop_oneof![4 => Just(DType::F32), 1 => Just(DType::F64), 1 => Just(DType::F16), 1 => Just(DType::U32)]),
        (
            prop_oneof![4 => Just(1.0), 1 => Just(1e20), 1 => Just(f64::NAN), 1 => Just(f64::INFINITY), 1 => Just(0.0)],
            prop_oneof![3 => Just(0.5), 1 => Just(1e39), 1 => Just(f64::NAN), 1 => Just(-3.0)],
        ),
        prop_oneof![
            Just(UpdateSteps::Max(0)),
            Just(UpdateSteps::Max(3)),
            Just(UpdateSteps::Max(usize::MAX)),
            Just(UpdateSteps::UntilConvergence),
        ],
        (any::<bool>(), 0u8..5, 0u8..3, any::<u64>()),
    )
        .prop_map(|((n, l, s, e), (heads, input), (scale, beta), steps, (zero, mask, entry, seed))| Case {
            n,
            l,
            s,
            e,
            heads,
            input,
            scale,
            beta,
            steps,
            zero,
            mask,
            entry,
            seed,
        })
}

fn run(c: &Case) -> Result<Tensor> {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let weights = CoreWeights::load(CoreLayout::new(c.e, c.heads), vb)?;
    let mut cfg = CoreConfig::default().with_scaling(Scaling::Scalar(c.beta));
    cfg.update_steps_max = c.steps.clone();
    cfg.max_convergence_steps = 10;
    cfg.on_no_convergence = OnNoConvergence::Stop;
    cfg.add_zero_association = c.zero;
    let q = tensor(&[c.n, c.l, c.e], c.input, c.scale, c.seed)?;
    let k = tensor(&[c.n, c.s, c.e], c.input, 1.0, c.seed + 1)?;
    let (fm, im);
    let mut masks = Masks::default();
    match c.mask {
        1 => {
            fm = tensor(&[c.l, c.s], DType::F32, 1.0, c.seed + 2)?;
            masks.association_mask = Some(&fm);
        }
        2 => {
            fm = Tensor::full(f32::NAN, (c.l, c.s), &Device::Cpu)?;
            masks.association_mask = Some(&fm);
        }
        3 => {
            im = Tensor::ones((c.n, c.s), DType::U8, &Device::Cpu)?;
            masks.stored_pattern_padding_mask = Some(&im);
        }
        4 => {
            im = Tensor::ones((c.n + 1, c.s), DType::U8, &Device::Cpu)?;
            masks.stored_pattern_padding_mask = Some(&im);
        }
        _ => {}
    }
    match c.entry {
        0 => hopfield_core_forward(&q, &k, &k, &weights, &cfg, masks, false).map(|o| o.output),
        1 => hopfield_core_output(&q, &k, &k, &weights, &cfg, masks, false),
        _ => hopfield_core_output_shared(
            &q,
            [InputAffine::default(); 3],
            &weights,
            &cfg,
            masks,
            false,
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn core_never_panics_hangs_or_returns_nan(c in case()) {
        outcome(typed, || run(&c)).map_err(|e| TestCaseError::fail(format!("{e} in {c:?}")))?;
    }
}
