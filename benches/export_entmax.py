"""Exports reference cases for the sparse association functions (issue 11: sparsemax, entmax-1.5,
alpha-entmax) into crates/hopfield-nn/tests/data/audit/entmax/, computed by the `entmax` package
(PyPI, Peters, Niculae & Martins) in float64.

Two kinds of case, in the format of `goldens/` (see goldens/README.md):

- functional (`function` metadata `entmax.sparsemax`, `entmax.entmax15`, `entmax.entmax_bisect`):
  logits `input.x` (with `-inf` entries as masks in some), an optional per-row `input.alpha`
  (`(..., 1)`, differentiated) or a fixed `alpha` in the `forward` metadata, `output.y` over the last
  dim, and the gradients of sum(y * cotangent) for x (and alpha);
- modules (`module` Hopfield / HopfieldPooling / HopfieldLayer, reference hflayers): hflayers as
  shipped in difflayers 0.1.1 with the association's `nn.functional.softmax` replaced by the
  `entmax` function for the duration of the forward pass (hflayers' functional core calls it for
  the first association and for every update step). The kwargs carry this crate's `association`
  argument, which hflayers does not take (it is removed before building the PyTorch module).
  Every module case has exact zeros in its association (checked here).

    benches/.venv/bin/pip install entmax   # 1.3
    benches/.venv/bin/python benches/export_entmax.py [--out DIR]

The tests never run this script. Seeds are 11000 + the case's index.
"""

import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

import entmax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_hflayers_edges import REFERENCE as HFLAYERS, draw_params, module_kwargs, to_np  # noqa: E402

from difflayers import Hopfield, HopfieldLayer, HopfieldPooling  # noqa: E402

ENTMAX = f"entmax {entmax.__version__} (PyPI)"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "hopfield-nn", "tests", "data", "audit", "entmax",
)
BISECT_ITERS = 200  # far past f64 precision: the reference is the exact threshold

torch.set_default_dtype(torch.float64)


def association_fn(spec):
    """The entmax function that the `association` kwarg names (over `dim`)."""
    if spec == "sparsemax":
        return lambda x, dim=-1: entmax.sparsemax(x, dim=dim)
    if spec == "entmax15":
        return lambda x, dim=-1: entmax.entmax15(x, dim=dim)
    alpha = spec["entmax"]
    return lambda x, dim=-1: entmax.entmax_bisect(x, alpha=alpha, dim=dim, n_iter=BISECT_ITERS)


@contextlib.contextmanager
def softmax_replaced(fn):
    saved = torch.nn.functional.softmax

    def patched(x, dim=None, *a, **k):
        return fn(x, dim=-1 if dim is None else dim)

    torch.nn.functional.softmax = patched
    try:
        yield
    finally:
        torch.nn.functional.softmax = saved


def save(out_dir, name, tensors, meta):
    for k, t in tensors.items():
        assert np.isfinite(t).all() or k == "input.x", (name, k)
    os.makedirs(out_dir, exist_ok=True)
    save_file(dict(sorted(tensors.items())), os.path.join(out_dir, f"{name}.safetensors"), metadata=meta)


