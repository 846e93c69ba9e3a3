//! Replays the `et/` goldens (the PyTorch Energy Transformer port) from their metadata alone:
//! `module`, `kwargs` (the constructor arguments) and `forward` (`call`: `energy`, `forward` or
//! `filtered_forward`; `n_iters`).
//!
//! Checked: `output.*`; `grad_energy.params.*` (first order, candle autograd of the closed-form
//! energy); `grad.*`, the derivatives of `sum(Y * cotangent)` by candle autograd through the
//! closed-form gradient ops, where `Y` is `output.y`, or `output.energy_grad` for energy cases (so
//! these are second-order derivatives of the energy). In float32 replay only `Y` is compared.

use super::case::{backward_with, var_tensors};
use super::{Case, Report};
use candle_core::{Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use hopfield_nn::energy::{
    BaseModernHopfield, Energy, EnergyLayerNorm, EnergyMHA, EnergyTransformer,
    EnergyTransformerConfig, LayerNorm, SoftmaxModernHopfield,
};
use serde_json::Value;
use std::collections::HashMap;

/// Modules of the port (by the last component of the qualified name) replayed here.
const MODULES: [&str; 6] = [
    "EnergyMHA",
    "BaseModernHopfield",
    "SoftmaxModernHopfield",
    "EnergyTransformer",
    "EnergyLayerNorm",
    "LayerNorm",
];

/// Replays one `et/` case into `report`. Unsupported modules, calls or arguments are errors.
///
/// ```
/// use hopfield_examples::conformance::{et, goldens_dir, Case, Outcome, Precision, Report};
/// let path = goldens_dir("et").join("et_forward_relu_pos.safetensors");
/// let case = Case::load(&path, Precision::F64)?;
/// let mut report = Report::new(case.tolerance(), Precision::F64);
/// et::run(&case, &mut report)?;
/// assert_eq!(report.outcome(), Outcome::Pass);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn run(case: &Case, report: &mut Report) -> Result<()> {
    let module = case.meta("module").unwrap_or_default();
    let short = module.rsplit('.').next().unwrap_or_default();
    if !MODULES.contains(&short) {
        candle_core::bail!("et: unsupported module {module:?}");
    }
    let kw = case.meta_json("kwargs")?;
    let fwd = case.meta_json("forward")?;
    let call = fwd["call"].as_str().unwrap_or_default();
    let dtype = case.precision().dtype();
    let vars = case.vars("params.")?;
    let vb = VarBuilder::from_tensors(var_tensors(&vars), dtype, &Device::Cpu);
    let x = Var::from_tensor(&case.get("input.x")?)?;
    let ctx = Ctx {
        case,
        x: &x,
        vars: &vars,
    };
    match (short, call) {
        ("EnergyMHA", "energy") => {
            allow(&kw, &["embed_dim", "n_heads", "beta", "scale"])?;
            let (d, h) = (usize_arg(&kw, "embed_dim")?, usize_arg(&kw, "n_heads")?);
            let beta = match &kw["beta"] {
                Value::Null => None,
                Value::Array(a) => Some(a.iter().filter_map(Value::as_f64).collect::<Vec<_>>()),
                Value::Number(n) => Some(vec![n.as_f64().unwrap_or(1.0); h]),
                other => candle_core::bail!("et: unsupported beta {other}"),
            };
            let m = EnergyMHA::with_options(d, h, beta.as_deref(), 0.002, false, vb)?;
            ctx.energy_case(&m, report)
        }
        ("BaseModernHopfield", "energy") => {
            allow(&kw, &["in_dim", "hidden_dim", "use_bias", "beta", "scale"])?;
            let m = BaseModernHopfield::new(
                usize_arg(&kw, "in_dim")?,
                usize_arg(&kw, "hidden_dim")?,
                vb,
            )?;
            ctx.energy_case(&m, report)
        }
        ("SoftmaxModernHopfield", "energy") => {
            allow(&kw, &["in_dim", "hidden_dim", "use_bias", "beta"])?;
            let m = SoftmaxModernHopfield::with_options(
                usize_arg(&kw, "in_dim")?,
                usize_arg(&kw, "hidden_dim")?,
                kw["beta"].as_f64(),
                0.002,
                vb,
            )?;
            ctx.energy_case(&m, report)
        }
        ("EnergyLayerNorm", "energy") => {
            allow(&kw, &["dim", "eps"])?;
            let eps = kw["eps"].as_f64().unwrap_or(1e-5);
            let m = EnergyLayerNorm::new(usize_arg(&kw, "dim")?, eps, vb)?;
            ctx.energy_case(&m, report)
        }
        ("EnergyTransformer", "energy") => {
            let cfg = EnergyTransformerConfig::from_port_kwargs(&kw)?;
            let m = EnergyTransformer::new(&cfg, vb)?;
            ctx.energy_case(&m, report)
        }
        ("LayerNorm", "forward") => {
            allow(&kw, &["normalized_shape", "eps", "elementwise_affine"])?;
            if kw["elementwise_affine"].as_bool() == Some(false) {
                candle_core::bail!("et: LayerNorm without elementwise_affine is unsupported");
            }
            let dim = match &kw["normalized_shape"] {
                Value::Array(a) if a.len() == 1 => a[0].as_u64().map(|v| v as usize),
                v => v.as_u64().map(|v| v as usize),
            }
            .ok_or_else(|| {
                candle_core::Error::Msg("et: normalized_shape must be one int".into())
            })?;
            let m = LayerNorm::new(dim, kw["eps"].as_f64().unwrap_or(1e-5), vb)?;
            let y = m.forward(x.as_tensor())?;
            report.check("output.y", &y, &case.get("output.y")?)?;
            ctx.second_order(&y, report)
        }
        ("EnergyTransformer", "forward" | "filtered_forward") => {
            let cfg = EnergyTransformerConfig::from_port_kwargs(&kw)?;
            let et = EnergyTransformer::new(&cfg, vb)?;
            let n_iters = fwd["n_iters"].as_u64().map(|n| n as usize);
            let out = if call == "forward" {
                et.forward_detailed(x.as_tensor(), n_iters)?
            } else {
                et.filtered_forward(x.as_tensor(), &case.get("input.indices")?, n_iters)?
            };
            report.check("output.y", &out.y, &case.get("output.y")?)?;
            for (key, got) in [
                ("output.features", &out.features),
                ("output.energies", &out.energies),
            ] {
                match (case.opt(key), got) {
                    (Some(want), Some(got)) => report.check(key, got, &want)?,
                    (Some(_), None) => report.fail(format!("{key}: not produced")),
                    _ => {}
                }
            }
            ctx.second_order(&out.y, report)
        }
        _ => candle_core::bail!("et: unsupported call {call:?} for {module}"),
    }
}

