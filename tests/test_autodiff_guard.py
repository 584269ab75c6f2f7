"""What autodiff does not support yet says so, never a silently wrong derivative:
forward mode (forward_ad, torch.func.jvp / jacfwd / hessian) and torch.func's reverse
transforms raise a clear error; reverse mode, compile and opcheck keep working."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp

import gaussfield
from conftest import DEVICES, MODES, make_inputs


def field(device, mode):
    x, m, c, w = make_inputs(7, 5, mode, torch.float64, device, 0)
    return x, (lambda xx: gaussfield.gaussian_field(xx, m, c, w)), (m, c, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", range(4))
def test_forward_ad_raises_for_every_input(device, mode, which):
    ins = list(make_inputs(7, 5, mode, torch.float64, device, 1))
    with fwAD.dual_level():
        ins[which] = fwAD.make_dual(ins[which], torch.ones_like(ins[which]))
        with pytest.raises(RuntimeError, match="forward-mode AD .* not supported"):
            gaussfield.gaussian_field(*ins)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "transform",
    [
        lambda f, x: jacfwd(f)(x),
        lambda f, x: jvp(f, (x,), (torch.ones_like(x),)),
        lambda f, x: hessian(lambda y: f(y).sum())(x),
    ],
    ids=["jacfwd", "jvp", "hessian"],
)
def test_functorch_forward_mode_raises(device, transform):
    x, f, _ = field(device, "full")
    with pytest.raises(RuntimeError, match="forward-mode AD .* not supported"):
        transform(f, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "transform",
    [lambda f, x: grad(lambda y: f(y).sum())(x), lambda f, x: jacrev(f)(x)],
    ids=["grad", "jacrev"],
)
def test_functorch_reverse_transforms_raise_clearly(device, transform):
    x, f, _ = field(device, "full")
    with pytest.raises(RuntimeError, match="gaussfield: torch.func"):
        transform(f, x)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_refuses_dual_tensors(device):
    x, m, c, w = make_inputs(7, 5, "diag", torch.float64, device, 2)
    g = torch.randn(7, dtype=torch.float64, device=device)
    with fwAD.dual_level():
        gd = fwAD.make_dual(g, torch.ones_like(g))
        with pytest.raises(RuntimeError, match="forward-mode AD .* not supported"):
            torch.ops.gaussfield.gaussian_field_backward(gd, x, m, c, w, 1e-6, None, [True] * 4)


@pytest.mark.parametrize("device", DEVICES)
def test_reverse_mode_and_opcheck_still_work(device):
    ins = make_inputs(9, 6, "full", torch.float64, device, 3, requires_grad=True)
    assert torch.autograd.gradcheck(gaussfield.gaussian_field, tuple(ins))
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field.default, (*ins, 1e-6))
    plain = [t.detach() for t in ins]
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_backward.default,
                          (torch.randn(9, dtype=torch.float64, device=device), *plain, 1e-6, None,
                           [True, True, True, True]))
