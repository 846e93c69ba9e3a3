//! Hostile input to the Energy Transformer's public API (issue 12): whatever the shapes, dtypes,
//! values, parameters or configuration, every call returns a typed error or an `Ok` whose tensors
//! are finite. Never a panic, an abort, a hang or a silent NaN.
//!
//! The property tests run few cases so that the file stays fast in debug builds; run more with
//! `PROPTEST_CASES`, e.g.
//!
//! ```sh
//! PROPTEST_CASES=2000 cargo test --release -p hopfield-nn --test et_hostile
//! ```
//!
//! The plain `#[test]`s below pin each reported problem; each failed (panicked, returned NaN or
//! `inf`, or was accepted) before the module's boundary validation (`energy/validate.rs`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::energy::{
    BaseModernHopfield, Energy, EnergyLayerNorm, EnergyMHA, EnergyTransformer,
    EnergyTransformerConfig, HopfieldType, LayerNorm, NormKind, SoftmaxModernHopfield, MAX_N_ITERS,
};
use proptest::prelude::*;
use std::collections::HashMap;

const DEV: Device = Device::Cpu;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig::with_cases(n)
}

/// Whether every entry of every tensor is finite (read on the host, independently of the crate's
/// own check).
fn all_finite(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| !t.dtype().is_float() || hopfield_cuda::all_finite(t).unwrap_or(false))
}

/// The property: an error, or finite tensors. (A panic fails the case by itself.)
fn typed_error_or_finite(r: Result<Vec<Tensor>>) -> std::result::Result<(), TestCaseError> {
    if let Ok(ts) = r {
        let refs: Vec<&Tensor> = ts.iter().collect();
        prop_assert!(all_finite(&refs), "Ok with non-finite values: {ts:?}");
    }
    Ok(())
}

fn err_of<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// A tensor from `values`, cycled over `shape`, then cast to `dtype` (casts are saturating, so
/// an integer tensor holds whatever the floats become).
fn tensor(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| values[i % values.len()]).collect();
    Tensor::from_vec(v, shape, &DEV)
        .and_then(|t| t.to_dtype(dtype))
        .expect("test tensor")
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        3 => Just(DType::F32),
        2 => Just(DType::F64),
        2 => Just(DType::F16),
        1 => Just(DType::BF16),
        1 => Just(DType::U32),
        1 => Just(DType::I64),
    ]
}

/// The input's dtype: mostly the model's (so that the numerics get exercised), else any.
fn input_dtype() -> impl Strategy<Value = Option<DType>> {
    prop_oneof![3 => Just(None), 1 => dtype().prop_map(Some)]
}

fn model_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::BF16)
    ]
}

/// Mostly ordinary values, with the extremes mixed in.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -3.0..3.0f64,
        1 => Just(0.0),
        1 => Just(1e4),
        1 => Just(-1e4),
        1 => Just(1e30),
        1 => Just(-1e30),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
    ]
}

/// Values of one input: all ordinary, all one extreme, or a mix.
fn values() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        2 => prop::collection::vec(-3.0..3.0f64, 1..16),
        1 => value().prop_map(|v| vec![v]),
        2 => prop::collection::vec(value(), 1..16),
    ]
}

/// Token shapes `(..., L, D)` around the model dimension `d` and the positional embedding's
/// context `l` (0: none): zero-size axes, wrong ranks and wrong last axes included.
fn shape(d: usize, l: usize) -> impl Strategy<Value = Vec<usize>> {
    let last = prop_oneof![6 => Just(d), 1 => 0..(d + 2)];
    let len = if l > 0 {
        prop_oneof![6 => Just(l), 1 => 0..4usize].boxed()
    } else {
        (0..4usize).boxed()
    };
    (prop::collection::vec(0..4usize, 0..2), len, last, 0..8u8).prop_map(
        |(mut sh, len, last, rank)| {
            // Mostly (..., L, D); sometimes rank 0 or 1.
            match rank {
                0 => return vec![],
                1 => return vec![last],
                _ => {}
            }
            sh.push(len);
            sh.push(last);
            sh
        },
    )
}

