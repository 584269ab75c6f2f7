# SPDX-License-Identifier: Apache-2.0
"""The maths issue's numbers, before and after, in one run on one device.

* accuracy on needle-like Gaussians (float32 against float64, values and all four
  gradients), with the notebook's own float32 batched solve as the yardstick;
* the exact op's speed at S, M and L (the ladder's sizes; forward under no_grad and the
  user's training step through the patched notebook class), "before" (a build of the
  previous commit, --before PATH) and "after" (the installed gaussfield), each measured
  twice in alternating processes (ABAB) so that drift shows;
* feature channels: C = 1, 3, 8, 32 (forward, and forward + backward to every input);
* the cutoff on the dense kernels (k = 6) against none: the mask costs what it costs;
* the price of a plain-torch covariance front-end (Cholesky + triangular inverse per
  Gaussian with torch ops, forward + backward) that a design without the fused
  front-end would add to every step.

Writes maths-<device>-<date>.json and .md into --out.

    python benchmarks/bench_maths.py --out benchmarks/results [--before /tmp/oldpkg]
"""
import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the tests' float64-capable transcription of the notebook (tests/notebook.py), also for
# the "before" worker, whose older gaussfield may have no gaussfield.notebook
sys.path.insert(0, str(HERE.parent / "tests"))


def needles(N, B, seed, dtype=None):
    """N needle-like Gaussians (one axis ~2, two ~0.02, strongly correlated, full
    cov_tril), B points near them, weights and grad_out: float64 on the CPU."""
    import torch
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 3, generator=g, dtype=torch.float64) * 10
    # a random direction per needle: L = R diag(2, .02, .02) made lower triangular by QR
    A = torch.randn(N, 3, 3, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(A)
    S = Q @ torch.diag_embed(torch.tensor([2.0, 0.02, 0.02], dtype=torch.float64).expand(N, 3) ** 2) @ Q.transpose(1, 2)
    L = torch.linalg.cholesky(S)
    cov = torch.stack([L[:, 0, 0].log(), L[:, 1, 0], L[:, 1, 1].log(), L[:, 2, 0], L[:, 2, 1],
                       L[:, 2, 2].log()], dim=1)
    idx = torch.randint(0, N, (B,), generator=g)
    along = torch.randn(B, 1, generator=g, dtype=torch.float64) * 2.0
    x = means[idx] + along * Q[idx, :, 0] + 0.03 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    w = torch.randn(N, generator=g, dtype=torch.float64)
    go = torch.randn(B, generator=g, dtype=torch.float64)
    return x, means, cov, w, go


def rel(a, b):
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def accuracy(device):
    import torch
    import gaussfield
    from notebook import FastLearnableGaussianField, field_with
    x, m, c, w, go = needles(500, 3000, 0)
    names = ["value", "grad_x", "grad_means", "grad_cov", "grad_weights"]

    def ours(dtype, dev):
        ins = [t.to(dev, dtype).requires_grad_() for t in (x, m, c, w)]
        f = gaussfield.gaussian_field(*ins, eps=1e-6)
        return [f, *torch.autograd.grad(f, ins, go.to(dev, dtype))]

    def notebook(dtype):
        mod = field_with(FastLearnableGaussianField, m.to(dtype), c.to(dtype), w.to(dtype))
        xr = x.to(dtype).requires_grad_()
        f = mod(xr)
        cp = mod.cov_tril
        return [f, *torch.autograd.grad(f, (xr, mod.means, cp, mod.weights), go.to(dtype))]

    ref = ours(torch.float64, "cpu")
    o32 = ours(torch.float32, device)
    nb32 = notebook(torch.float32)
    out = {}
    for n, a, r, b in zip(names, o32, ref, nb32):
        out[n] = {"ours": rel(a, r), "notebook": rel(b, r)}
        out[n]["ratio"] = out[n]["ours"] / out[n]["notebook"]
    return out


def timed(fn, device, budget_s=1.0):
    """Median ms: events on a GPU (one sync at the end), perf_counter on the CPU."""
    import time
    import torch
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn(); fn(); sync()
    t = time.perf_counter(); fn(); sync(); first = time.perf_counter() - t
    reps = int(min(50, max(3, budget_s / max(first, 1e-6))))
    if cuda:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            a.record(); fn(); b.record()
        torch.cuda.synchronize()
        ts = [a.elapsed_time(b) for a, b in ev]
    else:
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def sizes(device):
    if device.type == "cuda":
        return {"S": (500, 1_000), "M": (100_000, 10_000), "L": (1_000_000, 100_000)}
    return {"S": (500, 1_000), "M": (10_000, 5_000), "L": (100_000, 10_000)}


def exact_speed(device):
    import torch
    import torch.nn.functional as F
    import gaussfield
    from notebook import FastLearnableGaussianField

    class Patched(FastLearnableGaussianField):
        forward = gaussfield.fused_forward

    out = {}
    for name, (B, N) in sizes(device).items():
        torch.manual_seed(0)
        model = Patched(N).to(device)
        x = (torch.rand(B, 3) * 10).to(device)
        target = torch.rand(B).to(device)

        def fwd():
            with torch.no_grad():
                model(x)

        def train():
            model.zero_grad(set_to_none=True)
            F.mse_loss(model(x), target).backward()

        out[name] = {"B": B, "N": N, "fwd_ms": timed(fwd, device), "train_ms": timed(train, device)}
    return out


def field_inputs(B, N, device):
    """A generator (for the weights to come), points, means and cov_tril of the speed
    cases; means and cov require grad."""
    import torch
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, 3, generator=g) * 10).to(device)
    m = (torch.rand(N, 3, generator=g) * 10).to(device).requires_grad_()
    c = torch.full((N, 6), -0.77).to(device).requires_grad_()
    return g, x, m, c


