"""Times hflayers' `Hopfield` (PyTorch) at the shapes of hopfield-benches and compares with
hopfield-rs.

`difflayers` 0.1.1 (PyPI) ships hflayers' `Hopfield` unchanged as `difflayers.Hopfield`.
Every case: Hopfield(input_size=E, num_heads=H, update_steps_max=k), self-association on a
(N, L, E) float32 batch, eval mode, 2 threads; forward+backward = output.sum().backward() into
the parameters. Times are medians of >= 10 runs and about 2 s, after 3 warm-up runs, the same
protocol as `hopfield_timing`.

    benches/.venv/bin/python benches/hflayers_compare.py            # PyTorch, then ours, ratios
    benches/.venv/bin/python benches/hflayers_compare.py --torch-only
    benches/.venv/bin/python benches/hflayers_compare.py --retrieval  # pure static retrieval
    benches/.venv/bin/python benches/hflayers_compare.py --rounds 3   # interleaved, see below

`--rounds R` interleaves the two sides shape by shape (PyTorch at one shape, then ours at the
same shape, R times) and reports each round's ratio and their median: on a shared, noisy
machine the load then moves both sides of a ratio alike, where one pass of all PyTorch shapes
followed by all of ours can put them a minute and a load spike apart.

`--retrieval` times pure static retrieval instead (hflayers' blog recipe: all inputs static, no
LayerNorms, no output projection, scaling 8; stored patterns Y `(1, S, 64)`, queries `(1, 1024, 64)`,
forward `((Y, Q, Y))`) against the `retrieval_timing` binary, forward only.
"""

import argparse
import json
import os
import subprocess
import time

import torch
from difflayers import Hopfield

# (N, L=S, E, H, update_steps_max), the same list as hopfield_benches::SHAPES.
SHAPES = [(32, 64, 64, 4, 0), (32, 256, 128, 8, 0), (16, 512, 256, 8, 0), (32, 128, 64, 4, 3)]
# (S, L, d) for --retrieval, the same list as retrieval_timing's SHAPES.
RETRIEVAL_SHAPES = [(65536, 1024, 64), (262144, 1024, 64)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shape_id(n, l, e, h, k):
    return f"N{n}_L{l}_E{e}_H{h}_k{k}"


def median_ms(f):
    for _ in range(3):
        f()
    times, start = [], time.perf_counter()
    while len(times) < 10 or (time.perf_counter() - start < 2.0 and len(times) < 1000):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def time_torch(shapes=SHAPES):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    out = {}
    for n, l, e, h, k in shapes:
        model = Hopfield(input_size=e, num_heads=h, update_steps_max=k).eval()
        x = torch.randn(n, l, e)

        def forward():
            with torch.no_grad():
                return model(x)

        def forward_backward():
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()

        out[shape_id(n, l, e, h, k)] = (median_ms(forward), median_ms(forward_backward))
    return out


def time_torch_retrieval():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    out = {}
    for s, l, d in RETRIEVAL_SHAPES:
        model = Hopfield(
            scaling=8.0,
            state_pattern_as_static=True,
            stored_pattern_as_static=True,
            pattern_projection_as_static=True,
            normalize_stored_pattern=False,
            normalize_stored_pattern_affine=False,
            normalize_state_pattern=False,
            normalize_state_pattern_affine=False,
            normalize_pattern_projection=False,
            normalize_pattern_projection_affine=False,
            disable_out_projection=True,
        ).eval()
        y, q = torch.randn(1, s, d), torch.randn(1, l, d)

        def forward():
            with torch.no_grad():
                return model((y, q, y))

        out[f"S{s}_L{l}_d{d}"] = (median_ms(forward), float("nan"))
    return out


def time_ours(binary="hopfield_timing", only=None):
    # Same device as PyTorch's side: the CPU, even in a CUDA build.
    cmd = ["cargo", "run", "--quiet", "--release", "-p", "hopfield-benches", "--bin", binary, "--", "--device", "cpu"]
    env = dict(os.environ, HOPFIELD_SHAPE=only) if only else None
    lines = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout.splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    return {r["shape"]: (r["forward_ms"], r.get("forward_backward_ms", float("nan"))) for r in rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-only", action="store_true", help="skip hopfield-rs")
    parser.add_argument("--retrieval", action="store_true", help="pure static retrieval shapes")
    parser.add_argument("--rounds", type=int, default=0, help="interleave the sides shape by shape, R rounds")
    args = parser.parse_args()
    if args.rounds > 0:
        return interleaved(args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} -> 2 threads, float32, CPU")
    theirs = time_torch_retrieval() if args.retrieval else time_torch()
    binary = "retrieval_timing" if args.retrieval else "hopfield_timing"
    ours = {} if args.torch_only else time_ours(binary)
    print(f"{'shape':<22}{'ours fwd':>10}{'torch fwd':>11}{'ratio':>7}{'ours f+b':>10}{'torch f+b':>11}{'ratio':>7}")
    for key, (tf, tb) in theirs.items():
        if key in ours:
            of, ob = ours[key]
            print(f"{key:<22}{of:>10.3f}{tf:>11.3f}{of / tf:>7.2f}{ob:>10.3f}{tb:>11.3f}{ob / tb:>7.2f}")
        else:
            print(f"{key:<22}{'-':>10}{tf:>11.3f}{'-':>7}{'-':>10}{tb:>11.3f}{'-':>7}")
    print("times in ms (median); ratio = ours / PyTorch (below 1: hopfield-rs is faster)")


def interleaved(rounds):
    print(f"torch {torch.__version__}, 2 threads, float32, CPU; {rounds} interleaved rounds")
    print(f"{'shape':<22}{'round':>6}{'ours fwd':>10}{'torch fwd':>11}{'ratio':>7}{'ours f+b':>10}{'torch f+b':>11}{'ratio':>7}{'load':>6}")
    summary = []
    for shape in SHAPES:
        key = shape_id(*shape)
        fwd, fb = [], []
        for r in range(rounds):
            tf, tb = time_torch([shape])[key]
            of, ob = time_ours(only=key)[key]
            fwd.append(of / tf)
            fb.append(ob / tb)
            load = os.getloadavg()[0]
            print(f"{key:<22}{r + 1:>6}{of:>10.3f}{tf:>11.3f}{of / tf:>7.2f}{ob:>10.3f}{tb:>11.3f}{ob / tb:>7.2f}{load:>6.1f}", flush=True)
        summary.append((key, sorted(fwd)[len(fwd) // 2], sorted(fb)[len(fb) // 2], min(fwd), max(fwd), min(fb), max(fb)))
    print("median ratio over the rounds (range): ours / PyTorch, below 1: hopfield-rs is faster")
    for key, mf, mb, lf, hf, lb, hb in summary:
        print(f"{key:<22} forward {mf:.2f} ({lf:.2f}-{hf:.2f})  forward+backward {mb:.2f} ({lb:.2f}-{hb:.2f})")


if __name__ == "__main__":
    main()
