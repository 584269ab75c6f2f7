# SPDX-License-Identifier: Apache-2.0
"""The op's whole contract in float64, written in the tests: feature channels and the
cutoff, with the mask written here (q by a linear solve, not by the op's whitening).

    f_k(x)_c = sum_n w_nc exp(-q_n(x) / 2) [q_n(x) <= k^2],
    q_n(x) = (x - mu_n)^T Sigma_n^{-1} (x - mu_n)

The mask is taken from q without its gradient, so a pair beyond the cutoff contributes
nothing to the value or to any gradient, as the op promises.  Also here: helpers that run
the op or the reference and return the value with all four gradients, the test that a
configuration has no pair within rounding of the boundary, and builders of inputs that
the accuracy and cutoff tests share (needle-like Gaussians).
"""
import math

import torch

import gaussfield

F64 = torch.float64
NAMES = ("value", "grad x", "grad means", "grad cov", "grad weights")


def sigma_of(cov, eps):
    """Sigma [N, 3, 3] in float64 from cov_tril [N, 6] (L L^T + eps I) or log_scales [N, 3]
    (diag(e^{2 s}), no eps, as in the notebook); differentiable."""
    cov = cov.to(F64)
    if cov.shape[-1] == 3:
        return torch.diag_embed(torch.exp(2.0 * cov))
    z = torch.zeros_like(cov[:, 0])
    L = torch.stack([torch.stack([cov[:, 0].exp(), z, z], -1),
                     torch.stack([cov[:, 1], cov[:, 2].exp(), z], -1),
                     torch.stack([cov[:, 3], cov[:, 4], cov[:, 5].exp()], -1)], -2)
    return L @ L.mT + eps * torch.eye(3, dtype=F64, device=cov.device)


def mahalanobis_sq(x, means, cov, eps):
    """q [..., N] in float64: Sigma_n v = d solved for all points at once per Gaussian."""
    x, means = x.to(F64), means.to(F64)
    lead, N = x.shape[:-1], means.shape[0]
    d = x.reshape(-1, 1, 3) - means                      # [P, N, 3]
    if N == 0 or d.shape[0] == 0:
        return d.sum(-1).reshape(*lead, N)
    dt = d.permute(1, 2, 0)                              # [N, 3, P]
    v = torch.linalg.solve(sigma_of(cov, eps), dt)
    return (dt * v).sum(1).T.reshape(*lead, N)


def field(x, means, cov, weights, eps=1e-6, cutoff=None):
    """f_k(x) in float64: [...] for weights [N], [..., C] for weights [N, C]."""
    q = mahalanobis_sq(x, means, cov, eps)
    g = torch.exp(-0.5 * q)
    if cutoff is not None:
        g = torch.where(q.detach() <= cutoff * cutoff, g, torch.zeros_like(g))
    w = weights.to(F64)
    return (g * w).sum(-1) if w.dim() == 1 else g @ w


def clear_of_boundary(x, means, cov, eps, cutoff, rel=1e-3):
    """Bool [...]: the points none of whose pairs has |q - k^2| < rel * k^2."""
    q = mahalanobis_sq(x.detach().cpu(), means.detach().cpu(), cov.detach().cpu(), eps)
    k2 = cutoff * cutoff
    return ((q - k2).abs() >= rel * k2).all(-1)


def mask_counts(x, means, cov, eps, cutoff):
    """(pairs kept, pairs cut) by the reference's mask."""
    q = mahalanobis_sq(x.detach().cpu(), means.detach().cpu(), cov.detach().cpu(), eps)
    kept = int((q <= cutoff * cutoff).sum())
    return kept, q.numel() - kept


