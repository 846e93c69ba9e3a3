//! Hostile input to hopfield-nn's public API (issue 12): every call returns a typed error or a
//! finite result; none panics, aborts, hangs or returns NaN/inf. See docs/design/hostile-input.md
//! for what each input class gets.
//!
//! The property tests run a bounded number of cases in `cargo test`; a longer run:
//!
//! ```text
//! PROPTEST_CASES=2000 cargo test --release -p hopfield-nn --test hostile
//! ```
//!
//! The plain tests below pin each problem found by hand, one per test.

use candle_core::{DType, Device, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::*;
use proptest::prelude::*;

#[path = "../../hopfield-cuda/tests/support/hostile.rs"]
mod support;
use support::{outcome, tensor};

/// Errors must be one of the workspace's typed errors.
fn typed(e: &candle_core::Error) -> bool {
    HopfieldError::find(e).is_some()
        || hopfield_cuda::KernelError::find(e).is_some()
        || hopfield_nn::energy::EtError::find(e).is_some()
        || dahn_graph::GraphError::find(e).is_some()
        || dahn_diffusion::DiffusionError::find(e).is_some()
}

fn dev() -> Device {
    Device::Cpu
}

fn hopfield(cfg: HopfieldConfig, dtype: DType) -> Result<Hopfield> {
    let map = VarMap::new();
    Hopfield::new(cfg, VarBuilder::from_varmap(&map, dtype, &dev()))
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        4 => Just(DType::F32),
        2 => Just(DType::F64),
        1 => Just(DType::F16),
        1 => Just(DType::BF16),
        1 => Just(DType::U32),
        1 => Just(DType::I64),
    ]
}

fn scale_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => Just(1.0),
        1 => Just(0.0),
        1 => Just(1e4),
        1 => Just(1e19),
        1 => Just(1e30),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

fn beta_strategy() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(0.0)),
        1 => Just(Some(-2.0)),
        1 => Just(Some(1e5)),
        1 => Just(Some(1e39)),
        1 => Just(Some(f64::NAN)),
    ]
}

#[derive(Debug, Clone)]
struct HopfieldCase {
    n: usize,
    l: usize,
    s: usize,
    e: usize,
    heads: usize,
    model: DType,
    input: DType,
    scale: f64,
    beta: Option<f64>,
    steps: Option<usize>,
    eps: f64,
    normalize: bool,
    statics: bool,
    zero_association: bool,
    dropout: f64,
    train: bool,
    mask: u8,
    seed: u64,
}