/// A model with token shapes that fit it (mostly).
fn model_and_shape() -> impl Strategy<Value = (Model, Vec<usize>)> {
    model().prop_flat_map(|m| {
        let l = if m.cfg.has_pos_embedding() {
            m.cfg.context
        } else {
            0
        };
        (Just(m.clone()), shape(m.cfg.dim, l))
    })
}

/// Parameter scales from vanishing to absurd.
fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(0.002),
        Just(0.5),
        Just(3.0),
        Just(1e4),
        Just(1e30)
    ]
}

fn beta() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(1e-3)),
        Just(Some(1.0)),
        Just(Some(1e4)),
        Just(Some(1e30))
    ]
}

/// A small, valid-sized configuration with random numerics.
#[derive(Debug, Clone)]
struct Model {
    cfg: EnergyTransformerConfig,
    dtype: DType,
}

fn model() -> impl Strategy<Value = Model> {
    (
        (1..4usize, 1..3usize, 1..6usize, 0..4usize, 1..4usize),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (
            scale(),
            beta(),
            prop_oneof![Just(0.1), Just(1.0), Just(1e4)],
        ),
        model_dtype(),
    )
        .prop_map(
            |((z, h, m, ctx, n), (softmax, paper, excl, ret), (init, hb, alpha), dtype)| {
                let mut cfg = EnergyTransformerConfig::new(z * h, m, h)
                    .with_context(ctx)
                    .with_n_iters(n)
                    .with_alpha(alpha)
                    .with_init_scale(init)
                    .with_exclude_self(excl)
                    .with_return_energy(ret);
                if softmax {
                    cfg = cfg.with_hopfield_type(HopfieldType::Softmax);
                }
                if paper {
                    cfg = cfg.paper();
                }
                if let Some(b) = hb {
                    cfg = cfg.with_hopfield_beta(b).with_attn_beta(vec![b; h]);
                }
                Model { cfg, dtype }
            },
        )
}

fn build(m: &Model) -> Result<EnergyTransformer> {
    let map = VarMap::new();
    EnergyTransformer::new(&m.cfg, VarBuilder::from_varmap(&map, m.dtype, &DEV))
}

/// Sizes for configs: small ones and absurd ones (each absurd one alone is beyond any machine's
/// memory, so a missing check aborts instead of slowly allocating).
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..6usize,
        1 => Just(1usize << 40),
        1 => Just(1_000_000_000_000usize),
        1 => Just(1usize << 62),
        1 => Just(usize::MAX),
    ]
}

