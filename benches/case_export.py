"""What the edge-case exporters (export_hflayers_edges.py, export_dahn_edges.py,
export_et_edges.py) share: a case's tensors in the format of goldens/ (see goldens/README.md),
its metadata and its file.

The exporters import it from their own folder (`benches/`), which Python puts first on the path
when it runs one of them as a script.
"""

import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file

TOLERANCE = "1e-9"


def to_np(t):
    return t.detach().contiguous().numpy()


def case_tensors(module=None, inputs=(), masks=None):
    """`params.<name>` for the module's state_dict, `input.<name>` for each input and mask (a
    bool mask stored as uint8). masks: {name: (kind, tensor)}."""
    tensors = {}
    if module is not None:
        for k, p in module.state_dict().items():
            tensors[f"params.{k}"] = to_np(p)
    for k, v in dict(inputs).items():
        tensors[f"input.{k}"] = to_np(v)
    for k, (kind, v) in (masks or {}).items():
        tensors[f"input.{k}"] = to_np(v.to(torch.uint8) if kind == "bool" else v)
    return tensors


def add_grads(tensors, named, grads, inputs=()):
    """`grad.input.<name>` for the names in `inputs`, `grad.params.<name>` for the others, from
    torch.autograd.grad's results (`allow_unused`: a missing gradient is zeros).
    named: [(name, tensor)] in the order the gradients were asked for."""
    for (k, v), g in zip(named, grads):
        prefix = "grad.input." if k in inputs else "grad.params."
        tensors[prefix + k] = to_np(torch.zeros_like(v) if g is None else g)


def check_finite(tensors, name, inputs_may_be_infinite=False):
    """Every stored value is finite (masks, which are inputs, may hold -inf where allowed)."""
    for k, t in tensors.items():
        assert np.isfinite(t).all() or (inputs_may_be_infinite and k.startswith("input.")), (name, k)


def output_names(tensors):
    return sorted(k[len("output."):] for k in tensors if k.startswith("output."))


def case_meta(suite, name, seed, reference, kwargs, forward, description, **extra):
    """The metadata every case carries, and `extra` (module or function, frozen_params, ...)."""
    return {
        **extra,
        "kwargs": json.dumps(kwargs),
        "forward": json.dumps(forward),
        "description": description,
        "tolerance": TOLERANCE,
        "reference": reference,
        "torch_version": torch.__version__,
        "case": name,
        "suite": suite,
        "seed": str(seed),
    }


def save_case(out_dir, name, tensors, meta):
    """Writes `<out_dir>/<name>.safetensors`, tensors in name order."""
    os.makedirs(out_dir, exist_ok=True)
    save_file(dict(sorted(tensors.items())), os.path.join(out_dir, f"{name}.safetensors"), metadata=meta)
