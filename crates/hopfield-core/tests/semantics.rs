//! The association's semantics checked against independent computations, including every place
//! where we deliberately differ from hflayers (per-head scaling Q2, static inputs Q3/Q4,
//! per-sample convergence Q11, the convergence cap, fully masked rows).

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use hopfield_core::{
    hopfield_core_forward, CoreConfig, CoreLayout, CoreWeights, HopfieldError, Masks,
    OnNoConvergence, Scaling, StepsEps, UpdateSteps,
};

fn weights(layout: CoreLayout, seed_var: &VarMap) -> Result<CoreWeights> {
    CoreWeights::load(
        layout,
        VarBuilder::from_varmap(seed_var, DType::F64, &Device::Cpu),
    )
}

fn randomize(map: &VarMap) -> Result<()> {
    for v in map.all_vars() {
        v.set(&Tensor::randn(0f64, 0.5, v.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

fn static_layout(dim: usize, heads: usize) -> CoreLayout {
    CoreLayout {
        key_as_static: true,
        query_as_static: true,
        value_as_static: true,
        out_dim: None,
        head_dim: dim,
        pattern_dim: dim,
        ..CoreLayout::new(dim * heads, heads)
    }
}

#[test]
fn update_steps_match_a_hand_written_iteration() -> Result<()> {
    let dev = Device::Cpu;
    let (r, y) = (
        Tensor::randn(0f64, 1., (1, 3, 4), &dev)?,
        Tensor::randn(0f64, 1., (1, 5, 4), &dev)?,
    );
    let beta = 2.0;
    let w = CoreWeights::none(static_layout(4, 1));
    let cfg = CoreConfig::default()
        .with_scaling(Scaling::Scalar(beta))
        .with_update_steps_max(UpdateSteps::Max(2))
        .with_update_steps_eps(StepsEps::Scalar(1e-300));
    let out = hopfield_core_forward(&r, &y, &y, &w, &cfg, Masks::default(), false)?;
    // xi_t = softmax(beta * state_t Y^T), state_{t+1} = xi_t Y, three associations in all.
    let mut state = r.clone();
    let mut xi = state.clone();
    for _ in 0..3 {
        xi = candle_nn::ops::softmax(&((&state * beta)?.matmul(&y.t()?)?), D::Minus1)?;
        state = xi.matmul(&y)?;
    }
    assert!(max_diff(&out.association.squeeze(1)?, &xi)? < 1e-12);
    assert!(max_diff(&out.output, &xi.matmul(&y)?)? < 1e-12);
    assert_eq!(out.steps_run, vec![2]);
    Ok(())
}

#[test]
fn per_head_scaling_is_really_per_head() -> Result<()> {
    // hflayers (Q2) tiles beta over features; here head h must equal a run with scalar beta[h].
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(8, 2), &map)?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (2, 5, 8), &dev)?;
    let run = |s: Scaling| -> Result<Tensor> {
        let cfg = CoreConfig::default().with_scaling(s);
        Ok(hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?.association)
    };
    let per_head = run(Scaling::PerHead(vec![0.3, 3.0]))?;
    let h0 = run(Scaling::Scalar(0.3))?;
    let h1 = run(Scaling::Scalar(3.0))?;
    assert!(max_diff(&per_head.narrow(1, 0, 1)?, &h0.narrow(1, 0, 1)?)? < 1e-14);
    assert!(max_diff(&per_head.narrow(1, 1, 1)?, &h1.narrow(1, 1, 1)?)? < 1e-14);
    assert!(max_diff(&h0, &h1)? > 1e-3, "the two betas must matter");
    Ok(())
}

#[test]
fn static_inputs_never_mix_samples() -> Result<()> {
    // hflayers (Q3) pairs head h of sample n with another sample's static data.
    let dev = Device::Cpu;
    let map = VarMap::new();
    let layout = CoreLayout {
        query_as_static: true,
        head_dim: 3,
        pattern_dim: 3,
        ..CoreLayout::new(6, 2)
    };
    let w = weights(layout, &map)?;
    randomize(&map)?;
    let cfg = CoreConfig::default();
    let q = Tensor::randn(0f64, 1., (3, 4, 3), &dev)?;
    let kv = Tensor::randn(0f64, 1., (3, 5, 6), &dev)?;
    let batch = hopfield_core_forward(&q, &kv, &kv, &w, &cfg, Masks::default(), false)?.output;
    for n in 0..3 {
        let (qn, kn) = (q.narrow(0, n, 1)?, kv.narrow(0, n, 1)?);
        let alone = hopfield_core_forward(&qn, &kn, &kn, &w, &cfg, Masks::default(), false)?.output;
        assert!(max_diff(&batch.narrow(0, n, 1)?, &alone)? < 1e-13);
    }
    Ok(())
}

#[test]
fn convergence_is_per_sample_and_head() -> Result<()> {
    // hflayers (Q11) stops a head only when every sample converged, so results depend on the batch.
    let dev = Device::Cpu;
    let w = CoreWeights::none(static_layout(4, 1));
    let cfg = CoreConfig::default()
        .with_scaling(Scaling::Scalar(1.5))
        .with_update_steps_max(UpdateSteps::UntilConvergence)
        .with_update_steps_eps(StepsEps::Scalar(1e-6));
    // Fixed data, so the two samples provably need different numbers of steps: sample 0 starts
    // on (a multiple of) a stored pattern and converges at once, sample 1 starts in between.
    let patterns = [
        [1.0f64, 0.2, -0.3, 0.5],
        [-0.4, 1.1, 0.3, -0.2],
        [0.3, -0.5, 0.9, 0.4],
        [0.8, 0.7, 0.1, -0.6],
        [-0.2, -0.3, -0.8, 0.9],
        [0.5, -0.9, 0.2, 0.1],
    ];
    let y1 = Tensor::new(&patterns, &dev)?;
    let y = Tensor::stack(&[&y1, &y1], 0)?;
    let r = Tensor::new(
        &[
            [[5.0f64, 1.0, -1.5, 2.5], [-2.0, 5.5, 1.5, -1.0]],
            [[0.3, 0.2, 0.1, 0.1], [0.1, -0.1, 0.2, 0.0]],
        ],
        &dev,
    )?;
    let batch = hopfield_core_forward(&r, &y, &y, &w, &cfg, Masks::default(), false)?;
    for n in 0..2 {
        let alone = hopfield_core_forward(
            &r.narrow(0, n, 1)?,
            &y.narrow(0, n, 1)?,
            &y.narrow(0, n, 1)?,
            &w,
            &cfg,
            Masks::default(),
            false,
        )?;
        assert_eq!(alone.steps_run[0], batch.steps_run[n]);
        assert!(max_diff(&batch.output.narrow(0, n, 1)?, &alone.output)? < 1e-14);
    }
    assert_ne!(
        batch.steps_run[0], batch.steps_run[1],
        "the samples must differ"
    );
    Ok(())
}

#[test]
fn until_convergence_has_a_cap() -> Result<()> {
    let dev = Device::Cpu;
    let w = CoreWeights::none(static_layout(4, 1));
    let x = Tensor::randn(0f64, 1., (1, 3, 4), &dev)?;
    let cfg = CoreConfig::default()
        .with_update_steps_max(UpdateSteps::UntilConvergence)
        .with_update_steps_eps(StepsEps::Scalar(1e-300))
        .with_max_convergence_steps(3);
    let err = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("did not converge within the cap of 3"),
        "{err}"
    );
    let cfg = cfg.with_on_no_convergence(OnNoConvergence::Stop);
    let out = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
    assert!(!out.converged);
    assert_eq!(out.steps_run, vec![3]);
    Ok(())
}

#[test]
fn fully_masked_row_retrieves_zero_without_nan() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(4, 1), &map)?;
    randomize(&map)?;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1., (1, 3, 4), &dev)?)?;
    // Row 1 of the association may attend to nothing.
    let mask = Tensor::new(&[[0u8, 1, 0], [1, 1, 1], [0, 0, 0]], &dev)?;
    let masks = Masks {
        association_mask: Some(&mask),
        ..Masks::default()
    };
    let cfg = CoreConfig::default().with_update_steps_max(UpdateSteps::Max(2));
    let xt = x.as_tensor();
    let out = hopfield_core_forward(xt, xt, xt, &w, &cfg, masks, false)?;
    let row = out.association.get(0)?.get(0)?.get(1)?.to_vec1::<f64>()?;
    assert_eq!(row, vec![0.0; 3]);
    let bias = w.out_proj_bias.as_ref().unwrap();
    assert!(max_diff(&out.output.get(0)?.get(1)?, bias)? < 1e-14);
    let g = out.output.sum_all()?.backward()?;
    let gx = g.get(xt).unwrap().flatten_all()?.to_vec1::<f64>()?;
    assert!(gx.iter().all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn dropout_acts_only_in_training_on_the_final_association() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(8, 2), &map)?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (2, 6, 8), &dev)?;
    let cfg = CoreConfig::default().with_dropout(0.5);
    let eval = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), false)?;
    let plain = hopfield_core_forward(
        &x,
        &x,
        &x,
        &w,
        &CoreConfig::default(),
        Masks::default(),
        false,
    )?;
    assert!(max_diff(&eval.output, &plain.output)? == 0.0);
    let train = hopfield_core_forward(&x, &x, &x, &w, &cfg, Masks::default(), true)?;
    assert!(max_diff(&train.output, &plain.output)? > 1e-6);
    assert!(max_diff(&train.association, &plain.association)? == 0.0);
    Ok(())
}

