"""Exports reference cases for the edge values of difflayers' `DiffusedHopfield` arguments (issue 9,
"Every configuration the originals accept") into crates/hopfield-nn/tests/data/audit/dahn_edges/.

Every case is written in the format of `goldens/dahn/dh_*` (see goldens/README.md, "dahn/"): float64,
eval mode, `module` = `difflayers.DiffusedHopfield`, its kwargs, its full state_dict (random draws),
inputs, output, association, projected patterns, what the dynamics hand to the Hopfield core
(`core_state`, `core_stored`), the key (and query) graph, the tracker's energies, the number of
diffuse-attend rounds, the effective eta and the gradients of sum(y * cotangent).

As for the vendored goldens, difflayers' float32 casts (`Tensor.float()`, D1/B1) are made no-ops for
float64 tensors while the cases are computed; nothing else is changed. Every case holds for per-sample
graphs too (N = 1, or the patterns the graphs are built on are identical across the batch), every kNN
selection is at least 1e-5 away from a tie, and every stopping or rebuilding decision at least 3% away
from its threshold (checked here). Only configurations that difflayers accepts and computes sensibly are
exported; the ones it crashes on or computes garbage for are listed in docs/design/difflayers-semantics.md
("Edge values", D-V ids) and tested in Rust instead (examples/tests/dahn_edges.rs).

    benches/.venv/bin/python benches/export_dahn_edges.py [--out DIR]

The tests never run this script; it is here so that the cases can be regenerated and audited. The Python
safetensors writer orders the metadata arbitrarily, so a rerun gives equal tensors and metadata values but
different bytes: keep the committed files unless a case changed. New cases go at the end of `cases()` (each
case's seed is 9500 + its index; in `function_cases()`, 9700 + its index).
"""

import argparse
import os

import numpy as np
import torch

import difflayers
from difflayers import DiffusedHopfield
from difflayers import dynamics_engine as de
from difflayers.attention_operator import AttentionOperator
from difflayers.graph.build_graph import build_similarity_matrix

from case_export import add_grads, case_meta, case_tensors, check_finite, output_names, save_case, to_np

REFERENCE = "difflayers 0.1.1"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "hopfield-nn", "tests", "data", "audit", "dahn_edges",
)

torch.set_default_dtype(torch.float64)

# D1/B1: difflayers casts graph inputs to float32; make that a no-op for float64 (as the goldens do).
_float = torch.Tensor.float
torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else _float(self, *a, **k)


