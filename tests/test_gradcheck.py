# SPDX-License-Identifier: Apache-2.0
"""torch.autograd.gradcheck in float64, every input (x included), both modes, and
torch.library.opcheck on both ops."""
import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES, make_inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_shape", [None, (2, 3)])
def test_gradcheck_all_inputs(device, mode, batch_shape):
    x, means, cov, weights = make_inputs(6, 5, mode, torch.float64, device, 3, batch_shape=batch_shape,
                                         requires_grad=True)
    assert torch.autograd.gradcheck(gaussfield.gaussian_field, (x, means, cov, weights))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wanted", [(0,), (1,), (2,), (3,), (1, 2, 3)])
def test_gradcheck_subsets(device, mode, wanted):
    """Gradients asked for alone are right too (the backward skips the others)."""
    ins = make_inputs(7, 4, mode, torch.float64, device, 4)
    for i in wanted:
        ins[i].requires_grad_()
    assert torch.autograd.gradcheck(gaussfield.gaussian_field, tuple(ins))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(device, mode, dtype):
    x, means, cov, weights = make_inputs(9, 5, mode, dtype, device, 5)
    op = torch.ops.gaussfield.gaussian_field
    torch.library.opcheck(op, (x, means, cov, weights, 1e-6))
    torch.library.opcheck(op, (x.requires_grad_(), means, cov.requires_grad_(), weights, 1e-6))
    torch.library.opcheck(op, (x[:, :1].expand(9, 3), means.t().contiguous().t(), cov, weights, 0.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, False, False],
                                  [False, True, True, True], [False, False, False, True]])
def test_opcheck_backward(device, mode, mask):
    x, means, cov, weights = make_inputs(9, 5, mode, torch.float64, device, 6)
    grad_out = torch.randn(9, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_backward,
                          (grad_out, x, means, cov, weights, 1e-6, None, mask))


def test_backward_op_returns_none_for_unwanted():
    x, means, cov, weights = make_inputs(4, 3, "full", torch.float64, "cpu", 7)
    out = torch.ops.gaussfield.gaussian_field_backward(torch.ones(4, dtype=torch.float64), x, means, cov,
                                                       weights, 1e-6, None, [False, True, False, True])
    assert out[0] is None and out[2] is None
    assert out[1].shape == means.shape and out[3].shape == weights.shape