proptest! {
    #![proptest_config(cases())]

    /// forward / forward_detailed / filtered_forward of random models on random tokens.
    #[test]
    fn forward_is_a_typed_error_or_finite(
        (m, sh) in model_and_shape(),
        vals in values(),
        dt in input_dtype(),
        n in prop_oneof![Just(None), (0..4usize).prop_map(Some), Just(Some(MAX_N_ITERS + 1))],
    ) {
        let Ok(et) = build(&m) else { return Ok(()) };
        let x = tensor(&vals, &sh, dt.unwrap_or(m.dtype));
        let r = et.forward_detailed(&x, n).map(|o| {
            assert_eq!(o.y.dims(), x.dims());
            [Some(o.y), o.features, o.energies].into_iter().flatten().collect()
        });
        typed_error_or_finite(r)?;
        if sh.len() >= 2 && m.cfg.has_pos_embedding() {
            let l = sh[sh.len() - 2];
            let idx = Tensor::arange(0u32, l as u32, &DEV).expect("indices");
            let r = et.filtered_forward(&x, &idx, n).map(|o| vec![o.y]);
            typed_error_or_finite(r)?;
        }
    }

    /// energy, grad and the paper's energy of the block at random tokens.
    #[test]
    fn block_energy_and_grad_are_typed_errors_or_finite(
        (m, sh) in model_and_shape(),
        vals in values(),
        dt in input_dtype(),
    ) {
        let Ok(et) = build(&m) else { return Ok(()) };
        let x = tensor(&vals, &sh, dt.unwrap_or(m.dtype));
        typed_error_or_finite(et.energy(&x).map(|e| vec![e]))?;
        typed_error_or_finite(et.grad(&x).map(|g| vec![g]))?;
        typed_error_or_finite(et.paper_energy(&x).map(|e| vec![e]))?;
    }

    /// Every component on its own: energies, gradients, parameter gradients, norms.
    #[test]
    fn components_are_typed_errors_or_finite(
        (z, h, m) in (1..4usize, 1..3usize, 0..5usize),
        init in scale(),
        b in beta(),
        excl in any::<bool>(),
        mdt in model_dtype(),
        vals in values(),
        dt in input_dtype(),
        sh_seed in prop::collection::vec(0..4usize, 0..3),
        wrong_last in prop::bool::weighted(0.1),
    ) {
        let d = z * h;
        let mut sh = sh_seed;
        sh.push(if wrong_last { d + 1 } else { d });
        let x = tensor(&vals, &sh, dt.unwrap_or(mdt));
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, mdt, &DEV);
        let betas = b.map(|b| vec![b; h]);
        if let Ok(mha) = EnergyMHA::with_options(d, h, betas.as_deref(), init, excl, vb.pp("mha")) {
            typed_error_or_finite(mha.energy(&x).map(|e| vec![e]))?;
            typed_error_or_finite(mha.grad(&x).map(|g| vec![g]))?;
            typed_error_or_finite(mha.param_grads(&x).map(|(a, b, c)| vec![a, b, c]))?;
        }
        if let Ok(hop) = BaseModernHopfield::with_options(d, m, b, init, vb.pp("relu")) {
            typed_error_or_finite(hop.energy(&x).map(|e| vec![e]))?;
            typed_error_or_finite(hop.grad(&x).map(|g| vec![g]))?;
            typed_error_or_finite(hop.param_grads(&x).map(|(a, b)| vec![a, b]))?;
        }
        if let Ok(hop) = SoftmaxModernHopfield::with_options(d, m, b, init, vb.pp("softmax")) {
            typed_error_or_finite(hop.energy(&x).map(|e| vec![e]))?;
            typed_error_or_finite(hop.grad(&x).map(|g| vec![g]))?;
            typed_error_or_finite(hop.param_grads(&x).map(|(a, b)| vec![a, b]))?;
        }
        if let Ok(ln) = LayerNorm::new(d, 1e-5, vb.pp("ln")) {
            typed_error_or_finite(ln.forward(&x).map(|y| vec![y]))?;
        }
        if let Ok(ln) = EnergyLayerNorm::new(d, 1e-5, vb.pp("eln")) {
            typed_error_or_finite(ln.forward(&x).map(|y| vec![y]))?;
            typed_error_or_finite(ln.energy(&x).map(|e| vec![e]))?;
            typed_error_or_finite(ln.legendre(&x).map(|e| vec![e]))?;
        }
    }

    /// Random configurations, absurd sizes and numerics included: construction is an error or
    /// succeeds, and never aborts on an allocation.
    #[test]
    fn configs_are_validated_before_allocating(
        (dim, hidden, heads, context) in (size(), size(), size(), size()),
        n_iters in prop_oneof![0..20usize, Just(MAX_N_ITERS + 1), Just(usize::MAX)],
        alpha in prop_oneof![Just(0.1), Just(0.0), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY)],
        eps in prop_oneof![Just(1e-5), Just(0.0), Just(f64::NAN)],
        init in prop_oneof![Just(0.002), Just(-1.0), Just(f64::NAN), Just(1e300)],
        dt in model_dtype(),
    ) {
        let cfg = EnergyTransformerConfig::new(dim, hidden, heads)
            .with_context(context)
            .with_n_iters(n_iters)
            .with_alpha(alpha)
            .with_eps(eps)
            .with_init_scale(init);
        let map = VarMap::new();
        if let Ok(et) = EnergyTransformer::new(&cfg, VarBuilder::from_varmap(&map, dt, &DEV)) {
            // Only sane sizes get here; the model must then run.
            let l = if cfg.has_pos_embedding() { context } else { 2 };
            let x = Tensor::ones((1, l, dim), dt, &DEV).expect("x");
            typed_error_or_finite(et.forward(&x).map(|y| vec![y]))?;
        }
    }

    /// The port's constructor kwargs as JSON, with absurd and ill-typed values.
    #[test]
    fn port_kwargs_are_validated(
        (dim, hidden, heads) in (size(), size(), size()),
        n_iters in prop_oneof![
            Just(serde_json::json!(3)),
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!(2.5)),
            Just(serde_json::json!("12")),
        ],
        alpha in prop_oneof![
            Just(serde_json::json!(0.1)),
            Just(serde_json::json!(1e308)),
            Just(serde_json::json!(-0.1)),
            Just(serde_json::json!(null)),
        ],
    ) {
        let kw = serde_json::json!({
            "dim": dim, "hidden_dim": hidden, "n_heads": heads,
            "n_iters_default": n_iters, "alpha": alpha,
        });
        if let Ok(cfg) = EnergyTransformerConfig::from_port_kwargs(&kw) {
            let map = VarMap::new();
            let _ = EnergyTransformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &DEV));
        }
    }
}

