"""Exports reference cases for the edge values of the Energy Transformer port's constructor arguments
(issue 9, "Every configuration the originals accept") into
crates/hopfield-nn/tests/data/audit/et_edges/.

The reference is the port itself, LumenPallidium/energy_transformer at 34396b0 (not on PyPI):

    git clone https://github.com/LumenPallidium/energy_transformer /tmp/et_port
    git -C /tmp/et_port checkout 34396b0c972782df53bbaab4dc83d57c75ef1c53
    benches/.venv/bin/python benches/export_et_edges.py --port-dir /tmp/et_port [--out DIR]

(benches/et_port.py re-implements one block step for timing; this script runs the port's own code.)
Every case is written in the format of `goldens/et/` (see goldens/README.md, "et/"): float64, the
constructor kwargs, the exact state_dict (random draws: the port's initialisation makes every energy
~0), input, outputs, and the derivatives of sum(Y * cotangent), taken through the port's
`torch.func.jacrev` energy gradients. Only configurations the port accepts and computes sensibly are
exported; the ones it crashes on or computes garbage for are listed in
docs/design/energy-transformer-port.md ("Edge values", E-V ids) and tested in Rust instead
(examples/tests/et_edges.rs).

The tests never run this script. The Python safetensors writer orders the metadata arbitrarily, so a
rerun gives equal tensors and metadata values but different bytes: keep the committed files unless a
case changed. New cases go at the end of `cases()` (each case's seed is 9800 + its index).
"""

import argparse
import os
import sys

import numpy as np
import torch

from case_export import add_grads, case_meta, case_tensors, check_finite, output_names, save_case, to_np

REFERENCE = "energy_transformer 34396b0c972782df53bbaab4dc83d57c75ef1c53"
QUAL = "energy_transformer.energy_transformers."
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "hopfield-nn", "tests", "data", "audit", "et_edges",
)

torch.set_default_dtype(torch.float64)


