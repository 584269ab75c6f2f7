# SPDX-License-Identifier: Apache-2.0
import os

import pytest
import torch

import gaussfield  # noqa: F401  (loads the ops)

# (not the dispatcher's table: a build without CUDA kernels registers CUDA kernels that
# raise an error saying so, torch_ext/missing_kernels.cpp)
CUDA_KERNELS = gaussfield.build_info()["cuda_kernels"]
HAS_GPU = torch.cuda.is_available()
CUDA_OK = HAS_GPU and CUDA_KERNELS

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not CUDA_OK, reason="no CUDA GPU, or gaussfield built without CUDA"),
    ),
]
DTYPES = [torch.float32, torch.float64]
MODES = ["full", "diag"]
requires_cuda = pytest.mark.skipif(not CUDA_OK, reason="no CUDA GPU, or gaussfield built without CUDA")


def make_inputs(B, N, mode, dtype, device, seed, *, batch_shape=None, requires_grad=False):
    """Random, realistic inputs: points and means in a [0, 10]^3 volume, scales near the
    notebook's initial 10 / cbrt(N) with noise, off-diagonal Cholesky entries of that
    order, signed weights.  Never zeros."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 / max(N, 1) ** (1.0 / 3.0)
    shape = (B, 3) if batch_shape is None else (*batch_shape, 3)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 10.0
    means = torch.rand(N, 3, generator=g, dtype=torch.float64) * 10.0
    log_s = torch.log(torch.tensor(scale, dtype=torch.float64)) + 0.3 * torch.randn(N, 3, generator=g, dtype=torch.float64)
    if mode == "full":
        cov = torch.empty(N, 6, dtype=torch.float64)
        cov[:, [0, 2, 5]] = log_s
        cov[:, [1, 3, 4]] = 0.4 * scale * torch.randn(N, 3, generator=g, dtype=torch.float64)
    else:
        cov = log_s
    weights = torch.randn(N, generator=g, dtype=torch.float64)
    out = [t.to(device=device, dtype=dtype) for t in (x, means, cov, weights)]
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return out


def rel_err(a, ref):
    """||a - ref|| / ||ref|| in float64 (ref may not be all zeros)."""
    a = a.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


# Property-based tests (hypothesis): a fixed, repeatable search by default; a longer,
# random one with HYPOTHESIS_PROFILE=long.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
