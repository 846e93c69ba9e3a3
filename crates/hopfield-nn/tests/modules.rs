//! Module-level behaviour: checkpoint round trips, strict loading errors, gradients reaching every
//! trainable variable, bad input, and hflayers quirks we fix (Q5, Q7).

use candle_core::{DType, Device, ModuleT, Result, Tensor};
use candle_nn::VarMap;
use hopfield_nn::checkpoint::{load_strict, load_strict_tensors};
use hopfield_nn::{
    DecoderMasks, Hopfield, HopfieldConfig, HopfieldDecoderLayer, HopfieldEncoderLayer,
    HopfieldInput, HopfieldLayer, HopfieldLayerConfig, HopfieldPooling, HopfieldPoolingConfig,
    Masks, TransformerLayerConfig,
};
use rstest::rstest;
use std::collections::HashMap;

fn dev() -> Device {
    Device::Cpu
}

mod common;
use common::{max_diff, randomize, vb};

#[test]
fn state_dict_names_match_hflayers() -> Result<()> {
    let map = VarMap::new();
    HopfieldPooling::new(
        HopfieldPoolingConfig::new(HopfieldConfig::new(64).with_num_heads(4)),
        vb(&map),
    )?;
    let mut keys: Vec<(String, Vec<usize>)> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    keys.sort();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("hopfield.association_core.in_proj_bias", vec![192]),
        ("hopfield.association_core.in_proj_weight", vec![192, 64]),
        ("hopfield.association_core.out_proj.bias", vec![64]),
        ("hopfield.association_core.out_proj.weight", vec![64, 64]),
        ("hopfield.norm_pattern_projection.bias", vec![64]),
        ("hopfield.norm_pattern_projection.weight", vec![64]),
        ("hopfield.norm_state_pattern.bias", vec![64]),
        ("hopfield.norm_state_pattern.weight", vec![64]),
        ("hopfield.norm_stored_pattern.bias", vec![64]),
        ("hopfield.norm_stored_pattern.weight", vec![64]),
        ("pooling_weights", vec![1, 1, 64]),
    ];
    let got: Vec<(&str, Vec<usize>)> = keys.iter().map(|(k, d)| (k.as_str(), d.clone())).collect();
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn varmap_save_then_strict_load_round_trips() -> Result<()> {
    let map = VarMap::new();
    let cfg = HopfieldConfig::new(8)
        .with_num_heads(2)
        .with_update_steps_max(Some(2));
    let h = Hopfield::new(cfg.clone(), vb(&map))?;
    randomize(&map)?;
    let path = std::env::temp_dir().join(format!(
        "hopfield-rs-roundtrip-{}.safetensors",
        std::process::id()
    ));
    map.save(&path)?;
    let loaded = load_strict(&path, DType::F64, &dev(), |vb| Hopfield::new(cfg, vb))?;
    std::fs::remove_file(&path).ok();
    let x = Tensor::randn(0f64, 1., (2, 5, 8), &dev())?;
    assert_eq!(
        max_diff(&h.forward_t(&x, false)?, &loaded.forward_t(&x, false)?)?,
        0.0
    );
    Ok(())
}

#[test]
fn strict_loading_names_missing_unexpected_and_misshaped_keys() -> Result<()> {
    let map = VarMap::new();
    Hopfield::new(HopfieldConfig::new(8), vb(&map))?;
    let mut sd: HashMap<String, Tensor> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    sd.remove("norm_state_pattern.weight");
    sd.insert(
        "association_core.out_proj.bias".into(),
        Tensor::zeros(7, DType::F64, &dev())?,
    );
    sd.insert("extra.weight".into(), Tensor::zeros(1, DType::F64, &dev())?);
    let err = load_strict_tensors(sd, DType::F64, &dev(), |vb| {
        Hopfield::new(HopfieldConfig::new(8), vb)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing key \"norm_state_pattern.weight\" (shape [8])"),
        "{err}"
    );
    assert!(
        err.contains(
            "key \"association_core.out_proj.bias\" has shape [7], the module expects [8]"
        ),
        "{err}"
    );
    assert!(err.contains("unexpected key \"extra.weight\""), "{err}");
    Ok(())
}

