//! Edge values of hflayers' constructor arguments that the reference-case format cannot express.
//! The values hflayers itself crashes on (an assertion, a division by zero, torch's own argument
//! check) or turns into NaN are each a typed `HopfieldError::Config` naming the argument here, at
//! parsing or at construction (listed in docs/design/hflayers-quirks.md, "Edge values"); and
//! `dropout = 1` in training, which the eval-only cases do not reach. The values hflayers handles
//! sensibly in eval are reference cases (`audit/hflayers_edges/`, `hflayers_edges_goldens.rs`).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::{
    Hopfield, HopfieldConfig, HopfieldError, HopfieldInput, HopfieldLayer, HopfieldLayerConfig,
    HopfieldPooling, HopfieldPoolingConfig, Masks,
};

/// The field of the typed config error that building `module` from `kwargs` gives.
fn rejected_field(module: &str, kwargs: &str) -> &'static str {
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
    let err = match module {
        "Hopfield" => match HopfieldConfig::from_kwargs(kwargs) {
            Err(e) => e.into(),
            Ok(c) => Hopfield::new(c, vb).map(|_| ()).unwrap_err(),
        },
        "HopfieldPooling" => match HopfieldPoolingConfig::from_kwargs(kwargs) {
            Err(e) => e.into(),
            Ok(c) => HopfieldPooling::new(c, vb).map(|_| ()).unwrap_err(),
        },
        _ => match HopfieldLayerConfig::from_kwargs(kwargs) {
            Err(e) => e.into(),
            Ok(c) => HopfieldLayer::new(c, vb).map(|_| ()).unwrap_err(),
        },
    };
    match HopfieldError::find(&err) {
        Some(HopfieldError::Config { field, .. }) => field,
        other => panic!("{kwargs}: expected a typed config error, got {other:?} ({err})"),
    }
}

/// (module, kwargs, the argument the error names), each with why hflayers fails on it.
const CRASHING: &[(&str, &str, &str)] = &[
    // V1: ZeroDivisionError in hflayers (embed_dim // num_heads).
    (
        "Hopfield",
        r#"{"input_size": 6, "num_heads": 0}"#,
        "num_heads",
    ),
    // V1: "at least one head needs to be active" at the first forward.
    (
        "Hopfield",
        r#"{"input_size": 6, "num_heads": 0, "hidden_size": 2}"#,
        "num_heads",
    ),
    // V2: "dimension of the association space has to be positive".
    (
        "Hopfield",
        r#"{"input_size": 6, "hidden_size": 0}"#,
        "hidden_size",
    ),
    // V3: "output projection dimension has to be positive".
    (
        "Hopfield",
        r#"{"input_size": 6, "output_size": 0}"#,
        "output_size",
    ),
    // V2.
    ("Hopfield", r#"{"input_size": 0}"#, "input_size"),
    // V4: torch: "dropout probability has to be between 0 and 1".
    (
        "Hopfield",
        r#"{"input_size": 6, "dropout": 1.5}"#,
        "dropout",
    ),
    (
        "Hopfield",
        r#"{"input_size": 6, "dropout": -0.1}"#,
        "dropout",
    ),
    // V5: "only positive thresholds allowed".
    (
        "Hopfield",
        r#"{"input_size": 6, "update_steps_eps": 0.0}"#,
        "update_steps_eps",
    ),
    (
        "Hopfield",
        r#"{"input_size": 6, "num_heads": 2, "update_steps_eps": [1e-3, 0.0]}"#,
        "update_steps_eps",
    ),
    // V6: torch takes sqrt(var + eps): NaN wherever var < -eps.
    (
        "Hopfield",
        r#"{"input_size": 6, "normalize_state_pattern_eps": -1e-3}"#,
        "normalize_state_pattern_eps",
    ),
    (
        "Hopfield",
        r#"{"input_size": 6, "hidden_size": 3, "normalize_hopfield_space": true,
        "normalize_hopfield_space_eps": -1.0}"#,
        "normalize_hopfield_space_eps",
    ),
    // V8: "key and value need to be of same dimension".
    (
        "Hopfield",
        r#"{"input_size": 6, "pattern_projection_as_connected": true, "stored_pattern_size": 4}"#,
        "pattern_projection_as_connected",
    ),
    // V9: a connected static projection has hidden_size features per head (hflayers asserts
    // pattern_dim == head_dim).
    (
        "Hopfield",
        r#"{"input_size": 8, "num_heads": 2, "pattern_projection_as_connected": true,
        "pattern_projection_as_static": true, "pattern_size": 2, "disable_out_projection": true}"#,
        "pattern_size",
    ),
    // V10: hflayers silently applies no activation for a name torch does not have (Q9).
    (
        "Hopfield",
        r#"{"input_size": 6, "association_activation": "swish"}"#,
        "association_activation",
    ),
    // V11: hflayers: "cannot reshape tensor of 0 elements".
    (
        "HopfieldPooling",
        r#"{"input_size": 6, "quantity": 0}"#,
        "quantity",
    ),
    (
        "HopfieldLayer",
        r#"{"input_size": 6, "quantity": 0}"#,
        "quantity",
    ),
];

