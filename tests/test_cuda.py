# SPDX-License-Identifier: Apache-2.0
"""CUDA-specific behaviour: agreement with the CPU, the current stream, any device
index, bitwise determinism, and every launch configuration of the kernels."""
import os

import pytest
import torch

import gaussfield
from conftest import MODES, make_inputs, rel_err, requires_cuda

pytestmark = requires_cuda


def all_results(ins, grad_out):
    ins = [t.detach().clone().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*ins)
    return [out.detach(), *torch.autograd.grad(out, ins, grad_out)]


# sizes chosen to leave partial tiles everywhere (warps, blocks, chunks, staging)
SIZES = [(1, 1), (31, 33), (257, 1025), (5000, 70), (3, 4000), (20011, 2003)]


@pytest.mark.parametrize("B, N", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(B, N, mode, dtype):
    ins = make_inputs(B, N, mode, dtype, "cpu", 41)
    g = torch.randn(B, dtype=dtype, generator=torch.Generator().manual_seed(1))
    cpu = all_results(ins, g)
    gpu = all_results([t.cuda() for t in ins], g.cuda())
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for name, a, b in zip(("out", "x", "means", "cov", "weights"), gpu, cpu):
        assert a.device.type == "cuda"
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


CONFIGS = [
    "points_r=1,points_warps=1,gauss_k=1,gauss_warps=1,chunks=1",
    "points_r=2,points_warps=3,gauss_k=2,gauss_warps=5,chunks=3",
    "points_r=4,points_warps=8,gauss_k=4,gauss_warps=8,chunks=7",
    "points_r=8,points_warps=6,gauss_k=1,gauss_warps=2,chunks=64",
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_launch_configuration(config, dtype, monkeypatch):
    ins = make_inputs(3001, 517, "full", dtype, "cuda", 42)
    g = torch.randn(3001, dtype=dtype, device="cuda")
    ref = all_results([t.cpu().double() for t in ins], g.cpu().double())
    monkeypatch.setenv("GAUSSFIELD_CUDA_CONFIG", config)
    got = all_results(ins, g)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(got, ref):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("mode", MODES)
def test_runs_on_the_current_stream(mode):
    """The inputs are written on a side stream that is busy first; an op that launched
    on another stream would read them before they exist."""
    ins = make_inputs(4000, 500, mode, torch.float32, "cuda", 43)
    g = torch.randn(4000, device="cuda")
    expected = all_results(ins, g)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        late = [t * 1.0 for t in ins]
        gl = g * 1.0
        got = all_results(late, gl)
    side.synchronize()
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_any_device_index():
    for index in range(torch.cuda.device_count()):
        dev = torch.device("cuda", index)
        ins = make_inputs(300, 40, "full", torch.float64, dev, 44)
        g = torch.randn(300, dtype=torch.float64, device=dev)
        with torch.cuda.device(torch.cuda.device_count() - 1 - index):  # another current device
            got = all_results(ins, g)
        ref = all_results([t.cpu() for t in ins], g.cpu())
        for a, b in zip(got, ref):
            assert a.device == dev
            assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_bitwise_deterministic(mode, deterministic):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        ins = make_inputs(30000, 3000, mode, torch.float32, "cuda", 45)
        g = torch.randn(30000, device="cuda")
        first = all_results(ins, g)
        for _ in range(3):
            for a, b in zip(first, all_results(ins, g)):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(before)




def test_compiled_op_runs_on_the_current_stream():
    """The same under torch.compile: the compiled graph launches on the side stream."""
    ins = make_inputs(4000, 500, "full", torch.float32, "cuda", 46)
    expected = gaussfield.gaussian_field(*ins)
    torch._dynamo.reset()
    fn = torch.compile(lambda x, m, c, w: gaussfield.gaussian_field(x, m, c, w) * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(*ins), 2.0 * expected, rtol=0, atol=0)  # compile first
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        late = [t * 1.0 for t in ins]
        got = fn(*late)
    side.synchronize()
    assert torch.equal(got, 2.0 * expected)
