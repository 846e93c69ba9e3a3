//! Replays difflayers' `DiffusedHopfield` cases (with per-sample and batch-mean graphs) (`dahn/dh_*`): output, association, projected
//! patterns, what the dynamics hand to the core, the graphs, energies, step counts, the
//! effective eta and every gradient.

use super::case::{var_tensors, Case, Report};
use super::module_case::ModuleCase;
use candle_core::{DType, Device, Error, Result, Tensor};
use hopfield_nn::checkpoint::load_strict_tensors;
use hopfield_nn::{DiffusedHopfield, DiffusedHopfieldConfig, GraphScope, HopfieldInput};

/// Runs one `DiffusedHopfield` case.
pub fn run(case: &Case, report: &mut Report) -> Result<()> {
    let mc = ModuleCase::load(case)?;
    let kwargs = case.meta("kwargs").unwrap_or_else(|| "{}".into());
    let cfg = DiffusedHopfieldConfig::from_kwargs(&kwargs)?;
    let dtype = case.precision().dtype();
    let build = |cfg: DiffusedHopfieldConfig| {
        load_strict_tensors(var_tensors(&mc.params), dtype, &Device::Cpu, |vb| {
            DiffusedHopfield::new(cfg, vb)
        })
    };
    let dh = build(cfg.clone())?;
    // difflayers' graphs are those of the batch mean; replay that convention too. The goldens
    // hold for both, and the graphs are compared against the batch-mean run.
    let dh_mean = build(cfg.with_graph_scope(GraphScope::BatchMean))?;
    let (s, q, p);
    let input = match mc.input_form() {
        "single" => {
            s = mc.input("x")?;
            HopfieldInput::Single(&s)
        }
        "tuple3" => {
            (s, q, p) = (
                mc.input("stored")?,
                mc.input("state")?,
                mc.input("projection")?,
            );
            HopfieldInput::Triple {
                stored: &s,
                state: &q,
                projection: &p,
            }
        }
        other => return Err(Error::Msg(format!("unsupported input_form {other:?}"))),
    };
    let o = dh.forward_full(input, mc.hopfield_masks(), false)?;
    let om = dh_mean.forward_full(input, mc.hopfield_masks(), false)?;
    let y = o.hopfield.output.clone();
    report.check("output.y", &y, &case.get("output.y")?)?;
    report.check("output.y", &om.hopfield.output, &case.get("output.y")?)?;
    // The output alone through `forward_with` too: the fused retrieval where it applies.
    let yw = dh.forward_with(input, mc.hopfield_masks(), false)?;
    report.check("output.y", &yw, &case.get("output.y")?)?;
    let energies = match o.energies.first() {
        Some(e) if !e.is_empty() => Some(Tensor::new(e.as_slice(), &Device::Cpu)?.to_dtype(dtype)?),
        _ => None,
    };
    let kg = om.key_graphs.first();
    let qg = om.query_graphs.first();
    let computed: Vec<(&str, Option<Tensor>)> = vec![
        ("output.association", Some(o.hopfield.association.clone())),
        ("output.projected", Some(o.hopfield.projected.clone())),
        ("output.core_state", Some(o.core_state.clone())),
        ("output.core_stored", Some(o.core_stored.clone())),
        ("output.graph_W", kg.map(|g| g.graph.weights()).transpose()?),
        ("output.graph_deg", kg.map(|g| g.degrees.clone())),
        (
            "output.graph_adj_indices",
            kg.map(|g| g.neighbours.to_dtype(DType::I64)).transpose()?,
        ),
        (
            "output.query_graph_W",
            qg.map(|g| g.graph.weights()).transpose()?,
        ),
        ("output.query_graph_deg", qg.map(|g| g.degrees.clone())),
        ("output.energies", energies),
    ];
    for (key, got) in computed {
        if let Some(want) = case.opt(key) {
            match got {
                Some(g) if want.dtype().is_int() => {
                    let (g, w) = (g.to_dtype(DType::I64)?, want.clone());
                    if g.dims() != w.dims()
                        || g.flatten_all()?.to_vec1::<i64>()?
                            != w.flatten_all()?.to_vec1::<i64>()?
                    {
                        report.fail(format!("{key}: {:?} differs from the reference", g.dims()));
                    } else {
                        report.check(key, &g.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?)?;
                    }
                }
                Some(g) => report.check(key, &g.to_dtype(want.dtype())?, &want)?,
                None => report.fail(format!("{key}: not computed")),
            }
        }
    }
    if !report.forward_only() {
        if let Some(want) = mc
            .forward
            .get("dynamics_steps_run")
            .and_then(|v| v.as_u64())
        {
            if o.dynamics_steps_run.iter().any(|s| *s as u64 != want) {
                report.fail(format!(
                    "dynamics steps run {:?}, expected {want}",
                    o.dynamics_steps_run
                ));
            }
        }
        if let Some(want) = mc.forward.get("eta_effective").and_then(|v| v.as_f64()) {
            if o.eta_effective
                .iter()
                .any(|e| (e - want).abs() > 1e-9 * want.abs().max(1.0))
            {
                report.fail(format!(
                    "eta_effective {:?}, expected {want}",
                    o.eta_effective
                ));
            }
        }
    }
    mc.check_gradients(case, report, &y)
}
