# SPDX-License-Identifier: Apache-2.0
"""Autodiff that composes: torch.func (grad, jacrev, jacfwd, jvp, vjp, hessian, vmap,
vmap(grad)), forward-mode AD with dual tensors, double backward (create_graph=True,
gradgradcheck), each with respect to every input and against the float64 closed form
differentiated by PyTorch; third derivatives raise; no per-sample vmap fallback; opcheck
on the double backward op; a covariance matrix Sigma [N, 3, 3] (not symmetric: its
symmetric part is read) and a whitening factor [N, 3, 3] (whitened=True) as cov."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import gaussfield
import field_reference as fr
from conftest import DEVICES, make_inputs

F64 = torch.float64
NAMES = ("x", "means", "cov", "weights")
RTOL = 1e-9
MODES3 = ["full", "diag", "factor", "sigma"]


def factor_of(cov, eps=1e-6):
    """A whitening factor [N, 3, 3] (lower, with some noise above the diagonal that the op
    must ignore) whose Sigma is that of the cov_tril parameters."""
    M = torch.linalg.inv(torch.linalg.cholesky(fr.sigma_of(cov, eps)))
    return M + torch.triu(torch.full_like(M, 0.3), diagonal=1)


def sigma_of_matrix(cov):
    """A covariance matrix [N, 3, 3] (symmetric part of the cov_tril parameters' Sigma,
    plus an antisymmetric part that the op must not read)."""
    noise = torch.linspace(-0.2, 0.3, 9, dtype=F64).reshape(3, 3)
    return fr.sigma_of(cov, 1e-6) + (noise - noise.mT)


def ref_field(x, means, cov, weights, eps=1e-6, cutoff=None, mode=None):
    """fr.field, with a whitening factor's Sigma = (M^T M)^-1 of its lower triangle, and a
    covariance matrix's Sigma = (S + S^T) / 2 (no eps)."""
    if mode in ("factor", "sigma"):
        if mode == "factor":
            M = torch.tril(cov.to(F64))
            sigma = torch.linalg.inv(M.mT @ M)
        else:
            sigma = 0.5 * (cov.to(F64) + cov.to(F64).mT)
        L = torch.linalg.cholesky(sigma)
        cov6 = torch.stack([L[:, 0, 0].log(), L[:, 1, 0], L[:, 1, 1].log(), L[:, 2, 0],
                            L[:, 2, 1], L[:, 2, 2].log()], -1)
        return fr.field(x, means, cov6, weights, 0.0, cutoff)
    return fr.field(x, means, cov, weights, eps, cutoff)


def inputs(device, mode, B=6, N=4, seed=0, channels=None):
    x, m, c, w = make_inputs(B, N, "diag" if mode == "diag" else "full", F64, device, seed)
    if mode == "factor":
        c = factor_of(c.cpu()).to(device)
    if mode == "sigma":
        c = sigma_of_matrix(c.cpu()).to(device)
    if channels:
        w = w[:, None] * torch.linspace(-1.0, 2.0, channels, dtype=F64, device=device)
    return [x, m, c, w]


def ours(cutoff=None, mode=None):
    whitened = mode == "factor"
    return lambda x, m, c, w: gaussfield.gaussian_field(x, m, c, w, cutoff=cutoff, whitened=whitened)


def theirs(cutoff=None, mode=None):
    return lambda x, m, c, w: ref_field(x, m, c, w, cutoff=cutoff, mode=mode)


def close(a, b, rtol=RTOL, what=""):
    a, b = a.detach().to(F64).cpu(), b.detach().to(F64).cpu()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = b.norm().clamp_min(1e-30)
    assert ((a - b).norm() / scale).item() <= rtol, f"{what}: {((a - b).norm() / scale).item():.3g}"


