//! Constructor kwargs of all five configurations: every argument the originals take lands in its
//! field (with `null` where the original takes `None`, numbers or lists for the per-head
//! arguments), and unknown keys and values of the wrong type are errors that name the argument.

use dahn_diffusion::{AttentionMode, DiffusionMode};
use hopfield_nn::energy::{EnergyTransformerConfig, EtError, HopfieldType};
use hopfield_nn::{
    Activation, DiffusedHopfieldConfig, GraphScope, HopfieldConfig, HopfieldError,
    HopfieldLayerConfig, HopfieldPoolingConfig, StepsEps, TransformerLayerConfig, UpdateSteps,
};
use rstest::rstest;

fn d() -> HopfieldConfig {
    HopfieldConfig::default()
}

/// The `(field, reason)` of a `HopfieldError::Config`.
fn config_error(e: HopfieldError) -> (&'static str, String) {
    match e {
        HopfieldError::Config { field, reason } => (field, reason),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[rstest]
#[case(r#"{"input_size": 8}"#, d().with_input_size(Some(8)))]
#[case(r#"{"input_size": null}"#, d())]
#[case(r#"{"hidden_size": 4}"#, d().with_hidden_size(Some(4)))]
#[case(r#"{"output_size": 7}"#, d().with_output_size(Some(7)))]
#[case(r#"{"pattern_size": 5}"#, d().with_pattern_size(Some(5)))]
#[case(r#"{"num_heads": 2}"#, d().with_num_heads(2))]
#[case(r#"{"scaling": 0.3}"#, d().with_scaling(0.3))]
#[case(r#"{"scaling": 2}"#, d().with_scaling(2.0))]
#[case(r#"{"scaling": [0.5, 0.25]}"#, d().with_scaling_per_head(vec![0.5, 0.25]))]
#[case(r#"{"scaling": null}"#, d())]
#[case(r#"{"update_steps_max": 3}"#, d().with_update_steps_max(Some(3)))]
#[case(r#"{"update_steps_max": null}"#, d().with_update_steps_max(None))]
// hflayers compares `update_steps_max < 0`: a negative count means until convergence.
#[case(r#"{"update_steps_max": -1}"#, d().with_update_steps_max(None))]
#[case(r#"{"update_steps_max": 0}"#, d().with_update_steps_max(Some(0)))]
#[case(r#"{"dropout": 1.0}"#, d().with_dropout(1.0))]
#[case(r#"{"normalize_state_pattern_eps": 0.0}"#, d().with_normalize_state_pattern_eps(0.0))]
#[case(r#"{"update_steps_max": [2, -1]}"#,
       HopfieldConfig { update_steps_max: UpdateSteps::PerHead(vec![Some(2), None]), ..d() })]
#[case(r#"{"update_steps_eps": 1e-12}"#, d().with_update_steps_eps(1e-12))]
#[case(r#"{"update_steps_eps": [0.1, 1]}"#,
       d().with_update_steps_eps_per_head(StepsEps::PerHead(vec![0.1, 1.0])))]
#[case(r#"{"normalize_stored_pattern": false}"#, d().with_normalize_stored_pattern(false))]
#[case(r#"{"normalize_stored_pattern_affine": false}"#, d().with_normalize_stored_pattern_affine(false))]
#[case(r#"{"normalize_stored_pattern_eps": 0.5}"#, d().with_normalize_stored_pattern_eps(0.5))]
#[case(r#"{"normalize_state_pattern": false}"#, d().with_normalize_state_pattern(false))]
#[case(r#"{"normalize_state_pattern_affine": false}"#, d().with_normalize_state_pattern_affine(false))]
#[case(r#"{"normalize_state_pattern_eps": 0.1}"#, d().with_normalize_state_pattern_eps(0.1))]
#[case(r#"{"normalize_pattern_projection": false}"#, d().with_normalize_pattern_projection(false))]
#[case(r#"{"normalize_pattern_projection_affine": false}"#,
       d().with_normalize_pattern_projection_affine(false))]
