//! Replays the functional cases of `audit/entmax/` (exported from the `entmax` package by
//! `benches/export_entmax.py`): `function` is `entmax.sparsemax`, `entmax.entmax15` or
//! `entmax.entmax_bisect` (a fixed `alpha` in the `forward` metadata, or a per-row `input.alpha`
//! that is differentiated), over the last dim of `input.x`.
//!
//! Checked: `output.y` and `grad.input.*` (the gradients of `sum(y * cotangent)`); in float32
//! replay only `output.y`. The module cases of that folder (hflayers with an entmax association)
//! run through [`super::hflayers`].

use super::case::backward_with;
use super::{Case, Report};
use candle_core::{Result, Var};

/// Replays one functional entmax case into `report`; an unknown function is an error.
///
/// ```
/// use hopfield_examples::conformance::{audit_dir, entmax, Case, Outcome, Precision, Report};
/// let path = audit_dir("entmax").join("sparsemax_rows.safetensors");
/// let case = Case::load(&path, Precision::F64)?;
/// let mut report = Report::new(case.tolerance(), Precision::F64);
/// entmax::run(&case, &mut report)?;
/// assert_eq!(report.outcome(), Outcome::Pass);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn run(case: &Case, report: &mut Report) -> Result<()> {
    let function = case.meta("function").unwrap_or_default();
    let x = Var::from_tensor(&case.get("input.x")?)?;
    let alpha = case
        .opt("input.alpha")
        .map(|a| Var::from_tensor(&a))
        .transpose()?;
    let y = match (function.as_str(), &alpha) {
        ("entmax.sparsemax", None) => hopfield_cuda::sparsemax(x.as_tensor())?,
        ("entmax.entmax15", None) => hopfield_cuda::entmax15(x.as_tensor())?,
        ("entmax.entmax_bisect", Some(a)) => {
            hopfield_cuda::entmax_learnable(x.as_tensor(), a.as_tensor())?
        }
        ("entmax.entmax_bisect", None) => {
            let alpha = case.meta_json("forward")?["alpha"]
                .as_f64()
                .ok_or_else(|| candle_core::Error::Msg("entmax_bisect: no alpha".into()))?;
            hopfield_cuda::entmax(x.as_tensor(), alpha)?
        }
        (f, _) => candle_core::bail!("entmax: unsupported function {f:?}"),
    };
    report.check("output.y", &y, &case.get("output.y")?)?;
    if report.forward_only() {
        return Ok(());
    }
    let grads = backward_with(&y, &case.get("grad_seed.cotangent")?)?;
    report.check_grad("grad.input.x", grads.get(&x), &case.get("grad.input.x")?)?;
    if let Some(a) = &alpha {
        report.check_grad(
            "grad.input.alpha",
            grads.get(a),
            &case.get("grad.input.alpha")?,
        )?;
    }
    Ok(())
}