def export_function(out_dir, name, function, x, description, seed, alpha=None, learn_alpha=False):
    """One functional case: y = function(x) over the last dim, gradients of sum(y * cot)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_(True)
    wrt = [x]
    forward = {"dim": -1}
    if function == "entmax.sparsemax":
        y = entmax.sparsemax(x, dim=-1)
    elif function == "entmax.entmax15":
        y = entmax.entmax15(x, dim=-1)
    elif learn_alpha:
        alpha = alpha.clone().requires_grad_(True)
        wrt.append(alpha)
        y = entmax.entmax_bisect(x, alpha=alpha, dim=-1, n_iter=BISECT_ITERS)
    else:
        forward["alpha"] = alpha
        y = entmax.entmax_bisect(x, alpha=alpha, dim=-1, n_iter=BISECT_ITERS)
    cot = torch.randn(y.shape, generator=gen)
    grads = torch.autograd.grad((y * cot).sum(), wrt)
    tensors = {"input.x": to_np(x), "output.y": to_np(y), "grad_seed.cotangent": to_np(cot),
               "grad.input.x": to_np(grads[0])}
    if learn_alpha:
        tensors["input.alpha"] = to_np(alpha)
        tensors["grad.input.alpha"] = to_np(grads[1])
    zeros = int((y == 0).sum()) - int(torch.isinf(x).sum())
    meta = {
        "function": function,
        "forward": json.dumps(forward),
        "description": f"{description} ({zeros} exact zeros besides the masked entries)",
        "tolerance": "1e-9",
        "reference": ENTMAX,
        "torch_version": torch.__version__,
        "case": name,
        "suite": "entmax",
        "seed": str(seed),
    }
    save(out_dir, name, tensors, meta)


def export_module(out_dir, name, module_name, kwargs, shapes, description, seed, masks=None):
    """One module case: hflayers with its association softmax replaced (see the module docs)."""
    gen = torch.Generator().manual_seed(seed)
    cls = {"Hopfield": Hopfield, "HopfieldPooling": HopfieldPooling, "HopfieldLayer": HopfieldLayer}[module_name]
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "association"}
    module = cls(**module_kwargs(torch_kwargs)).double().eval()
    draw_params(module, gen)
    inputs = {k: torch.randn(s, generator=gen).requires_grad_(True) for k, s in shapes.items()}
    masks = masks or {}
    mask_kw = {k: v.bool() for k, v in masks.items()}
    with softmax_replaced(association_fn(kwargs["association"])):
        y = module(inputs["x"], **mask_kw)
        association = module.get_association_matrix(inputs["x"], **mask_kw)
        projected = module.get_projected_pattern_matrix(inputs["x"], **mask_kw)
        cot = torch.randn(y.shape, generator=gen)
        params = dict(module.named_parameters())
        trainable = {k: p for k, p in params.items() if p.requires_grad}
        grads = torch.autograd.grad((y * cot).sum(), list(inputs.values()) + list(trainable.values()),
                                    allow_unused=True)
    zeros = int((association == 0).sum())
    assert zeros > 0, f"{name}: the association has no exact zero"
    tensors = {f"params.{k}": to_np(p) for k, p in module.state_dict().items()}
    for k, v in inputs.items():
        tensors[f"input.{k}"] = to_np(v)
    for k, v in masks.items():
        tensors[f"input.{k}"] = to_np(v.to(torch.uint8))
    tensors["output.y"] = to_np(y)
    tensors["output.association"] = to_np(association)
    tensors["output.projected"] = to_np(projected)
    tensors["grad_seed.cotangent"] = to_np(cot)
    for (k, v), g in zip(list(inputs.items()) + list(trainable.items()), grads):
        prefix = "grad.input." if k in inputs else "grad.params."
        tensors[prefix + k] = to_np(torch.zeros_like(v) if g is None else g)
    forward = {
        "input_form": "single",
        "inputs": ["x"],
        "masks": {k: "bool" for k in masks},
        "batch_first": kwargs.get("batch_first", True),
        "training": False,
        "grad": True,
        "outputs": ["y", "association", "projected"],
    }
    meta = {
        "module": module_name,
        "kwargs": json.dumps(kwargs),
        "forward": json.dumps(forward),
        "description": f"{description} ({zeros} exact zeros in the association)",
        "tolerance": "1e-9",
        "reference": f"{HFLAYERS}, association softmax replaced by {ENTMAX}",
        "torch_version": torch.__version__,
        "frozen_params": "[]",
        "case": name,
        "suite": "entmax",
        "seed": str(seed),
    }
    save(out_dir, name, tensors, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    out = ap.parse_args().out
    ninf = float("-inf")
    idx = iter(range(1000))

    def seed():
        return 11000 + next(idx)

    def randn(*shape, scale=1.0, s=None):
        return scale * torch.randn(shape, generator=torch.Generator().manual_seed(s))

    masked = randn(4, 9, scale=2.0, s=1)
    masked[0, [1, 4]] = ninf
    masked[2, :8] = ninf  # one entry left: p = 1 there
    ties = torch.tensor([[1.0, 1.0, 1.0, -0.5], [0.3, 0.3, -2.0, -2.0], [0.0, 0.0, 0.0, 0.0]])

    fn_cases = [
        ("sparsemax_rows", "entmax.sparsemax", randn(4, 7, scale=2.0, s=2), "sparsemax of 4 rows of 7", {}),
        ("sparsemax_batched", "entmax.sparsemax", randn(2, 3, 5, 11, s=3), "sparsemax over the last dim of (2,3,5,11)", {}),
        ("sparsemax_masked", "entmax.sparsemax", masked, "sparsemax with -inf entries (one row with a single entry left)", {}),
        ("sparsemax_ties", "entmax.sparsemax", ties, "sparsemax with tied logits (uniform rows)", {}),
        ("sparsemax_peaked", "entmax.sparsemax", randn(3, 40, scale=20.0, s=4), "sparsemax of large logits: one or two survivors", {}),
        ("entmax15_rows", "entmax.entmax15", randn(4, 7, scale=2.0, s=5), "entmax-1.5 of 4 rows of 7", {}),
        ("entmax15_batched", "entmax.entmax15", randn(2, 3, 5, 11, scale=3.0, s=6), "entmax-1.5 over the last dim of (2,3,5,11)", {}),
        ("entmax15_masked", "entmax.entmax15", masked, "entmax-1.5 with -inf entries", {}),
        ("entmax15_ties", "entmax.entmax15", ties, "entmax-1.5 with tied logits", {}),
        ("bisect_alpha1.25", "entmax.entmax_bisect", randn(4, 12, scale=4.0, s=7), "alpha-entmax, alpha = 1.25 (bisection)", {"alpha": 1.25}),
        ("bisect_alpha1.75", "entmax.entmax_bisect", randn(4, 12, scale=2.0, s=8), "alpha-entmax, alpha = 1.75 (bisection)", {"alpha": 1.75}),
        ("bisect_alpha1.1_masked", "entmax.entmax_bisect", masked * 4.0, "alpha-entmax, alpha = 1.1 with -inf entries", {"alpha": 1.1}),
        ("bisect_alpha2", "entmax.entmax_bisect", randn(3, 8, scale=2.0, s=9), "alpha-entmax, alpha = 2 by bisection (sparsemax)", {"alpha": 2.0}),
        ("bisect_alpha_per_row", "entmax.entmax_bisect", randn(5, 10, scale=3.0, s=10),
         "alpha-entmax with a learnable alpha per row (1.1 .. 2.0), gradient in alpha",
         {"alpha": torch.tensor([[1.1], [1.3], [1.5], [1.8], [2.0]]), "learn_alpha": True}),
        ("bisect_alpha_per_head", "entmax.entmax_bisect", randn(2, 3, 4, 6, scale=3.0, s=11),
         "alpha-entmax with one learnable alpha per head (1, 3, 1, 1), gradient in alpha",
         {"alpha": torch.tensor([1.2, 1.5, 1.9]).view(1, 3, 1, 1), "learn_alpha": True}),
    ]
    for name, function, x, description, extra in fn_cases:
        export_function(out, name, function, x, description, seed(), **extra)

    pad = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.uint8)
    module_cases = [
        ("hopfield_sparsemax", "Hopfield", {"input_size": 6, "num_heads": 2, "scaling": 4.0, "association": "sparsemax"},
         {"x": (2, 6, 6)}, "Hopfield with sparsemax association, two heads", None),
        ("hopfield_entmax15_masked", "Hopfield",
         {"input_size": 6, "num_heads": 2, "scaling": 4.0, "association": "entmax15"}, {"x": (2, 6, 6)},
         "Hopfield with entmax-1.5 association and a stored-pattern padding mask",
         {"stored_pattern_padding_mask": pad}),
        ("hopfield_entmax1.3_steps", "Hopfield",
         {"input_size": 6, "num_heads": 2, "scaling": 6.0, "association": {"entmax": 1.3}, "update_steps_max": 2,
          "update_steps_eps": 1e-12}, {"x": (1, 6, 6)},
         "Hopfield with alpha-entmax 1.3 and two update steps (every step uses entmax)", None),
        ("pooling_sparsemax", "HopfieldPooling", {"input_size": 6, "quantity": 2, "scaling": 4.0, "association": "sparsemax"},
         {"x": (2, 7, 6)}, "HopfieldPooling with sparsemax association", None),
        ("layer_entmax15", "HopfieldLayer", {"input_size": 6, "quantity": 8, "scaling": 4.0, "association": "entmax15"},
         {"x": (2, 4, 6)}, "HopfieldLayer with entmax-1.5 association over 8 lookup patterns", None),
    ]
    for name, module_name, kwargs, shapes, description, masks in module_cases:
        export_module(out, name, module_name, kwargs, shapes, description, seed(), masks)
    print(f"wrote {len(fn_cases) + len(module_cases)} cases to {out}")


if __name__ == "__main__":
    main()