#[test]
fn masks_are_validated() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(4, 2), &map)?;
    let x = Tensor::randn(0f64, 1., (2, 3, 4), &dev)?;
    let cfg = CoreConfig::default();
    let bad = Tensor::zeros((3, 4), DType::U8, &dev)?;
    let masks = Masks {
        association_mask: Some(&bad),
        ..Masks::default()
    };
    let e = hopfield_core_forward(&x, &x, &x, &w, &cfg, masks, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("association_mask: expected shape (L, S) = (3, 3)"),
        "{e}"
    );
    let pad = Tensor::zeros((2, 3), DType::F64, &dev)?;
    let masks = Masks {
        stored_pattern_padding_mask: Some(&pad),
        ..Masks::default()
    };
    let e = hopfield_core_forward(&x, &x, &x, &w, &cfg, masks, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("stored_pattern_padding_mask: unsupported dtype F64"),
        "{e}"
    );
    Ok(())
}

#[test]
fn inputs_are_validated() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(4, 2), &map)?;
    let cfg = CoreConfig::default();
    let x = Tensor::randn(0f64, 1., (2, 3, 4), &dev)?;
    let wrong = Tensor::randn(0f64, 1., (2, 3, 5), &dev)?;
    let e = hopfield_core_forward(&x, &wrong, &x, &w, &cfg, Masks::default(), false).unwrap_err();
    assert!(
        e.to_string()
            .contains("stored pattern (key): expected shape (N, S, 4), got [2, 3, 5]"),
        "{e}"
    );
    let other_batch = Tensor::randn(0f64, 1., (1, 3, 4), &dev)?;
    let e = hopfield_core_forward(
        &x,
        &other_batch,
        &other_batch,
        &w,
        &cfg,
        Masks::default(),
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch size N"), "{e}");
    let nan = (x.clone() * f64::NAN)?;
    let e = hopfield_core_forward(&nan, &x, &x, &w, &cfg, Masks::default(), false).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    assert!(matches!(
        CoreConfig::default()
            .with_update_steps_eps(StepsEps::Scalar(-1.0))
            .validate(2),
        Err(HopfieldError::Config {
            field: "update_steps_eps",
            ..
        })
    ));
    Ok(())
}

