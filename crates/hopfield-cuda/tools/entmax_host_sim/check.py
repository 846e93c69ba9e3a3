# Runs the host simulation of kernels/entmax.cu (argv[1]: the sim binary) on random rows and
# compares it with the `entmax` package in float64 torch: p, exact zeros, dz, dalpha, flags.
import subprocess, sys, torch, math
from entmax import sparsemax, entmax15, entmax_bisect
torch.manual_seed(0)

def reference(z, alphas, g):
    rows, n = z.shape
    P, DZ, DA = torch.zeros_like(z), torch.zeros_like(z), torch.zeros(rows, dtype=torch.float64)
    for r in range(rows):
        zr = z[r]
        if torch.isinf(zr).all():
            continue
        fin = ~torch.isinf(zr)
        x = zr[fin].clone().requires_grad_(True)
        a = torch.tensor(alphas[r], dtype=torch.float64, requires_grad=True)
        if alphas[r] == 2.0:
            p = sparsemax(x, dim=-1)
        elif alphas[r] == 1.5:
            p = entmax15(x, dim=-1)
        else:
            p = entmax_bisect(x, alpha=a, dim=-1, n_iter=100)
        (p * g[r][fin]).sum().backward()
        P[r][fin] = p.detach(); DZ[r][fin] = x.grad
        if alphas[r] not in (2.0, 1.5):
            DA[r] = a.grad
        else:
            # the package's exact functions have no alpha; finite differences of entmax_bisect
            h = 1e-6
            f = lambda al: (entmax_bisect(x.detach(), alpha=torch.tensor(al, dtype=torch.float64), dim=-1, n_iter=100) * g[r][fin]).sum().item()
            DA[r] = (f(alphas[r] + h) - f(alphas[r] - h)) / (2 * h) if alphas[r] < 2 else (f(2.0) - f(2.0 - h)) / h
    return P, DZ, DA

def sim(z, alphas, g, f64):
    rows, n = z.shape
    def fmt(v): return 'inf' if v == math.inf else '-inf' if v == -math.inf else 'nan' if v != v else repr(float(v))
    inp = f"{rows} {n} {int(f64)}\n" + " ".join(fmt(v) for v in z.flatten().tolist()) + "\n" + \
        " ".join(fmt(a) for a in alphas) + "\n" + " ".join(fmt(v) for v in g.flatten().tolist()) + "\n"
    out = subprocess.run([sys.argv[1]], input=inp, capture_output=True, text=True, check=True).stdout.split("\n")
    bad = [int(v) for v in out[0].split()]
    P = torch.tensor([float(v) for v in out[1].split()], dtype=torch.float64).reshape(rows, n)
    DZ = torch.tensor([float(v) for v in out[2].split()], dtype=torch.float64).reshape(rows, n)
    DA = torch.tensor([float(v) for v in out[3].split()], dtype=torch.float64)
    return bad, P, DZ, DA

fail = 0
for (rows, n, scale) in [(9, 5, 1.0), (9, 37, 3.0), (9, 700, 3.0), (9, 300, 8.0), (9, 1, 1.0)]:
    z = torch.randn(rows, n, dtype=torch.float64) * scale
    if n > 3:
        z[:, 3::7] = -math.inf
    z[1] = -math.inf
    if n > 1: z[2] = 0.25; z[2, 3::7] = -math.inf
    alphas = [2.0, 1.5, 1.5, 1.3, 1.7, 1.05, 1.9, 2.0, 1.2][:rows]
    g = torch.randn(rows, n, dtype=torch.float64)
    P, DZ, DA = reference(z, alphas, g)
    for f64, tol in [(True, (1e-9, 1e-8, 1e-5)), (False, (1e-4, 1e-3, 2e-2))]:
        zz = z if f64 else z.float().double()
        aa = alphas if f64 else [float(torch.tensor(a, dtype=torch.float32)) for a in alphas]
        bad, p, dz, da = sim(zz, aa, g if f64 else g.float().double(), f64)
        assert bad == [0] * rows, bad
        for name, got, want, t in [("p", p, P, tol[0]), ("dz", dz, DZ, tol[1]), ("da", da, DA, tol[2])]:
            scale_ = max(1.0, want.abs().max().item())
            err = (got - want).abs().max().item() / scale_
            zeros_ok = True
            if name == "p":
                mism = ((got == 0) != (want == 0)) & (torch.maximum(got.abs(), want.abs()) > (1e-12 if f64 else 1e-6))
                zeros_ok = not mism.any().item()
            ok = err <= t and zeros_ok
            fail += not ok
            print(f"({rows},{n}) f64={f64} {name}: rel err {err:.2e} zeros_ok={zeros_ok} zeros={(got == 0).sum().item()}/{(want == 0).sum().item()} {'OK' if ok else 'FAIL'}")
            if name == "da" and not ok: print(got, want)
        print("   row sums", [round(s, 9) for s in p.sum(1).tolist()])
# NaN / +inf flags
for v in [math.nan, math.inf]:
    z = torch.randn(3, 10, dtype=torch.float64); z[1, 4] = v
    bad, p, _, _ = sim(z, [1.5, 1.3, 2.0], torch.ones(3, 10, dtype=torch.float64), True)
    print("bad flags", v, bad, "row 1 zeros:", (p[1] == 0).all().item())
    fail += bad != [0, 1, 0]
print("FAILURES", fail)
sys.exit(1 if fail else 0)