fn hopfield_case() -> impl Strategy<Value = HopfieldCase> {
    (
        (
            0usize..3,
            0usize..5,
            0usize..5,
            prop_oneof![Just(0usize), Just(1), Just(4), Just(8)],
        ),
        (
            1usize..4,
            prop_oneof![Just(DType::F32), Just(DType::F64), Just(DType::F16)],
        ),
        (dtype_strategy(), scale_strategy(), beta_strategy()),
        (
            prop_oneof![
                Just(Some(0usize)),
                Just(Some(2)),
                Just(None),
                Just(Some(usize::MAX))
            ],
            prop_oneof![Just(1e-4), Just(1e-30), Just(0.0), Just(f64::NAN)],
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (
            prop_oneof![Just(0.0), Just(0.5), Just(1.0), Just(f64::NAN)],
            any::<bool>(),
        ),
        (0u8..6, any::<u64>()),
    )
        .prop_map(
            |((n, l, s, e), (heads, model), (input, scale, beta), (steps, eps), flags, dr, m)| {
                HopfieldCase {
                    n,
                    l,
                    s,
                    e,
                    heads,
                    model,
                    input,
                    scale,
                    beta,
                    steps,
                    eps,
                    normalize: flags.0,
                    statics: flags.1,
                    zero_association: flags.2,
                    dropout: dr.0,
                    train: dr.1,
                    mask: m.0,
                    seed: m.1,
                }
            },
        )
}

fn config_of(c: &HopfieldCase) -> HopfieldConfig {
    let mut cfg = if c.statics {
        HopfieldConfig::pure_static()
    } else {
        HopfieldConfig::new(c.e).with_num_heads(c.heads)
    };
    if let Some(b) = c.beta {
        cfg = cfg.with_scaling(b);
    }
    cfg = cfg.with_update_steps_max(c.steps);
    cfg.update_steps_eps = hopfield_nn::StepsEps::Scalar(c.eps);
    cfg.max_convergence_steps = 20;
    cfg.normalize_stored_pattern = c.normalize;
    cfg.normalize_state_pattern = c.normalize;
    cfg.normalize_pattern_projection = c.normalize;
    cfg.add_zero_association = c.zero_association;
    cfg.dropout = c.dropout;
    cfg
}

fn run_hopfield(c: &HopfieldCase) -> Result<Tensor> {
    let h = hopfield(config_of(c), c.model)?;
    let stored = tensor(&[c.n, c.s, c.e], c.input, c.scale, c.seed)?;
    let state = tensor(&[c.n, c.l, c.e], c.input, c.scale, c.seed + 1)?;
    let float_mask;
    let int_mask;
    let mut masks = Masks::default();
    match c.mask {
        1 => {
            float_mask = tensor(&[c.l, c.s], DType::F32, 1.0, c.seed + 2)?;
            masks.association_mask = Some(&float_mask);
        }
        2 => {
            let v = if c.seed.is_multiple_of(2) {
                f32::NAN
            } else {
                f32::INFINITY
            };
            float_mask = Tensor::full(v, (c.l, c.s), &dev())?;
            masks.association_mask = Some(&float_mask);
        }
        3 => {
            int_mask = Tensor::ones((c.n, c.s), DType::U8, &dev())?;
            masks.stored_pattern_padding_mask = Some(&int_mask);
        }
        4 => {
            // A padding mask of the wrong width.
            int_mask = Tensor::zeros((c.n, c.s + 1), DType::U8, &dev())?;
            masks.stored_pattern_padding_mask = Some(&int_mask);
        }
        _ => {}
    }
    if c.l == c.s && c.mask == 5 {
        return h.forward_with(HopfieldInput::from(&state), masks, c.train);
    }
    h.forward_with(
        HopfieldInput::from((&stored, &state, &stored)),
        masks,
        c.train,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `Hopfield` over random sizes (zeros included), dtypes, value scales (NaN and inf
    /// included), betas, step rules, masks and flags.
    #[test]
    fn hopfield_never_panics_or_returns_nan(c in hopfield_case()) {
        outcome(typed, || run_hopfield(&c)).map_err(|e| TestCaseError::fail(format!("{e} in {c:?}")))?;
    }

    /// The pooling, lookup and transformer layers and `DiffusedHopfield` (exact and approximate
    /// graphs) over the same inputs.
    #[test]
    fn other_modules_never_panic_or_return_nan(
        (n, l, e) in (0usize..3, 0usize..5, prop_oneof![Just(1usize), Just(4), Just(8)]),
        input in dtype_strategy(),
        scale in scale_strategy(),
        quantity in prop_oneof![Just(0usize), Just(1), Just(3)],
        ff in prop_oneof![Just(0usize), Just(1), Just(16)],
        which in 0u8..6,
        seed in any::<u64>(),
    ) {
        let x = tensor(&[n, l, e], input, scale, seed);
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
        let base = HopfieldConfig::new(e);
        let r = outcome(typed, || {
            let x = x?;
            match which {
                0 => HopfieldPooling::new(HopfieldPoolingConfig::new(base).with_quantity(quantity), vb)?.forward_t(&x, false),
                1 => HopfieldLayer::new(HopfieldLayerConfig::new(base).with_quantity(quantity), vb)?.forward_t(&x, false),
                2 => HopfieldEncoderLayer::new(TransformerLayerConfig::new(base).with_dim_feedforward(ff), vb)?.forward_t(&x, false),
                3 => HopfieldDecoderLayer::new(TransformerLayerConfig::new(base).with_dim_feedforward(ff), vb)?
                    .forward_with(&x, &x, DecoderMasks::default(), false),
                4 => DiffusedHopfield::new(DiffusedHopfieldConfig::new(base).with_k_neighbors(quantity), vb)?
                    .forward_t(&x, false),
                // The approximate graph, its search told to run until it stops changing.
                _ => {
                    let search = dahn_graph::NnDescent::default().pool(Some(1)).max_iters(usize::MAX).delta(f64::NAN);
                    let cfg = DiffusedHopfieldConfig::new(base).with_k_neighbors(quantity)
                        .with_knn_method(dahn_graph::KnnMethod::NnDescent(search));
                    DiffusedHopfield::new(cfg, vb)?.forward_t(&x, false)
                }
            }
        });
        r.map_err(|e| TestCaseError::fail(format!("{e}: module {which}, ({n}, {l}, {e}) {input:?} x{scale}")))?;
    }

    /// Constructor kwargs JSON with absurd, negative, fractional, non-numeric and missing values.
    #[test]
    fn kwargs_never_panic_or_abort(
        key in prop_oneof![
            Just("input_size"), Just("hidden_size"), Just("num_heads"), Just("pattern_size"),
            Just("output_size"), Just("update_steps_max"), Just("dropout"), Just("scaling"),
            Just("update_steps_eps"),
        ],
        value in prop_oneof![
            Just("0"), Just("1"), Just("-3"), Just("2.5"), Just("1e12"), Just("1e300"),
            Just("1000000000000"), Just("\"x\""), Just("null"), Just("[1, 2]"), Just("true"),
        ],
    ) {
        let json = format!("{{\"input_size\": 8, \"{key}\": {value}}}");
        let r = outcome(typed, || {
            let cfg = HopfieldConfig::from_kwargs(&json).map_err(candle_core::Error::from)?;
            let x = tensor(&[2, 3, 8], DType::F32, 1.0, 1)?;
            hopfield(cfg, DType::F32)?.forward_t(&x, false)
        });
        r.map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    }
}

fn err_of(r: Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a result of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

/// A hidden size of 10^12 from a configuration: a typed error before allocating, not an abort.
#[test]
fn absurd_sizes_are_errors_not_aborts() {
    let mut cfg = HopfieldConfig::new(8);
    cfg.hidden_size = Some(1_000_000_000_000);
    let e = err_of(hopfield(cfg, DType::F32).map(|_| Tensor::new(0f32, &dev()).unwrap()));
    assert!(
        e.contains("cannot be allocated") && e.contains("in_proj_weight"),
        "{e}"
    );
    let mut cfg = HopfieldConfig::new(8);
    cfg.num_heads = usize::MAX;
    cfg.hidden_size = Some(usize::MAX);
    let e = err_of(hopfield(cfg, DType::F32).map(|_| Tensor::new(0f32, &dev()).unwrap()));
    assert!(
        e.contains("overflow") || e.contains("cannot be allocated"),
        "{e}"
    );
    let mut cfg = HopfieldConfig::new(8);
    cfg.output_size = Some(1_000_000_000_000);
    let e = err_of(hopfield(cfg, DType::F32).map(|_| Tensor::new(0f32, &dev()).unwrap()));
    assert!(e.contains("association_core.out_proj.weight"), "{e}");
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
    let pooling = HopfieldPooling::new(
        HopfieldPoolingConfig::new(HopfieldConfig::new(8)).with_quantity(1 << 50),
        vb.clone(),
    );
    assert!(pooling.is_err());
    let ff = HopfieldEncoderLayer::new(
        TransformerLayerConfig::new(HopfieldConfig::new(8)).with_dim_feedforward(1 << 50),
        vb,
    );
    assert!(ff
        .unwrap_err()
        .to_string()
        .contains("linear_residual.weight"));
}

/// An explicit step count of `usize::MAX` with an eps f32 may never reach stops at
/// `max_convergence_steps` (it ran forever), and says whether it converged: an error with the
/// default policy, `converged = false` with `OnNoConvergence::Stop`.
#[test]
fn huge_step_counts_are_bounded() {
    let mut cfg = HopfieldConfig::new(8).with_update_steps_max(Some(usize::MAX));
    cfg.update_steps_eps = hopfield_nn::StepsEps::Scalar(1e-30);
    cfg.max_convergence_steps = 5;
    // Unnormalised inputs and a large beta keep the association moving for a while.
    cfg.normalize_state_pattern = false;
    cfg.normalize_stored_pattern = false;
    cfg.normalize_pattern_projection = false;
    let cfg = cfg.with_scaling(3.0);
    let x = tensor(&[2, 7, 8], DType::F32, 3.0, 3).unwrap();
    let h = hopfield(cfg.clone(), DType::F32).unwrap();
    let full = h.forward_full(HopfieldInput::from(&x), Masks::default(), false);
    let mut stop = cfg;
    stop.on_no_convergence = OnNoConvergence::Stop;
    let out = hopfield(stop, DType::F32)
        .unwrap()
        .forward_full(HopfieldInput::from(&x), Masks::default(), false)
        .unwrap();
    assert!(out.steps_run.iter().all(|&s| s <= 5), "{:?}", out.steps_run);
    match full {
        Ok(o) => assert!(o.converged && out.converged),
        Err(e) => {
            assert!(!out.converged);
            assert!(
                e.to_string()
                    .contains("did not converge within the cap of 5"),
                "{e}"
            );
        }
    }
}

/// f16 models with realistic inputs and a large beta: the logits are computed in f32, so the
/// result is finite (it was NaN: beta q k^T overflowed f16's 65504).
#[test]
fn f16_models_with_large_logits_stay_finite() -> Result<()> {
    let h = hopfield(HopfieldConfig::new(64).with_scaling(1e5), DType::F16)?;
    let x = tensor(&[2, 5, 64], DType::F16, 100.0, 4)?;
    let y = h.forward_t(&x, false)?;
    assert!(hopfield_cuda::all_finite(&y)?);
    Ok(())
}

/// Patterns so large that `beta q k^T` overflows f32: a typed error naming the overflow (it was
/// a NaN output).
#[test]
fn overflowing_logits_are_errors() {
    let h = hopfield(HopfieldConfig::pure_static().with_scaling(8.0), DType::F32).unwrap();
    let p = tensor(&[1, 5, 8], DType::F32, 1e20, 5).unwrap();
    let e = err_of(h.forward_with(HopfieldInput::from((&p, &p, &p)), Masks::default(), false));
    assert!(e.contains("overflowed"), "{e}");
    // The explicit path (which forms the association) says the same, not a softmax of inf.
    let e = h
        .forward_full(HopfieldInput::from((&p, &p, &p)), Masks::default(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overflowed"), "{e}");
}

/// NaN and +inf in a float association mask are reported with the mask's name.
#[test]
fn bad_mask_values_are_errors() {
    let h = hopfield(HopfieldConfig::new(8), DType::F32).unwrap();
    let x = tensor(&[2, 3, 8], DType::F32, 1.0, 6).unwrap();
    for v in [f32::NAN, f32::INFINITY] {
        let m = Tensor::full(v, (3, 3), &dev()).unwrap();
        let masks = Masks {
            association_mask: Some(&m),
            ..Default::default()
        };
        let e = err_of(h.forward_with(HopfieldInput::from(&x), masks, false));
        assert!(e.contains("association_mask"), "{e}");
    }
}

/// Zero tokens through the transformer layers: an empty result (it was a reshape error).
#[test]
fn zero_tokens_through_transformer_layers() -> Result<()> {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
    let cfg = TransformerLayerConfig::new(HopfieldConfig::new(8)).with_dim_feedforward(16);
    let x = Tensor::zeros((2, 0, 8), DType::F32, &dev())?;
    let enc = HopfieldEncoderLayer::new(cfg.clone(), vb.pp("enc"))?;
    assert_eq!(enc.forward_t(&x, false)?.dims(), &[2, 0, 8]);
    let dec = HopfieldDecoderLayer::new(cfg, vb.pp("dec"))?;
    let memory = tensor(&[2, 3, 8], DType::F32, 1.0, 7)?;
    assert_eq!(
        dec.forward_with(&x, &memory, DecoderMasks::default(), false)?
            .dims(),
        &[2, 0, 8]
    );
    Ok(())
}

/// A NaN dropout probability is rejected when the layer is built, not silently ignored.
#[test]
fn nan_dropout_is_rejected() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
    let cfg = TransformerLayerConfig::new(HopfieldConfig::new(8)).with_dropout(f64::NAN);
    let e = HopfieldEncoderLayer::new(cfg, vb).unwrap_err().to_string();
    assert!(e.contains("dropout"), "{e}");
}

/// `DiffusedHopfield` with a state batch that differs from the stored patterns' batch: a typed
/// error naming both (it silently dropped the extra samples).
#[test]
fn diffused_batch_mismatch_is_an_error() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
    let d = DiffusedHopfield::new(DiffusedHopfieldConfig::new(HopfieldConfig::new(8)), vb).unwrap();
    let (k, q) = (
        tensor(&[2, 5, 8], DType::F32, 1.0, 8).unwrap(),
        tensor(&[3, 5, 8], DType::F32, 1.0, 9).unwrap(),
    );
    let e = err_of(d.forward_with(HopfieldInput::from((&k, &q, &k)), Masks::default(), false));
    assert!(e.contains("batch size N") && e.contains("[3, 5, 8]"), "{e}");
}

/// NaN weights in a checkpoint are reported by key at load time.
#[test]
fn nan_weights_in_a_checkpoint_are_reported() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
    let _ = Hopfield::new(HopfieldConfig::new(8), vb).unwrap();
    let mut sd: std::collections::HashMap<String, Tensor> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let w = sd["association_core.in_proj_weight"].clone();
    sd.insert(
        "association_core.in_proj_weight".into(),
        (w * f64::NAN).unwrap(),
    );
    let e = hopfield_nn::checkpoint::load_strict_tensors(sd, DType::F32, &dev(), |vb| {
        Hopfield::new(HopfieldConfig::new(8), vb)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("in_proj_weight") && e.contains("NaN"), "{e}");
}
