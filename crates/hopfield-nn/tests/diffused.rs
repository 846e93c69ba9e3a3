//! `DiffusedHopfield` behaviour beyond the goldens: batch independence with per-sample graphs
//! (difflayers couples the batch, D9), working logit diffusion (it crashes in difflayers, D2),
//! drop-in equality with `Hopfield`, gradients and bad input.

use candle_core::{DType, Device, ModuleT, Result, Tensor, D};
use candle_nn::VarMap;
use dahn_diffusion::{AttentionMode, DiffusionMode};
use dahn_graph::GraphBuilder;
use hopfield_nn::{
    DiffusedHopfield, DiffusedHopfieldConfig, GraphScope, Hopfield, HopfieldConfig, HopfieldInput,
    Masks,
};

mod common;
use common::{max_diff, randomize, vb};

fn base() -> HopfieldConfig {
    HopfieldConfig::new(8).with_num_heads(2)
}

#[test]
fn per_sample_graphs_make_results_independent_of_the_batch() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let cfg = DiffusedHopfieldConfig::new(base())
        .with_k_neighbors(3)
        .with_eta(0.2);
    let dh = DiffusedHopfield::new(cfg.clone(), vb(&map))?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (3, 9, 8), &dev)?;
    let batch = dh.forward_t(&x, false)?;
    for n in 0..3 {
        let alone = dh.forward_t(&x.narrow(0, n, 1)?, false)?;
        assert!(max_diff(&batch.narrow(0, n, 1)?, &alone)? < 1e-13);
    }
    // difflayers' batch-mean graph couples the samples.
    let mean = DiffusedHopfield::new(cfg.with_graph_scope(GraphScope::BatchMean), vb(&map))?;
    let coupled = mean.forward_t(&x, false)?;
    let alone = mean.forward_t(&x.narrow(0, 0, 1)?, false)?;
    assert!(max_diff(&coupled.narrow(0, 0, 1)?, &alone)? > 1e-6);
    Ok(())
}

#[test]
fn eta_zero_is_exactly_hopfield() -> Result<()> {
    let map = VarMap::new();
    let dh = DiffusedHopfield::new(DiffusedHopfieldConfig::new(base()).with_eta(0.0), vb(&map))?;
    randomize(&map)?;
    let h = Hopfield::new(base(), vb(&map))?;
    let x = Tensor::randn(0f64, 1., (2, 7, 8), &Device::Cpu)?;
    // Equal to rounding: `Hopfield::forward_t` packs the three projections into one GEMM,
    // DiffusedHopfield projects them one by one (its stage sits between norms and projections).
    assert!(max_diff(&dh.forward_t(&x, false)?, &h.forward_t(&x, false)?)? < 1e-12);
    Ok(())
}

/// `forward_with` (the output alone: the fused retrieval where no logit transform applies)
/// equals `forward_full`'s output (the explicit association) whatever the configuration.
#[test]
fn output_only_forward_equals_the_full_forward() -> Result<()> {
    let dev = Device::Cpu;
    let stored = Tensor::randn(0f64, 1., (3, 9, 8), &dev)?;
    let state = Tensor::randn(0f64, 1., (3, 5, 8), &dev)?;
    let pad = Tensor::new(
        &[
            [0u8, 0, 0, 0, 0, 0, 0, 1, 1],
            [0; 9],
            [0, 0, 0, 0, 0, 0, 0, 0, 1],
        ],
        &dev,
    )?;
    let configs = [
        DiffusedHopfieldConfig::new(base()).with_k_neighbors(3),
        DiffusedHopfieldConfig::new(base().with_update_steps_max(Some(2)))
            .with_k_neighbors(3)
            .with_diffuse(true, true),
        DiffusedHopfieldConfig::new(base())
            .with_k_neighbors(3)
            .with_graph_scope(GraphScope::BatchMean),
        DiffusedHopfieldConfig::new(base())
            .with_k_neighbors(3)
            .with_logit_diffusion(true, Some(0.2)),
        DiffusedHopfieldConfig::new(base())
            .with_k_neighbors(3)
            .with_attention_mode(AttentionMode::Graph),
    ];
    for (i, cfg) in configs.into_iter().enumerate() {
        let map = VarMap::new();
        let dh = DiffusedHopfield::new(cfg, vb(&map))?;
        randomize(&map)?;
        let graph_mode = i == 4;
        let (q, s) = if graph_mode {
            (&stored, &stored)
        } else {
            (&state, &stored)
        };
        for padded in [false, true].into_iter().filter(|p| !p || !graph_mode) {
            let masks = Masks {
                stored_pattern_padding_mask: padded.then_some(&pad),
                association_mask: None,
            };
            let input = || HopfieldInput::from((s, q, s));
            let y = dh.forward_with(input(), masks, false)?;
            let full = dh.forward_full(input(), masks, false)?.hopfield.output;
            assert!(max_diff(&y, &full)? < 1e-12, "config {i}, padded {padded}");
        }
    }
    Ok(())
}