def channels_speed(device):
    import torch
    import gaussfield
    B, N = (100_000, 10_000) if device.type == "cuda" else (10_000, 2_000)
    g, x, m, c = field_inputs(B, N, device)
    out = {"B": B, "N": N}
    for C in (0, 1, 3, 8, 32):  # 0: weights [N] (the scalar case)
        w = (torch.randn(N, generator=g) if C == 0 else torch.randn(N, C, generator=g)).to(device).requires_grad_()
        go = torch.randn(B if C == 0 else (B, C), generator=g).to(device)

        def fwd():
            with torch.no_grad():
                gaussfield.gaussian_field(x, m, c, w)

        def both():
            f = gaussfield.gaussian_field(x, m, c, w)
            torch.autograd.grad(f, (m, c, w), go)

        out["scalar" if C == 0 else f"C={C}"] = {"fwd_ms": timed(fwd, device), "fwd_bwd_ms": timed(both, device)}
    return out


def cutoff_speed(device):
    import torch
    import gaussfield
    B, N = (100_000, 10_000) if device.type == "cuda" else (10_000, 5_000)
    g, x, m, c = field_inputs(B, N, device)
    w = torch.randn(N, generator=g).to(device).requires_grad_()
    out = {"B": B, "N": N}
    for k in (None, 6.0):
        def both():
            f = gaussfield.gaussian_field(x, m, c, w, cutoff=k)
            torch.autograd.grad(f.sum(), (m, c, w))
        out[f"k={k}"] = {"fwd_ms": timed(lambda: gaussfield.gaussian_field(x, m, c, w, cutoff=k), device),
                         "fwd_bwd_ms": timed(both, device)}
    return out


def frontend_price(device):
    """Forward + backward of cov_tril -> M with torch ops at N = 1000 (what a plain-torch
    front-end would add to the S step) next to the fused op's S step."""
    import torch
    N = 1000
    c = torch.zeros(N, 6, device=device, requires_grad=True)
    eye = torch.eye(3, device=device)

    def front():
        zero = torch.zeros_like(c[:, 0])
        L = torch.stack([torch.stack([c[:, 0].exp(), zero, zero], -1),
                         torch.stack([c[:, 1], c[:, 2].exp(), zero], -1),
                         torch.stack([c[:, 3], c[:, 4], c[:, 5].exp()], -1)], -2)
        S = L @ L.transpose(1, 2) + 1e-6 * eye
        K = torch.linalg.cholesky(S)
        M = torch.linalg.solve_triangular(K, eye.expand(N, 3, 3), upper=False)
        M.sum().backward()
    return {"N": N, "frontend_fwd_bwd_ms": timed(front, device)}


