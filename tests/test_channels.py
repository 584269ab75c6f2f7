# SPDX-License-Identifier: Apache-2.0
"""Feature channels: weights [N, C] give a result x.shape[:-1] + (C,), one exponential
shared by the channels, f(x)_c = sum_n w_nc exp(-q_n(x)/2) (times [q_n <= k^2] with a
cutoff).  Against the float64 reference per channel (values and every gradient, with
grad_out [..., C]), with and without cutoff; C = 1 is the scalar field; batch dims of
x; non-contiguous weights; gradcheck; opcheck of both ops; torch.compile; a property
test (hypothesis); bad shapes of weights and grad_out."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gaussfield
import field_reference as fr
from checking import worst_condition
from conftest import DEVICES, DTYPES, MODES, make_inputs

F64 = torch.float64
RTOL = {torch.float32: 5e-5, torch.float64: 1e-10}


def channel_inputs(B, N, C, mode, dtype, device, seed, *, batch_shape=None, cutoff=None):
    """make_inputs with weights [N, C] and grad_out of the result's shape; with a cutoff,
    the points that have a pair within rounding of the boundary are dropped."""
    x, means, cov, _ = make_inputs(B, N, mode, dtype, device, seed, batch_shape=batch_shape)
    if cutoff is not None:
        x = x[fr.clear_of_boundary(x, means, cov, 1e-6, cutoff).to(device)]
    g = torch.Generator().manual_seed(seed + 1000)
    weights = torch.randn(N, C, generator=g, dtype=F64).to(device=device, dtype=dtype)
    grad_out = torch.randn(*x.shape[:-1], C, generator=g, dtype=F64).to(device=device, dtype=dtype)
    return x, means, cov, weights, grad_out


# ---- against the reference, per channel ---------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("C", [1, 3, 8, 33])
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_matches_reference_per_channel(device, dtype, mode, C, cutoff):
    x, means, cov, weights, grad_out = channel_inputs(150, 30, C, mode, dtype, device, seed=C,
                                                      cutoff=cutoff)
    got = fr.ours(x, means, cov, weights, grad_out, cutoff=cutoff)
    want = fr.reference(x, means, cov, weights, grad_out, cutoff=cutoff)
    assert got[0].shape == (x.shape[0], C) and got[4].shape == (30, C)
    fr.assert_all_close(got, want, RTOL[dtype], f"C={C}")
    for c in range(C):  # each channel on its own, value and weights' gradient
        assert fr.norm_rel(got[0][:, c], want[0][:, c]) <= RTOL[dtype], f"value, channel {c}"
        assert fr.norm_rel(got[4][:, c], want[4][:, c]) <= RTOL[dtype], f"grad weights, channel {c}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_channels_are_independent_fields(device, dtype, mode):
    """Channel c of a C-channel field is the scalar field of the weights w[:, c]; the
    gradients of means and cov add up over the channels."""
    x, means, cov, weights, grad_out = channel_inputs(80, 20, 5, mode, dtype, device, seed=1)
    got = fr.ours(x, means, cov, weights, grad_out)
    parts = [fr.ours(x, means, cov, weights[:, c], grad_out[:, c]) for c in range(5)]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[0], torch.stack([p[0] for p in parts], -1), **tol)
    torch.testing.assert_close(got[4], torch.stack([p[4] for p in parts], -1), **tol)
    for i in (1, 2, 3):
        torch.testing.assert_close(got[i], sum(p[i] for p in parts), **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_one_channel_is_the_scalar_field(device, dtype, mode, cutoff):
    x, means, cov, weights, grad_out = channel_inputs(90, 17, 1, mode, dtype, device, seed=2,
                                                      cutoff=cutoff)
    one = fr.ours(x, means, cov, weights, grad_out, cutoff=cutoff)
    scalar = fr.ours(x, means, cov, weights[:, 0], grad_out[:, 0], cutoff=cutoff)
    assert one[0].shape == (x.shape[0], 1) and scalar[0].shape == (x.shape[0],)
    assert one[4].shape == (17, 1) and scalar[4].shape == (17,)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(one[0][:, 0], scalar[0], **tol)
    torch.testing.assert_close(one[4][:, 0], scalar[4], **tol)
    for i in (1, 2, 3):
        torch.testing.assert_close(one[i], scalar[i], **tol)


# ---- shapes and layouts ------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_batch_dims_of_x(device, mode, cutoff):
    x, means, cov, weights, _ = channel_inputs(24, 9, 4, mode, F64, device, seed=3, batch_shape=(2, 3, 4))
    grad_out = torch.randn(2, 3, 4, 4, dtype=F64, device=device)
    got = fr.ours(x, means, cov, weights, grad_out, cutoff=cutoff)
    assert got[0].shape == (2, 3, 4, 4) and got[1].shape == (2, 3, 4, 3)
    flat = fr.ours(x.reshape(-1, 3), means, cov, weights, grad_out.reshape(-1, 4), cutoff=cutoff)
    torch.testing.assert_close(got[0], flat[0].reshape(2, 3, 4, 4), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got[1], flat[1].reshape(2, 3, 4, 3), rtol=1e-13, atol=1e-14)
    for i in (2, 3, 4):
        torch.testing.assert_close(got[i], flat[i], rtol=1e-13, atol=1e-14)
    # a single point [3] gives [C]
    one = gaussfield.gaussian_field(x[0, 0, 0], means, cov, weights, cutoff=cutoff)
    assert one.shape == (4,)
    torch.testing.assert_close(one, got[0][0, 0, 0], rtol=1e-14, atol=1e-15)


LAYOUTS = {  # weights [N, C] as a view of a base: (the base's shape, the view)
    "transposed": (lambda N, C: (C, N), lambda b, N, C: b.T),
    "strided": (lambda N, C: (N, 2 * C), lambda b, N, C: b[:, ::2]),
    "row_strided": (lambda N, C: (2 * N, C), lambda b, N, C: b[::2]),
    "expanded_rows": (lambda N, C: (1, C), lambda b, N, C: b.expand(N, C)),
    "expanded_channels": (lambda N, C: (N, 1), lambda b, N, C: b.expand(N, C)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_non_contiguous_weights(device, dtype, layout, cutoff):
    """Weights read in place whatever their strides (0 included); gradients reach the
    base through the view, as in the float64 reference with the same view."""
    N, C = 13, 6
    x, means, cov, _, grad_out = channel_inputs(70, N, C, "full", dtype, device, seed=4, cutoff=cutoff)
    shape, view = LAYOUTS[layout]
    base64 = torch.randn(shape(N, C), dtype=F64, generator=torch.Generator().manual_seed(5))

    def weights_of(b):
        return view(b, N, C)

    assert not weights_of(base64).is_contiguous()
    results = []
    for fn, b in ((gaussfield.gaussian_field, base64.to(device=device, dtype=dtype)), (fr.field, base64)):
        b = b.clone().requires_grad_()
        xs = [t.detach().to(b.device).to(b.dtype).requires_grad_() for t in (x, means, cov)]
        out = fn(*xs, weights_of(b), cutoff=cutoff)
        results.append([out.detach(), *torch.autograd.grad(out, [*xs, b], grad_out.to(b.device, b.dtype))])
    fr.assert_all_close(*results, RTOL[dtype], layout)


# ---- autograd machinery -------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cutoff", [None, 1.5])
def test_gradcheck_channels(device, mode, cutoff):
    x, means, cov, weights, _ = channel_inputs(10, 5, 3, mode, F64, device, seed=6, batch_shape=(2, 5))
    if cutoff is not None:  # no pair within the reach of gradcheck's steps of the boundary
        keep = fr.clear_of_boundary(x, means, cov, 1e-6, cutoff, rel=1e-2).all(-1)
        x = x[keep.to(device)]
        kept, cut = fr.mask_counts(x, means, cov, 1e-6, cutoff)
        assert kept > 3 and cut > 3
    ins = [t.detach().requires_grad_() for t in (x, means, cov, weights)]
    assert torch.autograd.gradcheck(lambda *a: gaussfield.gaussian_field(*a, cutoff=cutoff), ins)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_opcheck_with_channels(device, mode):
    x, means, cov, weights, grad_out = channel_inputs(9, 5, 3, mode, F64, device, seed=7)
    fwd = torch.ops.gaussfield.gaussian_field
    bwd = torch.ops.gaussfield.gaussian_field_backward
    for cutoff in (None, 2.0):
        torch.library.opcheck(fwd, (x, means.requires_grad_(), cov, weights.requires_grad_(), 1e-6, cutoff))
        means, weights = means.detach(), weights.detach()
    torch.library.opcheck(bwd, (grad_out, x, means, cov, weights, 1e-6, 2.0, [True] * 4))
    torch.library.opcheck(bwd, (grad_out, x, means, cov, weights, 1e-6, None, [False, True, False, True]))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_with_channels(device):
    """One graph with the op twice (with and without cutoff), forward and backward."""
    torch._dynamo.reset()

    def loss(x, m, c, w):
        return (gaussfield.gaussian_field(x, m, c, w, cutoff=2.0) * gaussfield.gaussian_field(x, m, c, w)).sum()

    compiled = torch.compile(loss, fullgraph=True)
    x, means, cov, weights, _ = channel_inputs(40, 12, 5, "full", torch.float32, device, seed=8)
    ins = [t.detach().requires_grad_() for t in (x, means, cov, weights)]
    got = torch.autograd.grad(compiled(*ins), ins)
    want = torch.autograd.grad(loss(*ins), ins)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


# ---- a property test ----------------------------------------------------------------------

@st.composite
def problems(draw):
    mode = draw(st.sampled_from(["full", "diag"]))
    return dict(
        B=draw(st.integers(0, 20)), N=draw(st.integers(0, 10)),
        C=draw(st.sampled_from([None, 1, 2, 5, 17])), mode=mode,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        log_scale=draw(st.floats(-4.0, 3.0)),
        spread=draw(st.floats(0.0, 1.0)),
        corr=draw(st.floats(0.0, 0.9)) if mode == "full" else 0.0,
        offset=draw(st.sampled_from([0.0, 5.0, 100.0])),
        cutoff=draw(st.one_of(st.none(), st.floats(0.3, 8.0))),
        w_layout=draw(st.sampled_from(["contiguous", "transposed", "expanded"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("device", DEVICES)
@given(p=problems())
def test_property_against_reference(device, p):
    """Random sizes, channels, scales, correlations, offsets, cutoffs and weight layouts:
    values and every gradient against the float64 reference, and the cutoff's bound."""
    g = torch.Generator().manual_seed(p["seed"])
    B, N, C, scale = p["B"], p["N"], p["C"], math.exp(p["log_scale"])
    means = p["offset"] + 3 * scale * max(N, 1) ** (1 / 3) * torch.rand(N, 3, generator=g, dtype=F64)
    near = torch.randint(0, max(N, 1), (B,), generator=g)  # points around the Gaussians
    x = (means[near] if N else torch.full((B, 3), p["offset"], dtype=F64)) + \
        2 * scale * torch.randn(B, 3, generator=g, dtype=F64)
    log_s = p["log_scale"] + p["spread"] * torch.randn(N, 3, generator=g, dtype=F64)
    if p["mode"] == "full":
        cov = torch.empty(N, 6, dtype=F64)
        cov[:, [0, 2, 5]] = log_s
        cov[:, [1, 3, 4]] = p["corr"] * scale * torch.randn(N, 3, generator=g, dtype=F64)
    else:
        cov = log_s
    wshape = (N,) if C is None else (N, C)
    weights = torch.randn(wshape, generator=g, dtype=F64)
    k = p["cutoff"]
    if k is not None:
        x = x[fr.clear_of_boundary(x, means, cov, 1e-6, k)]
    grad_out = torch.randn(x.shape[:-1] + wshape[1:], generator=g, dtype=F64)
    dt = p["dtype"]
    x, means, cov, weights, grad_out = (t.to(device=device, dtype=dt) for t in (x, means, cov, weights, grad_out))
    if p["w_layout"] == "transposed" and C is not None:
        weights = weights.T.contiguous().T
    elif p["w_layout"] == "expanded" and N > 0:
        weights = weights[:1].expand(wshape)

    got = fr.ours(x, means, cov, weights, grad_out, cutoff=k)
    want = fr.reference(x, means, cov, weights, grad_out, cutoff=k)
    cond = worst_condition(cov, 1e-6)
    fr.assert_all_close(got, want, RTOL[dt] * max(1.0, cond), str(p))
    if k is not None and x.shape[0] and N:
        dense = fr.field(*[t.to(F64).cpu() for t in (x, means, cov, weights)])
        bound = math.exp(-k * k / 2) * weights.to(F64).cpu().abs().sum(0)
        slack = 1e-4 if dt == torch.float32 else 1e-12
        assert ((got[0].to(F64).cpu() - dense).abs() <= bound + slack * weights.abs().sum().item()).all()