#[test]
fn logit_diffusion_matches_an_independent_computation() -> Result<()> {
    // Pure static retrieval with the logits diffused over the stored patterns' kNN graph:
    // xi = softmax(beta R Y^T (I - eta L_sym)^T), out = xi Y.
    let dev = Device::Cpu;
    let (beta, eta) = (2.0, 0.3);
    let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::pure_static().with_scaling(beta))
        .with_diffuse(false, false)
        .with_eta(eta)
        .with_k_neighbors(2)
        .with_diffusion_mode(DiffusionMode::Simple)
        .with_logit_diffusion(true, None);
    let map = VarMap::new();
    let dh = DiffusedHopfield::new(cfg, vb(&map))?;
    let y = Tensor::randn(0f64, 1., (1, 6, 4), &dev)?;
    let r = Tensor::randn(0f64, 1., (1, 3, 4), &dev)?;
    let out = dh.forward_with((&y, &r, &y).into(), Masks::default(), false)?;

    let graph = GraphBuilder::new().k(2).build(&y.squeeze(0)?)?;
    let l = graph.laplacian(true).to_dense(DType::F64, &dev)?;
    let smooth = (Tensor::eye(6, DType::F64, &dev)? - (l * eta)?)?;
    let logits = ((r.squeeze(0)? * beta)?.matmul(&y.squeeze(0)?.t()?)?).matmul(&smooth.t()?)?;
    let want = candle_nn::ops::softmax(&logits, D::Minus1)?.matmul(&y.squeeze(0)?)?;
    assert!(max_diff(&out.squeeze(0)?, &want)? < 1e-12);
    // ...and it changes the result.
    let plain = Hopfield::new(HopfieldConfig::pure_static().with_scaling(beta), vb(&map))?
        .forward_with((&y, &r, &y).into(), Masks::default(), false)?;
    assert!(max_diff(&out, &plain)? > 1e-6);
    Ok(())
}

#[test]
fn every_trainable_variable_gets_a_gradient() -> Result<()> {
    let map = VarMap::new();
    let cfg = DiffusedHopfieldConfig::new(base())
        .with_k_neighbors(3)
        .with_diffuse(true, true)
        .with_logit_diffusion(true, Some(0.1));
    let dh = DiffusedHopfield::new(cfg, vb(&map))?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (2, 9, 8), &Device::Cpu)?;
    let grads = dh.forward_t(&x, true)?.sqr()?.sum_all()?.backward()?;
    for (name, var) in map.data().lock().unwrap().iter() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
    Ok(())
}

#[test]
fn bad_input_and_configs_are_typed_errors() -> Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let graph_attn = DiffusedHopfield::new(
        DiffusedHopfieldConfig::new(base()).with_attention_mode(AttentionMode::Graph),
        vb(&map),
    )?;
    let (stored, state) = (
        Tensor::randn(0f64, 1., (1, 9, 8), &dev)?,
        Tensor::randn(0f64, 1., (1, 4, 8), &dev)?,
    );
    let e = graph_attn
        .forward_with(
            HopfieldInput::Triple {
                stored: &stored,
                state: &state,
                projection: &stored,
            },
            Masks::default(),
            false,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("graph attention pairs state i with stored node i"),
        "{e}"
    );

    let e = DiffusedHopfield::new(
        DiffusedHopfieldConfig::new(base().with_pattern_projection_size(Some(6))),
        vb(&VarMap::new()),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("pattern_projection_size (Some(6)) must equal input_size"),
        "{e}"
    );

    for cfg in [
        DiffusedHopfieldConfig::new(base()).with_eta(-0.1),
        // D-V3: graph attention over no neighbours (difflayers reads out zeros); k = 0 and
        // diffusion_steps = 0 alone are accepted (audit/dahn_edges).
        DiffusedHopfieldConfig::new(base())
            .with_attention_mode(AttentionMode::Graph)
            .with_k_neighbors(0),
        DiffusedHopfieldConfig::new(base()).with_logit_diffusion(true, Some(f64::NAN)),
    ] {
        assert!(
            DiffusedHopfield::new(cfg.clone(), vb(&map)).is_err(),
            "{cfg:?}"
        );
    }
    let nan = (stored.clone() * f64::NAN)?;
    assert!(graph_attn.forward_t(&nan, false).is_err());
    Ok(())
}