// ---- Each reported problem, pinned. ----

fn et(cfg: &EnergyTransformerConfig, dtype: DType) -> EnergyTransformer {
    let map = VarMap::new();
    EnergyTransformer::new(cfg, VarBuilder::from_varmap(&map, dtype, &DEV)).expect("model")
}

/// Zero tokens (and so, for attention, zero stored patterns) panicked in the fused softmax
/// ("chunk_size must not be zero") and `energy` failed on an empty reduction. Defined now: the
/// energy is an empty sum (0), the gradient is empty, the descent returns the tokens unchanged.
#[test]
fn zero_tokens_have_a_defined_result() -> Result<()> {
    for cfg in [
        EnergyTransformerConfig::new(8, 16, 2).with_return_energy(true),
        EnergyTransformerConfig::new(8, 16, 2)
            .with_hopfield_type(HopfieldType::Softmax)
            .with_exclude_self(true)
            .paper(),
    ] {
        let et = et(&cfg, DType::F32);
        for shape in [[2, 0, 8], [0, 3, 8]] {
            let x = Tensor::zeros(&shape, DType::F32, &DEV)?;
            // The gradient first: it is where the fused softmax panicked.
            assert_eq!(et.grad(&x)?.dims(), &shape);
            let out = et.forward_detailed(&x, Some(3))?;
            assert_eq!(out.y.dims(), &shape);
            assert_eq!(
                out.features.expect("features").dims(),
                &[3, shape[0], shape[1], 8]
            );
            assert_eq!(
                out.energies.expect("energies").to_vec1::<f32>()?,
                vec![0.0; 3]
            );
            assert_eq!(et.energy(&x)?.to_scalar::<f32>()?, 0.0);
            assert_eq!(et.mha().energy(&x)?.to_scalar::<f32>()?, 0.0);
            let (gq, _, gb) = et.mha().param_grads(&x)?;
            assert_eq!(gq.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
            assert_eq!(gb.dims(), &[2]);
            assert_eq!(et.hopfield().energy(&x)?.to_scalar::<f32>()?, 0.0);
        }
        if cfg.norm == NormKind::EnergyLayerNorm {
            let x = Tensor::zeros((2, 0, 8), DType::F32, &DEV)?;
            assert_eq!(et.paper_energy(&x)?.to_scalar::<f32>()?, 0.0);
        }
    }
    Ok(())
}

/// Zero stored memories (`hidden_dim = 0`) with the softmax Hopfield (a log-sum-exp over nothing)
/// is rejected the same way by the block's config and by the constructor. With the ReLU Hopfield it
/// is the port's attention-only block (energy 0; reference cases in audit/et_edges).
#[test]
fn zero_memories_are_a_config_error_everywhere() {
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &DEV);
    let e = err_of(EnergyTransformer::new(
        &EnergyTransformerConfig::new(8, 0, 2).with_hopfield_type(HopfieldType::Softmax),
        vb.clone(),
    ));
    assert!(e.contains("hidden_dim"), "{e}");
    let e = err_of(SoftmaxModernHopfield::new(4, 0, vb.pp("s")));
    assert!(e.contains("hidden_dim = 0"), "{e}");
    assert!(BaseModernHopfield::new(4, 0, vb.pp("r")).is_ok());
    let e = err_of(LayerNorm::new(0, 1e-5, vb.pp("n")));
    assert!(e.contains("dim = 0"), "{e}");
}