/// Every trainable variable must receive a gradient (candle-nn's fused LayerNorm/softmax would
/// silently give none).
#[rstest]
#[case::hopfield("hopfield")]
#[case::pooling("pooling")]
#[case::layer("layer")]
#[case::encoder("encoder")]
#[case::decoder("decoder")]
fn every_trainable_variable_gets_a_gradient(#[case] which: &str) -> Result<()> {
    let map = VarMap::new();
    let h = HopfieldConfig::new(8)
        .with_num_heads(2)
        .with_update_steps_max(Some(1))
        .with_normalize_hopfield_space(true)
        .with_normalize_hopfield_space_affine(true)
        .with_add_zero_association(true);
    let x = Tensor::randn(0f64, 1., (2, 5, 8), &dev())?;
    let tf = TransformerLayerConfig::new(h.clone())
        .with_dim_feedforward(16)
        .with_dropout(0.0);
    let y = match which {
        "hopfield" => Hopfield::new(h, vb(&map))?.forward_t(&x, true)?,
        "pooling" => {
            HopfieldPooling::new(HopfieldPoolingConfig::new(h).with_quantity(2), vb(&map))?
                .forward_t(&x, true)?
        }
        "layer" => HopfieldLayer::new(
            HopfieldLayerConfig::new(h)
                .with_quantity(4)
                .with_lookup_weights_as_separated(true),
            vb(&map),
        )?
        .forward_t(&x, true)?,
        "encoder" => HopfieldEncoderLayer::new(tf, vb(&map))?.forward_t(&x, true)?,
        _ => HopfieldDecoderLayer::new(tf.with_hopfield_cross(h), vb(&map))?.forward_with(
            &x,
            &x.narrow(1, 0, 3)?,
            DecoderMasks::default(),
            true,
        )?,
    };
    randomize(&map)?;
    let grads = y.sqr()?.sum_all()?.backward()?;
    let data = map.data().lock().unwrap();
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{which}: no gradient for {name}"
        );
    }
    Ok(())
}

#[test]
fn frozen_weights_get_no_gradient() -> Result<()> {
    let map = VarMap::new();
    let layer = HopfieldLayer::new(
        HopfieldLayerConfig::new(HopfieldConfig::new(8))
            .with_quantity(4)
            .with_trainable(false)
            .with_lookup_weights_as_separated(true)
            .with_lookup_targets_as_trainable(false),
        vb(&map),
    )?;
    let y = layer.forward_t(&Tensor::randn(0f64, 1., (2, 3, 8), &dev())?, true)?;
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(layer.lookup_weights()).is_none());
    assert!(grads.get(layer.target_weights().unwrap()).is_none());
    Ok(())
}

#[test]
fn pooling_batch_first_false_returns_batch_major() -> Result<()> {
    // hflayers (Q7) returns (quantity, N*O) here; we return (N, quantity*O) for both layouts.
    let (map_a, mut map_b) = (VarMap::new(), VarMap::new());
    let base = HopfieldConfig::new(6).with_num_heads(2);
    let a = HopfieldPooling::new(
        HopfieldPoolingConfig::new(base.clone()).with_quantity(3),
        vb(&map_a),
    )?;
    randomize(&map_a)?;
    let b = HopfieldPooling::new(
        HopfieldPoolingConfig::new(base.with_batch_first(false)).with_quantity(3),
        vb(&map_b),
    )?;
    for (k, v) in map_a.data().lock().unwrap().iter() {
        let t = if k == "pooling_weights" {
            v.as_tensor().transpose(0, 1)?
        } else {
            v.as_tensor().clone()
        };
        map_b.set_one(k, t)?;
    }
    let x = Tensor::randn(0f64, 1., (4, 7, 6), &dev())?;
    let ya = a.forward_t(&x, false)?;
    let yb = b.forward_t(&x.transpose(0, 1)?, false)?;
    assert_eq!(yb.dims(), &[4, 18]);
    assert!(max_diff(&ya, &yb)? < 1e-14);
    Ok(())
}

