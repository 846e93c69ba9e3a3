//! Replays the `dahn/` goldens (difflayers 0.1.1 functions) against `dahn-graph` and
//! `dahn-diffusion`; `DiffusedHopfield` module cases go to [`super::diffused`].

use super::case::{backward_with, Case, Report};
use candle_core::{backprop::GradStore, DType, Error, Result, Tensor, Var};
use dahn_diffusion::{
    apply_diffusion, compute_adaptive_eta, AttentionMode, AttentionOperator, DiffusionConfig,
    DiffusionMode, DiffusionOperator, DynamicsEngine, DynamicsInputs, EnergyTracker,
    FactoredDiffusion, GraphCache, IterativeDiffusion, SimpleDiffusion, SpectralDiffusion,
};
use dahn_graph::{
    cosine_similarity, knn_graph, laplacian, normalized_laplacian, Csr, GraphBuilder, GraphMatrix,
    LaplacianBuilder,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

fn msg(s: impl Into<String>) -> Error {
    Error::Msg(s.into())
}

/// The case's inputs: float ones as autograd variables (so `grad.input.*` can be read), integer
/// ones (neighbour tables) as plain tensors.
struct Inputs {
    tensors: HashMap<String, Tensor>,
}

impl Inputs {
    fn load(case: &Case) -> Result<Self> {
        let mut tensors = HashMap::new();
        for name in case.keys_with_prefix("input.") {
            let t = case.get(&format!("input.{name}"))?;
            let t = if t.dtype().is_float() {
                Var::from_tensor(&t)?.as_tensor().clone()
            } else {
                t
            };
            tensors.insert(name, t);
        }
        Ok(Self { tensors })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| msg(format!("case has no input {name:?}")))
    }

    fn named(&self, v: &Value) -> Result<Option<&Tensor>> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => self.get(s).map(Some),
            o => Err(msg(format!("expected an input name, got {o}"))),
        }
    }
}

fn f(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| msg(format!("kwargs: missing number {key:?}")))
}

