//! Gradient checks (finite differences in f64 and candle autograd), training through the unrolled
//! steps, the paper's monotone energy, checkpoints and bad inputs.

use super::*;
use candle_core::{DType, Device, Module, Var};
use candle_nn::{VarBuilder, VarMap};
use rstest::rstest;

const DEV: Device = Device::Cpu;

/// A VarMap-backed builder whose parameters get a scale where the energies are far from trivial.
fn vb(map: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(map, DType::F64, &DEV)
}

/// Seeded standard normals (candle's CPU randn is not seedable).
fn randn(shape: &[usize], seed: u64, scale: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            scale * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &DEV)
}

/// Which energy a test case exercises.
#[derive(Debug, Clone, Copy)]
enum Which {
    Mha,
    MhaNoSelf,
    Relu,
    Softmax,
    LayerNormLagrangian,
    BlockRelu,
    BlockSoftmax,
}

fn build(which: Which, map: &VarMap) -> Result<Box<dyn Energy>> {
    let vb = vb(map);
    Ok(match which {
        Which::Mha => Box::new(EnergyMHA::with_options(
            6,
            2,
            Some(&[0.8, 1.3]),
            0.4,
            false,
            vb,
        )?),
        Which::MhaNoSelf => Box::new(EnergyMHA::with_options(6, 3, None, 0.4, true, vb)?),
        Which::Relu => Box::new(BaseModernHopfield::with_options(6, 9, Some(1.2), 0.4, vb)?),
        Which::Softmax => Box::new(SoftmaxModernHopfield::with_options(
            6,
            9,
            Some(0.7),
            0.4,
            vb,
        )?),
        Which::LayerNormLagrangian => {
            let ln = EnergyLayerNorm::new(6, 1e-5, vb)?;
            ln.gamma()
                .reshape(1)?
                .slice_set(&Tensor::new(&[1.3f64], &DEV)?, 0, 0)?;
            ln.delta().slice_set(&randn(&[6], 9, 0.2)?, 0, 0)?;
            Box::new(ln)
        }
        Which::BlockRelu | Which::BlockSoftmax => {
            let t = if matches!(which, Which::BlockRelu) {
                HopfieldType::Relu
            } else {
                HopfieldType::Softmax
            };
            let cfg = EnergyTransformerConfig::new(6, 9, 2)
                .with_hopfield_type(t)
                .with_hopfield_beta(0.9)
                .with_init_scale(0.4);
            Box::new(EnergyTransformer::new(&cfg, vb)?)
        }
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    scalar(&(a - b)?.abs()?.max_all()?)
}

#[rstest]
#[case::mha(Which::Mha)]
#[case::mha_no_self(Which::MhaNoSelf)]
#[case::relu(Which::Relu)]
#[case::softmax(Which::Softmax)]
#[case::layernorm_lagrangian(Which::LayerNormLagrangian)]
#[case::block_relu(Which::BlockRelu)]
#[case::block_softmax(Which::BlockSoftmax)]
fn grad_matches_finite_differences_and_autograd(#[case] which: Which) -> Result<()> {
    let map = VarMap::new();
    let e = build(which, &map)?;
    let x = randn(&[2, 4, 6], 1, 1.0)?;
    let g = e.grad(&x)?;
    let gv = g.flatten_all()?.to_vec1::<f64>()?;
    let xv = x.flatten_all()?.to_vec1::<f64>()?;
    // Central differences, step 1e-5: truncation ~1e-10 relative for these smooth energies.
    let h = 1e-5;
    let mut worst = 0f64;
    for i in 0..xv.len() {
        let mut p = xv.clone();
        p[i] += h;
        let ep = scalar(&e.energy(&Tensor::from_vec(p.clone(), x.shape(), &DEV)?)?)?;
        p[i] -= 2.0 * h;
        let em = scalar(&e.energy(&Tensor::from_vec(p, x.shape(), &DEV)?)?)?;
        worst = worst.max(((ep - em) / (2.0 * h) - gv[i]).abs());
    }
    let scale = gv.iter().fold(1f64, |m, v| m.max(v.abs()));
    assert!(
        worst / scale < 1e-7,
        "{which:?}: finite differences off by {worst:e}"
    );

    let xv = Var::from_tensor(&x)?;
    let auto = e.energy(xv.as_tensor())?.backward()?;
    let ga = auto.get(xv.as_tensor()).expect("gradient wrt x");
    let d = max_abs_diff(ga, &g)?;
    assert!(d / scale < 1e-12, "{which:?}: autograd differs by {d:e}");
    Ok(())
}

#[test]
fn closed_form_param_grads_match_autograd() -> Result<()> {
    let x = randn(&[2, 4, 6], 2, 1.0)?;
    let check = |map: &VarMap, e: &dyn Energy, closed: Vec<(&str, Tensor)>| -> Result<()> {
        let grads = e.energy(&x)?.backward()?;
        let vars = map.data().lock().unwrap().clone();
        for (name, want) in closed {
            let got = grads.get(vars[name].as_tensor()).expect(name);
            let d = max_abs_diff(got, &want)?;
            assert!(d < 1e-10, "{name}: {d:e}");
        }
        Ok(())
    };
    let map = VarMap::new();
    let m = EnergyMHA::with_options(6, 3, None, 0.4, false, vb(&map))?;
    let (gq, gk, gb) = m.param_grads(&x)?;
    check(&map, &m, vec![("Wq", gq), ("Wk", gk), ("beta", gb)])?;
    let map = VarMap::new();
    let m = BaseModernHopfield::with_options(6, 9, Some(1.1), 0.4, vb(&map))?;
    let (gw, gb) = m.param_grads(&x)?;
    check(&map, &m, vec![("W", gw), ("beta", gb)])?;
    let map = VarMap::new();
    let m = SoftmaxModernHopfield::with_options(6, 9, Some(0.6), 0.4, vb(&map))?;
    let (gw, gb) = m.param_grads(&x)?;
    check(&map, &m, vec![("W", gw), ("beta", gb)])
}

/// The fused block step ([`hopfield_cuda::et_step`]) and the composed one agree on the tokens
/// after several steps and on the gradient of a loss with respect to the input and every
/// parameter, for both norms, both Hopfield kinds, with and without self-attention, batched,
/// unbatched and with a positional embedding.
#[rstest]
#[case::port_relu(NormKind::LayerNorm, HopfieldType::Relu, false, 0, &[3, 5, 6])]
#[case::port_softmax_no_self(NormKind::LayerNorm, HopfieldType::Softmax, true, 0, &[2, 4, 6])]
#[case::paper_relu_pos(NormKind::EnergyLayerNorm, HopfieldType::Relu, false, 5, &[2, 5, 6])]
#[case::paper_softmax_unbatched(NormKind::EnergyLayerNorm, HopfieldType::Softmax, true, 0, &[7, 6])]
#[case::one_token_no_self(NormKind::LayerNorm, HopfieldType::Relu, true, 0, &[2, 1, 6])]
#[case::rank4(NormKind::LayerNorm, HopfieldType::Relu, false, 0, &[2, 2, 3, 6])]
fn fused_step_equals_composed(
    #[case] norm: NormKind,
    #[case] hop: HopfieldType,
    #[case] exclude_self: bool,
    #[case] context: usize,
    #[case] shape: &[usize],
) -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 9, 3)
        .with_norm(norm)
        .with_hopfield_type(hop)
        .with_exclude_self(exclude_self)
        .with_context(context)
        .with_n_iters(3)
        .with_alpha(0.3)
        .with_init_scale(0.4);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    // Non-trivial norm parameters, so their gradients are exercised.
    for (name, var) in map.data().lock().unwrap().iter() {
        if name.starts_with("norm.") {
            var.set(&(var.as_tensor() + randn(var.dims(), 11, 0.3)?)?)?;
        }
    }
    let x = Var::from_tensor(&randn(shape, 5, 1.0)?)?;
    let target = randn(shape, 6, 1.0)?;
    let run = |fused: bool| -> Result<(Tensor, candle_core::backprop::GradStore)> {
        with_fused_step(fused, || {
            let y = et.forward(&x)?;
            let loss = (&y - &target)?.sqr()?.sum_all()?;
            Ok((y, loss.backward()?))
        })
    };
    let (yf, gf) = run(true)?;
    let (yc, gc) = run(false)?;
    assert!(max_abs_diff(&yf, &yc)? < 1e-12);
    let data = map.data().lock().unwrap();
    let vars =
        std::iter::once(("x".to_string(), &x)).chain(data.iter().map(|(n, v)| (n.clone(), v)));
    for (name, var) in vars {
        let a = gf.get(var).expect("fused grad");
        assert_eq!(a.dims(), var.dims(), "{name}");
        // A single token without self-attention: the composed path never reaches the attention
        // weights (their gradient is absent), the fused one gives them zeros.
        let zeros = a.zeros_like()?;
        let c = gc.get(var).unwrap_or(&zeros);
        let scale = 1.0 + scalar(&c.abs()?.max_all()?)?;
        assert!(max_abs_diff(a, c)? < 1e-10 * scale, "{name}");
    }
    Ok(())
}

