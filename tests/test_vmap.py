# SPDX-License-Identifier: Apache-2.0
"""torch.func.vmap through both ops runs our batching rules (no per-sample fallback, no
performance warning) and equals the per-sample results, for every batched argument."""
import warnings

import pytest
import torch

import gaussfield
from conftest import DEVICES, make_inputs

K = 3


def no_fallback_warning(fn):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn()
    assert not [w for w in seen if "performance drop" in str(w.message)], [str(w.message) for w in seen]
    return out


def batched_inputs(device, channels):
    x, m, c, w = make_inputs(20, 7, "full", torch.float64, device, 0)
    g = torch.Generator().manual_seed(1)
    xs = x + torch.rand(K, 1, 3, generator=g, dtype=torch.float64).to(device)
    ms = m + 0.1 * torch.randn(K, 1, 3, generator=g, dtype=torch.float64).to(device)
    cs = c + 0.05 * torch.randn(K, 1, 6, generator=g, dtype=torch.float64).to(device)
    if channels:
        w = torch.randn(7, channels, generator=g, dtype=torch.float64).to(device)
    ws = w + torch.randn(K, *w.shape, generator=g, dtype=torch.float64).to(device)
    return (x, m, c, w), (xs, ms, cs, ws)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [(0,), (1,), (2,), (3,), (0, 3), (0, 1, 2, 3)],
                         ids=["x", "means", "cov", "weights", "x+weights", "all"])
@pytest.mark.parametrize("channels, cutoff", [(0, None), (2, 3.0)])
def test_vmap_forward_equals_per_sample(device, batched, channels, cutoff):
    plain, stacks = batched_inputs(device, channels)
    args = [stacks[i] if i in batched else plain[i] for i in range(4)]
    in_dims = tuple(0 if i in batched else None for i in range(4))

    def f(x, m, c, w):
        return gaussfield.gaussian_field(x, m, c, w, cutoff=cutoff)

    got = no_fallback_warning(lambda: torch.func.vmap(f, in_dims=in_dims)(*args))
    want = torch.stack([f(*(a[k] if d is not None else a for a, d in zip(args, in_dims)))
                        for k in range(K)])
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_over_a_non_leading_dim(device):
    (x, m, c, w), (xs, _, _, _) = batched_inputs(device, 0)
    xt = xs.permute(1, 0, 2)  # [B, K, 3], batch in dim 1
    got = no_fallback_warning(lambda: torch.func.vmap(
        lambda p: gaussfield.gaussian_field(p, m, c, w), in_dims=1)(xt))
    assert torch.equal(got, torch.stack([gaussfield.gaussian_field(xs[k], m, c, w) for k in range(K)]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [[True, False, False, False], [True, True, True, True],
                                  [False, False, True, True]])
@pytest.mark.parametrize("batched", [(0,), (0, 1), (0, 4)], ids=["grad_out", "grad_out+x", "grad_out+weights"])
def test_vmap_backward_op_equals_per_sample(device, mask, batched):
    (x, m, c, w), (xs, _, _, ws) = batched_inputs(device, 0)
    gs = torch.randn(K, 20, dtype=torch.float64, device=device)
    plain = (gs[0], x, m, c, w)
    stacks = (gs, xs, None, None, ws)
    args = [stacks[i] if i in batched else plain[i] for i in range(5)]
    in_dims = tuple(0 if i in batched else None for i in range(5))
    op = torch.ops.gaussfield.gaussian_field_backward

    def f(g, x, m, c, w):  # vmap returns tensors only: the wanted gradients
        grads = op(g, x, m, c, w, 1e-6, None, mask)
        assert [t is not None for t in grads] == mask
        return tuple(t for t in grads if t is not None)

    got = no_fallback_warning(lambda: torch.func.vmap(f, in_dims=in_dims)(*args))
    per = [f(*(a[k] if d is not None else a for a, d in zip(args, in_dims))) for k in range(K)]
    assert len(got) == sum(mask)
    for i, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([p[i] for p in per]), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_then_backward(device):
    """vmap of the forward inside an ordinary autograd graph: gradients as per sample."""
    (x, m, c, w), (xs, _, _, _) = batched_inputs(device, 0)
    params = [t.clone().requires_grad_() for t in (m, c, w)]
    out = no_fallback_warning(lambda: torch.func.vmap(
        lambda p: gaussfield.gaussian_field(p, *params))(xs))
    got = torch.autograd.grad(out.square().sum(), params)
    ref_params = [t.clone().requires_grad_() for t in (m, c, w)]
    ref = sum(gaussfield.gaussian_field(xs[k], *ref_params).square().sum() for k in range(K))
    want = torch.autograd.grad(ref, ref_params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