#[case(r#"{"normalize_pattern_projection_eps": 2}"#, d().with_normalize_pattern_projection_eps(2.0))]
#[case(r#"{"normalize_hopfield_space": true}"#, d().with_normalize_hopfield_space(true))]
#[case(r#"{"normalize_hopfield_space_affine": true}"#, d().with_normalize_hopfield_space_affine(true))]
#[case(r#"{"normalize_hopfield_space_eps": 0.3}"#, d().with_normalize_hopfield_space_eps(0.3))]
#[case(r#"{"stored_pattern_as_static": true}"#, d().with_stored_pattern_as_static(true))]
#[case(r#"{"state_pattern_as_static": true}"#, d().with_state_pattern_as_static(true))]
#[case(r#"{"pattern_projection_as_static": true}"#, d().with_pattern_projection_as_static(true))]
#[case(r#"{"pattern_projection_as_connected": true}"#, d().with_pattern_projection_as_connected(true))]
#[case(r#"{"stored_pattern_size": 6}"#, d().with_stored_pattern_size(Some(6)))]
#[case(r#"{"pattern_projection_size": 5}"#, d().with_pattern_projection_size(Some(5)))]
#[case(r#"{"batch_first": false}"#, d().with_batch_first(false))]
#[case(r#"{"association_activation": "tanh"}"#, d().with_association_activation(Some(Activation::Tanh)))]
#[case(r#"{"association_activation": null}"#, d())]
#[case(r#"{"dropout": 0.25}"#, d().with_dropout(0.25))]
#[case(r#"{"input_bias": false}"#, d().with_input_bias(false))]
#[case(r#"{"concat_bias_pattern": true}"#, d().with_concat_bias_pattern(true))]
#[case(r#"{"add_zero_association": true}"#, d().with_add_zero_association(true))]
#[case(r#"{"disable_out_projection": true}"#, d().with_disable_out_projection(true))]
fn hopfield_kwargs_set_their_field(#[case] json: &str, #[case] want: HopfieldConfig) {
    assert_eq!(HopfieldConfig::from_kwargs(json).unwrap(), want);
    // The wrappers take every Hopfield argument too.
    assert_eq!(
        HopfieldPoolingConfig::from_kwargs(json).unwrap().hopfield,
        want
    );
    assert_eq!(
        HopfieldLayerConfig::from_kwargs(json).unwrap().hopfield,
        want
    );
    assert_eq!(
        DiffusedHopfieldConfig::from_kwargs(json).unwrap().hopfield,
        want
    );
    let nested = format!(r#"{{"hopfield": {json}, "hopfield_cross": {json}}}"#);
    let t = TransformerLayerConfig::from_kwargs(&nested).unwrap();
    assert_eq!((t.hopfield, t.hopfield_cross), (want.clone(), Some(want)));
}

#[rstest]
#[case(
    r#"{"hidden_size": -3}"#,
    "hidden_size",
    "expected a non-negative integer, got -3"
)]
#[case(
    r#"{"input_size": "8"}"#,
    "input_size",
    r#"expected a non-negative integer, got "8""#
)]
#[case(
    r#"{"input_size": 8.5}"#,
    "input_size",
    "expected a non-negative integer, got 8.5"
)]
#[case(
    r#"{"num_heads": null}"#,
    "num_heads",
    "expected a non-negative integer, got null"
)]
#[case(
    r#"{"scaling": "big"}"#,
    "scaling",
    "expected a number, a list of numbers or null"
)]
#[case(
    r#"{"scaling": [1, "a"]}"#,
    "scaling",
    "expected a number, a list of numbers or null"
)]
#[case(
    r#"{"update_steps_max": 2.5}"#,
    "update_steps_max",
    "expected an integer, a list of integers or null, got 2.5"
)]
#[case(r#"{"update_steps_max": [1.5]}"#, "update_steps_max", "got [1.5]")]
#[case(
    r#"{"update_steps_eps": null}"#,
    "update_steps_eps",
    "expected a number or a list of numbers, got null"
)]
#[case(
    r#"{"normalize_stored_pattern": null}"#,
    "normalize_stored_pattern",
    "expected a boolean, got null"
)]
#[case(r#"{"batch_first": 1}"#, "batch_first", "expected a boolean, got 1")]
#[case(r#"{"dropout": "0.1"}"#, "dropout", r#"expected a number, got "0.1""#)]
#[case(
    r#"{"association_activation": 3}"#,
    "association_activation",
    "expected a string, got 3"
)]
#[case(
    r#"{"association_activation": "swish"}"#,
    "association_activation",
    "unknown activation"
)]
#[case(r#"{"num_head": 2}"#, "kwargs", r#"unknown argument "num_head""#)]
#[case(r#"[1, 2]"#, "kwargs", "expected a JSON object")]
fn hopfield_kwargs_errors_name_the_argument(
    #[case] json: &str,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let (f, r) = config_error(HopfieldConfig::from_kwargs(json).unwrap_err());
    assert_eq!(f, field, "{r}");
    assert!(r.contains(reason), "{r:?} lacks {reason:?}");
}

