//! Edge values of the Energy Transformer port's arguments that the reference-case format cannot
//! express: the values the port crashes on (a division by zero, an assertion, an index error) or
//! turns into garbage (an ascending step, a silently empty loop, a division by a zero beta) are
//! each a typed `EtError` naming the argument here (ids E-V1..E-V9 in
//! docs/design/energy-transformer-port.md, "Edge values"); and `exclude_self` with one token, an
//! option the port does not have. The values the port handles sensibly are reference cases
//! (`audit/et_edges/`, `et_edges_goldens.rs`).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::energy::{Energy, EnergyTransformer, EnergyTransformerConfig, EtError};

fn vb(map: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(map, DType::F64, &Device::Cpu)
}

/// The error of building `EnergyTransformer(**kwargs)`.
fn rejected(kwargs: serde_json::Value) -> EtError {
    let err: candle_core::Error = match EnergyTransformerConfig::from_port_kwargs(&kwargs) {
        Err(e) => e.into(),
        Ok(c) => EnergyTransformer::new(&c, vb(&VarMap::new()))
            .map(|_| ())
            .unwrap_err(),
    };
    EtError::find(&err)
        .unwrap_or_else(|| panic!("{kwargs}: expected a typed error, got {err}"))
        .clone()
}

/// The argument a typed error names.
fn named(e: &EtError) -> String {
    match e {
        EtError::Config { field, .. } => field.to_string(),
        EtError::UnsupportedArgument { name, .. } => name.clone(),
        EtError::UnknownHopfieldType(_) => "hopfield_type".into(),
        other => panic!("not a config error: {other:?}"),
    }
}

#[test]
fn garbage_arguments_are_typed_errors() {
    use serde_json::json;
    let cases = [
        // E-V1: ZeroDivisionError (embed_dim // n_heads) / "embed_dim must be divisible".
        (json!({"dim": 6, "hidden_dim": 4, "n_heads": 0}), "n_heads"),
        (json!({"dim": 6, "hidden_dim": 4, "n_heads": 4}), "n_heads"),
        // E-V9: no memories with the softmax Hopfield: its energy is -(1/beta) lse(nothing) = +inf.
        (
            json!({"dim": 6, "hidden_dim": 0, "n_heads": 2, "hopfield_type": "softmax"}),
            "hidden_dim",
        ),
        // E-V2: no token features: LayerNorm over nothing, nothing to attend with.
        (json!({"dim": 0, "hidden_dim": 4, "n_heads": 1}), "dim"),
        // E-V3: a negative step ascends the energy (tokens grow without bound over the steps).
        (
            json!({"dim": 6, "hidden_dim": 4, "n_heads": 2, "alpha": -0.5}),
            "alpha",
        ),
        // E-V4: range(-1) is empty: the port silently runs no step.
        (
            json!({"dim": 6, "hidden_dim": 4, "n_heads": 2, "n_iters_default": -1}),
            "n_iters_default",
        ),
        // E-V5: a float beta crashes (E1); a tensor means two different betas (E2).
        (
            json!({"dim": 6, "hidden_dim": 4, "n_heads": 2, "beta": 0.5}),
            "beta",
        ),
        (
            json!({"dim": 6, "hidden_dim": 4, "n_heads": 2, "beta": [0.5, 0.7]}),
            "beta",
        ),
        // E-V6: any other string silently means ReLU (E7).
        (
            json!({"dim": 6, "hidden_dim": 4, "n_heads": 2, "hopfield_type": "bogus"}),
            "hopfield_type",
        ),
    ];
    for (kwargs, field) in cases {
        let e = rejected(kwargs.clone());
        assert_eq!(named(&e), field, "{kwargs}: {e}");
    }
}

/// E-V3: NaN or infinite step sizes make every token NaN in the port.
#[test]
fn non_finite_alpha_is_a_typed_error() {
    for alpha in [f64::NAN, f64::INFINITY] {
        let cfg = EnergyTransformerConfig::new(6, 4, 2).with_alpha(alpha);
        let e = EnergyTransformer::new(&cfg, vb(&VarMap::new())).unwrap_err();
        assert!(
            matches!(
                EtError::find(&e),
                Some(EtError::Config { field: "alpha", .. })
            ),
            "{e}"
        );
    }
}

