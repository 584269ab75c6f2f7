# SPDX-License-Identifier: Apache-2.0
"""CPU threading goes through torch's pool; results do not depend on the thread count,
repeat bit for bit, and every instruction-set variant of the CPU loops is right."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import gaussfield
from conftest import MODES, make_inputs


def run_all(ins, grad_out):
    ins = [t.detach().clone().requires_grad_() for t in ins]
    out = gaussfield.gaussian_field(*ins)
    return [out.detach(), *torch.autograd.grad(out, ins, grad_out)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thread_count_does_not_change_bits(mode, dtype):
    ins = make_inputs(1000, 300, mode, dtype, "cpu", 21)
    grad_out = torch.randn(1000, dtype=dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run_all(ins, grad_out))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_backward_repeats_bit_for_bit(mode):
    ins = make_inputs(700, 200, mode, torch.float32, "cpu", 22)
    grad_out = torch.randn(700)
    first = run_all(ins, grad_out)
    for _ in range(3):
        for a, b in zip(first, run_all(ins, grad_out)):
            assert torch.equal(a, b)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs /proc and two cores")
@pytest.mark.parametrize("threads", [1, 2])
def test_set_num_threads_is_honoured(threads):
    """The op runs on torch's intra-op pool: it starts no threads of its own, and keeps
    as many cores busy as torch.set_num_threads says (process CPU time over wall time)."""
    script = textwrap.dedent(
        f"""
        import os, time, torch, gaussfield
        torch.set_num_threads({threads})
        x = torch.rand(40000, 3) * 10; m = torch.rand(4000, 3) * 10
        c = torch.full((4000, 6), -0.5); w = torch.randn(4000)
        torch.rand(100000).sum()  # let torch start its pool
        gaussfield.gaussian_field(x[:100], m, c, w)
        tasks = len(os.listdir('/proc/self/task'))
        t0, c0 = time.perf_counter(), time.process_time()
        gaussfield.gaussian_field(x, m, c, w)
        ratio = (time.process_time() - c0) / (time.perf_counter() - t0)
        print(len(os.listdir('/proc/self/task')) - tasks, ratio)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    new_threads, ratio = out.stdout.split()
    assert int(new_threads) == 0
    if threads == 1:
        assert float(ratio) < 1.3, ratio
    else:
        assert float(ratio) > 1.4, ratio


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_cpu_variant_is_right(isa):
    """GAUSSFIELD_CPU_ISA forces a variant (where the processor has it); each must match
    the float64 closed form."""
    script = textwrap.dedent(
        """
        import sys, torch, gaussfield
        sys.path.insert(0, %r)
        from conftest import make_inputs, rel_err
        worst = 0.0
        for mode in ("full", "diag"):
            for dtype in (torch.float32, torch.float64):
                ins = [t.requires_grad_() for t in make_inputs(333, 77, mode, dtype, "cpu", 23)]
                ref_ins = [t.detach().double().requires_grad_() for t in ins]
                g = torch.randn(333, dtype=torch.float64)
                out = gaussfield.gaussian_field(*ins)
                ref = gaussfield.gaussian_field_reference(*ref_ins)
                got = [out, *torch.autograd.grad(out, ins, g.to(dtype))]
                want = [ref, *torch.autograd.grad(ref, ref_ins, g)]
                tol = 1e-5 if dtype == torch.float32 else 1e-12
                for a, b in zip(got, want):
                    assert rel_err(a, b) < tol, (mode, dtype, rel_err(a, b))
        print("ok")
        """
        % os.path.dirname(__file__)
    )
    env = dict(os.environ, GAUSSFIELD_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_one_openmp_runtime():
    """gaussfield uses torch's OpenMP runtime; it never loads a second one beside it."""
    script = textwrap.dedent(
        """
        import torch, gaussfield
        x = torch.rand(5000, 3); m = torch.rand(100, 3); c = torch.zeros(100, 3); w = torch.ones(100)
        gaussfield.gaussian_field(x, m, c, w)
        libs = {l.split()[-1] for l in open('/proc/self/maps')
                if any(k in l for k in ('libgomp', 'libiomp', 'libomp'))}
        print(len(libs))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) <= 1
