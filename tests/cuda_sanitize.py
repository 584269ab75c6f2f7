# SPDX-License-Identifier: Apache-2.0
"""Forward + backward on CUDA at sizes that leave partial tiles everywhere, under several
launch configurations, with one and several channels (partial channel blocks) and with
and without a cutoff, the quaternion mode, a covariance matrix Sigma [N, 3, 3] and the
whitening factor (whitened=True), and the culled path, checked against the CPU.  Run under
compute-sanitizer (memcheck, racecheck, initcheck) by benchmarks/gpu_session.sh; not
collected by pytest.  `python tests/cuda_sanitize.py culled` runs the culled cases and
the double backward's alone."""
import os
import sys

import torch

import gaussfield

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_inputs, rel_err  # noqa: E402
from field_reference import sigma_of  # noqa: E402

CONFIGS = ["", "points_r=8,points_warps=3,gauss_k=2,gauss_warps=5,chunks=3",
           "points_r=1,points_warps=8,gauss_k=4,gauss_warps=8,chunks=2,channel_block=4"]


def check(B, N, mode, dtype, channels, cutoff):
    ins = make_inputs(B, N, {"quat": "diag", "sigma": "full", "factor": "full"}.get(mode, mode),
                      dtype, "cpu", B + N)
    if mode == "quat":  # 3DGS: (quaternion, log-scales), one quaternion zero
        quat = torch.randn(N, 4, generator=torch.Generator().manual_seed(B), dtype=dtype)
        quat[0] = 0.0
        ins[2] = torch.cat([quat, ins[2]], 1)
    if mode in ("sigma", "factor"):  # a covariance matrix (not symmetric), or its factor
        sigma = sigma_of(ins[2].double(), 1e-6)
        if mode == "sigma":
            ins[2] = (sigma + 0.1 * torch.linspace(-1, 1, 9, dtype=torch.float64).view(3, 3)).to(dtype)
        else:
            ins[2] = torch.linalg.inv(torch.linalg.cholesky(sigma)).to(dtype)
    whitened = mode == "factor"
    if channels:
        ins[3] = torch.randn(N, channels, dtype=dtype)
    g = torch.randn(B, *([channels] if channels else []), dtype=dtype)
    cpu_in = [t.clone().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*cpu_in, cutoff=cutoff, whitened=whitened)
    want = [out, *torch.autograd.grad(out, cpu_in, g)]
    gpu_in = [t.cuda().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*gpu_in, cutoff=cutoff, whitened=whitened)
    got = [out, *torch.autograd.grad(out, gpu_in, g.cuda())]
    torch.cuda.synchronize()
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    errs = [rel_err(a, b) for a, b in zip(got, want)]
    assert max(errs) < tol, (B, N, mode, dtype, channels, cutoff, errs)


for cfg in CONFIGS if sys.argv[1:] != ["culled"] else []:
    os.environ["GAUSSFIELD_CUDA_CONFIG"] = cfg
    for B, N in [(37, 45), (301, 130)]:
        for mode in ("full", "diag"):
            for dtype in (torch.float32, torch.float64):
                for channels, cutoff in [(0, None), (3, None), (11, 3.0), (0, 2.5)]:
                    check(B, N, mode, dtype, channels, cutoff)
        for dtype in (torch.float32, torch.float64):
            for mode in ("quat", "sigma", "factor"):
                check(B, N, mode, dtype, 3, 2.5)
# the culled path (forced): cells with partial chunks, channel blocks, both dtypes
os.environ["GAUSSFIELD_CUDA_CONFIG"] = ""
os.environ["GAUSSFIELD_CULLING"] = "always"
for B, N in [(37, 45), (301, 130), (3000, 700)]:
    for mode in ("full", "diag", "quat", "sigma", "factor"):
        for dtype in (torch.float32, torch.float64):
            for channels, cutoff in [(0, 2.5), (3, 3.0), (11, 2.0)]:
                check(B, N, mode, dtype, channels, cutoff)
# the points kernel in blocks of one warp (eight slots a thread), as large problems take it
os.environ["GAUSSFIELD_CUDA_CONFIG"] = "cull_warps=1"
for B, N in [(37, 45), (3000, 700)]:
    for dtype in (torch.float32, torch.float64):
        check(B, N, "full", dtype, 0, 2.5)
os.environ["GAUSSFIELD_CUDA_CONFIG"] = ""
del os.environ["GAUSSFIELD_CULLING"]


def check_second(B, N, dtype, channels, cutoff):
    """The double backward op (every output, every direction) against the CPU."""
    x, m, c, w = make_inputs(B, N, "full", torch.float64, "cpu", B + N)
    M = torch.linalg.inv(torch.linalg.cholesky(
        torch.linalg.inv(gaussfield.reference.inverse_covariance(c))))
    if channels:
        w = torch.randn(N, channels, dtype=torch.float64)
    g = torch.randn(B, *([channels] if channels else []), dtype=torch.float64)
    dirs = [torch.randn_like(t) for t in (x, m, M, w)]
    ins = [t.to(dtype) for t in (g, x, m, M, w, *dirs)]
    op = torch.ops.gaussfield.gaussian_field_double_backward
    want = op(*ins[:5], 1e-6, cutoff, *ins[5:], [True] * 5)
    got = op(*[t.cuda() for t in ins[:5]], 1e-6, cutoff, *[t.cuda() for t in ins[5:]], [True] * 5)
    torch.cuda.synchronize()
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    errs = [rel_err(a, b) for a, b in zip(got, want)]
    assert max(errs) < tol, (B, N, dtype, channels, cutoff, errs)


for B, N in [(37, 45), (301, 130)]:
    for dtype in (torch.float32, torch.float64):
        for channels, cutoff in [(0, None), (3, 2.5), (11, None)]:
            check_second(B, N, dtype, channels, cutoff)
print("cuda_sanitize: all checks passed")