fn f_or(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn u_or(v: &Value, key: &str, default: usize) -> usize {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .unwrap_or(default)
}

fn b_or(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn s_or<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}

fn scalar(x: f64, like: &Tensor) -> Result<Tensor> {
    Tensor::new(x, like.device())?.to_dtype(like.dtype())
}

/// Neighbour tables may differ in the order of equal-weight entries: compare each row as a set.
fn sorted_rows(t: &Tensor) -> Result<Tensor> {
    let rows = t.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let n = rows.len();
    let k = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows
        .into_iter()
        .flat_map(|mut r| {
            r.sort();
            r
        })
        .collect();
    Tensor::from_vec(flat, (n, k), t.device())
}

/// A difflayers diffusion operator class constructed from `kwargs` and initialised as the case says.
fn operator(
    class: &str,
    args: &Value,
    init: &str,
    graph: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Arc<dyn DiffusionOperator>> {
    let eta = f(args, "eta")?;
    Ok(match (class, init) {
        ("SimpleDiffusion", "precompute") => {
            Arc::new(SimpleDiffusion::new(graph("L")?.into(), eta)?)
        }
        ("IterativeDiffusion", "precompute") => Arc::new(
            IterativeDiffusion::new(graph("L")?.into(), eta, u_or(args, "steps", 3))?
                .early_stop_tol(f_or(
                    args,
                    "early_stop_tol",
                    IterativeDiffusion::DEFAULT_TOL,
                )),
        ),
        ("SpectralDiffusion", "precompute") => {
            Arc::new(SpectralDiffusion::new(&graph("L")?.into(), eta)?)
        }
        ("FactoredDiffusion", "precompute") => Arc::new(FactoredDiffusion::from_laplacian(
            &graph("L")?.into(),
            eta,
            u_or(args, "steps", 1),
        )?),
        ("FactoredDiffusion", "precompute_from_graph") => Arc::new(FactoredDiffusion::from_graph(
            GraphMatrix::Dense(graph("W")?),
            &graph("deg")?,
            eta,
            u_or(args, "steps", 1),
        )?),
        (c, i) => return Err(msg(format!("unsupported operator {c} with init {i}"))),
    })
}

/// `{"class", "args", "init", "graph": {param: input}}` as in the dynamics cases.
fn operator_spec(spec: &Value, inputs: &Inputs) -> Result<Arc<dyn DiffusionOperator>> {
    let graph = spec.get("graph").cloned().unwrap_or(Value::Null);
    let lookup = |p: &str| -> Result<Tensor> {
        let name = graph
            .get(p)
            .and_then(Value::as_str)
            .ok_or_else(|| msg(format!("operator graph lacks {p}")))?;
        Ok(inputs.get(name)?.detach())
    };
    operator(
        s_or(spec, "class", ""),
        spec.get("args").unwrap_or(&Value::Null),
        s_or(spec, "init", "precompute"),
        &lookup,
    )
}

fn tracker(v: &Value) -> Result<Option<EnergyTracker>> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(Some(EnergyTracker::new(
        f(v, "beta")?,
        f(v, "eta")?,
        f_or(v, "tol", 0.0),
    )))
}

fn energies(t: Option<&EnergyTracker>, like: &Tensor) -> Result<Tensor> {
    let h = t.map(|t| t.history().to_vec()).unwrap_or_default();
    let n = h.len();
    Tensor::from_vec(h, n, like.device())?.to_dtype(like.dtype())
}

/// Runs one `dahn/` case.
pub fn run(case: &Case, report: &mut Report) -> Result<()> {
    if let Some(m) = case.meta("module") {
        return match m.as_str() {
            "difflayers.DiffusedHopfield" => super::diffused::run(case, report),
            other => Err(msg(format!("unsupported module {other:?}"))),
        };
    }
    let function = case
        .meta("function")
        .ok_or_else(|| msg("case has neither module nor function"))?;
    let kw = case.meta_json("kwargs")?;
    let fwd = case.meta_json("forward")?;
    let inputs = Inputs::load(case)?;
    let sparse_input = |name: &str| {
        fwd.get("input_layouts")
            .and_then(|l| l.get(name))
            .and_then(Value::as_str)
            == Some("sparse_coo")
    };
    let name = function.strip_prefix("difflayers.").unwrap_or(&function);
    // (primary output, further outputs)
    let mut others: Vec<(&str, Tensor)> = Vec::new();
    let y: Tensor = match name {
        "graph.build_graph.build_similarity_matrix" => cosine_similarity(inputs.get("X")?)?,
        "graph.build_graph.build_knn_graph" => {
            let a = knn_graph(inputs.get("S")?, u_or(&kw, "k", 5))?;
            if b_or(&kw, "as_sparse", false) {
                Csr::from_dense(&a)?.to_dense(a.dtype(), a.device())?
            } else {
                a
            }
        }
        "graph.laplacian.compute_laplacian" | "graph.laplacian.compute_normalized_laplacian" => {
            let normalized = name.ends_with("normalized_laplacian");
            let a = inputs.get("A")?;
            if sparse_input("A") {
                Csr::from_dense(a)?.laplacian(normalized).to_dense(a.dtype(), a.device())?
            } else if normalized {
                normalized_laplacian(a)?
            } else {
                laplacian(a)?
            }
        }
        "graph.builder.GraphBuilder.build" | "graph.builder.GraphBuilder.build | difflayers.graph.laplacian_builder.LaplacianBuilder.build" => {
            let gb = kw.get("graph_builder").unwrap_or(&kw);
            let g = GraphBuilder::new().k(u_or(gb, "k", 5)).build(inputs.get("X")?)?;
            let w = g.weights()?;
            others.push(("deg", g.degrees()?));
            others.push(("adj_indices", g.neighbours()?));
            if let Some(lb) = kw.get("laplacian_builder") {
                others.push(("W", w.clone()));
                LaplacianBuilder::new().normalized(b_or(lb, "normalized", true)).build(&w)?
            } else {
                w
            }
        }
        "graph.laplacian_builder.LaplacianBuilder.build" => {
            LaplacianBuilder::new().normalized(b_or(&kw, "normalized", true)).build(inputs.get("W")?)?
        }
        "dynamics_engine.GraphCache.get" => {
            let cfg = DiffusionConfig {
                eta: f_or(&kw, "eta", 0.1),
                steps: u_or(&kw, "steps", 3),
                diffusion_mode: s_or(&kw, "diffusion_mode", "factored").parse()?,
                k_neighbors: u_or(&kw, "k_neighbors", 5),
                use_normalized_laplacian: b_or(&kw, "use_normalized_laplacian", true),
                ..Default::default()
            };
            let cached = GraphCache::new(cfg)?.get(inputs.get("patterns")?)?;
            let p = inputs.get("patterns")?;
            others.push(("W", cached.graph.weights()?));
            others.push(("deg", cached.degrees.clone()));
            others.push(("adj_indices", cached.neighbours.clone()));
            if let Some(l) = &cached.laplacian {
                others.push(("L", l.to_dense(p.dtype(), p.device())?));
            }
            cached.operator.apply(inputs.get("X")?)?
        }
        "diffusion.SimpleDiffusion" | "diffusion.IterativeDiffusion" | "diffusion.SpectralDiffusion" | "diffusion.FactoredDiffusion" => {
            let gi = fwd.get("graph_inputs").cloned().unwrap_or(Value::Null);
            let lookup = |p: &str| -> Result<Tensor> {
                let n = gi.get(p).and_then(Value::as_str).unwrap_or(p);
                Ok(inputs.get(n)?.detach())
            };
            let class = name.strip_prefix("diffusion.").unwrap_or(name);
            operator(class, &kw, s_or(&fwd, "init", "precompute"), &lookup)?.apply(inputs.get("X")?)?
        }
        "diffusion.apply_diffusion" => {
            let l: GraphMatrix = inputs.get("L")?.detach().into();
            let mode: DiffusionMode = s_or(&kw, "mode", "simple").parse()?;
            apply_diffusion(inputs.get("X")?, &l, f(&kw, "eta")?, mode, u_or(&kw, "steps", 3))?
        }
        "attention_operator.AttentionOperator" => {
            let mode: AttentionMode = s_or(&kw, "mode", "dense").parse()?;
            let adj = inputs.tensors.get("adj_indices");
            AttentionOperator::new(f_or(&kw, "beta", 1.0), mode).forward(
                inputs.get("Q")?,
                inputs.get("K")?,
                inputs.get("V")?,
                adj,
            )?
        }
        "dynamics_engine.DynamicsEngine.run_dynamics" => {
            let op = operator_spec(&kw["diffusion_op"], &inputs)?;
            let mut engine = DynamicsEngine::new(op);
            if let Some(s) = kw.get("steps").and_then(Value::as_u64) {
                engine = engine.steps(s as usize);
            }
            if !kw["query_diffusion_op"].is_null() {
                engine = engine.query_op(operator_spec(&kw["query_diffusion_op"], &inputs)?);
            }
            let a = &kw["attention_op"];
            engine = engine.attention(AttentionOperator::new(f_or(a, "beta", 1.0), s_or(a, "mode", "dense").parse()?));
            if let Some(t) = tracker(&kw["energy_tracker"])? {
                engine = engine.energy_tracker(t);
            }
            let rd = &kw["run_dynamics"];
            let l: Option<GraphMatrix> = inputs.named(&rd["L"])?.map(|t| t.detach().into());
            let w: Option<GraphMatrix> = inputs.named(&rd["W"])?.map(|t| t.detach().into());
            let deg = inputs.named(&rd["deg"])?.map(Tensor::detach);
            let di = DynamicsInputs {
                adj_indices: inputs.named(&rd["adj_indices"])?,
                laplacian: l.as_ref(),
                weights: w.as_ref(),
                degrees: deg.as_ref(),
                diffuse_query: b_or(rd, "diffuse_query", true),
                diffuse_key: b_or(rd, "diffuse_key", true),
            };
            let q = inputs.get("Q")?;
            let out = engine.run_dynamics(q, inputs.get("K")?, inputs.get("V")?, &di)?;
            if let Some(n) = fwd.get("dynamics_steps_run").and_then(Value::as_u64) {
                if out.steps_run != n as usize {
                    report.fail(format!("dynamics steps run {} (expected {n})", out.steps_run));
                }
            }
            others.push(("K", out.key));
            if engine.tracker().is_some() {
                others.push(("energies", energies(engine.tracker(), q)?));
            }
            out.query
        }
        "dynamics_engine.DynamicsEngine.run_diffusion" => {
            let op = operator_spec(&kw["diffusion_op"], &inputs)?;
            let mut engine = DynamicsEngine::new(op);
            if let Some(s) = kw.get("steps").and_then(Value::as_u64) {
                engine = engine.steps(s as usize);
            }
            if let Some(t) = tracker(&kw["energy_tracker"])? {
                engine = engine.energy_tracker(t);
            }
            let rd = &kw["run_diffusion"];
            let l: Option<GraphMatrix> = inputs.named(&rd["L"])?.map(|t| t.detach().into());
            let q_ref = inputs.named(&rd["Q_ref"])?.map(Tensor::detach);
            let x = inputs.get("X")?;
            let y = engine.run_diffusion(x, l.as_ref(), q_ref.as_ref())?;
            others.push(("energies", energies(engine.tracker(), x)?));
            y
        }
        "dynamics_engine.EnergyTracker.step" | "dynamics_engine.EnergyTracker.step_factored" => {
            let mut t = EnergyTracker::new(f(&kw, "beta")?, f(&kw, "eta")?, f_or(&kw, "tol", 0.0));
            let (q, k) = (inputs.get("Q")?, inputs.get("K")?);
            let (e, _) = if name.ends_with("step_factored") {
                t.step_factored(q, k, &inputs.get("W")?.detach().into(), inputs.get("deg")?)?
            } else {
                t.step(q, k, &inputs.get("L")?.detach().into())?
            };
            scalar(e, q)?
        }
        "dynamics_engine.DynamicsEngine.compute_adaptive_eta" => {
            let logits = inputs.get("logits")?;
            let eta = compute_adaptive_eta(logits, f(&kw, "base_eta")?, f_or(&kw, "temperature", 5.0), f_or(&kw, "threshold", 1.0))?;
            scalar(eta, logits)?
        }
        other => return Err(msg(format!("unsupported function {other}"))),
    };

    report.check("output.y", &y, &case.get("output.y")?)?;
    for (key, got) in &others {
        let full = format!("output.{key}");
        if let Some(want) = case.opt(&full) {
            if *key == "adj_indices" {
                report.check(&full, &sorted_rows(got)?, &sorted_rows(&want)?)?;
            } else {
                report.check(&full, got, &want)?;
            }
        }
    }
    if report.forward_only() || !fwd.get("grad").and_then(Value::as_bool).unwrap_or(false) {
        return Ok(());
    }
    let grads: GradStore = backward_with(&y, &case.get("grad_seed.cotangent")?)?;
    for gname in fwd
        .get("grad_inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let gname = gname.as_str().unwrap_or_default();
        let want = case.get(&format!("grad.input.{gname}"))?;
        report.check_grad(
            &format!("grad.input.{gname}"),
            grads.get(inputs.get(gname)?),
            &want,
        )?;
    }
    Ok(())
}
