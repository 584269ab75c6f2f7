# SPDX-License-Identifier: Apache-2.0
"""The covariance front-ends in plain PyTorch: the whitening factor ``M`` of each
parameterisation the op takes, differentiable to any order by PyTorch itself.

The ops compute the same ``M`` in C, in double, once per Gaussian, with their own first
derivatives (csrc/gf_math.h); these are what the higher-order paths of
:mod:`gaussfield.autograd` differentiate instead (``create_graph=True``, forward mode,
``torch.func``), so that no second derivative of a parameterisation is written by hand.
"""
import torch

from ._common import DEFAULT_EPS, check_covariance_matrices, positive_definite, symmetric_part
from .reference import cholesky_factor, quaternion_rotation

def _factor_dtype(cov, *others):
    """The dtype a whitening factor is handed to the ops in: cov's where it is float32 or
    float64, else (float16 / bfloat16) float64 beside a float64 input, float32 otherwise
    (the ops' own promotion)."""
    if cov.dtype in (torch.float32, torch.float64):
        return cov.dtype
    return torch.float64 if any(t.dtype == torch.float64 for t in others) else torch.float32


def whitening_factor(cov, eps=DEFAULT_EPS, *, whitened=False, check=True):
    """The whitening factor ``M`` (``[N, 3, 3]``, lower triangular, ``Sigma^-1 = M^T M``)
    of the op's covariance parameters, in plain PyTorch and in float64, differentiable to
    any order: ``cov_tril`` ``[N, 6]`` (``Sigma = L L^T + eps I``, ``M = chol(Sigma)^-1``),
    ``log_scales`` ``[N, 3]`` (``M = diag(e^-s)``), the 3DGS form ``[N, 7]``
    (``Sigma = R(q / |q|) diag(e^2s) R^T``, ``M = chol(Sigma)^-1``) or a covariance matrix
    ``[N, 3, 3]`` (``Sigma = (S + S^T) / 2``, ``M = chol(Sigma)^-1``; NaN where Sigma is
    not positive definite, which ``check`` refuses in eager use, as the op does); with
    ``whitened=True``, ``cov`` is the factor ``M`` ``[N, 3, 3]`` itself and is returned
    as it is.  The same contract as :func:`gaussfield.gaussian_field`'s ``cov`` and
    ``whitened``; the kernels compute the same ``M`` in C (to float64 rounding)."""
    if whitened:
        if cov.dim() != 3 or tuple(cov.shape[1:]) != (3, 3):
            raise ValueError("with whitened=True, cov must be the whitening factor M "
                             f"[N, 3, 3], got {list(cov.shape)}")
        return cov
    if cov.dim() == 3 and tuple(cov.shape[1:]) == (3, 3):
        return _covariance_whitening(cov, check)
    if cov.dim() != 2 or cov.shape[-1] not in (3, 6, 7):
        raise ValueError("cov must have shape [N, 6], [N, 3], [N, 7] or [N, 3, 3] (a "
                         "covariance matrix), or [N, 3, 3] with whitened=True (the "
                         f"whitening factor M), got {list(cov.shape)}")
    c = cov.double()
    if c.shape[-1] == 3:
        return torch.diag_embed(torch.exp(-c))
    eye = torch.eye(3, dtype=c.dtype, device=c.device)
    if c.shape[-1] == 7:
        R = quaternion_rotation(c[:, :4])
        sigma = (R * torch.exp(2 * c[:, None, 4:])) @ R.mT
        K = torch.linalg.cholesky(0.5 * (sigma + sigma.mT))
        return torch.linalg.solve_triangular(K, eye.expand_as(K), upper=False)
    L = cholesky_factor(c)
    if eps != 0.0:
        L = torch.linalg.cholesky(L @ L.mT + eps * eye)
    return torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)


def _covariance_whitening(cov, check):
    """M of a covariance matrix [N, 3, 3] (float64): the front-end GF_COV_SIGMA of
    csrc/gf_frontends.h, NaN where the C front-end gives NaN."""
    sigma = symmetric_part(cov)
    if check:
        check_covariance_matrices(sigma)
    eye = torch.eye(3, dtype=sigma.dtype, device=sigma.device)
    K, _ = torch.linalg.cholesky_ex(sigma)
    M = torch.linalg.solve_triangular(K, eye.expand_as(K), upper=False)
    ok = positive_definite(sigma)[:, None, None]
    return torch.where(ok, M, torch.full_like(M, float("nan")))
