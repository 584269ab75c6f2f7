# SPDX-License-Identifier: Apache-2.0
"""The training step (forward, MSE, backward, Adam) eager and captured in one CUDA graph,
on static data, at B = 500, N = 1,000 (host-bound) and B = 10^5, N = 10^4.  Medians of
CUDA-event times over 200 steps after warm-up.  Prints a Markdown table; --out writes it
(and JSON) as graph-step-<device>-<date>.{md,json}.

    python benchmarks/bench_graph_step.py [--out benchmarks/results]
"""
import argparse
import datetime as _dt
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import gaussfield
from gaussfield._devices import device_name, slug
from gaussfield.notebook import FastLearnableGaussianField


class Patched(FastLearnableGaussianField):
    forward = gaussfield.fused_forward


def timed(fn, reps=200):
    for _ in range(10):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def measure(B, N, graphed):
    torch.manual_seed(0)
    model = Patched(N).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    x = torch.rand(B, 3, device="cuda") * 10
    t = torch.rand(B, device="cuda")

    def step():
        loss = F.mse_loss(model(x), t)
        loss.backward()
        opt.step()

    if not graphed:
        def eager():
            opt.zero_grad(set_to_none=True)
            step()
        return timed(eager)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return timed(graph.replay)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for B, N in [(500, 1_000), (100_000, 10_000)]:
        rows.append({"B": B, "N": N, "eager_ms": measure(B, N, False), "graph_ms": measure(B, N, True)})
    dev = torch.device("cuda")
    env = {"device": device_name(dev), "torch": torch.__version__, "date": _dt.date.today().isoformat()}
    md = [f"# Training step, eager and in one CUDA graph: {env['device']}, torch {env['torch']}, {env['date']}",
          "", "Static data; Adam (capturable); median of 200 steps, CUDA events.", "",
          "| B | N | eager | one CUDA graph | speed-up |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['B']} | {r['N']} | {r['eager_ms']:.3f} ms | {r['graph_ms']:.3f} ms | "
                  f"{r['eager_ms'] / r['graph_ms']:.1f}x |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"graph-step-{slug(dev)}-{env['date']}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