/// The head count is the layout's alone: per-head settings are checked against it at the call,
/// on every path (explicit, fused, packed self-association), and a static layout without heads
/// is an error, not an empty retrieval.
#[test]
fn per_head_settings_follow_the_layouts_heads() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let w = weights(CoreLayout::new(8, 2), &map)?;
    let x = Tensor::randn(0f64, 1., (2, 3, 8), &dev)?;
    let three = CoreConfig::default().with_scaling(Scaling::PerHead(vec![1.0; 3]));
    let per_head_length = |e: candle_core::Error| {
        matches!(
            HopfieldError::find(&e),
            Some(HopfieldError::PerHeadLength {
                field: "scaling",
                heads: 2,
                got: 3
            })
        )
    };
    let e = hopfield_core_forward(&x, &x, &x, &w, &three, Masks::default(), false).unwrap_err();
    assert!(per_head_length(e));
    let e = hopfield_core::hopfield_core_output(&x, &x, &x, &w, &three, Masks::default(), false)
        .unwrap_err();
    assert!(per_head_length(e));
    let none = hopfield_core::InputAffine {
        weight: None,
        bias: None,
    };
    let e = hopfield_core::hopfield_core_output_shared(
        &x,
        [none; 3],
        &w,
        &three,
        Masks::default(),
        false,
    )
    .unwrap_err();
    assert!(per_head_length(e));

    let headless = CoreWeights::none(CoreLayout {
        num_heads: 0,
        ..static_layout(4, 1)
    });
    let y = Tensor::randn(0f64, 1., (1, 3, 4), &dev)?;
    let e = hopfield_core_forward(
        &y,
        &y,
        &y,
        &headless,
        &CoreConfig::default(),
        Masks::default(),
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("num_heads"), "{e}");
    Ok(())
}
