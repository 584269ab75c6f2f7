# SPDX-License-Identifier: Apache-2.0
"""Where voxelize spends its time on CUDA (issue 21): the kernels of the forward and of the
backward alone (the registered voxelize_backward op, grad_out given), for the issue's field
(bench_voxel.field) on a 256^3 grid, cutoffs 3 and 4, both tile sides; the point API's
backward beside it.  CUDA-event medians and torch.profiler's per-kernel totals.

    python3 benchmarks/profile_voxel.py [--n 100000] [--grid 256]
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import bench_voxel  # noqa: E402

import gaussfield as gf  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--grid", type=int, default=256)
    a = ap.parse_args()
    m, c, w = bench_voxel.field(a.n)
    d = a.grid
    shape = (d, d, d)
    box = dict(lo=(0.0, 0.0, 0.0), hi=(10.0, 10.0, 10.0))
    go = torch.randn(shape, device="cuda")
    x = gf.voxel_centres(shape, dtype=torch.float32, device="cuda", **box)
    grid = dict(shape=list(shape), origin=[0.0] * 3,
                edges=[10.0, 0, 0, 0, 10.0, 0, 0, 0, 10.0], offset=[0, 0, 0], size=list(shape))
    for tile in ("4", "8"):
        os.environ["GAUSSFIELD_CUDA_CONFIG"] = f"voxel_tile={tile}"
        for k in (3.0, 4.0):
            def fwd():
                return gf.voxelize(m, c, w, shape=shape, cutoff=k, **box)

            def bwd():
                return torch.ops.gaussfield.voxelize_backward(
                    go, m, c, w, grid["shape"], grid["origin"], grid["edges"], grid["offset"],
                    grid["size"], gf.DEFAULT_EPS, k, [True, True, True])

            def pbwd():
                return torch.ops.gaussfield.gaussian_field_backward(
                    go, x, m, c, w, gf.DEFAULT_EPS, k, [False, True, True, True])

            try:
                ref = gf.voxelize(m.double(), c.double(), w.double(), shape=(8, 8, 8), cutoff=k, **box)
                del ref
                line = f"tile {tile} k {k:g}:"
                for name, fn in (("fwd", fwd), ("bwd", bwd), ("points bwd", pbwd)):
                    try:
                        line += f" {name} {bench_voxel.timed(fn, 'cuda', 10):.3f} ms"
                    except Exception as e:  # one failing timing must not hide the others
                        line += f" {name} {type(e).__name__}: {str(e)[:200]}"
                print(line, flush=True)
                for name, fn in (("fwd", fwd), ("bwd", bwd)):
                    fn()
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            fn()
                        torch.cuda.synchronize()
                    print(f"-- {name}, tile {tile}, k {k:g}, 5 calls")
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8,
                                                    max_name_column_width=70))
            except Exception as e:  # a case that fails is reported, the others still run
                print(f"tile {tile} k {k:g}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