#[test]
fn static_stored_pattern_with_hidden_size_below_input_size_works() -> Result<()> {
    // hflayers (Q5) sizes this LayerNorm 16 and crashes on the 8-feature static keys.
    let map = VarMap::new();
    let h = Hopfield::new(
        HopfieldConfig::new(16)
            .with_hidden_size(Some(8))
            .with_stored_pattern_as_static(true),
        vb(&map),
    )?;
    let (stored, state, proj) = (
        Tensor::randn(0f64, 1., (2, 5, 8), &dev())?,
        Tensor::randn(0f64, 1., (2, 3, 16), &dev())?,
        Tensor::randn(0f64, 1., (2, 5, 16), &dev())?,
    );
    let y = h.forward_with((&stored, &state, &proj).into(), Masks::default(), false)?;
    assert_eq!(y.dims(), &[2, 3, 16]);
    Ok(())
}

#[test]
fn bad_input_gives_typed_errors_naming_shapes() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(HopfieldConfig::new(8).with_num_heads(2), vb(&map))?;
    let e = h
        .forward_t(&Tensor::zeros((2, 5, 6), DType::F64, &dev())?, false)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("stored pattern (key): expected shape (N, S, 8), got [2, 5, 6]"),
        "{e}"
    );
    let e = h
        .forward_t(&Tensor::zeros((5, 8), DType::F64, &dev())?, false)
        .unwrap_err();
    assert!(e.to_string().contains("got [5, 8]"), "{e}");
    let x = Tensor::zeros((2, 5, 8), DType::F64, &dev())?;
    let mask = Tensor::zeros((2, 4), DType::U8, &dev())?;
    let e = h
        .forward_with(
            HopfieldInput::Single(&x),
            Masks {
                stored_pattern_padding_mask: Some(&mask),
                association_mask: None,
            },
            false,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("stored_pattern_padding_mask: expected shape (N, S) = (2, 5), got [2, 4]"),
        "{e}"
    );
    // A static state pattern must have the per-head size.
    let map = VarMap::new();
    let s = Hopfield::new(
        HopfieldConfig::new(8)
            .with_num_heads(2)
            .with_state_pattern_as_static(true)
            .with_normalize_state_pattern(false)
            .with_normalize_state_pattern_affine(false),
        vb(&map),
    )?;
    let e = s
        .forward_with((&x, &x, &x).into(), Masks::default(), false)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("state pattern (query): expected shape (N, L, 4), got [2, 5, 8]"),
        "{e}"
    );
    // Config errors surface at construction.
    let map = VarMap::new();
    let e = Hopfield::new(HopfieldConfig::new(10).with_num_heads(4), vb(&map)).unwrap_err();
    assert!(
        e.to_string()
            .contains("input_size = 10 is not divisible by num_heads = 4"),
        "{e}"
    );
    let e = Hopfield::new(HopfieldConfig::new(8).with_update_steps_eps(0.0), vb(&map)).unwrap_err();
    assert!(e.to_string().contains("update_steps_eps"), "{e}");
    let e = Hopfield::new(HopfieldConfig::default(), vb(&map)).unwrap_err();
    assert!(e.to_string().contains("input_size"), "{e}");
    // Missing weights when loading from a (here empty) checkpoint.
    let e = load_strict_tensors(HashMap::new(), DType::F64, &dev(), |vb| {
        Hopfield::new(HopfieldConfig::new(8), vb)
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("missing key \"association_core.in_proj_weight\" (shape [24, 8])"),
        "{e}"
    );
    Ok(())
}

