//! Times `DiffusedHopfield` forward (f32, CPU, eval) with difflayers' default settings
//! (`DiffusedHopfield(input_size=64)`: factored diffusion, k = 5, 3 diffusion steps, 1 head) and
//! prints one JSON object per case and graph mode:
//! `{"case": .., "graph": "fresh"|"cached", "ms": .., "runs": .., "vmhwm_mib": ..}`.
//!
//! Cases (d = 64): `s2048` (N = 1, S = 2048 stored, L = 32 queries), `self2048`
//! (N = 1, self-association, L = S = 2048), `b8x256` (a batch of N = 8 self-associations,
//! L = S = 256), `s100k` (N = 1, S = 10^5, L = 32) and `s1m` (N = 1, S = 10^6, L = 32, the
//! approximate graph: `KnnMethod::NnDescent` with its defaults). "fresh" rebuilds the kNN graphs
//! on every call (`cache_graph = false`, what the first call of a module costs); "cached" reuses
//! the graphs of the first call. Rows carry the graph scope (`per_sample`, our default; for N > 1
//! also `batch_mean`, difflayers' one graph of the batch mean) and `builds`, the graph builds
//! during the timed runs (0 when the cache hits). `ms` is the median over the runs. `vmhwm_mib` is the process's
//! peak RSS (`/proc/self/status` VmHWM) after the case, so run `s100k` in its own process to read
//! its peak alone. `benches/dahn_compare.sh` runs it next to PyTorch difflayers.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin dahn_timing              # s2048, self2048, b8x256
//! cargo run --release -p hopfield-benches --bin dahn_timing -- s100k
//! cargo run --release -p hopfield-benches --bin dahn_timing -- s1m    # ~3.5 minutes, ~3 GiB
//! DAHN_PROFILE=1 cargo run --release -p hopfield-benches --bin dahn_timing   # + time breakdown
//! ```

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dahn_diffusion::{AttentionMode, AttentionOperator, DiffusionConfig, GraphCache};
use dahn_graph::{KnnMethod, NnDescent};
use hopfield_benches::median_ms;
use hopfield_nn::{
    DiffusedHopfield, DiffusedHopfieldConfig, GraphScope, HopfieldConfig, HopfieldInput, Masks,
};

const D: usize = 64;

/// `(name, N, S, L)`; `L == S` means self-association (one input tensor).
const CASES: [(&str, usize, usize, usize); 5] = [
    ("s2048", 1, 2048, 32),
    ("self2048", 1, 2048, 2048),
    ("b8x256", 8, 256, 256),
    ("s100k", 1, 100_000, 32),
    ("s1m", 1, 1_000_000, 32),
];

/// How a case with `s` stored patterns builds its graphs: exactly, or by NN-descent from
/// 2*10^5 patterns on (the exact build is O(S^2 d), hours at 10^6 on 2 cores).
fn knn_method(s: usize) -> KnnMethod {
    if s >= 200_000 {
        KnnMethod::NnDescent(NnDescent::default())
    } else {
        KnnMethod::Exact
    }
}

/// Peak resident set size of this process in MiB (Linux), `None` elsewhere.
fn vmhwm_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// difflayers' `DiffusedHopfield(input_size=64, cache_graph=cache)` with random parameters, its
/// graphs built by `method`.
fn module(
    map: &VarMap,
    cache: bool,
    scope: GraphScope,
    method: KnnMethod,
) -> Result<DiffusedHopfield> {
    let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(D))
        .with_cache_graph(cache)
        .with_graph_scope(scope)
        .with_knn_method(method);
    DiffusedHopfield::new(cfg, VarBuilder::from_varmap(map, DType::F32, &Device::Cpu))
}

fn scope_name(scope: GraphScope) -> &'static str {
    match scope {
        GraphScope::PerSample => "per_sample",
        GraphScope::BatchMean => "batch_mean",
    }
}

fn report_row(case: &str, graph: &str, scope: &str, ms: f64, runs: usize, builds: Option<usize>) {
    let hwm = vmhwm_mib().map_or("null".to_string(), |m| format!("{m:.1}"));
    let builds = builds.map_or("null".to_string(), |b| b.to_string());
    println!(
        "{{\"case\": \"{case}\", \"graph\": \"{graph}\", \"scope\": \"{scope}\", \"ms\": {ms:.3}, \"runs\": {runs}, \"builds\": {builds}, \"vmhwm_mib\": {hwm}}}"
    );
}

fn report(case: &str, graph: &str, ms: f64, runs: usize) {
    report_row(case, graph, "per_sample", ms, runs, None);
}