#[rstest]
#[case(r#"{"quantity": 3}"#, 3, true)]
#[case(r#"{"trainable": false}"#, 1, false)]
#[case(r#"{"quantity": 0, "trainable": true}"#, 0, true)]
fn pooling_kwargs_set_their_field(
    #[case] json: &str,
    #[case] quantity: usize,
    #[case] trainable: bool,
) {
    let c = HopfieldPoolingConfig::from_kwargs(json).unwrap();
    assert_eq!(
        (c.quantity, c.trainable, c.hopfield),
        (quantity, trainable, d())
    );
}

#[rstest]
#[case(r#"{"quantity": 10}"#, (10, true, false, true))]
#[case(r#"{"trainable": false}"#, (1, false, false, true))]
#[case(r#"{"lookup_weights_as_separated": true}"#, (1, true, true, true))]
#[case(r#"{"lookup_targets_as_trainable": false}"#, (1, true, false, false))]
fn layer_kwargs_set_their_field(#[case] json: &str, #[case] want: (usize, bool, bool, bool)) {
    let c = HopfieldLayerConfig::from_kwargs(json).unwrap();
    let got = (
        c.quantity,
        c.trainable,
        c.lookup_weights_as_separated,
        c.lookup_targets_as_trainable,
    );
    assert_eq!((got, c.hopfield), (want, d()));
}

#[rstest]
#[case::pooling_quantity(
    "pooling",
    r#"{"quantity": -1}"#,
    "quantity",
    "expected a non-negative integer, got -1"
)]
#[case::pooling_trainable(
    "pooling",
    r#"{"trainable": "no"}"#,
    "trainable",
    r#"expected a boolean, got "no""#
)]
#[case::pooling_unknown(
    "pooling",
    r#"{"quantities": 2}"#,
    "kwargs",
    r#"unknown argument "quantities""#
)]
#[case::pooling_inner(
    "pooling",
    r#"{"num_heads": 1.5}"#,
    "num_heads",
    "expected a non-negative integer, got 1.5"
)]
#[case::layer_quantity(
    "layer",
    r#"{"quantity": [10]}"#,
    "quantity",
    "expected a non-negative integer, got [10]"
)]
#[case::layer_separated(
    "layer",
    r#"{"lookup_weights_as_separated": 0}"#,
    "lookup_weights_as_separated",
    "expected a boolean"
)]
#[case::layer_targets(
    "layer",
    r#"{"lookup_targets_as_trainable": null}"#,
    "lookup_targets_as_trainable",
    "expected a boolean, got null"
)]
#[case::layer_unknown(
    "layer",
    r#"{"lookup_weights": 1}"#,
    "kwargs",
    r#"unknown argument "lookup_weights""#
)]
fn wrapper_kwargs_errors_name_the_argument(
    #[case] which: &str,
    #[case] json: &str,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let e = match which {
        "pooling" => HopfieldPoolingConfig::from_kwargs(json).unwrap_err(),
        _ => HopfieldLayerConfig::from_kwargs(json).unwrap_err(),
    };
    let (f, r) = config_error(e);
    assert_eq!(f, field, "{r}");
    assert!(r.contains(reason), "{r:?} lacks {reason:?}");
}