#[test]
fn padded_stored_patterns_never_change_the_result() -> Result<()> {
    // difflayers (D8) lets padded patterns take part in the graph and the diffusion.
    let dev = Device::Cpu;
    let map = VarMap::new();
    for logit in [false, true] {
        let cfg = DiffusedHopfieldConfig::new(base())
            .with_k_neighbors(3)
            .with_diffuse(true, true)
            .with_logit_diffusion(logit, Some(0.2));
        let dh = DiffusedHopfield::new(cfg, vb(&map))?;
        randomize(&map)?;
        let stored = Tensor::randn(0f64, 1., (2, 9, 8), &dev)?;
        let state = Tensor::randn(0f64, 1., (2, 4, 8), &dev)?;
        let pad = Tensor::new(
            &[[0u8, 0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0]],
            &dev,
        )?;
        let masks = Masks {
            stored_pattern_padding_mask: Some(&pad),
            association_mask: None,
        };
        let y = dh.forward_with((&stored, &state, &stored).into(), masks, false)?;
        // Other content in the padded slots: same output.
        let junk = Tensor::randn(0f64, 5., (1, 2, 8), &dev)?;
        let s0 = Tensor::cat(&[&stored.get(0)?.narrow(0, 0, 7)?.unsqueeze(0)?, &junk], 1)?;
        let stored2 = Tensor::cat(&[&s0, &stored.narrow(0, 1, 1)?], 0)?;
        let y2 = dh.forward_with((&stored2, &state, &stored2).into(), masks, false)?;
        assert!(max_diff(&y, &y2)? < 1e-12, "logit {logit}");
        // And the same as sample 0 without its padded patterns at all.
        let (s7, q0) = (
            stored.narrow(0, 0, 1)?.narrow(1, 0, 7)?,
            state.narrow(0, 0, 1)?,
        );
        let alone = dh.forward_with((&s7, &q0, &s7).into(), Masks::default(), false)?;
        assert!(
            max_diff(&y.narrow(0, 0, 1)?, &alone)? < 1e-12,
            "logit {logit}"
        );
    }
    Ok(())
}

/// A batch-mean graph with nothing else coupling the samples runs each sample's loop as its own
/// task on the shared graph: the same results as the whole batch as one group (still the path
/// with an energy stop, here one that never fires), one graph built, one report entry.
#[test]
fn batch_mean_samples_split_over_the_shared_graph_as_one_group() -> Result<()> {
    let dev = Device::Cpu;
    let stored = Tensor::randn(0f64, 1., (4, 9, 8), &dev)?;
    let state = Tensor::randn(0f64, 1., (4, 6, 8), &dev)?;
    let mean = DiffusedHopfieldConfig::new(base())
        .with_k_neighbors(3)
        // Well inside the Euler stability bound for any random kNN graph of 9 nodes (its
        // Laplacian's largest eigenvalue stays below 2 * 8): 0.3 failed it once.
        .with_eta(0.1)
        .with_diffusion_steps(3)
        .with_graph_scope(GraphScope::BatchMean);
    let configs = [
        mean.clone(),
        mean.clone().with_diffuse(true, true),
        mean.clone().with_logit_diffusion(true, Some(0.2)),
    ];
    for (i, cfg) in configs.into_iter().enumerate() {
        let map = VarMap::new();
        let split = DiffusedHopfield::new(cfg.clone(), vb(&map))?;
        let whole = DiffusedHopfield::new(cfg.with_energy_stop_tol(1e-300), vb(&map))?;
        randomize(&map)?;
        let input = || HopfieldInput::from((&stored, &state, &stored));
        let a = split.forward_full(input(), Masks::default(), false)?;
        let b = whole.forward_full(input(), Masks::default(), false)?;
        assert_eq!(
            b.dynamics_steps_run,
            vec![3],
            "config {i}: the energy stop fired"
        );
        assert!(
            max_diff(&a.hopfield.output, &b.hopfield.output)? < 1e-12,
            "config {i}"
        );
        assert!(
            max_diff(&a.core_stored, &b.core_stored)? < 1e-12,
            "config {i}"
        );
        assert_eq!(a.key_graphs.len(), 1, "config {i}");
        assert_eq!(a.dynamics_steps_run, vec![3], "config {i}");
        assert_eq!(split.graph_builds(), 1, "config {i}");
    }
    Ok(())
}
