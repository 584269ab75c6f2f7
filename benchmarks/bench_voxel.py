# SPDX-License-Identifier: Apache-2.0
"""voxelize against the point API at the voxel centres, on the issue's field (issue 21):
means U(0, 10)^3 in the box [0, 10]^3, random rotations, scales 0.5 * 10 / N^(1/3) *
exp(0.25 N(0, 1)) per axis, weights U(0.1, 1); cutoffs 3 and 4; forward and forward +
backward to the Gaussians; medians of CUDA-event times after warm-up, peak memory above
the inputs, max / rms error (relative to max |f|) against the exact field (float64, no
cutoff) on a sample of voxels.  Writes benchmarks/results/voxel-<device>-<date>.{json,md}.

    python3 benchmarks/bench_voxel.py [--device cpu] [--quick] [--out DIR]
"""
import argparse
import datetime
import json
import os
import statistics
import time

import torch

import gaussfield as gf

ROWS = [(20_000, 256), (100_000, 256), (1_000_000, 256), (100_000, 128), (1_000_000, 512)]


def field(n, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=torch.float64) * 10
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    scale = 0.5 * 10 / n ** (1 / 3) * torch.exp(0.25 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    cov = torch.cat([q, scale.log()], 1)  # the 3DGS form [N, 7]
    w = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.1
    return [t.to(device, torch.float32) for t in (means, cov, w)]


def timed(fn, device, reps):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak(fn, device):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="N = 10^5 at 256^3 only")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    dev = a.device
    rows = ROWS[1:2] if a.quick else ROWS
    if dev == "cpu":  # the CPU runs are minutes at the GPU's sizes
        rows = [(10_000, 128), (100_000, 128)]
    box = dict(lo=(0.0, 0.0, 0.0), hi=(10.0, 10.0, 10.0))
    results = []
    for n, d in rows:
        m, c, w = field(n, device=dev)
        shape = (d, d, d)
        x = gf.voxel_centres(shape, dtype=torch.float32, device=dev, **box) if d <= 256 else None
        # the exact field on a sample of voxels (float64, no cutoff, on the device)
        gen = torch.Generator().manual_seed(1)
        idx = torch.randint(0, d, (4096, 3), generator=gen)
        xs = (idx.to(torch.float64) + 0.5) * 10.0 / d
        exact = gf.gaussian_field(xs.to(dev), m.double(), c.double(), w.double()).cpu()
        fmax = exact.abs().max().item()
        go = torch.randn(shape, device=dev)
        for k in (3.0, 4.0):
            leaves = [t.clone().requires_grad_() for t in (m, c, w)]

            def vox_fwd():
                with torch.no_grad():
                    return gf.voxelize(m, c, w, shape=shape, cutoff=k, **box)

            def vox_train():
                out = gf.voxelize(*leaves, shape=shape, cutoff=k, **box)
                torch.autograd.grad(out, leaves, go)

            def pts_fwd():
                with torch.no_grad():
                    return gf.gaussian_field(x, m, c, w, cutoff=k)

            def pts_train():
                out = gf.gaussian_field(x, *leaves, cutoff=k)
                torch.autograd.grad(out, leaves, go)

            f = vox_fwd()
            got = f[idx[:, 0].to(dev), idx[:, 1].to(dev), idx[:, 2].to(dev)].cpu().double()
            err = (got - exact).abs()
            del f
            row = dict(n=n, grid=d, cutoff=k,
                       voxel_fwd_ms=timed(vox_fwd, dev, a.reps),
                       voxel_train_ms=timed(vox_train, dev, a.reps),
                       voxel_fwd_mib=peak(vox_fwd, dev), voxel_train_mib=peak(vox_train, dev),
                       max_err=err.max().item() / fmax, rms_err=err.pow(2).mean().sqrt().item() / fmax)
            if x is not None:
                row.update(points_fwd_ms=timed(pts_fwd, dev, a.reps),
                           points_train_ms=timed(pts_train, dev, a.reps),
                           points_fwd_mib=peak(pts_fwd, dev), points_train_mib=peak(pts_train, dev))
            print(json.dumps(row), flush=True)
            results.append(row)
        del x, go
        if dev == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name().replace(" ", "-") if dev == "cuda" else "cpu"
    stem = os.path.join(a.out, f"voxel-{name}-{datetime.date.today().isoformat()}")
    os.makedirs(a.out, exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(dict(device=name, torch=torch.__version__, rows=results), fh, indent=1)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| N | grid | k | voxelize fwd / fwd+bwd ms | MiB | points fwd / fwd+bwd ms | MiB | max / rms err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['grid']}^3 | {r['cutoff']:g} | "
                     f"{r['voxel_fwd_ms']:.2f} / {r['voxel_train_ms']:.2f} | "
                     f"{fmt(r['voxel_fwd_mib'], '.0f')} / {fmt(r['voxel_train_mib'], '.0f')} | "
                     f"{fmt(r.get('points_fwd_ms'), '.2f')} / {fmt(r.get('points_train_ms'), '.2f')} | "
                     f"{fmt(r.get('points_fwd_mib'), '.0f')} / {fmt(r.get('points_train_mib'), '.0f')} | "
                     f"{r['max_err']:.1e} / {r['rms_err']:.1e} |")
    with open(stem + ".md", "w") as fh:
        fh.write(f"# voxelize, {name}, {datetime.date.today().isoformat()}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
