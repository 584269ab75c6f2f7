# SPDX-License-Identifier: Apache-2.0
"""The drop-in: GaussianField has the notebook's parameters, initialisation and
state_dict; fused_forward patched into the notebook's classes changes nothing but speed."""
import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES
from notebook import FastLearnableGaussianField, LearnableGaussianField


def loss_and_grads(model, x, target):
    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("full", [True, False])
def test_same_initialisation_and_keys(full):
    torch.manual_seed(123)
    ours = gaussfield.GaussianField(50, volume_size=7.0, use_full_cov=full)
    torch.manual_seed(123)
    theirs = FastLearnableGaussianField(50, volume_size=7.0, use_full_cov=full)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    torch.testing.assert_close(ours.get_covariance(), theirs.get_covariance(), rtol=0, atol=0)


@pytest.mark.parametrize("full", [True, False])
def test_state_dict_round_trip(full):
    theirs = FastLearnableGaussianField(20, use_full_cov=full)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = gaussfield.GaussianField(20, use_full_cov=full)
    ours.load_state_dict(theirs.state_dict())
    back = FastLearnableGaussianField(20, use_full_cov=full)
    back.load_state_dict(ours.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    x = torch.rand(30, 3) * 10
    torch.testing.assert_close(ours(x), theirs(x), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", [FastLearnableGaussianField, LearnableGaussianField])
def test_patched_forward_same_loss_and_grads(device, mode, cls, monkeypatch):
    """`cls.forward = gaussfield.fused_forward` is the only change the user's script needs."""
    torch.manual_seed(7)
    model = cls(40, use_full_cov=(mode == "full")).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.rand(60, 3, device=device, dtype=torch.float64) * 10
    target = torch.rand(60, device=device, dtype=torch.float64)
    loss_ref, grads_ref = loss_and_grads(model, x, target)
    monkeypatch.setattr(cls, "forward", gaussfield.fused_forward)
    loss, grads = loss_and_grads(model, x, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    # a single point gives a 0-d result, as the notebook's forward does
    assert model(x[0]).shape == ()


def test_training_steps_match_notebook(monkeypatch):
    """A few Adam steps with the patched forward follow the notebook's trajectory."""
    def train(patch):
        torch.manual_seed(3)
        model = FastLearnableGaussianField(30).double()
        if patch:
            monkeypatch.setattr(FastLearnableGaussianField, "forward", gaussfield.fused_forward)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x = torch.rand(80, 3, dtype=torch.float64) * 10
        y = torch.sin(x).sum(-1)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        monkeypatch.undo()
        return losses, model.state_dict()

    losses_ref, state_ref = train(False)
    losses, state = train(True)
    assert losses == pytest.approx(losses_ref, rel=1e-10)
    for k in state:
        torch.testing.assert_close(state[k], state_ref[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", [FastLearnableGaussianField, LearnableGaussianField])
def test_patched_forward_on_default_float32_module(device, cls, monkeypatch):
    """The notebook's module as built (float32 means and weights, float64 cov_tril)."""
    torch.manual_seed(11)
    model = cls(40).to(device)
    assert model.cov_tril.dtype == torch.float64 and model.means.dtype == torch.float32
    x = torch.rand(60, 3, device=device) * 10
    target = torch.rand(60, device=device)
    loss_ref, grads_ref = loss_and_grads(model, x, target)
    monkeypatch.setattr(cls, "forward", gaussfield.fused_forward)
    loss, grads = loss_and_grads(model, x, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-7)
    for p, a, b in zip(model.parameters(), grads, grads_ref):
        assert a.dtype == p.dtype
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