/// What every check needs: the case, the input variable and the parameter variables.
struct Ctx<'a> {
    case: &'a Case,
    x: &'a Var,
    vars: &'a HashMap<String, Var>,
}

impl Ctx<'_> {
    /// `output.energy`, `output.energy_grad`, `grad_energy.params.*` and the second-order `grad.*`.
    fn energy_case<E: Energy>(&self, m: &E, report: &mut Report) -> Result<()> {
        let y = m.grad(self.x.as_tensor())?;
        let want_y = self.case.get("output.energy_grad")?;
        if report.forward_only() {
            // Float32 replay compares only Y, which for an energy case is its gradient (README).
            return report.check("output.y", &y, &want_y);
        }
        let e = m.energy(self.x.as_tensor())?;
        report.check("output.energy", &e, &self.case.get("output.energy")?)?;
        report.check("output.energy_grad", &y, &want_y)?;
        let grads = e.backward()?;
        for name in self.case.keys_with_prefix("grad_energy.params.") {
            let key = format!("grad_energy.params.{name}");
            match self.vars.get(&name) {
                Some(v) => {
                    report.check_grad(&key, grads.get(v.as_tensor()), &self.case.get(&key)?)?
                }
                None => report.fail(format!("{key}: no parameter {name}")),
            }
        }
        self.second_order(&y, report)
    }

    /// `grad.input.x` and `grad.params.*` of `sum(y * cotangent)`.
    fn second_order(&self, y: &Tensor, report: &mut Report) -> Result<()> {
        if report.forward_only() {
            return Ok(());
        }
        let Some(cot) = self.case.opt("grad_seed.cotangent") else {
            return Ok(());
        };
        let grads = backward_with(y, &cot)?;
        if let Some(want) = self.case.opt("grad.input.x") {
            report.check_grad("grad.input.x", grads.get(self.x.as_tensor()), &want)?;
        }
        for name in self.case.keys_with_prefix("grad.params.") {
            let key = format!("grad.params.{name}");
            match self.vars.get(&name) {
                Some(v) => {
                    report.check_grad(&key, grads.get(v.as_tensor()), &self.case.get(&key)?)?
                }
                None => report.fail(format!("{key}: no parameter {name}")),
            }
        }
        Ok(())
    }
}

/// Rejects keyword arguments this replay does not know (never silently ignores them).
fn allow(kw: &Value, known: &[&str]) -> Result<()> {
    if let Some(obj) = kw.as_object() {
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            candle_core::bail!("et: unsupported argument {k} = {}", obj[k]);
        }
    }
    Ok(())
}

fn usize_arg(kw: &Value, name: &str) -> Result<usize> {
    kw[name].as_u64().map(|v| v as usize).ok_or_else(|| {
        candle_core::Error::Msg(format!("et: argument {name} missing or not an int"))
    })
}