def on(fn, ins, which):
    """fn as a function of input `which` alone."""
    def g(t):
        args = list(ins)
        args[which] = t
        return fn(*args)
    return g


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    """torch.func's per-sample fallback warns; every op has a batching rule."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        warnings.filterwarnings("error", message=".*fallback.*")
        yield


# ---- torch.func, with respect to each input ------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
@pytest.mark.parametrize("which", range(4), ids=NAMES)
def test_func_grad_jacrev_vjp(device, mode, which):
    ins = inputs(device, mode, seed=which)
    f, r = on(ours(mode=mode), ins, which), on(theirs(mode=mode), ins, which)
    t = ins[which]
    close(grad(lambda y: f(y).sum())(t), grad(lambda y: r(y).sum())(t), what="grad")
    close(jacrev(f)(t), jacrev(r)(t), what="jacrev")
    ct = torch.randn(ins[0].shape[:-1], dtype=F64, device=device)
    (a,) = vjp(f, t)[1](ct)
    (b,) = vjp(r, t)[1](ct)
    close(a, b, what="vjp")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
@pytest.mark.parametrize("which", range(4), ids=NAMES)
def test_func_jvp_jacfwd(device, mode, which):
    ins = inputs(device, mode, seed=10 + which)
    f, r = on(ours(mode=mode), ins, which), on(theirs(mode=mode), ins, which)
    t = ins[which]
    tangent = torch.randn_like(t)
    va, ta = jvp(f, (t,), (tangent,))
    vb, tb = jvp(r, (t,), (tangent,))
    close(va, vb, what="jvp value")
    close(ta, tb, what="jvp tangent")
    close(jacfwd(f)(t), jacfwd(r)(t), what="jacfwd")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
@pytest.mark.parametrize("which", range(4), ids=NAMES)
def test_hessian(device, mode, which):
    ins = inputs(device, mode, B=4, N=3, seed=20 + which)
    f, r = on(ours(mode=mode), ins, which), on(theirs(mode=mode), ins, which)
    t = ins[which]
    close(hessian(lambda y: f(y).sum())(t), hessian(lambda y: r(y).sum())(t), what="hessian")
    # and reverse-over-reverse
    close(jacrev(jacrev(lambda y: f(y).sum()))(t), hessian(lambda y: r(y).sum())(t),
          what="jacrev(jacrev)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["full", "diag"])
def test_vmap_and_vmap_of_grad(device, mode):
    x, m, c, w = inputs(device, mode)
    xs = torch.rand(5, *x.shape, dtype=F64, device=device) * 10
    close(vmap(lambda y: gaussfield.gaussian_field(y, m, c, w))(xs), ref_field(xs, m, c, w), what="vmap")
    g_ours = vmap(grad(lambda y: gaussfield.gaussian_field(y, m, c, w).sum()))(xs)
    g_ref = vmap(grad(lambda y: ref_field(y, m, c, w).sum()))(xs)
    close(g_ours, g_ref, what="vmap(grad) over points")
    # per-sample gradients with respect to the weights (a batch of fields)
    ws = torch.randn(3, *w.shape, dtype=F64, device=device)
    g_ours = vmap(grad(lambda v: gaussfield.gaussian_field(x, m, c, v).sum()))(ws)
    g_ref = vmap(grad(lambda v: ref_field(x, m, c, v).sum()))(ws)
    close(g_ours, g_ref, what="vmap(grad) over weights")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cutoff, channels", [(2.5, None), (None, 3), (3.0, 2)])
def test_func_with_cutoff_and_channels(device, cutoff, channels):
    ins = inputs(device, "full", B=8, N=5, seed=3, channels=channels)
    for which in range(4):
        f, r = on(ours(cutoff), ins, which), on(theirs(cutoff), ins, which)
        t = ins[which]
        close(jacrev(f)(t), jacrev(r)(t), what=f"jacrev {NAMES[which]}")
        close(jacfwd(f)(t), jacfwd(r)(t), what=f"jacfwd {NAMES[which]}")
    fx, rx = on(ours(cutoff), ins, 0), on(theirs(cutoff), ins, 0)
    close(hessian(lambda y: fx(y).sum())(ins[0]), hessian(lambda y: rx(y).sum())(ins[0]),
          what="hessian x")


# ---- forward-mode AD -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
@pytest.mark.parametrize("channels", [None, 3])
def test_forward_ad_every_input(device, mode, channels):
    ins = inputs(device, mode, seed=4, channels=channels)
    tangents = [torch.randn_like(t) for t in ins]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, dt) for t, dt in zip(ins, tangents)]
        out = ours(mode=mode)(*duals)
        value, tangent = fwAD.unpack_dual(out)
    want_v, want_t = jvp(theirs(mode=mode), tuple(ins), tuple(tangents))
    close(value, want_v, what="value")
    close(tangent, want_t, what="tangent")
    # one input at a time
    for which in range(4):
        with fwAD.dual_level():
            args = list(ins)
            args[which] = fwAD.make_dual(ins[which], tangents[which])
            t = fwAD.unpack_dual(ours(mode=mode)(*args)).tangent
        close(t, jvp(on(theirs(mode=mode), ins, which), (ins[which],), (tangents[which],))[1],
              what=f"tangent of {NAMES[which]}")


# ---- double backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
@pytest.mark.parametrize("cutoff, channels", [(None, None), (3.0, None), (None, 3)])
def test_double_backward_eikonal(device, mode, cutoff, channels):
    """An eikonal term (|grad_x f| - 1)^2, its gradient to all four inputs."""
    def loss(fn, x, m, c, w):
        out = fn(x, m, c, w)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return ((gx.norm(dim=-1) - 1) ** 2).sum() + out.square().sum()

    ins = inputs(device, mode, seed=5, channels=channels)
    a = [t.clone().requires_grad_() for t in ins]
    b = [t.clone().requires_grad_() for t in ins]
    ga = torch.autograd.grad(loss(ours(cutoff, mode), *a), a)
    gb = torch.autograd.grad(loss(theirs(cutoff, mode), *b), b)
    for name, u, v in zip(NAMES, ga, gb):
        close(u, v, what=f"d eikonal / d {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES3)
def test_gradgradcheck(device, mode):
    ins = [t.requires_grad_() for t in inputs(device, mode, B=5, N=3, seed=6)]
    assert torch.autograd.gradcheck(ours(mode=mode), tuple(ins))
    assert torch.autograd.gradgradcheck(ours(mode=mode), tuple(ins))
    # the backward op called directly is differentiable too
    g = torch.randn(5, dtype=F64, device=device, requires_grad=True)
    bk = lambda g, x, m, c, w: torch.ops.gaussfield.gaussian_field_backward(  # noqa: E731
        g, x, m, c, w, 1e-6, None, [True] * 4, whitened=mode == "factor")
    assert torch.autograd.gradcheck(bk, (g, *ins))


@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck_cutoff_channels(device):
    ins = [t.requires_grad_() for t in inputs(device, "full", B=5, N=3, seed=7, channels=2)]
    f = lambda *a: gaussfield.gaussian_field(*a, cutoff=2.0)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, tuple(ins))


@pytest.mark.parametrize("device", DEVICES)
def test_third_order_raises(device):
    x, m, c, w = inputs(device, "full")
    x.requires_grad_()
    out = gaussfield.gaussian_field(x, m, c, w).sum()
    (g1,) = torch.autograd.grad(out, x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives are not supported"):
        torch.autograd.grad(g2.sum(), x)
    f = lambda y: gaussfield.gaussian_field(y, m, c, w).sum()  # noqa: E731
    for third in (jacfwd(hessian(f)), jacrev(hessian(f)), jacrev(jacrev(jacrev(f))),
                  jacfwd(jacfwd(jacrev(f)))):
        with pytest.raises(RuntimeError, match="third derivatives are not supported"):
            third(x.detach())
    # the derivative ops called directly under transforms that would differentiate them
    # beyond second order
    g = torch.randn(6, dtype=F64, device=device)
    M = factor_of(c.cpu()).to(device)
    bk = lambda y: torch.ops.gaussfield.gaussian_field_backward(  # noqa: E731
        g, y, m, M, w, 1e-6, None, [True, False, False, False], whitened=True)[0]
    with pytest.raises(RuntimeError, match="third derivatives are not supported"):
        jacfwd(jacrev(bk))(x.detach())
    db = lambda y: torch.ops.gaussfield.gaussian_field_double_backward(  # noqa: E731
        g, y, m, M, w, 1e-6, None, torch.ones_like(y), None, None, None,
        [False, True, False, False, False])[1]
    with pytest.raises(RuntimeError, match="third derivatives are not supported"):
        jacfwd(db)(x.detach())


# ---- the ops stay well-formed ----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [None, 2])
def test_opcheck_every_op(device, channels):
    x, m, c, w = inputs(device, "factor", seed=8, channels=channels)
    plain = [x, m, c, w]
    named = {"whitened": True}
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field.default, (*plain, 1e-6), named)
    go = torch.randn(x.shape[:-1] + w.shape[1:], dtype=F64, device=device)
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_backward.default,
                          (go, *plain, 1e-6, None, [True, True, True, True]), named)
    dirs = [torch.randn_like(t) for t in plain]
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_double_backward.default,
                          (go, *plain, 1e-6, None, *dirs, [True] * 5))
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_double_backward.default,
                          (None, *plain, 1e-6, 2.0, dirs[0], None, dirs[2], None,
                           [True, False, False, False, False]))


def test_double_backward_op_refuses_cov_parameters():
    x, m, c, w = inputs("cpu", "full")
    with pytest.raises(RuntimeError, match=r"cov must be a whitening factor \[N, 3, 3\]"):
        torch.ops.gaussfield.gaussian_field_double_backward(
            torch.ones(6, dtype=F64), x, m, c, w, 1e-6, None, None, None, None, None, [True] * 5)
    x, m, c, w = inputs("cpu", "factor")
    with pytest.raises(RuntimeError, match="grad_out is needed"):
        torch.ops.gaussfield.gaussian_field_double_backward(
            None, x, m, c, w, 1e-6, None, None, None, None, None, [True] * 5)
    with pytest.raises(RuntimeError, match="dir_means must have the shape of means"):
        torch.ops.gaussfield.gaussian_field_double_backward(
            None, x, m, c, w, 1e-6, None, None, m[:2], None, None, [True, False, False, False, False])


def test_factor_ignores_upper_triangle():
    x, m, c, w = inputs("cpu", "factor")
    c.requires_grad_()
    out = gaussfield.gaussian_field(x, m, c, w, whitened=True)
    same = gaussfield.gaussian_field(x, m, torch.tril(c.detach()), w, whitened=True)
    assert torch.equal(out.detach(), same)
    (gc,) = torch.autograd.grad(out.sum(), c)
    assert torch.equal(torch.triu(gc, diagonal=1), torch.zeros_like(gc))