#[rstest]
#[case::port_relu(NormKind::LayerNorm, HopfieldType::Relu, 5)]
#[case::paper_softmax(NormKind::EnergyLayerNorm, HopfieldType::Softmax, 0)]
fn training_reaches_every_variable(
    #[case] norm: NormKind,
    #[case] hop: HopfieldType,
    #[case] context: usize,
) -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 9, 2)
        .with_norm(norm)
        .with_hopfield_type(hop)
        .with_context(context)
        .with_n_iters(3)
        .with_init_scale(0.4);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    let x = randn(&[2, 5, 6], 3, 1.0)?;
    let target = randn(&[2, 5, 6], 4, 1.0)?;
    let loss = (et.forward(&x)? - target)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let data = map.data().lock().unwrap();
    let expected = 3 + 2 + 2 + usize::from(context > 0);
    assert_eq!(
        data.len(),
        expected,
        "{:?}",
        data.keys().collect::<Vec<_>>()
    );
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let n = scalar(&g.abs()?.sum_all()?)?;
        assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm {n}");
    }
    Ok(())
}

#[rstest]
#[case::relu(HopfieldType::Relu, false)]
#[case::softmax(HopfieldType::Softmax, false)]
#[case::no_self_attention(HopfieldType::Relu, true)]
fn paper_energy_decreases_monotonically(
    #[case] hop: HopfieldType,
    #[case] exclude_self: bool,
) -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(8, 16, 2)
        .with_hopfield_type(hop)
        .with_hopfield_beta(1.0)
        .with_exclude_self(exclude_self)
        .with_init_scale(0.35)
        .with_n_iters(30)
        .with_alpha(0.1)
        .paper();
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    let x = randn(&[2, 6, 8], 5, 1.0)?;
    let e = et
        .forward_detailed(&x, None)?
        .energies
        .unwrap()
        .to_vec1::<f64>()?;
    let e0 = scalar(&et.paper_energy(&x)?)?;
    let drops: Vec<f64> = std::iter::once(e0)
        .chain(e.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[0] - w[1])
        .collect();
    assert!(drops.iter().all(|d| *d >= 0.0), "energy rose: {e:?}");
    assert!(
        e0 - e[e.len() - 1] > 1e-3 * e0.abs().max(1.0),
        "no real descent: {e0} -> {e:?}"
    );
    Ok(())
}