# ---- bad shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [(4, 3, 2), (5, 3), (3, 3), (4, 0), (0,), (4, 3, 1)])
def test_bad_weights_shape_names_weights(bad):
    x, means, cov, _ = make_inputs(5, 4, "full", F64, "cpu", seed=9)
    w = torch.randn(bad, dtype=F64)
    with pytest.raises(RuntimeError, match="weights"):
        gaussfield.gaussian_field(x, means, cov, w)
    with pytest.raises(RuntimeError, match="weights"):
        gaussfield.gaussian_field(x, means, cov, w, cutoff=2.0)
    with pytest.raises(RuntimeError, match="weights"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(5, *bad[1:2], dtype=F64), x, means, cov, w,
                                                     1e-6, None, [True] * 4)


@pytest.mark.parametrize("go_shape", [(5,), (5, 2), (5, 3, 1), (6, 3), (5, 1)])
def test_bad_grad_out_shape_names_grad_out(go_shape):
    x, means, cov, _ = make_inputs(5, 4, "full", F64, "cpu", seed=10)
    w = torch.randn(4, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(go_shape, dtype=F64), x, means, cov, w,
                                                     1e-6, None, [True] * 4)
    # and for scalar weights, grad_out [B, 1] is not [B]
    if go_shape == (5, 1):
        with pytest.raises(RuntimeError, match="grad_out"):
            torch.ops.gaussfield.gaussian_field_backward(torch.ones(go_shape, dtype=F64), x, means, cov,
                                                         w[:, 0], 1e-6, None, [True] * 4)
