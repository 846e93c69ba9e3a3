"""Side-by-side timing of one Energy Transformer block step in PyTorch, implementing the port's
algorithm (LumenPallidium/energy_transformer @ 34396b0, energy_transformers.py) at the shapes of
`cargo bench -p hopfield-nn --bench et_step`: batch 1, tokens 64, dim 128, heads 4, 512 Hopfield
memories, ReLU Hopfield, torch.nn.LayerNorm, float32 CPU.

The energy is the port's (einsum + logsumexp); its gradient at the normalised tokens is taken either
with torch.autograd.grad (create_graph=True when training), or with torch.func.jacrev as the port
itself does (`--grad jacrev`). Prints milliseconds per step (median of repeats).

    benches/.venv/bin/python benches/et_port.py [--grad autograd|jacrev] [--threads N] [--batch B]
"""

import argparse
import statistics
import time

import torch

TOKENS, DIM, HEADS, MEMORIES = 64, 128, 4, 512


class EnergyTransformerStep(torch.nn.Module):
    """The port's EnergyTransformer (ReLU Hopfield, LayerNorm, no positional embedding)."""

    def __init__(self, dim, hidden_dim, n_heads, alpha=0.1, scale=None):
        super().__init__()
        z = dim // n_heads
        scale = scale if scale is not None else dim ** -0.5
        self.alpha = alpha
        self.beta_att = torch.nn.Parameter(torch.ones(n_heads) / z ** 0.5)
        self.Wq = torch.nn.Parameter(torch.randn(n_heads, z, dim) * scale)
        self.Wk = torch.nn.Parameter(torch.randn(n_heads, z, dim) * scale)
        self.beta_hop = torch.nn.Parameter(torch.ones(1))
        self.W = torch.nn.Parameter(torch.randn(dim, hidden_dim) * scale)
        self.norm = torch.nn.LayerNorm(dim)

    def energy(self, x):
        k = torch.einsum("...ld,hzd->...lhz", x, self.Wk)
        q = torch.einsum("...ld,hzd->...lhz", x, self.Wq)
        a = torch.einsum("h,...qhz,...khz->...hqk", self.beta_att, q, k)
        a = torch.logsumexp(a, dim=-1).sum(dim=-1)
        e_att = ((-1 / self.beta_att) * a).sum()
        h = self.beta_hop * torch.einsum("...ld,dh->...lh", x, self.W)
        e_hop = -0.5 * (torch.relu(h) ** 2).sum()
        return e_att + e_hop

    def grad(self, g, mode, create_graph):
        if mode == "jacrev":
            return torch.func.jacrev(self.energy)(g)
        if not g.requires_grad:
            g = g.detach().requires_grad_(True)
        (dg,) = torch.autograd.grad(self.energy(g), g, create_graph=create_graph)
        return dg

    def forward(self, x, n_iters=1, mode="autograd", create_graph=False):
        for _ in range(n_iters):
            g = self.norm(x)
            x = x - self.alpha * self.grad(g, mode, create_graph)
        return x


def timeit(fn, warmup=20, repeats=7, number=50):
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number * 1e3)
    return statistics.median(runs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grad", choices=["autograd", "jacrev"], default="autograd")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (ET_BATCH for ours)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = EnergyTransformerStep(DIM, MEMORIES, HEADS)
    x = torch.randn(args.batch, TOKENS, DIM)
    cot = torch.randn(args.batch, TOKENS, DIM)

    def forward():
        with torch.no_grad() if args.grad == "jacrev" else torch.enable_grad():
            return m(x, mode=args.grad)

    def forward_backward():
        xv = x.clone().requires_grad_(True)
        y = m(xv, mode=args.grad, create_graph=True)
        (y * cot).sum().backward()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, grad {args.grad}, batch {args.batch}")
    print(f"et_step/forward          {timeit(forward):8.3f} ms")
    print(f"et_step/forward_backward {timeit(forward_backward, number=20):8.3f} ms")


if __name__ == "__main__":
    main()