#[test]
fn port_energies_are_taken_at_unnormalised_tokens() -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 9, 3)
        .with_n_iters(2)
        .with_init_scale(0.4)
        .with_return_energy(true);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    let out = et.forward_detailed(&randn(&[1, 4, 6], 6, 1.0)?, None)?;
    let f = out.features.unwrap();
    let e = out.energies.unwrap().to_vec1::<f64>()?;
    assert_eq!(e[1], scalar(&et.energy(&f.get(1)?)?)?);
    assert_eq!(max_abs_diff(&f.get(1)?, &out.y)?, 0.0);
    Ok(())
}

#[test]
fn checkpoint_round_trip_uses_the_port_names() -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 9, 2)
        .with_context(4)
        .with_init_scale(0.4);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    let dir = std::env::temp_dir().join(format!("et-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("et.safetensors");
    map.save(&path)?;
    let mut names: Vec<String> = candle_core::safetensors::load(&path, &DEV)?
        .into_keys()
        .collect();
    names.sort();
    let want = [
        "hopfield.W",
        "hopfield.beta",
        "mha.Wk",
        "mha.Wq",
        "mha.beta",
        "norm.bias",
        "norm.weight",
        "pos_embedding",
    ];
    assert_eq!(names, want);
    let vb2 = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F64, &DEV)? };
    let et2 = EnergyTransformer::new(&cfg, vb2)?;
    let x = randn(&[2, 4, 6], 7, 1.0)?;
    assert_eq!(max_abs_diff(&et.forward(&x)?, &et2.forward(&x)?)?, 0.0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn betas_are_typed_and_separate() -> Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 9, 2)
        .with_attn_beta(vec![0.5, 0.7])
        .with_hopfield_type(HopfieldType::Softmax)
        .with_hopfield_beta(0.25);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    assert_eq!(et.mha().beta().to_vec1::<f64>()?, [0.5, 0.7]);
    match et.hopfield() {
        HopfieldEnergy::Softmax(h) => assert_eq!(h.beta().to_scalar::<f64>()?, 0.25),
        other => panic!("{other:?}"),
    }
    // The default attention beta is exact in f64 (the port rounds it through f32).
    let m = EnergyMHA::new(9, 3, vb(&VarMap::new()))?;
    assert_eq!(m.beta().to_vec1::<f64>()?[0], 1.0 / 3f64.sqrt());
    Ok(())
}

