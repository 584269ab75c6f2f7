"""torch.compile(fullgraph=True) traces the op and its backward without a graph break
and gives the eager result."""
import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES, make_inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_compiled_module_matches_eager(device, mode):
    torch.manual_seed(0)
    model = gaussfield.GaussianField(32, use_full_cov=(mode == "full")).to(device)
    x = torch.rand(50, 3, device=device) * 10
    target = torch.rand(50, device=device)

    def step(m):
        m.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), target)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    loss_c, grads_c = step(compiled)
    loss_e, grads_e = step(model)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_function_dynamic_shapes(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda x, m, c, w: gaussfield.gaussian_field(x, m, c, w).square().sum(),
                       fullgraph=True, dynamic=True)
    for b, n in [(10, 4), (23, 9), (7, 31)]:
        ins = make_inputs(b, n, "full", torch.float64, device, b, requires_grad=True)
        got = torch.autograd.grad(fn(*ins), ins)
        want = torch.autograd.grad(gaussfield.gaussian_field(*ins).square().sum(), ins)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e)
