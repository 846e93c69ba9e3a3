"""Side-by-side timing of one Energy Transformer block step in PyTorch, implementing the port's
algorithm (LumenPallidium/energy_transformer @ 34396b0, energy_transformers.py) at the shapes of
`cargo bench -p hopfield-nn --bench et_step`: batch 1, tokens 64, dim 128, heads 4, 512 Hopfield
memories, ReLU Hopfield, torch.nn.LayerNorm, float32 CPU.

The energy is the port's (einsum + logsumexp); its gradient at the normalised tokens is taken either
with torch.autograd.grad (create_graph=True when training), or with torch.func.jacrev as the port
itself does (`--grad jacrev`). Prints milliseconds per step (median of repeats).

    benches/.venv/bin/python benches/et_port.py [--grad autograd|jacrev] [--threads N] [--batch B]

`--compare` times the port (jacrev as shipped, and autograd.grad) and hopfield-rs (the
`et_timing` binary, built in release) at batch 1 and 8 on 2 threads, alternating the two sides
`--rounds` times in one run, and prints each round's times and the median ratios ours / port
(`--threads N` sets both sides' thread count, default 2; `--composed` also times our composed step,
the path before the fused block step, in each round):

    benches/.venv/bin/python benches/et_port.py --compare [--rounds 3] [--threads 1] [--composed] [--iters 12]
"""

import argparse
import json
import os
import statistics
import subprocess
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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_ms(f):
    """The protocol of et_timing: median of >= 10 runs and about 2 s, after 3 warm-up runs."""
    for _ in range(3):
        f()
    times, start = [], time.perf_counter()
    while len(times) < 10 or (time.perf_counter() - start < 2.0 and len(times) < 1000):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def time_port(batch, mode, iters=1):
    torch.manual_seed(0)
    m = EnergyTransformerStep(DIM, MEMORIES, HEADS)
    x = torch.randn(batch, TOKENS, DIM)
    cot = torch.randn(batch, TOKENS, DIM)

    def forward():
        with torch.no_grad() if mode == "jacrev" else torch.enable_grad():
            return m(x, n_iters=iters, mode=mode)

    def forward_backward():
        xv = x.clone().requires_grad_(True)
        y = m(xv, n_iters=iters, mode=mode, create_graph=True)
        (y * cot).sum().backward()

    return median_ms(forward), median_ms(forward_backward)


def compare(rounds, threads=2, composed=False, iters=1):
    torch.set_num_threads(threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "hopfield-benches", "--bin", "et_timing"],
                   cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "et_timing")
    ratios = {}
    print(f"torch {torch.__version__}, {threads} thread(s) both sides, {iters} descent step(s); "
          "times in ms (forward / forward+backward)")
    def run_ours(*extra):
        out = subprocess.run([exe, "--device", "cpu", "--iters", str(iters), *extra], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        times = {}
        for line in out.splitlines():
            o = json.loads(line)
            times[o["batch"]] = (o["forward_ms"], o["forward_backward_ms"])
        return times

    for r in range(rounds):
        ours = run_ours()
        if composed:
            # The composed step (as before the fused block step) in the same minutes.
            before = run_ours("--composed")
            for batch in (1, 8):
                b, a = before[batch], ours[batch]
                print(f"round {r + 1} batch {batch} ours-composed {b[0]:7.3f} / {b[1]:7.3f}"
                      f"   fused {a[0]:7.3f} / {a[1]:7.3f}   fused / composed "
                      f"{a[0] / b[0]:.2f} / {a[1] / b[1]:.2f}")
        for batch in (1, 8):
            for mode in ("jacrev", "autograd"):
                port = time_port(batch, mode, iters)
                mine = ours[batch]
                print(f"round {r + 1} batch {batch} port-{mode:8s} {port[0]:7.3f} / {port[1]:7.3f}"
                      f"   ours {mine[0]:7.3f} / {mine[1]:7.3f}"
                      f"   ratio {mine[0] / port[0]:.2f} / {mine[1] / port[1]:.2f}")
                ratios.setdefault((batch, mode), []).append((mine[0] / port[0], mine[1] / port[1]))
    print("median ratios ours / port (forward, forward+backward):")
    for (batch, mode), rs in sorted(ratios.items()):
        f = statistics.median(a for a, _ in rs)
        b = statistics.median(b for _, b in rs)
        print(f"  batch {batch} vs port {mode:8s}: {f:.2f}x  {b:.2f}x")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--compare", action="store_true", help="side by side with et_timing, ratios")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--composed", action="store_true",
                   help="with --compare: also time our composed step (et_timing --composed)")
    p.add_argument("--grad", choices=["autograd", "jacrev"], default="autograd")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (ET_BATCH for ours)")
    p.add_argument("--iters", type=int, default=1, help="descent steps per forward (the port's n_iters)")
    args = p.parse_args()
    if args.compare:
        compare(args.rounds, args.threads or 2, args.composed, args.iters)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = EnergyTransformerStep(DIM, MEMORIES, HEADS)
    x = torch.randn(args.batch, TOKENS, DIM)
    cot = torch.randn(args.batch, TOKENS, DIM)

    def forward():
        with torch.no_grad() if args.grad == "jacrev" else torch.enable_grad():
            return m(x, n_iters=args.iters, mode=args.grad)

    def forward_backward():
        xv = x.clone().requires_grad_(True)
        y = m(xv, n_iters=args.iters, mode=args.grad, create_graph=True)
        (y * cot).sum().backward()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, grad {args.grad}, batch {args.batch}")
    print(f"et_step/forward          {timeit(forward):8.3f} ms")
    print(f"et_step/forward_backward {timeit(forward_backward, number=20):8.3f} ms")


if __name__ == "__main__":
    main()