def worker(which):
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"which": which, "exact": exact_speed(device)}
    res["accuracy"] = accuracy(device)
    if which == "after":
        res["channels"] = channels_speed(device)
        res["cutoff"] = cutoff_speed(device)
        res["frontend"] = frontend_price(device)
    print("RESULT " + json.dumps(res))


def run_worker(which, before_path):
    env = dict(os.environ)
    if which == "before":
        env["PYTHONPATH"] = before_path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--worker", which], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{which} worker failed:\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def markdown(env, runs):
    lines = [f"# The maths issue: before and after, {env['device']}",
             "", f"torch {env['torch']}, {env['date']}. Medians; each build measured twice, "
             "alternating (before, after, before, after).", ""]
    afters = [r for r in runs if r["which"] == "after"]
    befores = [r for r in runs if r["which"] == "before"]
    lines += ["## Accuracy on needles (float32 vs float64, norm-relative)", "",
              "| quantity | notebook float32 | before | after | after / notebook |",
              "|---|---:|---:|---:|---:|"]
    a = afters[0]["accuracy"]
    b = befores[0]["accuracy"] if befores else None
    for k, v in a.items():
        lines.append(f"| {k} | {v['notebook']:.2e} | {b[k]['ours']:.2e} | {v['ours']:.2e} | {v['ratio']:.4f} |"
                     if b else f"| {k} | {v['notebook']:.2e} | - | {v['ours']:.2e} | {v['ratio']:.4f} |")
    lines += ["", "## Exact op (no cutoff), ms", "",
              "| size | B | N | fwd before | fwd after | train before | train after |",
              "|---|---:|---:|---|---|---|---|"]
    for size in afters[0]["exact"]:
        e = afters[0]["exact"][size]
        fb = " / ".join(f"{r['exact'][size]['fwd_ms']:.3f}" for r in befores) or "-"
        fa = " / ".join(f"{r['exact'][size]['fwd_ms']:.3f}" for r in afters)
        tb = " / ".join(f"{r['exact'][size]['train_ms']:.3f}" for r in befores) or "-"
        ta = " / ".join(f"{r['exact'][size]['train_ms']:.3f}" for r in afters)
        lines.append(f"| {size} | {e['B']} | {e['N']} | {fb} | {fa} | {tb} | {ta} |")
    ch = afters[0]["channels"]
    lines += ["", f"## Channels (B = {ch['B']}, N = {ch['N']}, full covariance), ms", "",
              "| weights | fwd | fwd + bwd (means, cov, weights) |", "|---|---:|---:|"]
    for k, v in ch.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['fwd_ms']:.3f} | {v['fwd_bwd_ms']:.3f} |")
    cu = afters[0]["cutoff"]
    lines += ["", f"## Cutoff on the dense kernels (B = {cu['B']}, N = {cu['N']}), ms", "",
              "| cutoff | fwd | fwd + bwd |", "|---|---:|---:|"]
    for k, v in cu.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['fwd_ms']:.3f} | {v['fwd_bwd_ms']:.3f} |")
    fr = afters[0]["frontend"]
    lines += ["", f"A plain-torch front-end (cov_tril -> M, forward + backward, N = {fr['N']}) "
              f"would add {fr['frontend_fwd_bwd_ms']:.3f} ms to every step; the fused front-end "
              "is inside the op's per-Gaussian pass.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["before", "after"])
    ap.add_argument("--before", help="a directory holding the previous build's gaussfield package")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    import torch
    from gaussfield._devices import device_name, slug
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    order = ["before", "after", "before", "after"] if args.before else ["after", "after"]
    runs = [run_worker(w, args.before) for w in order]
    env = {"date": _dt.date.today().isoformat(), "device": device_name(device),
           "torch": torch.__version__, "cuda": torch.version.cuda}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"maths-{slug(device)}-{env['date']}"
    stem.with_suffix(".json").write_text(json.dumps({"env": env, "runs": runs}, indent=1))
    md = markdown(env, runs)
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