#[test]
fn transformer_kwargs_set_their_field() {
    let c = TransformerLayerConfig::from_kwargs(
        r#"{"hopfield": {"input_size": 8, "num_heads": 2}, "hopfield_cross": {"input_size": 8},
            "dim_feedforward": 32, "dropout": 0.0, "activation": "gelu"}"#,
    )
    .unwrap();
    let want = TransformerLayerConfig::new(HopfieldConfig::new(8).with_num_heads(2))
        .with_hopfield_cross(HopfieldConfig::new(8))
        .with_dim_feedforward(32)
        .with_dropout(0.0)
        .with_activation(Activation::Gelu);
    assert_eq!(c, want);
    let defaults = TransformerLayerConfig::from_kwargs(r#"{"hopfield": {"input_size": 8}}"#);
    assert_eq!(
        defaults.unwrap(),
        TransformerLayerConfig::new(HopfieldConfig::new(8))
    );
}

#[rstest]
#[case(r#"{}"#, "hopfield", "is required")]
#[case(r#"{"hopfield": 8}"#, "hopfield", "expected a JSON object, got 8")]
#[case(
    r#"{"hopfield": {"input_size": -8}}"#,
    "hopfield",
    "`input_size`: expected a non-negative integer, got -8"
)]
#[case(
    r#"{"hopfield": {"input_size": 8}, "hopfield_cross": {"num_head": 1}}"#,
    "hopfield_cross",
    r#"unknown argument "num_head""#
)]
#[case(
    r#"{"hopfield": {}, "dim_feedforward": 1.5}"#,
    "dim_feedforward",
    "expected a non-negative integer, got 1.5"
)]
#[case(
    r#"{"hopfield": {}, "dropout": "0.1"}"#,
    "dropout",
    r#"expected a number, got "0.1""#
)]
#[case(
    r#"{"hopfield": {}, "activation": null}"#,
    "activation",
    "expected a string, got null"
)]
#[case(
    r#"{"hopfield": {}, "activation": "swish"}"#,
    "activation",
    "unknown activation"
)]
#[case(
    r#"{"hopfield": {}, "nhead": 2}"#,
    "kwargs",
    r#"unknown argument "nhead""#
)]
fn transformer_kwargs_errors_name_the_argument(
    #[case] json: &str,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let (f, r) = config_error(TransformerLayerConfig::from_kwargs(json).unwrap_err());
    assert_eq!(f, field, "{r}");
    assert!(r.contains(reason), "{r:?} lacks {reason:?}");
}

fn dh() -> DiffusedHopfieldConfig {
    DiffusedHopfieldConfig::new(d())
}

#[rstest]
#[case(r#"{"eta": 0.25}"#, dh().with_eta(0.25))]
#[case(r#"{"eta": 0}"#, dh().with_eta(0.0))]
#[case(r#"{"k_neighbors": 3}"#, dh().with_k_neighbors(3))]
#[case(r#"{"use_normalized_laplacian": false}"#, dh().with_normalized_laplacian(false))]
#[case(r#"{"diffuse_query": true}"#, dh().with_diffuse(true, true))]
#[case(r#"{"diffuse_key": false}"#, dh().with_diffuse(false, false))]
#[case(r#"{"diffusion_mode": "simple"}"#, dh().with_diffusion_mode(DiffusionMode::Simple))]
#[case(r#"{"diffusion_mode": "iterative"}"#, dh().with_diffusion_mode(DiffusionMode::Iterative))]
#[case(r#"{"diffusion_mode": "spectral"}"#, dh().with_diffusion_mode(DiffusionMode::Spectral))]
#[case(r#"{"diffusion_mode": "factored"}"#, dh().with_diffusion_mode(DiffusionMode::Factored))]
#[case(r#"{"diffusion_steps": 8}"#, dh().with_diffusion_steps(8))]
#[case(r#"{"attention_mode": "graph"}"#, dh().with_attention_mode(AttentionMode::Graph))]
#[case(r#"{"attention_mode": "dense"}"#, dh())]
#[case(r#"{"use_sparse": true}"#, dh())]
#[case(r#"{"use_sparse": false}"#, dh())]
#[case(r#"{"use_logit_diffusion": true}"#, dh().with_logit_diffusion(true, None))]
#[case(r#"{"logit_eta": 0.5}"#, dh().with_logit_diffusion(false, Some(0.5)))]
#[case(r#"{"logit_eta": null}"#, dh())]
#[case(r#"{"adaptive_eta": true}"#, dh().with_adaptive_eta(true, 5.0, 1.0))]
#[case(r#"{"adaptive_temperature": 3}"#, dh().with_adaptive_eta(false, 3.0, 1.0))]
#[case(r#"{"adaptive_threshold": -1.0}"#, dh().with_adaptive_eta(false, 5.0, -1.0))]
#[case(r#"{"cache_graph": false}"#, dh().with_cache_graph(false))]
#[case(r#"{"energy_stop_tol": 1e-9}"#, dh().with_energy_stop_tol(1e-9))]
#[case(r#"{"graph_scope": "batch_mean"}"#, dh().with_graph_scope(GraphScope::BatchMean))]
#[case(r#"{"graph_scope": "per_sample"}"#, dh())]
fn diffused_kwargs_set_their_field(#[case] json: &str, #[case] want: DiffusedHopfieldConfig) {
    assert_eq!(DiffusedHopfieldConfig::from_kwargs(json).unwrap(), want);
}

