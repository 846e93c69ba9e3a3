//! Edge values of difflayers' `DiffusedHopfield` arguments that the reference-case format cannot
//! express: the values difflayers crashes on (an index error, a `ValueError`) or handles by
//! silently computing something else (a negative `eta` or `diffusion_steps` turns the diffusion
//! off, NaN adaptive-eta settings are ignored, graph attention over no neighbours reads out zeros)
//! are each a typed error naming the argument here (ids D-V1..D-V8 in
//! docs/design/difflayers-semantics.md, "Edge values"). The values difflayers handles sensibly
//! are reference cases (`audit/dahn_edges/`, `dahn_edges_goldens.rs`).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dahn_diffusion::DiffusionError;
use hopfield_nn::{DiffusedHopfield, DiffusedHopfieldConfig, HopfieldError};

fn vb() -> VarBuilder<'static> {
    VarBuilder::from_varmap(&VarMap::new(), DType::F64, &Device::Cpu)
}

/// The argument the typed config error of building `DiffusedHopfield(**kwargs)` names.
fn rejected_field(kwargs: &str) -> &'static str {
    let err: candle_core::Error = match DiffusedHopfieldConfig::from_kwargs(kwargs) {
        Err(e) => e.into(),
        Ok(c) => DiffusedHopfield::new(c, vb()).map(|_| ()).unwrap_err(),
    };
    match HopfieldError::find(&err) {
        Some(HopfieldError::Config { field, .. }) => field,
        other => panic!("{kwargs}: expected a typed config error, got {other:?} ({err})"),
    }
}

/// (kwargs, the argument the error names), each with what difflayers does with it.
const REJECTED: &[(&str, &str)] = &[
    // D-V1: `cfg.eta > 0` is false: difflayers silently skips the diffusion.
    (r#"{"input_size": 8, "eta": -0.1}"#, "eta"),
    // D-V2: torch.topk: "selected index k out of range".
    (r#"{"input_size": 8, "k_neighbors": -2}"#, "k_neighbors"),
    // D-V2: range(-1) is empty: difflayers silently runs no round.
    (
        r#"{"input_size": 8, "diffusion_steps": -1}"#,
        "diffusion_steps",
    ),
    // D-V3: a softmax over no neighbours: every loop readout is zero.
    (
        r#"{"input_size": 8, "attention_mode": "graph", "k_neighbors": 0}"#,
        "k_neighbors",
    ),
    // D-V4: `energy_stop_tol > 0` is false: the energy stop is silently off.
    (
        r#"{"input_size": 8, "energy_stop_tol": -1.0}"#,
        "energy_stop_tol",
    ),
    // D-V6: logit diffusion with a negative eta (unused in difflayers, which crashes with it on).
    (
        r#"{"input_size": 8, "use_logit_diffusion": true, "logit_eta": -0.5}"#,
        "logit_eta",
    ),
    // D-V7: ValueError "Unknown diffusion mode" / "AttentionOperator: mode must be ...".
    (
        r#"{"input_size": 8, "diffusion_mode": "bogus"}"#,
        "diffusion_mode",
    ),
    (
        r#"{"input_size": 8, "attention_mode": "bogus"}"#,
        "attention_mode",
    ),
];

#[test]
fn garbage_values_are_typed_errors() {
    for (kwargs, field) in REJECTED {
        assert_eq!(rejected_field(kwargs), *field, "{kwargs}");
    }
}

/// D-V1, D-V5: non-finite values JSON cannot carry (difflayers: NaN eta silently turns the
/// diffusion off, an infinite one gives NaN outputs; a NaN adaptive temperature or threshold makes
/// eta_eff NaN, which difflayers' 5% test silently ignores).
#[test]
fn non_finite_settings_are_typed_errors() {
    let base = || DiffusedHopfieldConfig::from_kwargs(r#"{"input_size": 8}"#).unwrap();
    let cases = [
        (base().with_eta(f64::NAN), "eta"),
        (base().with_eta(f64::INFINITY), "eta"),
        (base().with_energy_stop_tol(f64::NAN), "energy_stop_tol"),
        (
            base().with_adaptive_eta(true, f64::NAN, 1.0),
            "adaptive_temperature",
        ),
        (
            base().with_adaptive_eta(true, 5.0, f64::INFINITY),
            "adaptive_threshold",
        ),
    ];
    for (cfg, field) in cases {
        let err = DiffusedHopfield::new(cfg.clone(), vb()).unwrap_err();
        match HopfieldError::find(&err) {
            Some(HopfieldError::Config { field: f, .. }) => assert_eq!(f, &field, "{cfg:?}"),
            other => panic!("{cfg:?}: expected a config error, got {other:?} ({err})"),
        }
    }
}

/// D-V8: an explicit Euler step that provably amplifies (difflayers runs it: D12). Simple
/// diffusion on the normalised Laplacian is refused at construction for eta > 2; factored
/// diffusion's bound depends on the degrees, so it is refused when the graph is built.
#[test]
fn unstable_euler_steps_are_typed_errors() -> candle_core::Result<()> {
    let cfg = DiffusedHopfieldConfig::from_kwargs(
        r#"{"input_size": 8, "diffusion_mode": "simple", "eta": 2.5}"#,
    )
    .unwrap();
    let err = DiffusedHopfield::new(cfg, vb()).unwrap_err();
    assert!(
        matches!(
            HopfieldError::find(&err),
            Some(HopfieldError::Config { field: "eta", .. })
        ),
        "{err}"
    );
    // Patterns sharing a direction: every node has 8 neighbours of similarity ~1, degree ~8.
    let dev = Device::Cpu;
    let x = (Tensor::randn(0f64, 0.05, (1, 9, 8), &dev)? + 1.0)?;
    let cfg = DiffusedHopfieldConfig::from_kwargs(
        r#"{"input_size": 8, "eta": 1.0, "k_neighbors": 8, "normalize_stored_pattern": false,
        "normalize_stored_pattern_affine": false}"#,
    )
    .unwrap();
    let dh = DiffusedHopfield::new(cfg, vb())?;
    let err = candle_core::ModuleT::forward_t(&dh, &x, false).unwrap_err();
    assert!(
        matches!(
            DiffusionError::find(&err),
            Some(DiffusionError::Unstable { .. })
        ),
        "{err}"
    );
    Ok(())
}

/// D-V3: graph attention with one stored pattern (S = L = 1): the node has no neighbour, and
/// difflayers' softmax over nothing reads out zeros; here a typed error.
#[test]
fn graph_attention_without_neighbours_is_a_typed_error() -> candle_core::Result<()> {
    let cfg =
        DiffusedHopfieldConfig::from_kwargs(r#"{"input_size": 8, "attention_mode": "graph"}"#)
            .unwrap();
    let dh = DiffusedHopfield::new(cfg, vb())?;
    let x = Tensor::randn(0f64, 1., (2, 1, 8), &Device::Cpu)?;
    let err = candle_core::ModuleT::forward_t(&dh, &x, false).unwrap_err();
    assert!(
        matches!(
            DiffusionError::find(&err),
            Some(DiffusionError::Empty { .. })
        ),
        "{err}"
    );
    Ok(())
}
