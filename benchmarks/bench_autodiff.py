# SPDX-License-Identifier: Apache-2.0
"""Second-order cost: an eikonal-regularised step beside a first-order one, gaussfield
against the compiled closed form, on one device, in one run.

    first   loss = mean(f^2), backward to means, cov, weights (a training step's shape)
    eikonal f with x requiring grad; g = d f / d x (create_graph=True);
            loss = mean(f^2) + mean((|g| - 1)^2), backward to means, cov, weights
            (gaussfield: gaussian_field_backward's derivative, the double backward op)

Peers: gaussfield (the op, cov_tril, float32) and `compiled`, torch.compile of the
closed form (gaussfield.gaussian_field_reference, which materialises B x N; dynamic
shapes).  torch.compile's AOT autograd refuses double backward, so the compiled peer's
eikonal step is written with torch.func (grad of a loss holding vmap(grad) over the
points) and compiled whole; its first-order step is the compiled closed form with
.backward().  Both run out of memory at some size, which is recorded.  Times are medians of CUDA-event (or wall-clock on the CPU) timings after two
warm-up calls; peak extra memory from the CUDA allocator.

    python benchmarks/bench_autodiff.py --out benchmarks/results
"""
import argparse
import datetime as _dt
import json
import statistics
import time
from pathlib import Path

import torch

import gaussfield
from gaussfield._devices import device_name, slug
from bench import is_oom  # benchmarks/bench.py, beside this script


def make(B, N, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 / N ** (1 / 3)
    x = (torch.rand(B, 3, generator=g) * 10).to(device)
    means = (torch.rand(N, 3, generator=g) * 10).to(device).requires_grad_()
    cov = torch.zeros(N, 6)
    cov[:, [0, 2, 5]] = torch.log(torch.tensor(scale))
    cov = cov.to(device).requires_grad_()
    weights = torch.randn(N, generator=g).to(device).requires_grad_()
    return x, means, cov, weights


def compiled_steps():
    ref = gaussfield.gaussian_field_reference
    compiled = torch.compile(ref, dynamic=True)

    def first(x, m, c, w):
        loss = compiled(x, m, c, w).square().mean()
        loss.backward()

    def loss(params, x):
        m, c, w = params
        f = ref(x, m, c, w)
        g = torch.func.vmap(torch.func.grad(lambda xi: ref(xi, m, c, w)))(x)
        return f.square().mean() + (g.norm(dim=-1) - 1).square().mean()

    step = torch.compile(torch.func.grad(loss), dynamic=True)

    def eikonal(x, m, c, w):
        grads = step((m, c, w), x)
        for p, g in zip((m, c, w), grads):
            p.grad = g
    return {"first": first, "eikonal": eikonal}


def steps(fn):
    def first(x, m, c, w):
        loss = fn(x, m, c, w).square().mean()
        loss.backward()

    def eikonal(x, m, c, w):
        x = x.detach().requires_grad_()
        f = fn(x, m, c, w)
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        loss = f.square().mean() + (g.norm(dim=-1) - 1).square().mean()
        loss.backward()
    return {"first": first, "eikonal": eikonal}


def timed(call, device, reps=10):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        call()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="10000x10000,100000x10000,1000000x10000",
                    help="comma-separated BxN")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device(args.device)
    peers = {"gaussfield": steps(gaussfield.gaussian_field), "compiled": compiled_steps()}
    rows = []
    oom = set()
    for size in args.sizes.split(","):
        B, N = (int(v) for v in size.split("x"))
        for peer, peer_steps in peers.items():
            for kind, step in peer_steps.items():
                r = {"B": B, "N": N, "peer": peer, "kind": kind}
                if (peer, kind) in oom:
                    r["result"] = "not run (failed at a smaller size)"
                    rows.append(r)
                    continue
                x, m, c, w = make(B, N, device)
                try:
                    ms, peak = timed(lambda: step(x, m, c, w), device)
                    r.update(ms=ms, peak_extra_MiB=peak)
                except Exception as e:  # noqa: BLE001 -- running out of memory is a result
                    if is_oom(e):
                        r["result"] = "out of memory"
                        oom.add((peer, kind))
                    elif peer == "compiled":  # a peer that does not run here: say why, go on
                        r["result"] = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                        oom.add((peer, kind))
                    else:
                        raise
                finally:
                    del x, m, c, w
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(r)
                print(f"B={B:>8,} N={N:>6,} {peer:10s} {kind:8s} "
                      + (f"{r['ms']:9.3f} ms  peak +{r['peak_extra_MiB']:.1f} MiB" if "ms" in r and r["peak_extra_MiB"] is not None
                         else f"{r.get('ms', 0):9.3f} ms" if "ms" in r else r["result"]), flush=True)
    env = {"date": _dt.date.today().isoformat(), "device": device_name(device), "torch": torch.__version__}
    lines = [f"# Second order: {env['device']}, {env['date']}", "", f"torch {env['torch']}, float32, cov_tril, "
             "the notebook's initial scale. first: mean(f^2) backward to the Gaussians; eikonal: + mean((|df/dx| - 1)^2) "
             "through create_graph=True. Median ms (peak extra MiB).", "",
             "| B | N | peer | first | eikonal |", "|---:|---:|---|---:|---:|"]
    for (B, N, peer) in dict.fromkeys((r["B"], r["N"], r["peer"]) for r in rows):
        cells = []
        for kind in ("first", "eikonal"):
            r = next(r for r in rows if (r["B"], r["N"], r["peer"], r["kind"]) == (B, N, peer, kind))
            cells.append(f"{r['ms']:.3f} ({r['peak_extra_MiB']:.0f})" if "ms" in r and r["peak_extra_MiB"] is not None
                         else f"{r['ms']:.3f}" if "ms" in r else r["result"])
        lines.append(f"| {B:,} | {N:,} | {peer} | {cells[0]} | {cells[1]} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        stem = Path(args.out) / f"autodiff-{slug(device)}-{env['date']}"
        stem.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