#[rstest]
#[case(r#"{"eta": "0.1"}"#, "eta", r#"expected a number, got "0.1""#)]
#[case(r#"{"eta": null}"#, "eta", "expected a number, got null")]
#[case(
    r#"{"k_neighbors": -5}"#,
    "k_neighbors",
    "expected a non-negative integer, got -5"
)]
#[case(
    r#"{"use_normalized_laplacian": "yes"}"#,
    "use_normalized_laplacian",
    "expected a boolean"
)]
#[case(
    r#"{"diffuse_query": 1}"#,
    "diffuse_query",
    "expected a boolean, got 1"
)]
#[case(
    r#"{"diffuse_key": null}"#,
    "diffuse_key",
    "expected a boolean, got null"
)]
#[case(
    r#"{"diffusion_mode": 1}"#,
    "diffusion_mode",
    "expected a string, got 1"
)]
#[case(
    r#"{"diffusion_mode": "heat"}"#,
    "diffusion_mode",
    "unknown diffusion mode"
)]
#[case(
    r#"{"diffusion_steps": 2.5}"#,
    "diffusion_steps",
    "expected a non-negative integer, got 2.5"
)]
#[case(
    r#"{"attention_mode": "sparse"}"#,
    "attention_mode",
    "unknown attention mode"
)]
#[case(
    r#"{"use_sparse": "no"}"#,
    "use_sparse",
    r#"expected a boolean, got "no""#
)]
#[case(
    r#"{"use_logit_diffusion": 0}"#,
    "use_logit_diffusion",
    "expected a boolean, got 0"
)]
#[case(r#"{"logit_eta": [0.1]}"#, "logit_eta", "expected a number, got [0.1]")]
#[case(r#"{"adaptive_eta": "on"}"#, "adaptive_eta", "expected a boolean")]
#[case(
    r#"{"adaptive_temperature": null}"#,
    "adaptive_temperature",
    "expected a number, got null"
)]
#[case(
    r#"{"adaptive_threshold": "1"}"#,
    "adaptive_threshold",
    "expected a number"
)]
#[case(r#"{"cache_graph": 1}"#, "cache_graph", "expected a boolean, got 1")]
#[case(
    r#"{"energy_stop_tol": false}"#,
    "energy_stop_tol",
    "expected a number, got false"
)]
#[case(
    r#"{"graph_scope": "batch"}"#,
    "graph_scope",
    "expected per_sample or batch_mean"
)]
#[case(r#"{"graph_scope": 0}"#, "graph_scope", "expected a string, got 0")]
#[case(
    r#"{"k_neighbours": 3}"#,
    "kwargs",
    r#"unknown argument "k_neighbours""#
)]
#[case(
    r#"{"input_size": true}"#,
    "input_size",
    "expected a non-negative integer, got true"
)]
fn diffused_kwargs_errors_name_the_argument(
    #[case] json: &str,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let (f, r) = config_error(DiffusedHopfieldConfig::from_kwargs(json).unwrap_err());
    assert_eq!(f, field, "{r}");
    assert!(r.contains(reason), "{r:?} lacks {reason:?}");
}