fn run_case(name: &str, n: usize, s: usize, l: usize) -> Result<()> {
    let dev = Device::Cpu;
    let stored = Tensor::randn(0f32, 1., (n, s, D), &dev)?;
    let state = Tensor::randn(0f32, 1., (n, l, D), &dev)?;
    let input = || {
        if l == s {
            HopfieldInput::Single(&stored)
        } else {
            HopfieldInput::Triple {
                stored: &stored,
                state: &state,
                projection: &stored,
            }
        }
    };
    let map = VarMap::new();
    // A 10^5 graph build takes seconds, 10^6 minutes: fewer runs there.
    let (fresh_runs, cached_runs) = if s > 10_000 { (1, 5) } else { (7, 15) };
    let scopes: &[GraphScope] = if n > 1 {
        &[GraphScope::PerSample, GraphScope::BatchMean]
    } else {
        &[GraphScope::PerSample]
    };
    for &scope in scopes {
        let fresh = module(&map, false, scope, knn_method(s))?;
        let cached = module(&map, true, scope, knn_method(s))?;
        let f = median_ms(0, fresh_runs, 0.0, || {
            fresh.forward_with(input(), Masks::default(), false)
        })?;
        let fresh_builds = fresh.graph_builds();
        report_row(
            name,
            "fresh",
            scope_name(scope),
            f,
            fresh_runs,
            Some(fresh_builds),
        );
        // The first cached call builds the graphs; it is the warm-up.
        cached.forward_with(input(), Masks::default(), false)?;
        let warm = cached.graph_builds();
        let c = median_ms(0, cached_runs, 0.0, || {
            cached.forward_with(input(), Masks::default(), false)
        })?;
        let builds = cached.graph_builds() - warm;
        report_row(
            name,
            "cached",
            scope_name(scope),
            c,
            cached_runs,
            Some(builds),
        );
    }
    if std::env::var_os("DAHN_PROFILE").is_some() && n == 1 {
        profile(name, &stored, &map, &input, fresh_runs, cached_runs)?;
    }
    Ok(())
}

/// Where a forward's time goes (`DAHN_PROFILE=1`): the graph build alone (`GraphCache::get` on
/// the stored patterns, cache off), and the same module with `eta = 0` (LayerNorms and the Hopfield
/// core, no graph and no diffuse -> attend loop). The loop is what remains of "cached".
fn profile<'a>(
    name: &str,
    stored: &Tensor,
    map: &VarMap,
    input: &impl Fn() -> HopfieldInput<'a>,
    fresh_runs: usize,
    cached_runs: usize,
) -> Result<()> {
    let cache = GraphCache::new(
        DiffusionConfig::default()
            .k_neighbors(5)
            .eta(0.1)
            .cache_graph(false)
            .knn_method(knn_method(stored.dim(1)?)),
    )?;
    let patterns = stored.squeeze(0)?;
    let g = median_ms(0, fresh_runs, 0.0, || {
        cache.get(&patterns).map(|g| g.degrees.clone())
    })?;
    report(name, "profile:graph_build", g, fresh_runs);
    let cfg = DiffusedHopfieldConfig::new(HopfieldConfig::new(D)).with_eta(0.0);
    let core = DiffusedHopfield::new(cfg, VarBuilder::from_varmap(map, DType::F32, &Device::Cpu))?;
    let c = median_ms(0, cached_runs, 0.0, || {
        core.forward_with(input(), Masks::default(), false)
    })?;
    report(name, "profile:core_only_eta0", c, cached_runs);
    // One dense loop-attention step `softmax(beta Q K^T) V` (Q = K = V = patterns here, the
    // self-association shape), split into its kernels: dahn-diffusion's AttentionOperator uses
    // candle-nn's composed (differentiable) softmax; the fused softmax_last_dim is shown for scale.
    let (l, s) = (input_len(input)?, patterns.dim(0)?);
    let q = patterns.narrow(0, 0, l)?;
    let kt = patterns.t()?.contiguous()?;
    let logits = q.matmul(&kt)?;
    let t = median_ms(0, cached_runs, 0.0, || q.matmul(&kt))?;
    report(name, &format!("profile:step_qk_{l}x{s}"), t, cached_runs);
    let t = median_ms(0, cached_runs, 0.0, || {
        candle_nn::ops::softmax(&(&logits * 1.0)?, candle_core::D::Minus1)
    })?;
    report(name, "profile:step_scale_softmax_composed", t, cached_runs);
    let t = median_ms(0, cached_runs, 0.0, || {
        candle_nn::ops::softmax_last_dim(&(&logits * 1.0)?)
    })?;
    report(name, "profile:step_scale_softmax_fused", t, cached_runs);
    let p = candle_nn::ops::softmax_last_dim(&logits)?;
    let t = median_ms(0, cached_runs, 0.0, || p.matmul(&patterns))?;
    report(name, "profile:step_pv", t, cached_runs);
    // The two calls of one loop step as the engine makes them (sequence-first (rows, 1, d)).
    let (q3, k3) = (q.unsqueeze(1)?, patterns.unsqueeze(1)?);
    let attn = AttentionOperator::new(1.0, AttentionMode::Dense);
    let t = median_ms(0, cached_runs, 0.0, || attn.forward(&q3, &k3, &k3, None))?;
    report(name, "profile:step_attention_operator", t, cached_runs);
    let graph = cache.get(&patterns)?;
    let t = median_ms(0, cached_runs, 0.0, || graph.operator.apply(&k3))?;
    report(name, "profile:step_factored_diffusion", t, cached_runs);
    Ok(())
}

/// Number of state patterns of a case's input.
fn input_len<'a>(input: &impl Fn() -> HopfieldInput<'a>) -> Result<usize> {
    match input() {
        HopfieldInput::Single(x) => x.dim(1),
        HopfieldInput::Triple { state, .. } => state.dim(1),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted: Vec<&str> = if args.is_empty() {
        vec!["s2048", "self2048", "b8x256"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    for w in &wanted {
        let Some(&(name, n, s, l)) = CASES.iter().find(|c| c.0 == *w) else {
            candle_core::bail!(
                "unknown case {w:?}; expected one of s2048, self2048, b8x256, s100k"
            );
        };
        run_case(name, n, s, l)?;
    }
    Ok(())
}
