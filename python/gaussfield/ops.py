"""The functional API of gaussfield.  The ops and their registrations: ``torch_ext/``
(C++) and :mod:`gaussfield.autograd`."""

import math
from typing import Optional

import torch
from torch import Tensor

from . import autograd as _autograd  # noqa: F401  (registers fakes, Autograd kernels, vmap rules)


def gaussian_field(
    x: Tensor,
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    eps: float = 1e-6,
    cutoff: Optional[float] = None,
) -> Tensor:
    r"""Evaluate a field of N anisotropic 3D Gaussians at the points ``x``.

    .. math::
        f(x) = \sum_n w_n \exp\left(-\tfrac12 q_n(x)\right),\qquad
        q_n(x) = (x - \mu_n)^T \Sigma_n^{-1} (x - \mu_n)

    and with a cutoff :math:`k`, exactly
    :math:`f_k(x) = \sum_n w_n \exp(-q_n(x)/2)\,[q_n(x) \le k^2]`.

    Args:
        x: query points ``[..., 3]``. A 1-D ``[3]`` gives a 0-d result.
        means: ``[N, 3]``.
        cov: covariance parameters, ``[N, 6]`` or ``[N, 3]``:

            * ``[N, 6]`` (full, the notebook's ``cov_tril``):
              ``L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]]``,
              ``Sigma = L L^T + eps * I``.
            * ``[N, 3]`` (diagonal, the notebook's ``log_scales``):
              ``Sigma = diag(e^{2 s})``; ``eps`` is not used.
        weights: ``[N]``, or ``[N, C]`` for C feature channels (one exponential shared
            by the channels); raw (no normalisation constant).
        eps: added to the diagonal of Sigma in the full parameterisation; finite, >= 0.
        cutoff: ``None`` (every pair counts), or a Mahalanobis radius ``k``, a finite
            number > 0: a pair with ``q_n(x) > k^2`` contributes nothing to the value or
            to any gradient.  Per point and channel,
            ``|f_k(x) - f(x)| <= exp(-k^2/2) * sum_n |w_n|``; to keep the error below an
            absolute ``tol``, take ``k = sqrt(2 ln(sum_n |w_n| / tol))``.  The gradients'
            errors are bounded in the README ("The cutoff").  Which pairs count is decided
            by one test, the same in the forward and the backward on one device; pairs
            within float rounding of the boundary may be decided differently on the CPU
            and on CUDA.

    Returns:
        ``f(x)`` with shape ``x.shape[:-1]`` (``x.shape[:-1] + (C,)`` for weights
        ``[N, C]``), dtype and device of ``x``.

    The exponent is computed as ``|M_n (x - mu_n)|^2``, ``M_n`` the inverse Cholesky
    factor of ``Sigma_n`` computed once per Gaussian in float64: accurate in float32 on
    elongated, strongly correlated Gaussians, and never negative.

    Inputs share one device (CPU or CUDA) and may be non-contiguous.  dtypes: float32 or
    float64, all alike; where an input is float16 or bfloat16 the op computes in float32
    (float64 if another input is float64) and returns ``x``'s dtype, each gradient in its
    input's dtype.  Under ``torch.autocast`` the result is float32 (float64 where an
    input is float64). Differentiable with respect to all four tensors (first
    order); only the gradients that autograd asks for are computed.
    """
    if cutoff is not None:
        cutoff = _check_cutoff(cutoff)
    return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff)


def _check_cutoff(cutoff) -> float:
    """``cutoff`` as a float, or a ValueError naming it."""
    if isinstance(cutoff, (bool, str, bytes)):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}")
    try:
        k = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}") from None
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"cutoff must be None or a finite number > 0 (a Mahalanobis radius), got {cutoff!r}")
    return k
