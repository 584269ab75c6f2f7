# SPDX-License-Identifier: Apache-2.0
"""torch.compile(fullgraph=True) traces the op and its backward without a graph break
and gives the eager result, for every parameterisation (a covariance matrix Sigma and
the named factor too)."""
import pytest
import torch

import gaussfield
import field_reference as fr
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("whitened", [False, True], ids=["sigma", "factor"])
def test_compiled_matrix_modes(device, whitened):
    """cov [N, 3, 3] as a covariance matrix (its eager positive-definiteness check is not
    traced) and as the factor named by whitened=True, with a cutoff (the culled node)."""
    x, means, cov, w = make_inputs(30, 7, "full", torch.float64, device, 16)
    sigma = fr.sigma_of(cov.cpu(), 1e-6).to(device)
    cov = torch.linalg.inv(torch.linalg.cholesky(sigma)) if whitened else sigma
    ins = [t.clone().requires_grad_() for t in (x, means, cov, w)]

    def loss(x, m, c, w):
        return gaussfield.gaussian_field(x, m, c, w, cutoff=3.0, whitened=whitened).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(*ins), ins)
    want = torch.autograd.grad(loss(*ins), ins)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
