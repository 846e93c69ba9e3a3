"""Exports reference cases for the edge values of hflayers' constructor arguments (issue 9,
"Every configuration the originals accept") into crates/hopfield-nn/tests/data/audit/hflayers_edges/.

difflayers 0.1.1 (PyPI) ships hflayers' `Hopfield`, `HopfieldPooling` and `HopfieldLayer` unchanged.
Every case is written in the format of `goldens/hflayers/` (see goldens/README.md): float64, eval mode,
the module's kwargs, its full state_dict (random draws, so every parameter matters), inputs, output,
association, projected patterns and the gradients of sum(y * cotangent). Only configurations that hflayers
accepts and computes sensibly are exported; the ones it crashes on or computes garbage for are listed
in docs/design/hflayers-quirks.md and tested in Rust instead.

A `kwargs` list for `scaling`, `update_steps_max` or `update_steps_eps` means the tensor
`torch.tensor(list)` (float64 for scaling and eps, int32 for update_steps_max), hflayers' per-head form.

    benches/.venv/bin/python benches/export_hflayers_edges.py [--out DIR]

The tests never run this script; it is here so that the cases can be regenerated and audited. A rerun
writes the same tensors and metadata values, but the Python safetensors writer orders the metadata in the
header arbitrarily, so the bytes differ: keep the committed files unless a case changed. New cases go at
the end of `cases()` (each case's seed is 9000 + its index).
"""

import argparse
import json
import os

import numpy as np
import torch

from case_export import add_grads, case_meta, case_tensors, check_finite, save_case, to_np

import difflayers
import difflayers.functional as hf_functional
from difflayers import Hopfield, HopfieldLayer, HopfieldPooling

REFERENCE = "hflayers f56f929c95b77a070ae675ea4f56b6d54d36e730 (as shipped in difflayers 0.1.1)"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "hopfield-nn", "tests", "data", "audit", "hflayers_edges",
)

torch.set_default_dtype(torch.float64)


def module_kwargs(kwargs):
    """The constructor arguments: lists become hflayers' per-head tensors."""
    out = dict(kwargs)
    for key, dtype in (("scaling", torch.float64), ("update_steps_max", torch.int32),
                       ("update_steps_eps", torch.float64)):
        if isinstance(out.get(key), list):
            out[key] = torch.tensor(out[key], dtype=dtype)
    return out


