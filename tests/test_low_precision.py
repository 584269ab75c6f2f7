# SPDX-License-Identifier: Apache-2.0
"""float16 / bfloat16 inputs and torch.autocast.

Outside autocast, an op with a low-precision input computes in float32 (float64 where
another input is float64) and returns x's dtype; each gradient comes back in its input's
dtype.  Under autocast the result is float32 (float64 where promoted).  float32 mixed
with float64 and no low-precision input stays an error."""
import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES, make_inputs

LOW = [torch.float16, torch.bfloat16]


def leaves(ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def value_and_grads(ins, grad_out, **kw):
    out = gaussfield.gaussian_field(*ins, **kw)
    return out, torch.autograd.grad(out, ins, grad_out.to(out.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("low", LOW)
@pytest.mark.parametrize("which", [(0,), (2,), (0, 1, 2, 3)], ids=["x", "cov", "all"])
def test_low_precision_inputs_compute_in_float32(device, mode, low, which):
    base = make_inputs(40, 12, mode, torch.float32, device, 1)
    ins = [t.to(low) if i in which else t for i, t in enumerate(base)]
    go = torch.randn(40, device=device).to(low).float()  # exact in every dtype used
    out, grads = value_and_grads(leaves(ins), go, cutoff=3.0)
    assert out.dtype == ins[0].dtype
    # the same as computing on the inputs' values in float32, then rounding
    up = leaves([t.float() for t in ins])
    want, want_grads = value_and_grads(up, go, cutoff=3.0)
    assert torch.equal(out, want.to(out.dtype))
    for g, w, t in zip(grads, want_grads, ins):
        assert g.dtype == t.dtype
        assert torch.equal(g, w.to(t.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low", LOW)
def test_low_precision_beside_float64_computes_in_float64(device, low):
    x, m, c, w = make_inputs(30, 9, "full", torch.float64, device, 2)
    ins = [x.to(low), m, c, w]
    go = torch.randn(30, device=device).to(low).double()
    out, grads = value_and_grads(leaves(ins), go)
    assert out.dtype == low
    want, want_grads = value_and_grads(leaves([x.to(low).double(), m, c, w]), go)
    assert torch.equal(out, want.to(low))
    assert grads[0].dtype == low and all(g.dtype == torch.float64 for g in grads[1:])
    for g, e in zip(grads[1:], want_grads[1:]):
        assert torch.equal(g, e)


def test_float32_with_float64_stays_an_error():
    x, m, c, w = make_inputs(5, 3, "full", torch.float32, "cpu", 3)
    with pytest.raises(RuntimeError, match="means must have the same dtype as x"):
        gaussfield.gaussian_field(x, m.double(), c, w)


def autocast_dtype(device):
    return torch.bfloat16 if device == "cpu" else torch.float16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_autocast_result_is_float32(device, mode):
    x, m, c, w = make_inputs(33, 10, mode, torch.float32, device, 4)
    low = autocast_dtype(device)
    ins = leaves([x.to(low), m, c, w])
    go = torch.randn(33, device=device)
    with torch.autocast(device, dtype=low):
        out = gaussfield.gaussian_field(*ins)
    assert out.dtype == torch.float32
    grads = torch.autograd.grad(out, ins, go)
    want, want_grads = value_and_grads(leaves([ins[0].float(), m, c, w]), go)
    assert torch.equal(out, want)
    assert grads[0].dtype == low
    assert torch.equal(grads[0], want_grads[0].to(low))
    for g, e in zip(grads[1:], want_grads[1:]):
        assert torch.equal(g, e)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_leaves_float64_alone(device):
    x, m, c, w = make_inputs(20, 6, "diag", torch.float64, device, 5)
    low = autocast_dtype(device)
    with torch.autocast(device, dtype=low):
        out = gaussfield.gaussian_field(x.to(low), m, c, w)
        same = gaussfield.gaussian_field(x, m, c, w)
    assert out.dtype == torch.float64 and same.dtype == torch.float64
    assert torch.equal(same, gaussfield.gaussian_field(x, m, c, w))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_training_step_with_a_network(device):
    """Points from a small network in low precision, the field in float32 parameters."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3).to(device)
    field = gaussfield.GaussianField(16, cutoff=5.0).to(device)
    x = torch.rand(64, 3, device=device) * 10
    target = torch.rand(64, device=device)
    low = autocast_dtype(device)
    with torch.autocast(device, dtype=low):
        pts = net(x)
        assert pts.dtype == low
        f = field(pts)
        assert f.dtype == torch.float32
        loss = torch.nn.functional.mse_loss(f, target)
    loss.backward()
    for p in (*net.parameters(), *field.parameters()):
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile_with_low_precision(device):
    x, m, c, w = make_inputs(9, 5, "full", torch.float32, device, 6)
    args = (x.half(), m, c.bfloat16(), w, 1e-6, None)
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field.default, args)
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_backward.default,
                          (torch.randn(9, device=device).half(), *args, [True] * 4))
    torch._dynamo.reset()
    low = autocast_dtype(device)

    def step(x, m, c, w):
        with torch.autocast(device, dtype=low):
            return gaussfield.gaussian_field(x, m, c, w).square().sum()

    ins = leaves([x.to(low), m, c, w])
    got = torch.autograd.grad(torch.compile(step, fullgraph=True)(*ins), ins)
    want = torch.autograd.grad(step(*ins), ins)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)
