# SPDX-License-Identifier: Apache-2.0
"""Memory grows with B + N, never B x N: autograd saves only the inputs, and the peak
of a forward + backward at B = N = 20000 (a B x N float32 buffer would be 1.6 GB) stays
within a few MB of the inputs and outputs."""
import subprocess
import sys
import textwrap

import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES, make_inputs, requires_cuda


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_autograd_saves_only_the_inputs(device, mode):
    ins = make_inputs(50, 20, mode, torch.float32, device, 31, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = gaussfield.gaussian_field(*ins)
    assert len(saved) == 4
    assert {t.data_ptr() for t in saved} == {t.data_ptr() for t in ins}
    assert sum(t.numel() for t in saved) == sum(t.numel() for t in ins)
    out.sum().backward()


def test_cpu_peak_memory_is_linear():
    script = textwrap.dedent(
        """
        import resource, torch, gaussfield
        B = N = 20000
        x = (torch.rand(B, 3) * 10).requires_grad_()
        m = (torch.rand(N, 3) * 10).requires_grad_()
        c = torch.full((N, 6), -1.0).requires_grad_()
        w = torch.randn(N).requires_grad_()
        gaussfield.gaussian_field(x[:10], m[:10], c[:10], w[:10]).sum().backward()  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gaussfield.gaussian_field(x, m, c, w).sum().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024.0)  # MiB (ru_maxrss is in KiB on Linux)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grown_mib = float(out.stdout.strip())
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB"


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_peak_memory_is_linear(mode):
    B = N = 20000
    ins = make_inputs(B, N, mode, torch.float32, "cuda", 32, requires_grad=True)
    gaussfield.gaussian_field(*ins).sum().backward()  # warm up the allocator
    for t in ins:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gaussfield.gaussian_field(*ins).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    io = sum(t.numel() * 4 for t in ins) + B * 4  # gradients and the output
    assert extra < io + 8 * 2**20, extra
