# SPDX-License-Identifier: Apache-2.0
"""Comparison of the op with the float64 reference, values and every gradient, for inputs
given in any layout (contiguous, transposed, strided, expanded, with leading batch dims).

Each input is a *base* leaf tensor and a layout that makes the op's argument from it, so
the op and the reference see the same views and their gradients land on the same bases.
The reference runs in float64 on the float64 values of the bases (the inputs' own
rounding is not counted as error).

Tolerance: an element-wise bound rtol * M + M_flush, where M is the same sum computed
with magnitudes (|w|, |grad_out|, |P d|, ...) and a factor (1 + q) for the exponent's
relative error, so that cancellation between terms of opposite sign does not make the
bound vacuous or wrong; M_flush is M over the pairs whose Gaussian value is below the
smallest normal number of the dtype, which the op may flush to 0.
"""
import math

import torch

import gaussfield
from gaussfield.reference import inverse_covariance

# layout name -> (shape of the base for a [R, C] argument, view from the base)
LAYOUTS = {
    "contiguous": (lambda R, C: (R, C), lambda b, R, C: b),
    "transposed": (lambda R, C: (C, R), lambda b, R, C: b.T),
    "strided": (lambda R, C: (R, 2 * C), lambda b, R, C: b[:, ::2]),
    "expanded": (lambda R, C: (1, C), lambda b, R, C: b.expand(R, C)),
    "batched": (lambda R, C: (2, R, C), lambda b, R, C: b),  # x only: leading dims
}
VECTOR_LAYOUTS = {  # weights [N], grad_out [B]
    "contiguous": (lambda R: (R,), lambda b, R: b),
    "strided": (lambda R: (2 * R,), lambda b, R: b[::2]),
    "expanded": (lambda R: (1,), lambda b, R: b.expand(R)),
}


def make_base(values, layout, dtype, device, vector=False):
    """A base leaf holding ``values`` (float64, [R, C] or [R]) so that the layout's view
    of it has the values (or, for 'expanded', the first row broadcast)."""
    if vector:
        (R,) = values.shape
        shape, view = VECTOR_LAYOUTS[layout]
        base = torch.zeros(shape(R), dtype=torch.float64)
        if layout == "expanded":
            base[:R].copy_(values[:1])
        else:
            view(base, R).copy_(values)
    else:
        R, C = values.shape
        shape, view = LAYOUTS[layout]
        base = torch.zeros(shape(R, C), dtype=torch.float64)
        if layout == "batched":
            base.copy_(values.expand(2, R, C))  # never used with the others
            base[1] += 0.25
        elif layout == "expanded":
            base[:R].copy_(values[:1])
        else:
            view(base, R, C).copy_(values)
    return base.to(device=device, dtype=dtype).requires_grad_()


def view_of(base, layout, R, C=None):
    return VECTOR_LAYOUTS[layout][1](base, R) if C is None else LAYOUTS[layout][1](base, R, C)


def magnitudes(x, means, cov, weights, grad_out, eps, flush):
    """Element-wise bounds (float64) for out [..] and the gradients of x, means, cov,
    weights, as described in the module docstring: the sums of magnitudes with each
    pair's exp(-q/2) (1 + |q|), and the same sums over only the pairs whose exp(-q/2) is
    below ``flush`` (which the op may round to 0: its float exp2 flushes subnormals)."""
    x = x.reshape(-1, 3)
    go = grad_out.reshape(-1).abs()
    P = inverse_covariance(cov, eps)                      # [N, 3, 3]
    d = x[:, None, :] - means[None]                       # [B, N, 3]
    Pd = torch.einsum("nij,bnj->bni", P, d)
    q = (d * Pd).sum(-1)
    e = torch.exp(-0.5 * q)
    aw = weights.abs()
    pd = Pd.norm(dim=-1)
    # d/dc of the Gaussian scales with ||L||^2 for the log-scale entries and with ||L||
    # for the off-diagonal entries of L (full mode)
    sigma = torch.linalg.inv(P)
    l2 = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)          # ||L||_F^2 = trace(Sigma)
    cov_scale = l2[:, None].expand(cov.shape).clone()
    if cov.shape[-1] == 6:
        cov_scale[:, [1, 3, 4]] = l2.sqrt()[:, None]
    sums = []
    for g in (e * (1 + q.abs()), torch.where(e < flush, e * (1 + q.abs()), 0.0)):  # [B, N]
        sums.append((g @ aw, go * ((g * pd) @ aw), aw * (go @ (g * pd)),
                     (aw * (go @ (g * pd**2)))[:, None] * cov_scale, go @ g))
    return sums


def compare(x, means, cov, weights, grad_out, eps, rtol, *, views=None):
    """Run the op and the float64 reference; assert values and gradients agree.

    x, means, cov, weights, grad_out: base leaves (grad_out needs no grad);
    views: function (x, means, cov, weights) -> the op's four arguments from the bases
    (default: the bases themselves)."""
    views = views or (lambda *t: t)
    bases = [x, means, cov, weights]
    out = gaussfield.gaussian_field(*views(*bases), eps=eps)
    ours = [out, *torch.autograd.grad(out, bases, grad_out, allow_unused=True)]

    bases64 = [t.detach().double().cpu().requires_grad_() for t in bases]
    go64 = grad_out.detach().double().cpu()
    args64 = views(*bases64)
    ref = gaussfield.gaussian_field_reference(*args64, eps=eps)
    theirs = [ref, *torch.autograd.grad(ref, bases64, go64, allow_unused=True)]

    # bounds in the shape of the op's arguments, then carried to the bases
    flush = 2.0**-120 if x.dtype == torch.float32 else 2.0**-1000
    with torch.no_grad():
        rel, flushed = magnitudes(*[a.detach() for a in args64], go64.expand(ref.shape), eps, flush)
    mags = [rtol * r + f for r, f in zip(rel, flushed)]
    m_out = mags[0].reshape(ref.shape)
    m_args = [mags[1].reshape(args64[0].shape[:-1] + (1,)).expand(args64[0].shape),
              mags[2][:, None].expand(args64[1].shape), mags[3],
              mags[4]]
    m_bases = torch.autograd.grad(args64, bases64, m_args, allow_unused=True)

    names = ["value", "grad x", "grad means", "grad cov", "grad weights"]
    for name, a, b, m in zip(names, ours, theirs, [m_out, *m_bases]):
        if b is None:
            b = torch.zeros_like(a.detach().double().cpu()) if a is not None else None
        if a is None:
            assert b is None or not b.abs().gt(0).any(), name
            continue
        a = a.detach().double().cpu()
        m = m if m is not None else torch.zeros_like(b)
        bound = m + 1e-300
        err = (a - b).abs()
        bad = ~(err <= bound)
        assert not bad.any(), (
            f"{name}: {int(bad.sum())} of {bad.numel()} elements off; worst "
            f"|ours - ref| = {err[bad].max().item():.3g} against a bound of "
            f"{bound[bad][err[bad].argmax()].item():.3g}")
    return ours, theirs


def rtol_for(dtype, cond=1.0):
    """Tolerance relative to the magnitude bound: rounding of the op's dtype, times the
    condition number of the worst covariance."""
    return (5e-5 if dtype == torch.float32 else 1e-11) * max(1.0, cond)


def worst_condition(cov, eps):
    if cov.shape[0] == 0:
        return 1.0
    c = torch.linalg.cond(torch.linalg.inv(inverse_covariance(cov.detach().double().cpu(), eps)))
    return max(1.0, float(c.max())) if math.isfinite(float(c.max())) else float("inf")