/// Integer tokens panicked deep in candle ("no unary function for u32") or failed with
/// "dtype mismatch in matmul"; now a typed error naming the argument, its dtype and shape.
#[test]
fn integer_and_mismatched_dtypes_are_typed_errors() -> Result<()> {
    let et = et(&EnergyTransformerConfig::new(8, 16, 2), DType::F32);
    for dt in [DType::U32, DType::I64, DType::U8, DType::F64] {
        let x = Tensor::zeros((1, 3, 8), dt, &DEV)?;
        for e in [
            err_of(et.forward(&x)),
            err_of(et.energy(&x)),
            err_of(et.mha().energy(&x)),
            err_of(et.hopfield().grad(&x)),
            err_of(et.norm().forward(&x)),
        ] {
            assert!(
                e.contains(&format!("dtype {dt:?}"))
                    && e.contains("[1, 3, 8]")
                    && e.contains("F32"),
                "{e}"
            );
        }
        assert!(err_of(et.grad(&x)).starts_with("g: dtype"));
    }
    Ok(())
}

/// Absurd sizes from a config or port kwargs aborted the process (failed allocation) or
/// panicked ("capacity overflow"); now a typed error before anything is allocated.
#[test]
fn absurd_sizes_are_typed_errors_before_allocating() {
    let t = 1_000_000_000_000usize;
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &DEV);
    for (cfg, needle) in [
        (EnergyTransformerConfig::new(t, 16, 1), "mha.Wq"),
        (EnergyTransformerConfig::new(t, 16, t), "mha.Wq"),
        (EnergyTransformerConfig::new(16, t, 1), "hopfield.W"),
        (
            EnergyTransformerConfig::new(16, 16, 1).with_context(t),
            "pos_embedding",
        ),
        (
            EnergyTransformerConfig::new(1 << 31, 1 << 31, 1 << 31),
            "too large",
        ),
    ] {
        let e = err_of(EnergyTransformer::new(&cfg, vb.clone()));
        assert!(e.contains(needle) && e.contains("too large"), "{e}");
    }
    let kw = serde_json::json!({"dim": t, "hidden_dim": t, "n_heads": t});
    let e = EnergyTransformerConfig::from_port_kwargs(&kw).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    // Sizes that fit in usize but not in memory, through the components' own constructors.
    let e = err_of(BaseModernHopfield::new(1 << 20, 1 << 20, vb.pp("h")));
    assert!(
        e.contains("W: shape [1048576, 1048576] is too large"),
        "{e}"
    );
    let e = err_of(EnergyMHA::new(1 << 20, 1, vb.pp("m")));
    assert!(e.contains("m.Wq") && e.contains("too large"), "{e}");
}

/// The attention scores `(B, H, L, L)` of a long input are checked before they are allocated.
#[test]
fn absurd_token_counts_are_typed_errors() -> Result<()> {
    let et = et(&EnergyTransformerConfig::new(2, 2, 1), DType::F32);
    // 4 MB of tokens, but 16 TB of scores.
    let x = Tensor::zeros((1, 2_000_000, 2), DType::F32, &DEV)?;
    let e = err_of(et.grad(&x));
    assert!(
        e.contains("attention scores") && e.contains("too large"),
        "{e}"
    );
    Ok(())
}

/// f16 models overflowed to `-inf` energies and then NaN (the paper's energy is a difference of
/// two such sums); they now compute in f32 and report energies in f32.
#[test]
fn half_precision_energies_do_not_overflow() -> Result<()> {
    for dt in [DType::F16, DType::BF16] {
        let cfg = EnergyTransformerConfig::new(64, 256, 4)
            .with_init_scale(0.3)
            .with_n_iters(3)
            .paper();
        let et = et(&cfg, dt);
        let x = Tensor::randn(0f32, 1., (2, 200, 64), &DEV)?.to_dtype(dt)?;
        let e = et.energy(&x)?;
        assert_eq!(e.dtype(), DType::F32);
        assert!(e.to_scalar::<f32>()?.is_finite() && e.to_scalar::<f32>()? < -65504.0);
        let out = et.forward_detailed(&x, None)?;
        assert_eq!(out.y.dtype(), dt);
        let energies = out.energies.expect("energies").to_vec1::<f32>()?;
        assert!(energies.iter().all(|e| e.is_finite()), "{energies:?}");
    }
    Ok(())
}