def draw_params(module, gen, betas):
    """The goldens README's distributions; `betas` = {param name: values} replaces a draw."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            if name in betas:
                v = torch.tensor(betas[name], dtype=torch.float64).reshape(p.shape)
            elif leaf in ("Wq", "Wk", "W"):
                d = p.shape[-1] if leaf != "W" else p.shape[0]
                v = torch.randn(p.shape, generator=gen) / np.sqrt(d)
            elif leaf == "beta" and (name == "mha.beta" or hasattr(module, "head_dim")):
                z = module.head_dim if hasattr(module, "head_dim") else module.mha.head_dim
                v = torch.exp(0.2 * torch.randn(p.shape, generator=gen)) / np.sqrt(z)
            elif leaf == "beta" and p.dim() == 0:
                v = torch.exp(0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "beta":
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif leaf == "weight":
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif leaf == "bias":
                v = 0.2 * torch.randn(p.shape, generator=gen)
            elif leaf == "pos_embedding":
                v = 0.5 * torch.randn(p.shape, generator=gen)
            else:
                raise ValueError(name)
            p.copy_(v)


def export(out_dir, et, name, cls, kwargs, call, x_shape, description, seed, n_iters=None, indices=None,
           betas=None, x_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    module = getattr(et, cls)(**kwargs).double()
    draw_params(module, gen, betas or {})
    x = (x_scale * torch.randn(x_shape, generator=gen)).requires_grad_(True)
    params = dict(module.named_parameters())
    tensors = case_tensors(module, {"x": x})
    forward = {"call": call, "inputs": ["x"], "grad": True}
    if call == "energy":
        e = module.energy(x)
        ge = torch.autograd.grad(e, list(params.values()), allow_unused=True)
        for (k, p), g in zip(params.items(), ge):
            tensors[f"grad_energy.params.{k}"] = to_np(torch.zeros_like(p) if g is None else g)
        y = module.forward_step(x) if cls == "EnergyTransformer" else module(x)
        tensors["output.energy"] = to_np(e)
        tensors["output.energy_grad"] = to_np(y)
    elif call == "forward":
        out = module(x, n_iters=n_iters) if n_iters is not None else module(x)
        if module.return_energy:
            y, features, energies = out
            shape = (0, *y.shape)
            tensors["output.features"] = to_np(torch.stack(features)) if features else np.zeros(shape)
            tensors["output.energies"] = np.array([float(v) for v in energies], dtype=np.float64)
        else:
            y = out
        tensors["output.y"] = to_np(y)
    else:
        idx = torch.tensor(indices, dtype=torch.int64)
        y = module.filtered_forward(x, idx, n_iters=n_iters)
        tensors["input.indices"] = idx.numpy()
        tensors["output.y"] = to_np(y)
        forward["inputs"] = ["x", "indices"]
    if n_iters is not None:
        forward["n_iters"] = n_iters
    cot = torch.randn(y.shape, generator=gen)
    tensors["grad_seed.cotangent"] = to_np(cot)
    grads = torch.autograd.grad((y * cot).sum(), [x] + list(params.values()), allow_unused=True)
    add_grads(tensors, [("x", x)] + list(params.items()), grads, ("x",))
    check_finite(tensors, name)
    forward["outputs"] = output_names(tensors)
    meta = case_meta("et_edges", name, seed, REFERENCE, kwargs, forward, description, module=QUAL + cls)
    save_case(out_dir, name, tensors, meta)
    return tuple(y.shape)


def cases():
    """(name, class, kwargs, call, x shape, description, extra) for every edge case."""
    c = []

    def add(name, cls, kwargs, call, shape, description, **extra):
        c.append((name, cls, kwargs, call, shape, description, extra))

    et = "EnergyTransformer"
    # Heads.
    add("et_heads1", et, {"dim": 6, "hidden_dim": 10, "n_heads": 1, "n_iters_default": 3}, "forward",
        (2, 4, 6), "n_heads=1: one head of dimension 6")
    add("et_heads_eq_dim", et, {"dim": 4, "hidden_dim": 7, "n_heads": 4, "n_iters_default": 2}, "forward",
        (2, 5, 4), "n_heads = dim = 4: head dimension 1")
    # Tokens.
    add("et_one_token", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 3}, "forward",
        (3, 1, 6), "one token per sequence: the attention is the token with itself")
    add("et_one_token_context1", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "context": 1,
                                      "n_iters_default": 2}, "forward", (2, 1, 6),
        "context=1 with one token: a (1, 1, D) positional embedding")
    add("et_one_token_unbatched_softmax", et, {"dim": 6, "hidden_dim": 5, "n_heads": 3, "n_iters_default": 2,
                                               "hopfield_type": "softmax"}, "forward", (1, 6),
        "an unbatched single token (1, D), softmax Hopfield")
    add("et_batch1_4d", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 2}, "forward",
        (2, 1, 3, 6), "two leading batch dimensions (2, 1, L, D): every energy sums over them")
    # Memories.
    add("et_memories1_relu", et, {"dim": 6, "hidden_dim": 1, "n_heads": 2, "n_iters_default": 3}, "forward",
        (2, 4, 6), "hidden_dim=1: one ReLU memory")
    add("et_memories1_softmax", et, {"dim": 6, "hidden_dim": 1, "n_heads": 2, "n_iters_default": 3,
                                     "hopfield_type": "softmax"}, "forward", (2, 4, 6),
        "hidden_dim=1 with the softmax Hopfield: the log-sum-exp of one memory is linear")
    # Steps and step size.
    add("et_n_iters1", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 1, "context": 4},
        "forward", (2, 4, 6), "n_iters_default=1: one descent step")
    add("et_n_iters0", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 0, "context": 4},
        "forward", (2, 4, 6), "n_iters_default=0: no step, the result is x + pos_embedding")
    add("et_n_iters_arg0_return_energy", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "return_energy": True},
        "forward", (2, 4, 6), "forward(x, n_iters=0) with return_energy: x, no features, no energies", n_iters=0)
    add("et_return_energy_n_iters1", et, {"dim": 6, "hidden_dim": 10, "n_heads": 3, "n_iters_default": 1,
                                          "return_energy": True, "hopfield_type": "softmax"}, "forward",
        (2, 4, 6), "return_energy with one step: one feature, one energy")
    add("et_alpha0", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "alpha": 0.0, "n_iters_default": 2,
                          "context": 4}, "forward", (2, 4, 6), "alpha=0.0: the tokens do not move (x + pos_embedding)")
    add("et_alpha_large", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "alpha": 2.0, "n_iters_default": 3},
        "forward", (2, 4, 6), "alpha=2.0: large steps, still finite")
    # Betas (parameters: the port's `beta` argument crashes or means two things, E1/E2).
    add("et_attn_beta_large", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 2}, "forward",
        (2, 4, 6), "attention betas 20 and 35 (nearly hard attention)", betas={"mha.beta": [20.0, 35.0]})
    add("et_attn_beta_negative", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 2},
        "forward", (2, 4, 6), "a negative attention beta (-0.7, a soft minimum), as training may reach",
        betas={"mha.beta": [-0.7, 0.5]})
    add("et_relu_beta0", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 2}, "forward",
        (2, 4, 6), "ReLU Hopfield beta=0: the Hopfield energy is 0, attention alone acts",
        betas={"hopfield.beta": [0.0]})
    add("et_softmax_beta_large", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "n_iters_default": 2,
                                      "hopfield_type": "softmax"}, "forward", (2, 4, 6),
        "softmax Hopfield beta=40 (nearly one memory per token)", betas={"hopfield.beta": 40.0})
    # Positional embedding.
    add("et_pos_off_with_context", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "context": 4,
                                        "use_positional_embedding": False, "n_iters_default": 2}, "forward",
        (2, 7, 6), "use_positional_embedding=False with context=4: no embedding, any length")
    add("et_filtered_repeated_indices", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "context": 6,
                                             "n_iters_default": 2}, "filtered_forward", (2, 3, 6),
        "filtered_forward with 3 tokens of context 6 and a repeated index", indices=[5, 0, 5])
    add("et_filtered_n_iters0", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "context": 5}, "filtered_forward",
        (1, 2, 6), "filtered_forward(x, indices, n_iters=0): x + pos_embedding[:, indices]", indices=[4, 1],
        n_iters=0)
    # Energies at the edges.
    add("et_energy_one_token", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2}, "energy", (2, 1, 6),
        "block energy and its gradient for one token")
    add("mha_energy_h1_one_token", "EnergyMHA", {"embed_dim": 5, "n_heads": 1}, "energy", (1, 5),
        "attention energy, H=1, one unbatched token")
    add("softmax_hopfield_memories1", "SoftmaxModernHopfield", {"in_dim": 6, "hidden_dim": 1}, "energy",
        (2, 3, 6), "softmax Hopfield energy with one memory: -sum h")
    add("relu_hopfield_memories1_one_token", "BaseModernHopfield", {"in_dim": 6, "hidden_dim": 1}, "energy",
        (1, 6), "ReLU Hopfield energy with one memory and one token")
    # Appended later (earlier cases keep their seeds).
    add("et_filtered_negative_indices", et, {"dim": 6, "hidden_dim": 10, "n_heads": 2, "context": 5,
                                             "n_iters_default": 2}, "filtered_forward", (2, 3, 6),
        "filtered_forward with negative indices, counted from the end by torch's indexing", indices=[-1, 0, -5])
    add("et_memories0_relu_return_energy", et, {"dim": 6, "hidden_dim": 0, "n_heads": 2, "n_iters_default": 2,
                                                "return_energy": True}, "forward", (2, 4, 6),
        "hidden_dim=0 with the ReLU Hopfield: no memories, an attention-only block (Hopfield energy 0)")
    add("relu_hopfield_memories0", "BaseModernHopfield", {"in_dim": 6, "hidden_dim": 0}, "energy", (2, 3, 6),
        "ReLU Hopfield energy with no memories: 0, gradient 0")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--port-dir", help="a checkout of LumenPallidium/energy_transformer at 34396b0")
    ap.add_argument("--only", nargs="*", help="export only these cases")
    args = ap.parse_args()
    if args.port_dir:
        sys.path.insert(0, args.port_dir)
    import energy_transformer.energy_transformers as et

    all_cases = cases()
    for i, (name, cls, kwargs, call, shape, description, extra) in enumerate(all_cases):
        if args.only and name not in args.only:
            continue
        out = export(args.out, et, name, cls, kwargs, call, shape, description, seed=9800 + i, **extra)
        print(name, out)
    print(f"{len(all_cases)} cases in {os.path.normpath(args.out)} ({et.__file__})")


if __name__ == "__main__":
    main()
