"""Forward + backward on CUDA at sizes that leave partial tiles everywhere, under several
launch configurations, checked against the CPU.  Run under compute-sanitizer (memcheck,
racecheck) by benchmarks/gpu_session.sh; not collected by pytest."""
import os
import sys

import torch

import gaussfield

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_inputs, rel_err  # noqa: E402

CONFIGS = ["", "points_r=8,points_warps=3,gauss_k=2,gauss_warps=5,chunks=3",
           "points_r=1,points_warps=8,gauss_k=4,gauss_warps=8,chunks=2"]


def check(B, N, mode, dtype):
    ins = make_inputs(B, N, mode, dtype, "cpu", B + N)
    g = torch.randn(B, dtype=dtype)
    cpu_in = [t.clone().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*cpu_in)
    want = [out, *torch.autograd.grad(out, cpu_in, g)]
    gpu_in = [t.cuda().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*gpu_in)
    got = [out, *torch.autograd.grad(out, gpu_in, g.cuda())]
    torch.cuda.synchronize()
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    errs = [rel_err(a, b) for a, b in zip(got, want)]
    assert max(errs) < tol, (B, N, mode, dtype, errs)


for cfg in CONFIGS:
    os.environ["GAUSSFIELD_CUDA_CONFIG"] = cfg
    for B, N in [(37, 45), (301, 130)]:
        for mode in ("full", "diag"):
            for dtype in (torch.float32, torch.float64):
                check(B, N, mode, dtype)
print("cuda_sanitize: all checks passed")