/// Large finite inputs overflowed to NaN energies (inf - inf in the log-sum-exp); now a typed
/// error saying which result overflowed for which argument.
#[test]
fn overflowing_energies_are_typed_errors_not_nan() -> Result<()> {
    let et = et(
        &EnergyTransformerConfig::new(8, 16, 2).with_init_scale(1.0),
        DType::F32,
    );
    let x = (Tensor::randn(0f32, 1., (2, 20, 8), &DEV)? * 1e30)?;
    let e = err_of(et.mha().energy(&x));
    assert!(
        e.contains("attention energy of x") && e.contains("[2, 20, 8]") && e.contains("overflow"),
        "{e}"
    );
    let e = err_of(et.hopfield().energy(&x));
    assert!(e.contains("Hopfield energy of x"), "{e}");
    Ok(())
}

/// A softmax of `+inf` logits is well defined (the mass shared by the infinite entries), so the
/// Hopfield gradient is finite even where its energy overflows.
#[test]
fn softmax_of_infinite_logits_is_defined() -> Result<()> {
    let w = Tensor::new(&[[1f32, 0., -1.], [0., 0., 0.]], &DEV)?;
    let params: HashMap<String, Tensor> = [("W", w), ("beta", Tensor::new(10f32, &DEV)?)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let hop = SoftmaxModernHopfield::new(2, 3, VarBuilder::from_tensors(params, DType::F32, &DEV))?;
    let x = Tensor::new(&[[3e38f32, 0.]], &DEV)?;
    assert_eq!(hop.grad(&x)?.to_vec2::<f32>()?, vec![vec![-1.0, 0.0]]);
    assert!(err_of(hop.energy(&x)).contains("overflow"));
    Ok(())
}

/// NaN or infinite parameters: from a constructor argument, a checkpoint, or a training step
/// that diverged. Each is a typed error naming the parameter.
#[test]
fn non_finite_parameters_are_named() -> Result<()> {
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &DEV);
    // Constructor arguments (the block's config already checked its own).
    let e = err_of(EnergyMHA::with_options(
        4,
        2,
        Some(&[f64::NAN, 1.0]),
        0.1,
        false,
        vb.pp("a"),
    ));
    assert!(e.contains("beta") && e.contains("NaN"), "{e}");
    let e = err_of(SoftmaxModernHopfield::with_options(
        4,
        3,
        Some(f64::INFINITY),
        0.1,
        vb.pp("b"),
    ));
    assert!(e.contains("beta = inf"), "{e}");
    let e = err_of(BaseModernHopfield::with_options(
        4,
        3,
        None,
        f64::NAN,
        vb.pp("c"),
    ));
    assert!(e.contains("init_scale"), "{e}");
    let e = err_of(LayerNorm::new(4, f64::NAN, vb.pp("d")));
    assert!(e.contains("eps"), "{e}");
    // An init scale or beta the dtype cannot hold (candle's randn failed deep inside).
    let cfg = EnergyTransformerConfig::new(8, 16, 2).with_init_scale(1e300);
    let e = err_of(EnergyTransformer::new(&cfg, vb.pp("e")));
    assert!(e.contains("init_scale = 1e300 (F32)"), "{e}");
    let cfg = EnergyTransformerConfig::new(8, 16, 2).with_hopfield_beta(1e5);
    let vb16 = VarBuilder::from_varmap(&VarMap::new(), DType::F16, &DEV);
    let e = err_of(EnergyTransformer::new(&cfg, vb16));
    assert!(e.contains("beta = 1e5 (F16)"), "{e}");
    // Weights that are finite but overflow the dtype once scaled: randn * 3e38 in f32.
    let cfg = EnergyTransformerConfig::new(8, 16, 2).with_init_scale(3e38);
    let e = err_of(EnergyTransformer::new(&cfg, vb.pp("f")));
    assert!(
        e.contains("parameter f.mha.Wq") && e.contains("NaN or infinite"),
        "{e}"
    );
    // A checkpoint with a NaN beta.
    let cfg = EnergyTransformerConfig::new(4, 3, 2);
    let map = VarMap::new();
    let good = EnergyTransformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &DEV))?;
    let mut tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().expect("copy")))
        .collect();
    tensors.insert("mha.beta".into(), Tensor::new(&[f32::NAN, 1.0], &DEV)?);
    let e = err_of(EnergyTransformer::new(
        &cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &DEV),
    ));
    assert!(e.contains("parameter mha.beta"), "{e}");
    // A weight that became NaN after construction (a diverged training step).
    let x = Tensor::ones((1, 2, 4), DType::F32, &DEV)?;
    good.forward(&x)?;
    map.data().lock().expect("varmap")["hopfield.W"].set(&Tensor::full(f32::NAN, (4, 3), &DEV)?)?;
    let e = err_of(good.forward(&x));
    assert!(
        e.contains("parameter hopfield.W") && e.contains("[4, 3]"),
        "{e}"
    );
    // NaN inputs name the argument and its shape.
    let e = err_of(good.forward(&Tensor::full(f32::NAN, (1, 2, 4), &DEV)?));
    assert!(
        e.contains("x: contains NaN") && e.contains("[1, 2, 4]"),
        "{e}"
    );
    Ok(())
}