def draw_params(module, gen):
    """Random parameter values (the goldens README's scheme), in place."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            if leaf in ("pooling_weights", "lookup_weights", "target_weights"):
                v = torch.randn(p.shape, generator=gen)
            elif p.dim() == 2 and leaf.endswith("weight"):
                v = torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1])
            elif leaf in ("weight", "p_norm_weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.2 * torch.randn(p.shape, generator=gen)
            p.copy_(v)


class StepRecorder:
    """Counts hflayers' update steps per head and records every association, by watching the
    `masked_scatter` calls of the update loop (two per update step, q then xi, same mask) and the
    first softmax."""

    def __init__(self):
        self.masks, self.xis, self.first = [], [], None

    def __enter__(self):
        self._scatter, self._softmax = torch.masked_scatter, torch.nn.functional.softmax
        rec = self

        def scatter(input, mask, source):
            out = rec._scatter(input, mask, source)
            rec.masks.append(mask.detach().flatten().clone())
            rec.xis.append(out.detach().clone())
            return out

        def softmax(x, dim=None, *a, **k):
            out = rec._softmax(x, dim=dim, *a, **k)
            if rec.first is None:
                rec.first = out.detach().clone()
            return out

        torch.masked_scatter = scatter
        hf_functional.torch.masked_scatter = scatter
        torch.nn.functional.softmax = softmax
        return self

    def __exit__(self, *exc):
        torch.masked_scatter = self._scatter
        torch.nn.functional.softmax = self._softmax

    def steps_per_head(self, heads):
        masks = self.masks[0::2]
        return [int(sum(bool(m[h]) for m in masks)) for h in range(heads)]

    def associations(self):
        return [self.first] + self.xis[1::2]


def check_stopping(rec, n, heads, eps):
    """Every convergence comparison is >= 3% away from its threshold, and each sample alone would
    decide as the batch maximum does (Q11), so either convention gives the same steps."""
    xis = rec.associations()
    eps = eps if isinstance(eps, list) else [eps] * heads
    for a, b in zip(xis, xis[1:]):
        a = a.view(n, heads, *a.shape[1:])
        b = b.view(n, heads, *b.shape[1:])
        change = (a - b).norm(p=2, dim=(2, 3))  # (n, heads)
        for h in range(heads):
            e = eps[h]
            batch = bool(change[:, h].max() > e)
            for c in change[:, h].tolist():
                if c > 0:
                    assert abs(c / e - 1) > 0.03, f"change {c} too close to eps {e}"
                assert (c > e) == batch, "a sample would stop at another step alone (Q11)"


def export(out_dir, name, module_name, kwargs, form, shapes, description, seed,
           masks=None, frozen=(), steps=False):
    """Builds, runs and writes one case.

    shapes: {input name: shape}; masks: {mask name: (kind, tensor)}.
    """
    gen = torch.Generator().manual_seed(seed)
    cls = {"Hopfield": Hopfield, "HopfieldPooling": HopfieldPooling, "HopfieldLayer": HopfieldLayer}[module_name]
    module = cls(**module_kwargs(kwargs)).double().eval()
    draw_params(module, gen)
    for p in frozen:
        assert not dict(module.named_parameters())[p].requires_grad, p
    inputs = {k: torch.randn(s, generator=gen).requires_grad_(True) for k, s in shapes.items()}
    masks = masks or {}
    mask_kw = {k: (v.bool() if kind == "bool" else v) for k, (kind, v) in masks.items()}
    order = {"single": ["x"], "tuple3": ["stored", "state", "projection"], "tuple2": ["stored", "projection"]}[form]
    args = inputs["x"] if form == "single" else tuple(inputs[k] for k in order)

    rec = StepRecorder()
    with rec:
        y = module(args, **mask_kw)
    assert torch.isfinite(y).all(), name
    association = module.get_association_matrix(args, **mask_kw)
    projected = module.get_projected_pattern_matrix(args, **mask_kw)
    cot = torch.randn(y.shape, generator=gen)
    params = dict(module.named_parameters())
    trainable = {k: p for k, p in params.items() if p.requires_grad}
    grads = torch.autograd.grad((y * cot).sum(), list(inputs.values()) + list(trainable.values()),
                                allow_unused=True)
    tensors = case_tensors(module, inputs, masks)
    tensors["output.y"] = to_np(y)
    tensors["output.association"] = to_np(association)
    tensors["output.projected"] = to_np(projected)
    tensors["grad_seed.cotangent"] = to_np(cot)
    add_grads(tensors, list(inputs.items()) + list(trainable.items()), grads, inputs)
    check_finite(tensors, name, inputs_may_be_infinite=True)

    batch_first = kwargs.get("batch_first", True)
    forward = {
        "input_form": form,
        "inputs": list(order),
        "masks": {k: kind for k, (kind, _) in masks.items()},
        "batch_first": batch_first,
        "training": False,
        "grad": True,
        "outputs": ["y", "association", "projected"],
    }
    if steps:
        heads = kwargs.get("num_heads", 1)
        n = association.shape[0]
        check_stopping(rec, n, heads, kwargs.get("update_steps_eps", 1e-4))
        forward["update_steps_run"] = {"": rec.steps_per_head(heads)}
    meta = case_meta("hflayers_edges", name, seed, REFERENCE, kwargs, forward, description,
                     module=module_name, frozen_params=json.dumps(sorted(frozen)))
    assoc_kinds = {kind for k, (kind, _) in masks.items() if "padding" not in k}
    if assoc_kinds:
        assert len(assoc_kinds) == 1
        meta["mask_kind"] = assoc_kinds.pop()
    save_case(out_dir, name, tensors, meta)
    return forward.get("update_steps_run")


def bool_mask(rows):
    return torch.tensor(rows, dtype=torch.uint8)


def float_mask_3d(rows, l, s):
    """An additive (rows, L, S) mask: some -inf entries, some finite ones, and row (3, 1) all -inf."""
    m = torch.where(torch.arange(rows * l * s).view(rows, l, s) % 7 == 0, float("-inf"), 0.0)
    m = m + 0.3 * (torch.arange(rows * l * s).view(rows, l, s) % 3 == 1)
    m[3, 1, :] = float("-inf")
    return m


def cases():
    """(name, module, kwargs, input form, shapes, description, extra) for every edge case."""
    N, L, S = 2, 3, 4
    nf = {"normalize_stored_pattern": False, "normalize_stored_pattern_affine": False}
    c = []

    def add(name, module, kwargs, form, shapes, description, **extra):
        c.append((name, module, kwargs, form, shapes, description, extra))

    # Sizes at their edges.
    add("hopfield_hidden1", "Hopfield", {"input_size": 4, "hidden_size": 1}, "single", {"x": (N, 5, 4)},
        "hidden_size=1 (one association feature per head), packed in_proj")
    add("hopfield_hidden1_heads3_space_norm", "Hopfield",
        {"input_size": 6, "num_heads": 3, "hidden_size": 1, "normalize_hopfield_space": True,
         "normalize_hopfield_space_affine": True}, "single", {"x": (N, 5, 6)},
        "hidden_size=1 with the Hopfield-space LayerNorm: every normalised q, k is its bias, uniform association")
    add("hopfield_heads3_hidden_not_dividing", "Hopfield", {"input_size": 10, "num_heads": 3, "hidden_size": 4},
        "single", {"x": (N, L, 10)}, "num_heads=3 does not divide input_size=10: fine once hidden_size=4 is given")
    add("hopfield_pattern5_hidden3_output1", "Hopfield",
        {"input_size": 6, "hidden_size": 3, "pattern_size": 5, "output_size": 1}, "single", {"x": (N, L, 6)},
        "pattern_size=5 != hidden_size=3 with one head, output_size=1")
    add("hopfield_pattern1_heads2", "Hopfield", {"input_size": 8, "num_heads": 2, "pattern_size": 1},
        "single", {"x": (N, L, 8)}, "pattern_size=1 with two heads (separate q/k/v weights)")
    add("hopfield_pattern0", "Hopfield", {"input_size": 6, "num_heads": 2, "pattern_size": 0}, "single",
        {"x": (N, L, 6)}, "pattern_size=0: empty values, the output is out_proj.bias (the association still exists)")
    add("hopfield_heads8_hidden1", "Hopfield", {"input_size": 8, "num_heads": 8}, "single", {"x": (N, L, 8)},
        "num_heads = input_size = 8: hidden_size 1 per head")
    # Scaling.
    add("hopfield_scaling_0", "Hopfield", {"input_size": 6, "num_heads": 2, "scaling": 0.0}, "single",
        {"x": (N, L, 6)}, "scaling=0.0: uniform association over the stored patterns")
    add("hopfield_scaling_negative", "Hopfield", {"input_size": 6, "num_heads": 2, "scaling": -2.0}, "single",
        {"x": (N, L, 6)}, "scaling=-2.0: negative beta prefers the least similar patterns")
    add("hopfield_scaling_tensor_1head", "Hopfield", {"input_size": 6, "scaling": [0.7]}, "single",
        {"x": (N, L, 6)}, "scaling given as a one-entry tensor with one head (Q2 does not apply)")
    # Update steps.
    add("hopfield_update_steps_0_explicit", "Hopfield",
        {"input_size": 6, "num_heads": 2, "update_steps_max": 0, "update_steps_eps": 1e-12}, "single",
        {"x": (N, L, 6)}, "update_steps_max=0 given explicitly with a tiny eps: one association", steps=True)
    add("hopfield_update_steps_1", "Hopfield",
        {"input_size": 6, "num_heads": 2, "update_steps_max": 1, "update_steps_eps": 1e-12}, "single",
        {"x": (N, L, 6)}, "update_steps_max=1: exactly one update step", steps=True)
    add("hopfield_update_steps_large_converges", "Hopfield",
        {"input_size": 6, "num_heads": 2, "scaling": 2.0, "update_steps_max": 200, "update_steps_eps": 1e-3},
        "single", {"x": (1, 5, 6)}, "update_steps_max=200 is not reached: convergence (eps 1e-3) stops first",
        steps=True)
    add("hopfield_update_steps_negative", "Hopfield",
        {"input_size": 6, "scaling": 2.0, "update_steps_max": -1, "update_steps_eps": 1e-3}, "single",
        {"x": (1, 5, 6)}, "update_steps_max=-1 means until convergence (as None)", steps=True)
    add("hopfield_update_steps_per_head", "Hopfield",
        {"input_size": 6, "num_heads": 2, "scaling": 2.0, "update_steps_max": [0, 3],
         "update_steps_eps": [1e-12, 1e-12]}, "single", {"x": (N, 5, 6)},
        "per-head update_steps_max [0, 3] and update_steps_eps tensors", steps=True)
    add("hopfield_update_steps_per_head_none", "Hopfield",
        {"input_size": 6, "num_heads": 2, "scaling": 2.0, "update_steps_max": [2, -1],
         "update_steps_eps": [1e-12, 1e-3]}, "single", {"x": (1, 5, 6)},
        "per-head update_steps_max [2, -1]: head 1 iterates until convergence with its own eps", steps=True)
    # Sequence lengths.
    add("hopfield_s1_l1_steps", "Hopfield", {"input_size": 6, "update_steps_max": 3, "update_steps_eps": 1e-12},
        "tuple3", {"stored": (N, 1, 6), "state": (N, 1, 6), "projection": (N, 1, 6)},
        "S=1 and L=1: the association is 1, the first update step changes nothing and stops", steps=True)
    add("hopfield_l1", "Hopfield", {"input_size": 6, "num_heads": 2}, "tuple3",
        {"stored": (N, 7, 6), "state": (N, 1, 6), "projection": (N, 7, 6)}, "one state pattern (L=1), S=7")
    add("hopfield_s1_batch_first_false", "Hopfield", {"input_size": 6, "batch_first": False}, "tuple3",
        {"stored": (1, N, 6), "state": (L, N, 6), "projection": (1, N, 6)},
        "one stored pattern (S=1), sequence-first layout")
    # Masks.
    add("hopfield_empty_masks", "Hopfield", {"input_size": 6, "num_heads": 2}, "single", {"x": (N, L, 6)},
        "padding and (L,S) bool association masks that mask nothing",
        masks={"stored_pattern_padding_mask": ("bool", torch.zeros(N, L, dtype=torch.uint8)),
               "association_mask": ("bool", torch.zeros(L, L, dtype=torch.uint8))})
    add("hopfield_zero_assoc_empty_masks", "Hopfield", {"input_size": 6, "add_zero_association": True},
        "single", {"x": (N, L, 6)}, "add_zero_association with padding and float association masks of zeros",
        masks={"stored_pattern_padding_mask": ("bool", torch.zeros(N, L, dtype=torch.uint8)),
               "association_mask": ("float", torch.zeros(L, L))})
    add("hopfield_zero_assoc_fully_padded_sample", "Hopfield",
        {"input_size": 6, "num_heads": 2, "add_zero_association": True}, "tuple3",
        {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "add_zero_association, sample 1 entirely padded: it retrieves only the zero pattern",
        masks={"stored_pattern_padding_mask": ("bool", bool_mask([[0, 1, 0, 0], [1, 1, 1, 1]]))})
    add("hopfield_zero_assoc_masked_row_steps", "Hopfield",
        {"input_size": 6, "add_zero_association": True, "update_steps_max": 2, "update_steps_eps": 1e-12},
        "tuple3", {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "add_zero_association with a fully masked (L,S) bool row and 2 update steps",
        masks={"association_mask": ("bool", bool_mask([[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]]))},
        steps=True)
    add("hopfield_zero_assoc_float_inf_row_3d", "Hopfield",
        {"input_size": 6, "num_heads": 2, "add_zero_association": True}, "tuple3",
        {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "add_zero_association with a (N*H,L,S) float mask whose row is all -inf",
        masks={"association_mask": ("float", float_mask_3d(N * 2, L, S))})
    # Dropout in eval, LayerNorm eps.
    add("hopfield_dropout_1_eval", "Hopfield", {"input_size": 6, "dropout": 1.0}, "single", {"x": (N, L, 6)},
        "dropout=1.0 in eval mode: no dropout")
    add("hopfield_dropout_half_eval", "Hopfield", {"input_size": 6, "num_heads": 2, "dropout": 0.5},
        "single", {"x": (N, L, 6)}, "dropout=0.5 in eval mode: no dropout")
    add("hopfield_norm_eps_0", "Hopfield",
        {"input_size": 6, "num_heads": 2, "hidden_size": 3, "normalize_stored_pattern_eps": 0.0,
         "normalize_state_pattern_eps": 0.0, "normalize_pattern_projection_eps": 0.0,
         "normalize_hopfield_space": True, "normalize_hopfield_space_eps": 0.0}, "single", {"x": (N, L, 6)},
        "every LayerNorm eps = 0.0 (no row is constant)")
    # Static and connected combinations.
    add("hopfield_connected_static_projection", "Hopfield",
        {"input_size": 8, "num_heads": 2, "pattern_projection_as_connected": True,
         "pattern_projection_as_static": True, "disable_out_projection": True}, "tuple3",
        {"stored": (N, S, 8), "state": (N, L, 8), "projection": (N, S, 8)},
        "connected static projection: values are the key projection of the projection input, H=2")
    add("hopfield_connected_static_stored", "Hopfield",
        {"input_size": 6, "pattern_projection_as_connected": True, "stored_pattern_as_static": True},
        "tuple3", {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "connected with a static stored pattern: the projection is not connected (own v_proj)")
    add("hopfield_connected_no_bias", "Hopfield",
        {"input_size": 6, "num_heads": 2, "pattern_projection_as_connected": True, "input_bias": False},
        "single", {"x": (N, L, 6)}, "connected projection without input bias")
    add("hopfield_static_stored_heads2_n1", "Hopfield",
        {"input_size": 8, "num_heads": 2, "stored_pattern_as_static": True, **nf}, "tuple3",
        {"stored": (1, S, 4), "state": (1, L, 8), "projection": (1, S, 8)},
        "static stored pattern with two heads and one sample (Q3 needs several samples)")
    add("hopfield_static_state_projection_h1", "Hopfield",
        {"input_size": 6, "state_pattern_as_static": True, "pattern_projection_as_static": True}, "tuple3",
        {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "static state and static projection, projected key, H=1")
    add("hopfield_activation_sigmoid_relu_out1", "Hopfield",
        {"input_size": 6, "output_size": 1, "association_activation": "sigmoid"}, "single", {"x": (N, L, 6)},
        "association_activation='sigmoid' on a single output feature")
    # HopfieldPooling.
    add("pooling_s1", "HopfieldPooling", {"input_size": 6, "quantity": 2}, "single", {"x": (N, 1, 6)},
        "pooling over one stored pattern (S=1)")
    add("pooling_frozen_steps", "HopfieldPooling",
        {"input_size": 6, "num_heads": 2, "quantity": 2, "trainable": False, "update_steps_max": 1,
         "update_steps_eps": 1e-12}, "single", {"x": (N, S, 6)},
        "trainable=False (pooling_weights frozen) with one update step", frozen=("pooling_weights",))
    add("pooling_static_state", "HopfieldPooling",
        {"input_size": 6, "hidden_size": 4, "state_pattern_as_static": True, "normalize_state_pattern": False,
         "normalize_state_pattern_affine": False}, "single", {"x": (N, S, 6)},
        "state_pattern_as_static: pooling_weights have hidden_size=4 features")
    add("pooling_zero_assoc_padded", "HopfieldPooling",
        {"input_size": 6, "quantity": 3, "add_zero_association": True}, "single", {"x": (N, S, 6)},
        "add_zero_association with one sample entirely padded",
        masks={"stored_pattern_padding_mask": ("bool", bool_mask([[1, 1, 1, 1], [0, 0, 1, 0]]))})
    add("pooling_hidden1_pattern1", "HopfieldPooling",
        {"input_size": 4, "hidden_size": 1, "pattern_size": 1, "output_size": 1}, "tuple2",
        {"stored": (N, S, 4), "projection": (N, S, 4)}, "hidden_size = pattern_size = output_size = 1")
    # HopfieldLayer.
    add("layer_q1", "HopfieldLayer", {"input_size": 6, "quantity": 1}, "single", {"x": (N, L, 6)},
        "quantity=1: one lookup pattern, the association is identically 1")
    add("layer_separated_trainable_proj5", "HopfieldLayer",
        {"input_size": 6, "quantity": 4, "lookup_weights_as_separated": True, "pattern_projection_size": 5},
        "single", {"x": (N, L, 6)}, "separate trainable target_weights of pattern_projection_size=5")
    add("layer_targets_flag_without_separation", "HopfieldLayer",
        {"input_size": 6, "quantity": 3, "lookup_weights_as_separated": False,
         "lookup_targets_as_trainable": False}, "single", {"x": (N, L, 6)},
        "lookup_targets_as_trainable=False without separation does nothing (lookup weights stay trainable)")
    add("layer_frozen_lookup_separated", "HopfieldLayer",
        {"input_size": 6, "quantity": 3, "trainable": False, "lookup_weights_as_separated": True}, "single",
        {"x": (N, L, 6)}, "trainable=False: frozen lookup_weights, trainable target_weights",
        frozen=("lookup_weights",))
    add("layer_batch_first_false", "HopfieldLayer",
        {"input_size": 6, "num_heads": 2, "quantity": 3, "batch_first": False,
         "lookup_weights_as_separated": True}, "single", {"x": (L, N, 6)},
        "batch_first=False: lookup/target weights are (quantity, 1, D), output (L, N, O)")
    add("layer_static_stored", "HopfieldLayer",
        {"input_size": 6, "hidden_size": 4, "quantity": 3, "stored_pattern_as_static": True,
         "pattern_projection_size": 4, **nf}, "single",
        {"x": (N, L, 6)}, "stored_pattern_as_static: lookup_weights have hidden_size=4 features")
    # Appended later (earlier cases keep their seeds).
    add("hopfield_connected_static_stored_projection", "Hopfield",
        {"input_size": 6, "pattern_projection_as_connected": True, "stored_pattern_as_static": True,
         "pattern_projection_as_static": True}, "tuple3",
        {"stored": (N, S, 6), "state": (N, L, 6), "projection": (N, S, 6)},
        "connected with static stored pattern and projection (H=1): the projection is used as it is")
    add("layer_connected_static_targets", "HopfieldLayer",
        {"input_size": 6, "num_heads": 2, "quantity": 3, "lookup_weights_as_separated": True,
         "pattern_projection_as_connected": True, "pattern_projection_as_static": True,
         "disable_out_projection": True}, "single", {"x": (N, L, 6)},
        "connected static target_weights (input_size features) go through the key projection, H=2")
    add("hopfield_zero_assoc_steps_batch_first_false", "Hopfield",
        {"input_size": 6, "num_heads": 2, "batch_first": False, "add_zero_association": True,
         "update_steps_max": 2, "update_steps_eps": 1e-12}, "tuple3",
        {"stored": (S, N, 6), "state": (L, N, 6), "projection": (S, N, 6)},
        "sequence-first layout, add_zero_association, padding and 2 update steps",
        masks={"stored_pattern_padding_mask": ("bool", bool_mask([[0, 0, 1, 0], [1, 1, 1, 0]]))}, steps=True)
    # Pure static retrieval (no input_size, no parameters) at its edges.
    static = {"stored_pattern_as_static": True, "state_pattern_as_static": True,
              "pattern_projection_as_static": True, "normalize_stored_pattern": False,
              "normalize_stored_pattern_affine": False, "normalize_state_pattern": False,
              "normalize_state_pattern_affine": False, "normalize_pattern_projection": False,
              "normalize_pattern_projection_affine": False, "disable_out_projection": True}
    add("hopfield_pure_static_heads2_n1", "Hopfield", {**static, "num_heads": 2, "scaling": 2.0}, "tuple3",
        {"stored": (1, S, 5), "state": (1, L, 5), "projection": (1, S, 3)},
        "pure static retrieval with two heads and one sample: both heads retrieve the same, output H*pd = 6")
    add("hopfield_pure_static_until_convergence", "Hopfield",
        {**static, "scaling": 2.0, "update_steps_max": None, "update_steps_eps": 1e-4}, "tuple3",
        {"stored": (1, 6, 5), "state": (1, L, 5), "projection": (1, 6, 5)},
        "pure static retrieval iterated until convergence (the default beta is 1, here 2), N=1", steps=True)
    add("hopfield_pure_static_zero_assoc_padding", "Hopfield", {**static, "add_zero_association": True},
        "tuple3", {"stored": (N, S, 5), "state": (N, L, 5), "projection": (N, S, 4)},
        "pure static retrieval (beta 1) with add_zero_association and a fully padded sample",
        masks={"stored_pattern_padding_mask": ("bool", bool_mask([[0, 1, 0, 0], [1, 1, 1, 1]]))})
    # Static pooling / lookup weights with several heads and samples: every sample holds the same
    # static tensor, so Q3's mixing of samples changes nothing.
    add("pooling_static_state_heads2", "HopfieldPooling",
        {"input_size": 8, "num_heads": 2, "quantity": 2, "state_pattern_as_static": True,
         "normalize_state_pattern": False, "normalize_state_pattern_affine": False}, "single",
        {"x": (3, S, 8)}, "static pooling weights (hidden_size 4) shared by two heads and three samples")
    add("layer_static_stored_heads2", "HopfieldLayer",
        {"input_size": 8, "num_heads": 2, "quantity": 3, "stored_pattern_as_static": True,
         "pattern_projection_size": 4, **nf}, "single", {"x": (3, L, 8)},
        "static lookup weights (hidden_size 4) shared by two heads and three samples")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    for i, (name, module, kwargs, form, shapes, description, extra) in enumerate(cases()):
        steps = export(args.out, name, module, kwargs, form, shapes, description, seed=9000 + i, **extra)
        print(name, "" if steps is None else f"steps {steps['']}")
    print(f"{len(cases())} cases in {os.path.normpath(args.out)} (difflayers {difflayers.__file__})")


if __name__ == "__main__":
    main()