fn et() -> EnergyTransformerConfig {
    EnergyTransformerConfig::new(8, 12, 2)
}

#[rstest]
#[case(serde_json::json!({}), et())]
#[case(serde_json::json!({"context": 5}), et().with_context(5))]
#[case(serde_json::json!({"n_iters_default": 3}), et().with_n_iters(3))]
#[case(serde_json::json!({"alpha": 0.05}), et().with_alpha(0.05))]
#[case(serde_json::json!({"alpha": 1}), et().with_alpha(1.0))]
#[case(serde_json::json!({"beta": null}), et())]
#[case(serde_json::json!({"hopfield_type": "softmax"}), et().with_hopfield_type(HopfieldType::Softmax))]
#[case(serde_json::json!({"hopfield_type": "relu"}), et())]
#[case(serde_json::json!({"use_positional_embedding": false}), et().with_positional_embedding(false))]
#[case(serde_json::json!({"norm": "torch.nn.LayerNorm"}), et())]
#[case(serde_json::json!({"ema_decay": 0.9}), et())]
#[case(serde_json::json!({"ema_decay": null}), et())]
#[case(serde_json::json!({"return_energy": true}), et().with_return_energy(true))]
fn port_kwargs_set_their_field(
    #[case] extra: serde_json::Value,
    #[case] want: EnergyTransformerConfig,
) {
    let mut kw = serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2});
    kw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    assert_eq!(
        EnergyTransformerConfig::from_port_kwargs(&kw).unwrap(),
        want
    );
}

#[rstest]
#[case(serde_json::json!({"dim": "8"}), "dim", "expected a non-negative integer")]
#[case(serde_json::json!({"hidden_dim": -1}), "hidden_dim", "expected a non-negative integer")]
#[case(serde_json::json!({"n_heads": 2.5}), "n_heads", "expected a non-negative integer")]
#[case(serde_json::json!({"context": null}), "context", "expected a non-negative integer")]
#[case(serde_json::json!({"n_iters_default": "3"}), "n_iters_default", "expected a non-negative integer")]
#[case(serde_json::json!({"alpha": "0.1"}), "alpha", "expected a number")]
#[case(serde_json::json!({"hopfield_type": 1}), "hopfield_type", "expected a string")]
#[case(serde_json::json!({"use_positional_embedding": 1}), "use_positional_embedding", "expected a boolean")]
#[case(serde_json::json!({"norm": 3}), "norm", "expected a string")]
#[case(serde_json::json!({"ema_decay": "0.9"}), "ema_decay", "expected a number")]
#[case(serde_json::json!({"return_energy": "yes"}), "return_energy", "expected a boolean")]
fn port_kwargs_of_the_wrong_type_name_the_argument(
    #[case] extra: serde_json::Value,
    #[case] field: &str,
    #[case] reason: &str,
) {
    let mut kw = serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2});
    kw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    match EnergyTransformerConfig::from_port_kwargs(&kw).unwrap_err() {
        EtError::Config {
            field: f,
            reason: r,
            ..
        } => assert_eq!((f, r), (field, reason)),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[rstest]
#[case(serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2, "beta": 0.5}), "beta")]
#[case(serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2, "norm": "BatchNorm"}), "norm")]
#[case(serde_json::json!({"dim": 8, "hidden_dim": 12, "n_heads": 2, "heads": 2}), "heads")]
#[case(serde_json::json!({"hidden_dim": 12, "n_heads": 2}), "dim")]
#[case(serde_json::json!({"dim": 8, "n_heads": 2}), "hidden_dim")]
#[case(serde_json::json!({"dim": 8, "hidden_dim": 12}), "n_heads")]
#[case(serde_json::json!([8, 12, 2]), "kwargs")]
fn port_kwargs_unknown_or_unsupported_are_named(#[case] kw: serde_json::Value, #[case] name: &str) {
    match EnergyTransformerConfig::from_port_kwargs(&kw).unwrap_err() {
        EtError::UnsupportedArgument { name: n, .. } => assert_eq!(n, name),
        other => panic!("expected UnsupportedArgument, got {other:?}"),
    }
}
