"""Times difflayers' `DiffusedHopfield` (PyTorch, PyPI difflayers 0.1.1) at the shapes of
`dahn_timing` and compares with hopfield-rs.

Every case: `DiffusedHopfield(input_size=64, cache_graph=...)` with difflayers' defaults
(factored diffusion, eta 0.1, k 5, 3 diffusion steps, 1 head), eval mode, `torch.inference_mode()`,
float32, 2 threads:
  s2048     N = 1, stored S = 2048, L = 32 queries (input tuple (stored, state, stored))
  self2048  N = 1, self-association, L = S = 2048
  b8x256    a batch of N = 8 self-associations, L = S = 256 (difflayers: one graph of the batch
            mean; ours: one graph per sample by default, and batch_mean rows for difflayers' scope)
  s100k     N = 1, S = 10^5, L = 32: difflayers builds a dense S x S similarity (40 GB in f32), so this
            case runs in a child process whose address space is capped (RLIMIT_AS, --mem-gb,
            default 8 GB) and its failure is reported instead of sending the machine into swap.
"cache off" rebuilds the graph on every call (what the first call costs); "cache on" times calls
after a first one. difflayers keys its cache on the data_ptr of a freshly computed batch mean, so
"cache on" may still rebuild: `builds` counts GraphBuilder.build calls during the timed runs.
Times are medians (ms) of 7 (cache off) / 15 (cache on) runs, the protocol of `dahn_timing`.

    benches/.venv/bin/python benches/dahn_compare.py                 # PyTorch, then ours, ratios
    benches/.venv/bin/python benches/dahn_compare.py --torch-only
    benches/.venv/bin/python benches/dahn_compare.py --cases s2048 self2048
    benches/.venv/bin/python benches/dahn_compare.py --ours-exe /tmp/dahn_timing_before  # another build
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 64
# name: (N, S, L)
CASES = {"s2048": (1, 2048, 32), "self2048": (1, 2048, 2048), "b8x256": (8, 256, 256),
         "s100k": (1, 100_000, 32)}


def vmhwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def time_case(name, cache):
    """Median ms of forward calls of a fresh module; returns a result dict."""
    from difflayers import DiffusedHopfield
    from difflayers.graph import builder

    builds = [0]
    original = builder.GraphBuilder.build

    def counting(self, *a, **k):
        builds[0] += 1
        return original(self, *a, **k)

    builder.GraphBuilder.build = counting
    n, s, l = CASES[name]
    torch.manual_seed(0)
    stored = torch.randn(n, s, D)
    state = torch.randn(n, l, D)
    inp = stored if l == s else (stored, state, stored)
    m = DiffusedHopfield(input_size=D, cache_graph=cache).eval()
    runs = 7 if not cache else 15
    if s > 10_000:
        runs = 1 if not cache else 5
    times = []
    with torch.inference_mode():
        if cache:
            m(inp)  # the first call builds the graph
            builds[0] = 0
        for _ in range(runs):
            t = time.perf_counter()
            m(inp)
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {
        "case": name,
        "graph": "cached" if cache else "fresh",
        "ms": times[len(times) // 2],
        "runs": runs,
        "builds": builds[0],
        "vmhwm_mib": vmhwm_mib(),
    }


def child(name, cache, mem_gb):
    """Runs one case in this (child) process under an address-space cap; prints one JSON line."""
    torch.set_num_threads(2)
    # The cap is set after importing torch, so that it bounds the computation, not the import's
    # virtual reservations: current size + mem_gb.
    with open("/proc/self/status") as f:
        vm = next(int(x.split()[1]) for x in f if x.startswith("VmSize:")) * 1024
    cap = vm + int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        out = time_case(name, cache)
    except (MemoryError, RuntimeError) as e:
        out = {
            "case": name,
            "graph": "cached" if cache else "fresh",
            "ms": None,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
            "vmhwm_mib": vmhwm_mib(),
        }
    print(json.dumps(out), flush=True)


def run_torch(cases, mem_gb):
    rows = []
    for name in cases:
        for cache in (False, True):
            # Every case in its own process: a clean VmHWM, and the cap cannot hurt the parent.
            cmd = [sys.executable, __file__, "--child", name, "--cache", str(int(cache)),
                   "--mem-gb", str(mem_gb)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("{")]
            if p.returncode != 0 or not line:
                tail = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
                row = {"case": name, "graph": "cached" if cache else "fresh", "ms": None,
                       "error": f"child exited {p.returncode}: {tail}"}
            else:
                row = json.loads(line[-1])
            print("torch", json.dumps(row), flush=True)
            rows.append(row)
    return rows


def run_ours(cases, exe):
    rows = []
    for name in cases:
        # One process per case, so VmHWM is the case's own peak.
        out = subprocess.run([exe, name], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                print("ours ", line, flush=True)
                rows.append(json.loads(line))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--torch-only", action="store_true")
    ap.add_argument("--mem-gb", type=float, default=8.0)
    ap.add_argument("--child")
    ap.add_argument("--cache", type=int, default=1)
    ap.add_argument("--ours-exe", default=os.path.join(ROOT, "target", "release", "dahn_timing"))
    a = ap.parse_args()
    if a.child:
        child(a.child, bool(a.cache), a.mem_gb)
        return
    print(f"torch {torch.__version__}, threads 2, load average {os.getloadavg()}", flush=True)
    theirs = run_torch(a.cases, a.mem_gb)
    if a.torch_only:
        return
    ours = run_ours(a.cases, a.ours_exe)
    print(f"\nload average after: {os.getloadavg()}")
    print("\n| case | graph | ours: scope | ours (ms) | difflayers (ms) | ours / difflayers "
          "| ours: builds | ours VmHWM (MiB) | difflayers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for o in ours:
        t = next((x for x in theirs if x["case"] == o["case"] and x["graph"] == o["graph"]), {})
        tm = t.get("ms")
        ratio = f"{o['ms'] / tm:.3f}" if tm else "n/a"
        theirs_txt = f"{tm:.2f}" if tm else t.get("error", "missing")
        note = f"builds {t['builds']}, VmHWM {t['vmhwm_mib']:.0f} MiB" if tm else "failed"
        print(f"| {o['case']} | {o['graph']} | {o.get('scope', 'per_sample')} | {o['ms']:.2f} | "
              f"{theirs_txt} | {ratio} | {o.get('builds', 'n/a')} | {o['vmhwm_mib']} | {note} |")


if __name__ == "__main__":
    main()