#[test]
fn association_getters_are_batch_major_for_either_layout() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(
        HopfieldConfig::new(8)
            .with_num_heads(2)
            .with_batch_first(false),
        vb(&map),
    )?;
    let (stored, state) = (
        Tensor::randn(0f64, 1., (6, 3, 8), &dev())?,
        Tensor::randn(0f64, 1., (4, 3, 8), &dev())?,
    );
    let input = HopfieldInput::Triple {
        stored: &stored,
        state: &state,
        projection: &stored,
    };
    assert_eq!(
        h.forward_with(input, Masks::default(), false)?.dims(),
        &[4, 3, 8]
    );
    let a = h.association_matrix(input, Masks::default())?;
    assert_eq!(a.dims(), &[3, 2, 4, 6]);
    let rows = a.sum(3)?.flatten_all()?.to_vec1::<f64>()?;
    assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-12));
    assert_eq!(
        h.projected_pattern_matrix(input, Masks::default())?.dims(),
        &[3, 2, 6, 4]
    );
    Ok(())
}

/// Any float dtype candle supports runs the same module (half precision within its accuracy).
#[rstest]
#[case::f32(DType::F32, 1e-5)]
#[case::f16(DType::F16, 2e-2)]
#[case::bf16(DType::BF16, 1e-1)]
fn every_float_dtype_runs(#[case] dtype: DType, #[case] tol: f64) -> Result<()> {
    let map = VarMap::new();
    let cfg = HopfieldConfig::new(8)
        .with_num_heads(2)
        .with_update_steps_max(Some(2));
    let reference = Hopfield::new(cfg.clone(), vb(&map))?;
    randomize(&map)?;
    let x = Tensor::randn(0f64, 1., (2, 5, 8), &dev())?;
    let want = reference.forward_t(&x, false)?;
    let tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let h = load_strict_tensors(tensors, dtype, &dev(), |vb| Hopfield::new(cfg, vb))?;
    let got = h.forward_t(&x.to_dtype(dtype)?, false)?;
    assert_eq!(got.dtype(), dtype);
    let got = got.to_dtype(DType::F64)?;
    assert!(
        max_diff(&got, &want)? < tol,
        "{dtype:?}: {}",
        max_diff(&got, &want)?
    );
    Ok(())
}

