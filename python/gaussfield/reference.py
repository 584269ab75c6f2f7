"""The closed form in plain PyTorch: what an expert would write without a fused kernel.

It materialises ``[..., N]`` intermediates (and autograd saves several of them), so its
memory grows with B x N. It is here to check results against and to compare speed
with (``torch.compile`` of it is the strongest PyTorch peer in the benchmark).
"""
from typing import Optional

import torch
from torch import Tensor


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


def inverse_covariance(cov: Tensor, eps: float = 1e-6) -> Tensor:
    """``Sigma^{-1}`` ``[N, 3, 3]`` from ``cov_tril`` ``[N, 6]`` or ``log_scales`` ``[N, 3]``
    (those two of :func:`gaussfield.gaussian_field`'s parameterisations only)."""
    if cov.shape[-1] == 3:
        return torch.diag_embed(torch.exp(-2.0 * cov))
    L = cholesky_factor(cov)
    eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
    return torch.linalg.inv(L @ L.transpose(-2, -1) + eps * eye)


def gaussian_field_reference(
    x: Tensor,
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    eps: float = 1e-6,
    cutoff: Optional[float] = None,
) -> Tensor:
    """:func:`gaussfield.gaussian_field` for ``cov_tril`` ``[N, 6]`` and ``log_scales``
    ``[N, 3]`` (channels and cutoff too; not the other parameterisations), computed in
    closed form: the inverse once per Gaussian, then the quadratic form
    written out over its six unique entries (pointwise, so ``torch.compile`` fuses it),
    exp, weighted sum."""
    p = inverse_covariance(cov, eps)
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
        g = torch.where(q <= cutoff * cutoff, g, torch.zeros_like(g))
    if weights.dim() == 2:
        return g @ weights  # [..., C]
    return (weights * g).sum(-1)