/// A huge step size makes the tokens overflow during the descent: an error naming the input,
/// never NaN tokens.
#[test]
fn diverging_descent_is_a_typed_error() -> Result<()> {
    let cfg = EnergyTransformerConfig::new(8, 16, 2)
        .with_init_scale(1.0)
        .with_alpha(1e38)
        .with_n_iters(4);
    let et = et(&cfg, DType::F32);
    let x = Tensor::randn(0f32, 1., (2, 5, 8), &DEV)?;
    let e = err_of(et.forward(&x));
    assert!(e.contains("of x") && e.contains("[2, 5, 8]"), "{e}");
    Ok(())
}

/// Step counts had no bound: `n_iters = usize::MAX` from a config or kwargs hung. Now at most
/// `MAX_N_ITERS`, from every source.
#[test]
fn step_counts_are_bounded() -> Result<()> {
    let cfg = EnergyTransformerConfig::new(8, 16, 2).with_n_iters(usize::MAX);
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("n_iters") && e.contains(&MAX_N_ITERS.to_string()),
        "{e}"
    );
    let kw =
        serde_json::json!({"dim": 8, "hidden_dim": 16, "n_heads": 2, "n_iters_default": u64::MAX});
    assert!(EnergyTransformerConfig::from_port_kwargs(&kw).is_err());
    let et = et(&EnergyTransformerConfig::new(8, 16, 2), DType::F32);
    let x = Tensor::zeros((1, 3, 8), DType::F32, &DEV)?;
    let e = err_of(et.forward_detailed(&x, Some(usize::MAX)));
    assert!(e.contains("n_iters"), "{e}");
    let idx = Tensor::new(&[0u32, 1, 2], &DEV)?;
    assert!(et
        .filtered_forward(&x, &idx, Some(MAX_N_ITERS + 1))
        .is_err());
    Ok(())
}

/// Tokens of the wrong rank or last axis, and positional indices of the wrong dtype or length,
/// name the argument and its shape.
#[test]
fn shape_errors_name_the_argument_and_shape() -> Result<()> {
    let et = et(
        &EnergyTransformerConfig::new(8, 16, 2).with_context(4),
        DType::F32,
    );
    let e = err_of(et.forward(&Tensor::zeros(8, DType::F32, &DEV)?));
    assert!(e.contains("x:") && e.contains("[8]"), "{e}");
    let e = err_of(et.energy(&Tensor::zeros((2, 4, 7), DType::F32, &DEV)?));
    assert!(e.contains("g:") && e.contains("[2, 4, 7]"), "{e}");
    let x = Tensor::zeros((1, 3, 8), DType::F32, &DEV)?;
    let e = err_of(et.filtered_forward(&x, &Tensor::new(&[0f32, 1., 2.], &DEV)?, None));
    assert!(e.contains("indices") && e.contains("[3]"), "{e}");
    Ok(())
}