/// Self-association shares one standardisation among the three input LayerNorms and runs the
/// three projections as one packed GEMM with the LayerNorms' affine parts folded in; the result
/// and every gradient equal those of three separate LayerNorms and projections (the tuple input
/// takes that path). Over the layouts the packing must handle: value size != head size, no
/// biases, no LayerNorms, sequence-first inputs, masks and the zero pattern, and
/// LayerNorms without affine parameters.
#[rstest]
#[case::default(HopfieldConfig::new(8).with_num_heads(2), false)]
#[case::pattern_size(HopfieldConfig::new(8).with_num_heads(2).with_hidden_size(Some(3)).with_pattern_size(Some(5)), false)]
#[case::no_bias(HopfieldConfig::new(8).with_num_heads(2).with_input_bias(false), false)]
#[case::no_affine(HopfieldConfig::new(8).with_num_heads(4).with_normalize_state_pattern_affine(false).with_normalize_stored_pattern_affine(false).with_normalize_pattern_projection_affine(false), false)]
#[case::no_norms(HopfieldConfig::new(8).with_num_heads(2).with_normalize_state_pattern(false).with_normalize_stored_pattern(false).with_normalize_pattern_projection(false), false)]
#[case::sequence_first(HopfieldConfig::new(8).with_num_heads(2).with_batch_first(false), false)]
#[case::masked_zero_association(HopfieldConfig::new(8).with_num_heads(2).with_add_zero_association(true), true)]
fn shared_standardisation_equals_separate_layer_norms(
    #[case] cfg: HopfieldConfig,
    #[case] masked: bool,
) -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(cfg, vb(&map))?;
    randomize(&map)?;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f64, 1., (3, 5, 8), &dev())?)?;
    let xt = x.as_tensor();
    let padding = Tensor::new(
        &[[0u8, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]],
        &dev(),
    )?;
    let masks = Masks {
        stored_pattern_padding_mask: masked.then_some(&padding),
        association_mask: None,
    };
    let single = h.forward_with(HopfieldInput::Single(xt), masks, false)?;
    let triple = h.forward_with(
        HopfieldInput::Triple {
            stored: xt,
            state: xt,
            projection: xt,
        },
        masks,
        false,
    )?;
    assert!(max_diff(&single, &triple)? < 1e-13);
    let gs = single.sqr()?.sum_all()?.backward()?;
    let gt = triple.sqr()?.sum_all()?.backward()?;
    let mut vars = map.all_vars();
    vars.push(x.clone());
    for v in vars {
        match (gs.get(v.as_tensor()), gt.get(v.as_tensor())) {
            (Some(a), Some(b)) => assert!(max_diff(a, b)? < 1e-12),
            (None, None) => {}
            (a, b) => panic!(
                "gradient present on one side only: {:?} {:?}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
    Ok(())
}

/// An empty memory (no stored patterns, S = 0: a memory bank before its first write) is a fully
/// masked association: every query retrieves the zero vector, so the output is the output
/// projection's bias, on the fused path and the explicit path (`forward_full`) alike.
#[test]
fn empty_memory_retrieves_the_zero_vector() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(HopfieldConfig::new(8).with_num_heads(2), vb(&map))?;
    randomize(&map)?;
    let state = Tensor::randn(0f64, 1., (2, 3, 8), &dev())?;
    let empty = Tensor::zeros((2, 0, 8), DType::F64, &dev())?;
    let input = HopfieldInput::Triple {
        stored: &empty,
        state: &state,
        projection: &empty,
    };
    let bias = map
        .data()
        .lock()
        .unwrap()
        .get("association_core.out_proj.bias")
        .unwrap()
        .as_tensor()
        .clone();
    let expected = bias.broadcast_as((2, 3, 8))?;
    let fused = h.forward_with(input, Masks::default(), false)?;
    assert!(max_diff(&fused, &expected)? < 1e-12);
    // forward_full takes the explicit path (it forms the association).
    let full = h.forward_full(input, Masks::default(), false)?;
    assert!(max_diff(&full.output, &expected)? < 1e-12);
    assert_eq!(full.association.dims(), &[2, 2, 3, 0]);
    Ok(())
}

/// Integer inputs and inputs in another dtype than the model are typed errors naming the argument
/// and both dtypes, not a panic inside candle ("no unary function for u32") or a bare "dtype
/// mismatch in mul".
#[test]
fn wrong_dtypes_are_typed_errors() -> Result<()> {
    let map = VarMap::new();
    let h = Hopfield::new(HopfieldConfig::new(8).with_num_heads(2), vb(&map))?;
    for dtype in [DType::U32, DType::I64, DType::U8] {
        let x = Tensor::zeros((2, 3, 8), dtype, &dev())?;
        let e = h.forward_t(&x, false).unwrap_err().to_string();
        assert!(
            e.contains("floating-point") && e.contains(&format!("{dtype:?}")),
            "{e}"
        );
    }
    let x = Tensor::zeros((2, 3, 8), DType::F32, &dev())?; // the model is f64
    let e = h.forward_t(&x, false).unwrap_err().to_string();
    assert!(
        e.contains("F32") && e.contains("F64") && e.contains("pattern"),
        "{e}"
    );
    // The core alone checks too (its own boundary).
    let xi = Tensor::zeros((2, 3, 8), DType::U32, &dev())?;
    let e = hopfield_core::hopfield_core_output(
        &xi,
        &xi,
        &xi,
        h.association_core().weights(),
        &hopfield_core::CoreConfig::default(),
        Masks::default(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("floating-point"), "{e}");
    Ok(())
}
