# SPDX-License-Identifier: Apache-2.0
"""Where one small training step goes (the issue's S case, B = 500, N = 1000).

Times (median, CUDA events on a GPU) the whole step and its parts, then prints
torch.profiler's table of CPU and device time per op.  A diagnostic companion to
bench.py: it explains a number, it does not produce one for the results table.
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import gaussfield
from gaussfield.notebook import FastLearnableGaussianField

device = torch.device(sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
B, N = 500, 1000
torch.manual_seed(0)
FastLearnableGaussianField.forward = gaussfield.fused_forward
model = FastLearnableGaussianField(N).to(device)
model32 = FastLearnableGaussianField(N).to(device).float()  # cov_tril float32: no cast
x = torch.rand(B, 3, device=device) * 10
target = torch.rand(B, device=device)
g = torch.randn(B, device=device)
means, cov, w = model32.means.detach(), model32.cov_tril.detach(), model32.weights.detach()


def med_ms(fn, reps=300):
    for _ in range(30):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            t.append(a.elapsed_time(b))
        else:
            s = time.perf_counter()
            fn()
            t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(t)


def step(m):
    def run():
        m.zero_grad(set_to_none=True)
        F.mse_loss(m(x), target).backward()
    return run


def wall(fn, reps=300):
    """Per-call wall time with the host waiting for the device each time."""
    for _ in range(30):
        fn()
    torch.cuda.synchronize() if device.type == "cuda" else None
    s = time.perf_counter()
    for _ in range(reps):
        fn()
        torch.cuda.synchronize() if device.type == "cuda" else None
    return (time.perf_counter() - s) / reps * 1e3


rows = [
    ("train step, notebook module (float64 cov_tril)", med_ms(step(model))),
    ("train step, float32 module (no cast)", med_ms(step(model32))),
    ("train step, wall clock with sync", wall(step(model32))),
    ("forward op alone", med_ms(lambda: torch.ops.gaussfield.gaussian_field(x, means, cov, w, 1e-6))),
    ("backward op alone (means, cov, weights)", med_ms(
        lambda: torch.ops.gaussfield.gaussian_field_backward(g, x, means, cov, w, 1e-6, None, [False, True, True, True]))),
    ("mse forward+backward alone", med_ms(lambda: F.mse_loss(g.requires_grad_(), target).backward())),
]
for name, ms in rows:
    print(f"{name:50s} {ms * 1e3:9.1f} us")

from torch.profiler import ProfilerActivity, profile  # noqa: E402

acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
run = step(model32)
with profile(activities=acts) as prof:
    for _ in range(50):
        run()
    torch.cuda.synchronize() if device.type == "cuda" else None
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=55))