/// E-V7: the attention energy and the softmax Hopfield energy divide by beta. With a zero beta
/// in a checkpoint the port's energies and its autograd gradients (`-(1/beta) * (beta ...)`) are
/// NaN. Here the descent takes the closed-form gradient, which is the beta -> 0 limit (uniform
/// attention, the mean memory), and the energies, which have no finite value, are a typed error
/// naming the parameter. (A zero ReLU beta is fine everywhere: reference case `et_relu_beta0`.)
#[test]
fn zero_betas_that_are_divided_by_are_typed_errors() -> candle_core::Result<()> {
    for (hopfield_type, name) in [("relu", "mha.beta"), ("softmax", "hopfield.beta")] {
        let cfg = EnergyTransformerConfig::from_port_kwargs(&serde_json::json!(
            {"dim": 6, "hidden_dim": 4, "n_heads": 2, "hopfield_type": hopfield_type}
        ))
        .unwrap();
        let map = VarMap::new();
        let et = EnergyTransformer::new(&cfg, vb(&map))?;
        for (n, v) in map.data().lock().unwrap().iter() {
            if n == name {
                v.set(&v.as_tensor().zeros_like()?)?;
            }
        }
        let x = Tensor::randn(0f64, 1., (2, 3, 6), &Device::Cpu)?;
        let y = et.forward(&x)?;
        assert!(
            y.flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .all(|v| v.is_finite()),
            "{hopfield_type}: the beta -> 0 limit is finite"
        );
        let e = et.energy(&x).unwrap_err();
        match EtError::find(&e) {
            Some(EtError::Parameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{hopfield_type}: expected a parameter error, got {other:?} ({e})"),
        }
    }
    Ok(())
}

/// E-V8: with a positional embedding, a sequence of another length than `context` crashes the
/// port (E10); `filtered_forward` indices beyond the context raise an IndexError there.
#[test]
fn lengths_and_indices_beyond_the_context_are_typed_errors() -> candle_core::Result<()> {
    let cfg = EnergyTransformerConfig::new(6, 4, 2).with_context(4);
    let et = EnergyTransformer::new(&cfg, vb(&VarMap::new()))?;
    let x = Tensor::randn(0f64, 1., (2, 5, 6), &Device::Cpu)?;
    let e = et.forward(&x).unwrap_err();
    assert!(
        matches!(
            EtError::find(&e),
            Some(EtError::SeqLen {
                got: 5,
                context: 4,
                ..
            })
        ),
        "{e}"
    );
    let x = Tensor::randn(0f64, 1., (2, 2, 6), &Device::Cpu)?;
    let idx = Tensor::new(&[1i64, 4], &Device::Cpu)?;
    let e = et.filtered_forward(&x, &idx, None).unwrap_err();
    assert!(
        matches!(EtError::find(&e), Some(EtError::Indices { .. })),
        "{e}"
    );
    Ok(())
}

/// `exclude_self` (the paper's attention, not in the port) with one token: the attention sum is
/// empty, so the attention energy and its gradient are 0; only the Hopfield term moves the token.
#[test]
fn exclude_self_with_one_token_leaves_only_the_hopfield_term() -> candle_core::Result<()> {
    let map = VarMap::new();
    let cfg = EnergyTransformerConfig::new(6, 4, 2)
        .with_init_scale(0.5)
        .with_exclude_self(true);
    let et = EnergyTransformer::new(&cfg, vb(&map))?;
    let x = Tensor::randn(0f64, 1., (3, 1, 6), &Device::Cpu)?;
    let att = et.mha().energy(&x)?.to_scalar::<f64>()?;
    assert_eq!(att, 0.0);
    let g = et.mha().grad(&x)?;
    assert_eq!(g.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    let total = et.energy(&x)?.to_scalar::<f64>()?;
    let hop = et.hopfield().energy(&x)?.to_scalar::<f64>()?;
    assert!(
        (total - hop).abs() <= 1e-12 * hop.abs().max(1.0),
        "{total} {hop}"
    );
    assert!(et
        .forward(&x)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .all(|v| v.is_finite()));
    Ok(())
}