#[test]
fn filtered_forward_without_positional_embedding_is_forward() -> Result<()> {
    let cfg = EnergyTransformerConfig::new(6, 9, 2)
        .with_n_iters(2)
        .with_init_scale(0.4);
    let et = EnergyTransformer::new(&cfg, vb(&VarMap::new()))?;
    let x = randn(&[1, 3, 6], 8, 1.0)?;
    let idx = Tensor::new(&[0u32, 1, 2], &DEV)?;
    let a = et.filtered_forward(&x, &idx, None)?.y;
    assert_eq!(max_abs_diff(&a, &et.forward(&x)?)?, 0.0);
    Ok(())
}

fn err_of<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[rstest]
#[case::negative_alpha(EnergyTransformerConfig::new(6, 9, 2).with_alpha(-0.1), "alpha")]
#[case::nan_alpha(EnergyTransformerConfig::new(6, 9, 2).with_alpha(f64::NAN), "alpha")]
#[case::heads(EnergyTransformerConfig::new(6, 9, 4), "n_heads")]
#[case::attn_beta_len(EnergyTransformerConfig::new(6, 9, 2).with_attn_beta(vec![1.0]), "attn_beta")]
#[case::hopfield_beta(EnergyTransformerConfig::new(6, 9, 2).with_hopfield_beta(0.0), "hopfield_beta")]
#[case::paper_needs_energy_norm(
    EnergyTransformerConfig::new(6, 9, 2).with_energy_report(EnergyReport::Paper),
    "EnergyLayerNorm"
)]
fn bad_configs_are_typed_errors(#[case] cfg: EnergyTransformerConfig, #[case] needle: &str) {
    let e = err_of(EnergyTransformer::new(&cfg, vb(&VarMap::new())));
    assert!(e.contains(needle), "{e}");
}

#[test]
fn bad_inputs_are_typed_errors() -> Result<()> {
    let cfg = EnergyTransformerConfig::new(6, 9, 2).with_context(4);
    let et = EnergyTransformer::new(&cfg, vb(&VarMap::new()))?;
    let e = err_of(et.forward(&Tensor::zeros((2, 4, 5), DType::F64, &DEV)?));
    assert!(
        e.contains("x: expected tokens of dimension 6") && e.contains("[2, 4, 5]"),
        "{e}"
    );
    let e = err_of(et.forward(&Tensor::zeros(6, DType::F64, &DEV)?));
    assert!(e.contains("rank >= 2") && e.contains("[6]"), "{e}");
    let e = err_of(et.forward(&Tensor::zeros((2, 3, 6), DType::F64, &DEV)?));
    assert!(e.contains("3 tokens") && e.contains("context 4"), "{e}");
    let mut v = vec![0f64; 24];
    v[5] = f64::NAN;
    let e = err_of(et.forward(&Tensor::from_vec(v, (1, 4, 6), &DEV)?));
    assert!(e.contains("x: contains NaN"), "{e}");
    let inf = Tensor::full(f64::INFINITY, (1, 4, 6), &DEV)?;
    assert!(err_of(et.energy(&inf)).contains("g: contains NaN or infinite"));
    let x = Tensor::zeros((1, 4, 6), DType::F64, &DEV)?;
    // Zero steps are the port's empty loop (audit/et_edges): x + pos_embedding, no error.
    let y = et.forward_detailed(&x, Some(0))?.y;
    assert_eq!(max_abs_diff(&y, &(&x + et.pos_embedding().unwrap())?)?, 0.0);
    let e = err_of(et.forward_detailed(&x, Some(crate::energy::MAX_N_ITERS + 1)));
    assert!(e.contains("n_iters"), "{e}");
    let e = err_of(et.filtered_forward(&x, &Tensor::new(&[0u32, 1, 2, 4], &DEV)?, None));
    assert!(e.contains("index 4 out of range"), "{e}");
    let e = err_of(et.filtered_forward(&x, &Tensor::new(&[0u32, 1], &DEV)?, None));
    assert!(e.contains("one index per token"), "{e}");
    assert!(err_of(et.mha().grad(&x.narrow(2, 0, 4)?)).contains("dimension 6"));
    Ok(())
}

#[test]
fn port_kwargs_are_validated() {
    let bad =
        serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2, "hopfield_type": "bogus"});
    let e = EnergyTransformerConfig::from_port_kwargs(&bad).unwrap_err();
    assert_eq!(e, EtError::UnknownHopfieldType("bogus".into()));
    let bad = serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2, "beta": 0.5});
    assert!(matches!(
        EnergyTransformerConfig::from_port_kwargs(&bad),
        Err(EtError::UnsupportedArgument { .. })
    ));
}