#[test]
fn crashing_values_are_typed_errors() {
    for (module, kwargs, field) in CRASHING {
        assert_eq!(rejected_field(module, kwargs), *field, "{module} {kwargs}");
    }
}

/// V7: beta NaN or infinite: NaN outputs in hflayers, a typed error here.
#[test]
fn non_finite_scaling_is_a_typed_error() {
    for beta in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu);
        let err = Hopfield::new(HopfieldConfig::new(6).with_scaling(beta), vb).unwrap_err();
        assert!(
            matches!(
                HopfieldError::find(&err),
                Some(HopfieldError::Config {
                    field: "scaling",
                    ..
                })
            ),
            "{beta}: {err}"
        );
    }
}

/// A fully masked association row without `add_zero_association`: NaN in hflayers; here the
/// row retrieves the zero vector (so the output is the output projection's bias) with zero
/// gradient.
#[test]
fn fully_masked_row_retrieves_zero() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
    let h = Hopfield::new(HopfieldConfig::new(6), vb)?;
    let x = Tensor::randn(0f64, 1., (2, 3, 6), &dev)?;
    let padding = Tensor::from_vec(vec![1u8, 1, 1, 0, 1, 0], (2, 3), &dev)?;
    let masks = Masks {
        stored_pattern_padding_mask: Some(&padding),
        association_mask: None,
    };
    let y = h.forward_with(HopfieldInput::Single(&x), masks, false)?;
    let bias = map
        .data()
        .lock()
        .unwrap()
        .get("association_core.out_proj.bias")
        .expect("out_proj.bias")
        .as_tensor()
        .clone();
    let y0 = y.get(0)?;
    let want = bias.unsqueeze(0)?.broadcast_as(y0.shape())?;
    let diff = (y0 - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(diff < 1e-12, "{diff}");
    let rest = y.get(1)?.flatten_all()?.to_vec1::<f64>()?;
    assert!(rest.iter().all(|v| v.is_finite()));
    Ok(())
}

/// `dropout = 1` in training (accepted by torch): the whole association is dropped, so the
/// output is the output projection's bias and nothing upstream receives a gradient.
#[test]
fn dropout_one_in_training_drops_everything() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
    let h = Hopfield::new(
        HopfieldConfig::from_kwargs(r#"{"input_size": 6, "num_heads": 2, "dropout": 1.0}"#)?,
        vb,
    )?;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 6), &dev)?)?;
    let y = h.forward_with(HopfieldInput::Single(x.as_tensor()), Masks::default(), true)?;
    let bias = map
        .data()
        .lock()
        .unwrap()
        .get("association_core.out_proj.bias")
        .expect("out_proj.bias")
        .as_tensor()
        .clone();
    let want = bias.reshape((1, 1, 6))?.broadcast_as(y.shape())?;
    let diff = (&y - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(diff < 1e-12, "{diff}");
    let grads = y.sum_all()?.backward()?;
    if let Some(g) = grads.get(x.as_tensor()) {
        assert_eq!(g.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    }
    // In eval the same module drops nothing.
    let y_eval = h.forward_with(
        HopfieldInput::Single(x.as_tensor()),
        Masks::default(),
        false,
    )?;
    let moved = (&y_eval - &y)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(moved > 1e-6);
    Ok(())
}
