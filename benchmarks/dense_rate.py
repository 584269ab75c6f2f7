# SPDX-License-Identifier: Apache-2.0
"""The dense kernels' pair rate on one device: forward, backward to the points and
backward to the Gaussians, float32, no cutoff, the median of CUDA-event-timed calls.
For comparing two builds of the same kernels (run it under each, alternating):

    python benchmarks/dense_rate.py [--sizes 100000x10000,1000000x20000] [--json OUT]
"""
import argparse
import json
import statistics

import torch

import gaussfield


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000x10000,1000000x20000")
    ap.add_argument("--json")
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for size in a.sizes.split(","):
        B, N = map(int, size.split("x"))
        x = torch.rand(B, 3, device="cuda", generator=g) * 10
        m = torch.rand(N, 3, device="cuda", generator=g) * 10
        c = torch.randn(N, 6, device="cuda", generator=g) * 0.1 - 0.77
        w = torch.randn(N, device="cuda", generator=g)
        go = torch.randn(B, device="cuda", generator=g)
        bw = torch.ops.gaussfield.gaussian_field_backward
        t = {"fwd": timed(lambda: gaussfield.gaussian_field(x, m, c, w)),
             "grad_x": timed(lambda: bw(go, x, m, c, w, 1e-6, None, [True, False, False, False])),
             "grad_gauss": timed(lambda: bw(go, x, m, c, w, 1e-6, None, [False, True, True, True]))}
        row = {"B": B, "N": N, **{k + "_ms": v for k, v in t.items()},
               **{k + "_pairs_per_s": B * N / (v * 1e-3) for k, v in t.items()}}
        rows.append(row)
        print(f"B={B} N={N}: " + ", ".join(f"{k} {v:.3f} ms ({B * N / (v * 1e-3):.3e} pairs/s)"
                                           for k, v in t.items()), flush=True)
    if a.json:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "gaussfield": gaussfield.__file__, "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