def draw_params(module, gen):
    """Random parameter values (the goldens README's scheme), in place."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            if p.dim() == 2 and leaf.endswith("weight"):
                v = torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1])
            elif leaf == "weight":
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.2 * torch.randn(p.shape, generator=gen)
            p.copy_(v)


class Recorder:
    """Records, during one forward call, the graphs GraphCache returns (key / query cache), the
    patterns handed to the Hopfield core, the loop attention calls and the adaptive eta."""

    def __init__(self, module):
        self.module = module
        self.key_graphs, self.query_graphs, self.graph_inputs = [], [], []
        self.core = None
        self.attention_calls = 0
        self.eta_eff = None

    def __enter__(self):
        rec, module = self, self.module
        self._get, self._attn, self._eta = de.GraphCache.get, AttentionOperator.__call__, \
            de.DynamicsEngine.compute_adaptive_eta

        def get(cache, patterns):
            out = rec._get(cache, patterns)
            (rec.key_graphs if cache is module._key_cache else rec.query_graphs).append(out)
            rec.graph_inputs.append(patterns.detach().clone())
            return out

        def attn(op, *a, **k):
            rec.attention_calls += 1
            return rec._attn(op, *a, **k)

        def eta(engine, *a, **k):
            rec.eta_eff = rec._eta(engine, *a, **k)
            return rec.eta_eff

        def core_hook(_mod, args, kwargs):
            rec.core = (kwargs["query"].detach().clone(), kwargs["key"].detach().clone())

        de.GraphCache.get = get
        AttentionOperator.__call__ = attn
        de.DynamicsEngine.compute_adaptive_eta = eta
        self._hook = module.association_core.register_forward_pre_hook(core_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        de.GraphCache.get = self._get
        AttentionOperator.__call__ = self._attn
        de.DynamicsEngine.compute_adaptive_eta = self._eta
        self._hook.remove()


def check_knn(x, k, need_order):
    """Every kNN selection of a positive similarity is >= 1e-5 away from a tie; with neighbour tables in use, the k selected
    weights are distinct by 1e-5 and >= 1e-3 (so their order and the padding rule D19 agree)."""
    s = build_similarity_matrix(x)
    n = s.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return
    vals = s.sort(dim=-1, descending=True).values
    if k < n - 1:
        # Ties among zero similarities select zero weights either way (B12): harmless.
        kth, next_ = vals[:, k - 1], vals[:, k]
        gap = torch.where(kth > 0, kth - next_, torch.ones_like(kth)).min().item()
        assert gap >= 1e-5, f"kNN tie: gap {gap}"
    if need_order:
        assert vals[:, k - 1].min().item() >= 1e-3, "a node has fewer than k positive similarities"


def export(out_dir, name, kwargs, form, shapes, description, seed, masks=None, shared=(), offset=0.0):
    """Builds, runs and writes one case.

    shapes: {input name: shape}; masks: {mask name: (kind, tensor)}; shared: inputs drawn once and
    repeated over the batch (so that per-sample graphs equal difflayers' batch-mean graph); offset:
    adds offset * (one random direction) to every pattern (all similarities positive).
    """
    gen = torch.Generator().manual_seed(seed)
    module = DiffusedHopfield(**kwargs).double().eval()
    draw_params(module, gen)
    batch_first = kwargs.get("batch_first", True)
    bdim = 0 if batch_first else 1
    inputs = {}
    for k, s in shapes.items():
        if k in shared:
            one = list(s)
            one[bdim] = 1
            v = torch.randn(one, generator=gen).repeat_interleave(s[bdim], dim=bdim)
        else:
            v = torch.randn(s, generator=gen)
        if offset:
            v = v + offset * torch.randn(s[-1], generator=gen)
        inputs[k] = v.requires_grad_(True)
    masks = masks or {}
    mask_kw = {k: (v.bool() if kind == "bool" else v) for k, (kind, v) in masks.items()}
    order = {"single": ["x"], "tuple3": ["stored", "state", "projection"]}[form]
    args = inputs["x"] if form == "single" else tuple(inputs[k] for k in order)

    module.invalidate_cache()
    rec = Recorder(module)
    with rec:
        y = module(args, **mask_kw)
    assert torch.isfinite(y).all(), name
    energies = module._energy_tracker.history if module._energy_tracker is not None else None
    association = module.get_association_matrix(args, **mask_kw)
    projected = module.get_projected_pattern_matrix(args, **mask_kw)
    cot = torch.randn(y.shape, generator=gen)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad((y * cot).sum(), list(inputs.values()) + list(params.values()),
                                allow_unused=True)

    cfg = module._diff_cfg
    graph_mode = cfg.attention_mode == "graph"
    for x in rec.graph_inputs:
        check_knn(x, cfg.k_neighbors, graph_mode)
    steps_run = None
    if rec.key_graphs:
        steps_run = rec.attention_calls
    if energies:
        for a, b in zip(energies, energies[1:]):
            assert abs(abs(b - a) / cfg.energy_stop_tol - 1) > 0.03, (name, "energy stop too close")
    if rec.eta_eff is not None:
        rel = abs(rec.eta_eff - cfg.eta) / (cfg.eta + 1e-9)
        assert abs(rel / 0.05 - 1) > 0.2, (name, "adaptive eta too close to the 5% band")

    tensors = case_tensors(module, inputs, masks)
    tensors["output.y"] = to_np(y)
    tensors["output.association"] = to_np(association)
    tensors["output.projected"] = to_np(projected)
    state, stored = rec.core
    tensors["output.core_state"] = to_np(state.transpose(0, 1))
    tensors["output.core_stored"] = to_np(stored.transpose(0, 1))
    # With diffusion_steps = 0 difflayers still builds the graphs but never uses them; they are
    # not part of the result (hopfield-rs builds none), so they are not stored.
    if rec.key_graphs and steps_run:
        w, deg, adj, _l, _op = rec.key_graphs[0]
        tensors["output.graph_W"] = to_np(w.to_dense())
        tensors["output.graph_deg"] = to_np(deg)
        if graph_mode:
            tensors["output.graph_adj_indices"] = to_np(adj.to(torch.int64))
    if rec.query_graphs and steps_run:
        w, deg, _adj, _l, _op = rec.query_graphs[0]
        tensors["output.query_graph_W"] = to_np(w.to_dense())
        tensors["output.query_graph_deg"] = to_np(deg)
    if energies:
        tensors["output.energies"] = np.array(energies, dtype=np.float64)
    tensors["grad_seed.cotangent"] = to_np(cot)
    add_grads(tensors, list(inputs.items()) + list(params.items()), grads, inputs)
    check_finite(tensors, name, inputs_may_be_infinite=True)

    forward = {
        "input_form": form,
        "inputs": list(order),
        "masks": {k: kind for k, (kind, _) in masks.items()},
        "batch_first": batch_first,
        "training": False,
        "grad": True,
        "grad_inputs": list(order),
        "outputs": output_names(tensors),
    }
    if steps_run is not None:
        forward["dynamics_steps_run"] = steps_run
    if rec.eta_eff is not None:
        forward["eta_effective"] = rec.eta_eff if abs(rec.eta_eff - cfg.eta) / (cfg.eta + 1e-9) > 0.05 \
            else cfg.eta
    meta = case_meta("dahn_edges", name, seed, REFERENCE, kwargs, forward, description,
                     module="difflayers.DiffusedHopfield", frozen_params="[]")
    assoc_kinds = {kind for k, (kind, _) in masks.items() if "padding" not in k}
    if assoc_kinds:
        meta["mask_kind"] = assoc_kinds.pop()
    save_case(out_dir, name, tensors, meta)
    return steps_run, energies, rec.eta_eff


def cases():
    """(name, kwargs, input form, shapes, description, extra) for every edge case."""
    D, S, L = 8, 9, 5
    t3 = lambda n, s, l: {"stored": (n, s, D), "state": (n, l, D), "projection": (n, s, D)}  # noqa: E731
    base = {"input_size": D, "num_heads": 2}
    c = []

    def add(name, kwargs, form, shapes, description, **extra):
        c.append((name, {**base, **kwargs}, form, shapes, description, extra))

    # Graph degree at its edges.
    add("dh_k1", {"k_neighbors": 1}, "tuple3", t3(1, S, L), "k_neighbors=1: one neighbour per node before symmetrisation (factored)")
    add("dh_k_eq_s_minus_1", {"k_neighbors": S - 1, "diffusion_mode": "simple", "eta": 0.3}, "tuple3",
        t3(1, S, L), "k_neighbors = S-1 = 8: every positive similarity is an edge, simple diffusion")
    add("dh_k0", {"k_neighbors": 0}, "tuple3", t3(1, S, L),
        "k_neighbors=0: an empty graph, the diffusion is the identity and only the loop attention acts")
    add("dh_k0_spectral_query", {"k_neighbors": 0, "diffusion_mode": "spectral", "diffuse_query": True},
        "tuple3", t3(1, S, L), "k_neighbors=0 with spectral diffusion of keys and queries (isolated nodes, L = 0)")
    # Loop rounds.
    add("dh_steps0", {"diffusion_steps": 0}, "tuple3", t3(1, S, L),
        "diffusion_steps=0: no round runs, the core sees the normalised patterns (difflayers' unused graph is not stored)")
    add("dh_steps1_iterative", {"diffusion_steps": 1, "diffusion_mode": "iterative", "eta": 0.4}, "tuple3",
        t3(1, S, L), "diffusion_steps=1: one diffuse-attend round (iterative)")
    # Sequence lengths and batch.
    add("dh_s1", {}, "tuple3", t3(1, 1, L), "one stored pattern (S=1): a one-node graph, the loop readout is the projection")
    add("dh_s1_l1_diffuse_query", {"diffuse_query": True, "diffusion_mode": "simple"}, "tuple3", t3(1, 1, 1),
        "S=1 and L=1 with diffuse_query: two one-node graphs")
    add("dh_l1_diffuse_query", {"diffuse_query": True, "diffusion_mode": "spectral"}, "tuple3", t3(1, S, 1),
        "one state pattern (L=1) diffused over its one-node graph, S=9")
    add("dh_batch3_shared_stored", {"diffusion_mode": "spectral", "eta": 0.5}, "tuple3", t3(3, S, L),
        "batch of 3 with the same stored patterns, different states: every graph is the batch mean's",
        shared=("stored",))
    add("dh_batch2_batch_first_false_query", {"batch_first": False, "diffuse_query": True}, "tuple3",
        {"stored": (S, 2, D), "state": (L, 2, D), "projection": (S, 2, D)},
        "sequence-first batch of 2, keys and queries diffused (same stored and state patterns per sample)",
        shared=("stored", "state"))
    # Masks with the diffusion on.
    add("dh_empty_padding_mask", {}, "tuple3", t3(2, S, L),
        "a stored_pattern_padding_mask that masks nothing, with diffusion (batch of 2, shared stored patterns)",
        shared=("stored",), masks={"stored_pattern_padding_mask": ("bool", torch.zeros(2, S, dtype=torch.uint8))})
    add("dh_float_assoc_mask", {"diffusion_mode": "simple"}, "tuple3", t3(1, S, L),
        "a float (L, S) association mask with -inf entries acts in the core only",
        masks={"association_mask": ("float", torch.where(torch.arange(L * S).view(L, S) % 4 == 1,
                                                         float("-inf"), 0.1 * (torch.arange(L * S).view(L, S) % 3)))})
    add("dh_zero_association", {"add_zero_association": True}, "tuple3", t3(1, S, L),
        "add_zero_association with diffusion: the zero pattern joins in the core only")
    # Scaling (the loop's beta0).
    add("dh_scaling_0", {"scaling": 0.0}, "tuple3", t3(1, S, L),
        "scaling=0.0: uniform loop attention and core association")
    add("dh_scaling_negative", {"scaling": -1.5, "diffusion_mode": "simple"}, "tuple3", t3(1, S, L),
        "scaling=-1.5 in the loop attention and the core")
    # Energy tracker, adaptive eta, cache, logit eta.
    add("dh_energy_tol_steps1", {"energy_stop_tol": 0.5, "diffusion_steps": 1}, "tuple3", t3(1, S, L),
        "energy_stop_tol with one round: one energy, no stop decision")
    add("dh_adaptive_temperature0", {"adaptive_eta": True, "adaptive_temperature": 0.0}, "tuple3", t3(1, S, L),
        "adaptive_temperature=0: sigmoid(0) halves eta, the operators are rebuilt with eta/2")
    add("dh_cache_off", {"cache_graph": False, "diffusion_mode": "iterative"}, "tuple3", t3(1, S, L),
        "cache_graph=False rebuilds the graph on every call: same result")
    add("dh_logit_eta_unused", {"logit_eta": 0.7}, "tuple3", t3(1, S, L),
        "logit_eta without use_logit_diffusion changes nothing")
    # Graph attention at its edges (L = S, neighbours with positive weights).
    add("dh_graph_attention_k1", {"attention_mode": "graph", "k_neighbors": 1}, "single", {"x": (1, 7, D)},
        "graph attention with k_neighbors=1: each loop query reads one neighbour", offset=2.0)
    add("dh_graph_attention_k_ge_n", {"attention_mode": "graph", "k_neighbors": 20}, "single",
        {"x": (1, 6, D)}, "graph attention with k_neighbors=20 >= S=6: every other node is a neighbour", offset=2.0)
    # eta at its edges.
    add("dh_spectral_eta_large", {"diffusion_mode": "spectral", "eta": 10.0}, "tuple3", t3(1, S, L),
        "spectral diffusion is stable for any eta: eta=10 (heat kernel close to the projection on the kernel of L)")
    add("dh_simple_eta_1", {"diffusion_mode": "simple", "eta": 1.0}, "tuple3", t3(1, S, L),
        "simple diffusion with eta=1 on the normalised Laplacian: the operator is D^-1/2 W D^-1/2")
    add("dh_eta0_diffuse_query", {"eta": 0.0, "diffuse_query": True}, "tuple3", t3(2, S, L),
        "eta=0 with keys and queries diffused: no graph, plain Hopfield")
    add("dh_unnormalized_iterative", {"diffusion_mode": "iterative", "use_normalized_laplacian": False,
                                      "eta": 0.05}, "tuple3", t3(1, S, L),
        "iterative diffusion on the unnormalised Laplacian")
    add("dh_no_input_norm", {"normalize_stored_pattern": False, "normalize_stored_pattern_affine": False,
                             "normalize_state_pattern": False, "normalize_state_pattern_affine": False,
                             "normalize_pattern_projection": False,
                             "normalize_pattern_projection_affine": False}, "tuple3", t3(1, S, L),
        "no input LayerNorms: the graph is built on the raw stored patterns")
    add("dh_heads1_update_steps", {"num_heads": 1, "update_steps_max": 2, "update_steps_eps": 1e-12,
                                   "diffuse_query": True}, "tuple3", t3(1, S, L),
        "one head, two core update steps after the dynamics, queries diffused")
    # Appended later (earlier cases keep their seeds): Hopfield arguments DiffusedHopfield forwards.
    nf = {"normalize_stored_pattern": False, "normalize_stored_pattern_affine": False}
    add("dh_static_stored", {"num_heads": 1, "stored_pattern_as_static": True, **nf}, "tuple3", t3(1, S, L),
        "stored_pattern_as_static (one head): the graph and the loop see the raw stored patterns")
    add("dh_disable_out_projection_heads4_hidden1", {"num_heads": 4, "hidden_size": 1,
                                                    "disable_out_projection": True}, "tuple3", t3(1, S, L),
        "four heads of hidden size 1 without output projection, after the diffusion")
    add("dh_activation_dropout_eval", {"association_activation": "tanh", "dropout": 0.5,
                                       "diffusion_mode": "spectral"}, "tuple3", t3(1, S, L),
        "association_activation='tanh' and dropout=0.5 in eval mode, spectral diffusion")
    add("dh_pattern_size_output_size", {"pattern_size": 3, "output_size": 1, "hidden_size": 5}, "tuple3",
        t3(1, S, L), "pattern_size=3, hidden_size=5, output_size=1: the loop works in input space, the core projects")
    add("dh_no_input_bias_connected", {"input_bias": False, "pattern_projection_as_connected": True}, "single",
        {"x": (1, S, D)}, "no input bias and a connected pattern projection, one tensor, factored diffusion")
    return c


def export_function(out_dir, name, function, kwargs, inputs, call, description, seed, grad_inputs=(),
                    forward_extra=None):
    """One case of a difflayers function or class (the `function` cases of goldens/dahn/).

    inputs: {name: tensor} (float tensors become leaves; integer ones are stored as I64);
    call(inputs) -> (y, {other output: tensor}).
    """
    gen = torch.Generator().manual_seed(seed)
    ins = {k: (v.clone().requires_grad_(k in grad_inputs) if v.is_floating_point() else v)
           for k, v in inputs.items()}
    y, others = call(ins)
    tensors = case_tensors(inputs=ins)
    tensors["output.y"] = to_np(y)
    for k, v in others.items():
        tensors[f"output.{k}"] = to_np(v.to_dense() if v.is_sparse else v)
    if grad_inputs:
        cot = torch.randn(y.shape, generator=gen)
        tensors["grad_seed.cotangent"] = to_np(cot)
        grads = torch.autograd.grad((y * cot).sum(), [ins[k] for k in grad_inputs], allow_unused=True)
        add_grads(tensors, [(k, ins[k]) for k in grad_inputs], grads, grad_inputs)
    check_finite(tensors, name)
    forward = {"inputs": list(inputs), "grad": bool(grad_inputs), "grad_inputs": list(grad_inputs),
               **(forward_extra or {})}
    forward["outputs"] = output_names(tensors)
    meta = case_meta("dahn_edges", name, seed, REFERENCE, kwargs, forward, description,
                     function="difflayers." + function)
    save_case(out_dir, name, tensors, meta)
    return tuple(y.shape)


def function_cases():
    """(name, function, kwargs, inputs builder(gen), call, description, extra) for the operators, graph
    builders, attention, dynamics and tracker at their edges."""
    from difflayers import diffusion as dd
    from difflayers.graph.builder import GraphBuilder
    from difflayers.graph.laplacian import compute_normalized_laplacian
    c = []

    def add(name, function, kwargs, make, call, description, **extra):
        c.append((name, function, kwargs, make, call, description, extra))

    def positive(gen, n, d):
        """Patterns sharing a direction: every similarity positive, no ties."""
        return torch.randn(n, d, generator=gen) + 1.5 * torch.randn(d, generator=gen)

    def laplacian(gen, n, normalized=True):
        x = positive(gen, n, 5)
        w, _deg, _adj = GraphBuilder(k=3).build(x)
        return (compute_normalized_laplacian(w) if normalized else torch.diag(w.sum(1)) - w), w, w.sum(1)

    def op_case(cls, kwargs, init):
        def make(gen):
            l, w, deg = laplacian(gen, 9, normalized=cls != "FactoredDiffusion")
            x = torch.randn(9, 3, generator=gen)
            return {"X": x, "L": l} if init == "precompute" else {"X": x, "W": w, "deg": deg}

        def call(ins):
            op = getattr(dd, cls)(**kwargs)
            if init == "precompute":
                op.precompute(ins["L"].detach())
            else:
                op.precompute_from_graph(ins["W"].detach(), ins["deg"].detach())
            return op(ins["X"]), {}
        graph = {"L": "L"} if init == "precompute" else {"W": "W", "deg": "deg"}
        return make, call, {"init": init, "graph_inputs": graph}

    for name, cls, kw, init, desc in [
        ("simple_eta0", "SimpleDiffusion", {"eta": 0.0}, "precompute", "SimpleDiffusion with eta=0 returns X"),
        ("simple_eta1", "SimpleDiffusion", {"eta": 1.0}, "precompute",
         "SimpleDiffusion with eta=1 on L_sym: X' = D^-1/2 W D^-1/2 X"),
        ("iterative_steps0", "IterativeDiffusion", {"eta": 0.3, "steps": 0}, "precompute",
         "IterativeDiffusion with steps=0 returns X"),
        ("iterative_tol0", "IterativeDiffusion", {"eta": 0.3, "steps": 4, "early_stop_tol": 0.0}, "precompute",
         "IterativeDiffusion with early_stop_tol=0: the guard never stops the 4 steps"),
        ("spectral_eta0", "SpectralDiffusion", {"eta": 0.0}, "precompute", "SpectralDiffusion with eta=0 returns X"),
        ("spectral_eta50", "SpectralDiffusion", {"eta": 50.0}, "precompute",
         "SpectralDiffusion with eta=50: the projection on the kernel of L_sym"),
        ("factored_steps0", "FactoredDiffusion", {"eta": 0.1, "steps": 0}, "precompute_from_graph",
         "FactoredDiffusion with steps=0 returns X"),
        ("factored_eta0", "FactoredDiffusion", {"eta": 0.0, "steps": 2}, "precompute_from_graph",
         "FactoredDiffusion with eta=0 returns X"),
    ]:
        make, call, fwd = op_case(cls, kw, init)
        add(name, "diffusion." + cls, kw, make, call, desc, grad_inputs=("X",), forward_extra=fwd)

    def builder(k, n, d=4):
        def make(gen):
            return {"X": positive(gen, n, d)}

        def call(ins):
            w, deg, adj = GraphBuilder(k=k, use_sparse=False).build(ins["X"])
            return w, {"deg": deg, "adj_indices": adj.to(torch.int64)}
        return make, call

    for name, k, n, desc in [
        ("graph_builder_k0", 0, 6, "GraphBuilder(k=0): no edges, W = 0, deg = 0, an (N, 0) neighbour table"),
        ("graph_builder_k1", 1, 7, "GraphBuilder(k=1): each node's nearest neighbour, symmetrised"),
        ("graph_builder_n1", 5, 1, "GraphBuilder on one pattern: a one-node graph with no edge, (1, 0) table"),
        ("graph_builder_n2_k_ge_n", 5, 2, "GraphBuilder on two patterns with k=5: one edge"),
    ]:
        make, call = builder(k, n)
        add(name, "graph.builder.GraphBuilder.build", {"k": k, "use_sparse": False}, make, call, desc)

    def zero_nlap(gen):
        return {"A": torch.zeros(5, 5)}
    add("nlap_all_isolated", "graph.laplacian.compute_normalized_laplacian", {}, zero_nlap,
        lambda ins: (compute_normalized_laplacian(ins["A"]), {}),
        "normalised Laplacian of the empty graph: every node isolated, L = 0 (forward only)")

    def attention(beta, mode, k=None):
        def make(gen):
            q, kk, v = (torch.randn(7, 4, generator=gen) for _ in range(3))
            ins = {"Q": q, "K": kk, "V": v}
            if mode == "graph":
                ins["adj_indices"] = torch.stack([torch.randperm(7, generator=gen)[:k] for _ in range(7)])
            return ins

        def call(ins):
            return AttentionOperator(beta=beta, mode=mode)(ins["Q"], ins["K"], ins["V"],
                                                          adj_indices=ins.get("adj_indices")), {}
        return make, call

    for name, beta, mode, k, desc in [
        ("attention_beta0", 0.0, "dense", None, "dense attention with beta=0: the mean of V"),
        ("attention_beta_negative", -1.5, "dense", None, "dense attention with beta=-1.5"),
        ("attention_graph_k1", 2.0, "graph", 1, "graph attention over one neighbour: the readout is that V row"),
    ]:
        make, call = attention(beta, mode, k)
        grads = ("Q", "K", "V")
        add(name, "attention_operator.AttentionOperator", {"beta": beta, "mode": mode}, make, call, desc,
            grad_inputs=grads)

    def dynamics(steps):
        def make(gen):
            _l, w, deg = laplacian(gen, 8, normalized=False)
            q, k, v = (torch.randn(8, 4, generator=gen) for _ in range(3))
            return {"Q": q, "K": k, "V": v, "W": w, "deg": deg}

        def call(ins):
            op = dd.FactoredDiffusion(eta=0.1, steps=1).precompute_from_graph(ins["W"].detach(), ins["deg"].detach())
            tracker = de.EnergyTracker(beta=2.0, eta=0.1, tol=0.0)
            engine = de.DynamicsEngine(op, AttentionOperator(beta=2.0, mode="dense"), steps=steps,
                                       energy_tracker=tracker)
            q, k = engine.run_dynamics(ins["Q"], ins["K"], ins["V"], W=ins["W"].detach(), deg=ins["deg"].detach())
            e = torch.tensor(tracker.history, dtype=torch.float64)
            return q, {"K": k, "energies": e}
        kw = {"diffusion_op": {"class": "FactoredDiffusion", "args": {"eta": 0.1, "steps": 1},
                               "init": "precompute_from_graph", "graph": {"W": "W", "deg": "deg"}},
              "query_diffusion_op": None, "attention_op": {"beta": 2.0, "mode": "dense"}, "steps": steps,
              "energy_tracker": {"beta": 2.0, "eta": 0.1, "tol": 0.0},
              "run_dynamics": {"adj_indices": None, "L": None, "W": "W", "deg": "deg", "diffuse_query": True,
                               "diffuse_key": True}}
        return make, call, kw

    for name, steps, desc in [
        ("dynamics_steps0", 0, "run_dynamics with steps=0: Q and K unchanged, no energy"),
        ("dynamics_steps1", 1, "run_dynamics with steps=1: one diffuse-attend round, one energy"),
    ]:
        make, call, kw = dynamics(steps)
        add(name, "dynamics_engine.DynamicsEngine.run_dynamics", kw, make, call, desc,
            grad_inputs=("Q", "K", "V"),
            forward_extra={"graph_tensors": ["W", "deg"], "dynamics_steps_run": steps})

    def make(gen):
        return {"logits": torch.randn(1, 4, 6, generator=gen)}

    def call(ins):
        # compute_adaptive_eta uses no engine state: an engine without an operator is enough.
        engine = de.DynamicsEngine.__new__(de.DynamicsEngine)
        return torch.tensor(engine.compute_adaptive_eta(ins["logits"], 0.4, 0.0, 1.0), dtype=torch.float64), {}
    add("adaptive_eta_temperature0", "dynamics_engine.DynamicsEngine.compute_adaptive_eta",
        {"base_eta": 0.4, "temperature": 0.0, "threshold": 1.0}, make, call,
        "compute_adaptive_eta with temperature=0: sigmoid(0) = 1/2, eta_eff = base_eta / 2")

    def cache(k):
        def make(gen):
            return {"patterns": positive(gen, 6, 5), "X": torch.randn(6, 3, generator=gen)}

        def call(ins):
            w, deg, adj, l, op = de.GraphCache(de.DiffusionConfig(eta=0.3, diffusion_mode="simple",
                                                                  k_neighbors=k)).get(ins["patterns"].detach())
            return op(ins["X"]), {"W": w, "deg": deg, "adj_indices": adj.to(torch.int64), "L": l}
        return make, call

    make, call = cache(0)
    add("graph_cache_k0", "dynamics_engine.GraphCache.get", {"eta": 0.3, "diffusion_mode": "simple", "k_neighbors": 0},
        make, call, "GraphCache with k_neighbors=0: an empty graph, L = 0, the operator is the identity",
        grad_inputs=("X",))
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    all_cases = cases()
    for i, (name, kwargs, form, shapes, description, extra) in enumerate(all_cases):
        if args.only and name not in args.only:
            continue
        steps, energies, eta = export(args.out, name, kwargs, form, shapes, description, seed=9500 + i, **extra)
        print(name, f"rounds {steps}", "" if energies is None else f"energies {energies}",
              "" if eta is None else f"eta_eff {eta}")
    funcs = function_cases()
    for i, (name, function, kwargs, make, call, description, extra) in enumerate(funcs):
        if args.only and name not in args.only:
            continue
        seed = 9700 + i
        inputs = make(torch.Generator().manual_seed(seed))
        print(name, export_function(args.out, name, function, kwargs, inputs, call, description, seed, **extra))
    print(f"{len(all_cases) + len(funcs)} cases in {os.path.normpath(args.out)} (difflayers {difflayers.__file__})")


if __name__ == "__main__":
    main()
