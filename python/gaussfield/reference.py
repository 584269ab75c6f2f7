# SPDX-License-Identifier: Apache-2.0
"""The closed form in plain PyTorch: what an expert would write without a fused kernel.

It materialises ``[..., N]`` intermediates (and autograd saves several of them), so its
memory grows with B x N. It is here to check results against and to compare speed
with (``torch.compile`` of it is the strongest PyTorch peer in the benchmark).

It takes every parameterisation the op takes, under the op's contract (``cov`` and
``whitened`` of :func:`gaussfield.gaussian_field`), and refuses what the op refuses:
a checking tool must never be wrong without a word.
"""
from typing import Optional

import torch
from torch import Tensor

from ._common import (DEFAULT_EPS, check_covariance_matrices, check_cutoff, positive_definite,
                      symmetric_part)


def cholesky_factor(cov_tril: Tensor) -> Tensor:
    """``L`` ``[N, 3, 3]`` of ``cov_tril`` ``[N, 6]``: ``[[e^c0, 0, 0], [c1, e^c2, 0],
    [c3, c4, e^c5]]`` (``Sigma = L L^T + eps I``)."""
    c = cov_tril
    zero = torch.zeros_like(c[:, 0])
    return torch.stack(
        [
            torch.stack([torch.exp(c[:, 0]), zero, zero], dim=-1),
            torch.stack([c[:, 1], torch.exp(c[:, 2]), zero], dim=-1),
            torch.stack([c[:, 3], c[:, 4], torch.exp(c[:, 5])], dim=-1),
        ],
        dim=-2,
    )


def quaternion_rotation(q: Tensor) -> Tensor:
    """``R(q / max(|q|, 1e-12))`` ``[N, 3, 3]`` of quaternions ``(w, x, y, z)`` ``[N, 4]``, as
    the C front-end computes it (a zero quaternion gives the identity)."""
    n = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = n.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _is_matrix(cov: Tensor) -> bool:
    return cov.dim() == 3 and tuple(cov.shape[1:]) == (3, 3)


def inverse_covariance(cov: Tensor, eps: float = DEFAULT_EPS, *, whitened: bool = False) -> Tensor:
    """``Sigma^{-1}`` ``[N, 3, 3]`` of any of :func:`gaussfield.gaussian_field`'s
    parameterisations, under its contract: ``cov_tril`` ``[N, 6]`` (``L L^T + eps I``),
    ``log_scales`` ``[N, 3]`` (``diag(e^{-2 s})``), the 3DGS form ``[N, 7]``
    (``R diag(e^{-2 s}) R^T``, ``R`` of the normalised quaternion), a covariance matrix
    ``[N, 3, 3]`` (the inverse of its symmetric part ``(S + S^T) / 2``; one that is not
    positive definite is refused in eager use as the op refuses it, and is NaN where the
    op's is), or with ``whitened=True`` the factor ``M`` ``[N, 3, 3]`` (``M^T M`` of its
    lower triangle).  ``eps`` is used by ``[N, 6]`` alone.  Another shape is a
    ValueError."""
    if whitened:
        if not _is_matrix(cov):
            raise ValueError("with whitened=True, cov must be the whitening factor M "
                             f"[N, 3, 3], got {list(cov.shape)}")
        M = torch.tril(cov)
        return M.mT @ M
    if _is_matrix(cov):
        sigma64 = symmetric_part(cov)  # what the op reads, in float64
        check_covariance_matrices(sigma64)
        sigma = 0.5 * (cov + cov.mT)
        nan = torch.full_like(sigma, float("nan"))
        return torch.where(positive_definite(sigma64)[:, None, None], torch.linalg.inv(sigma), nan)
    if cov.dim() != 2 or cov.shape[-1] not in (3, 6, 7):
        raise ValueError("cov must have shape [N, 6] (cov_tril), [N, 3] (log_scales), [N, 7] "
                         "(quaternion and log-scales), [N, 3, 3] (a covariance matrix), or "
                         f"[N, 3, 3] with whitened=True (the whitening factor M), got {list(cov.shape)}")
    if cov.shape[-1] == 3:
        return torch.diag_embed(torch.exp(-2.0 * cov))
    if cov.shape[-1] == 7:
        R = quaternion_rotation(cov[:, :4])
        return (R * torch.exp(-2.0 * cov[:, None, 4:])) @ R.mT
    L = cholesky_factor(cov)
    eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
    return torch.linalg.inv(L @ L.transpose(-2, -1) + eps * eye)


def _check_shapes(x: Tensor, means: Tensor, cov: Tensor, weights: Tensor) -> None:
    """The op's shape checks (torch_ext/ops.cpp), as ValueErrors: never a broadcast."""
    if x.dim() < 1 or x.shape[-1] != 3:
        raise ValueError(f"x must have shape [..., 3], got {list(x.shape)}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {list(means.shape)}")
    N = means.shape[0]
    if cov.dim() < 1 or cov.shape[0] != N:
        raise ValueError(f"cov must have N = {N} rows as in means, got {list(cov.shape)}")
    if weights.dim() not in (1, 2) or weights.shape[0] != N or (weights.dim() == 2 and weights.shape[1] < 1):
        raise ValueError(f"weights must have shape [N] or [N, C] with N = {N} as in means, "
                         f"got {list(weights.shape)}")


def gaussian_field_reference(
    x: Tensor,
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    eps: float = DEFAULT_EPS,
    cutoff: Optional[float] = None,
    whitened: bool = False,
) -> Tensor:
    """:func:`gaussfield.gaussian_field` in closed form, for every parameterisation the op
    takes (``cov`` and ``whitened`` under the op's contract, :func:`inverse_covariance`),
    with channels and the cutoff; what the op refuses it refuses, with a ValueError.
    The inverse once per Gaussian, then the quadratic form written out over its six
    unique entries (pointwise, so ``torch.compile`` fuses it), exp, weighted sum.  Its
    gradient with respect to a covariance matrix is the op's: that of its symmetric
    part, symmetric."""
    _check_shapes(x, means, cov, weights)
    if cutoff is not None:
        cutoff = check_cutoff(cutoff)
    p = inverse_covariance(cov, eps, whitened=whitened)
    d = x[..., None, :] - means  # [..., N, 3]
    dx, dy, dz = d.unbind(-1)
    q = (
        p[:, 0, 0] * dx * dx
        + p[:, 1, 1] * dy * dy
        + p[:, 2, 2] * dz * dz
        + 2.0 * (p[:, 0, 1] * dx * dy + p[:, 0, 2] * dx * dz + p[:, 1, 2] * dy * dz)
    )
    g = torch.exp(-0.5 * q)
    if cutoff is not None:
        # a NaN q is kept, as the op keeps it (its test is !(q > k^2))
        g = torch.where(q > cutoff * cutoff, torch.zeros_like(g), g)
    if weights.dim() == 2:
        return g @ weights  # [..., C]
    return (weights * g).sum(-1)