def value_and_grads(fn, x, means, cov, weights, grad_out, **kw):
    """fn's value and its four gradients (leaf copies of the inputs; grad_out [result])."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, means, cov, weights)]
    out = fn(*leaves, **kw)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype).to(out.device),
                                allow_unused=True, materialize_grads=True)  # empty inputs
    return [out.detach(), *grads]


def ours(x, means, cov, weights, grad_out, eps=1e-6, cutoff=None):
    return value_and_grads(gaussfield.gaussian_field, x, means, cov, weights, grad_out,
                           eps=eps, cutoff=cutoff)


def reference(x, means, cov, weights, grad_out, eps=1e-6, cutoff=None):
    """The reference on the float64 values of the op's own inputs (their rounding to the
    op's dtype is not counted as the op's error)."""
    c = [t.detach().to(F64).cpu() for t in (x, means, cov, weights, grad_out)]
    return value_and_grads(field, *c[:4], c[4], eps=eps, cutoff=cutoff)


def norm_rel(a, ref):
    a = a.detach().to(F64).cpu()
    ref = ref.detach().to(F64).cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_all_close(got, want, rtol, what=""):
    """Every one of (value, 4 gradients) within rtol, norm-relative; shapes and dtypes kept."""
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        if b.numel() == 0:
            continue
        if b.abs().max() == 0:
            assert a.abs().max() == 0, f"{what} {name}: nonzero where the reference is exactly 0"
            continue
        e = norm_rel(a, b)
        assert e <= rtol, f"{what} {name}: norm-relative error {e:.3g} > {rtol:.3g}"


# ---- inputs -----------------------------------------------------------------------------

def _random_rotations(n, g):
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]


def cov_tril_of(sigma, eps):
    """cov_tril parameters [N, 6] whose Sigma (L L^T + eps I) is the given one."""
    L = torch.linalg.cholesky(sigma - eps * torch.eye(3, dtype=F64))
    return torch.stack([L[:, 0, 0].log(), L[:, 1, 0], L[:, 1, 1].log(),
                        L[:, 2, 0], L[:, 2, 1], L[:, 2, 2].log()], -1)


def needles(N, B, style, seed, *, box=5.0, long=2.0, short=0.02, near=0.9, eps=1e-6):
    """N needle-like Gaussians and B points, float64 CPU; style:

    "rotated" (cov [N, 6]): principal axes (long, short, short) along random directions,
        Sigma = R diag(s^2) R^T, so the cov_tril parameters carry strong correlations;
    "tril" (cov [N, 6]): the diagonal of L a random permutation of (long, short, short)
        and its off-diagonal entries ~N(0, 1): strongly correlated, with a shortest axis
        near 1e-3 (condition numbers of Sigma ~1e6 and beyond);
    "diag" (cov [N, 3]): principal axes (long, short, short) along the coordinate axes,
        the long one at random.

    A fraction `near` of the points is drawn from a random needle's own distribution
    (scaled by 1.2), the rest uniformly in the box; weights ~N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    jitter = torch.exp(0.2 * torch.randn(N, 3, generator=g, dtype=F64))
    s = torch.tensor([long, short, short], dtype=F64) * jitter      # [N, 3] axis lengths
    means = box * torch.rand(N, 3, generator=g, dtype=F64)
    if style == "rotated":
        R = _random_rotations(N, g)
        cov = cov_tril_of(R @ torch.diag_embed(s * s) @ R.mT, eps)
    else:
        perm = torch.argsort(torch.rand(N, 3, generator=g), dim=-1)  # the long axis anywhere
        s = torch.gather(s, 1, perm)
        if style == "tril":
            cov = torch.empty(N, 6, dtype=F64)
            cov[:, [0, 2, 5]] = s.log()
            cov[:, [1, 3, 4]] = torch.randn(N, 3, generator=g, dtype=F64)
        else:
            cov = s.log()
    chol = torch.linalg.cholesky(sigma_of(cov, eps))
    n_near = int(round(near * B))
    pick = torch.randint(0, N, (n_near,), generator=g)
    z = 1.2 * torch.randn(n_near, 3, 1, generator=g, dtype=F64)
    x_near = means[pick] + (chol[pick] @ z)[..., 0]
    x_far = box * torch.rand(B - n_near, 3, generator=g, dtype=F64)
    x = torch.cat([x_near, x_far])[torch.randperm(B, generator=g)]
    weights = torch.randn(N, generator=g, dtype=F64)
    return x, means, cov, weights
