# SPDX-License-Identifier: Apache-2.0
"""The functional API of gaussfield.  The ops are defined and implemented in C++
(``torch_ext/``); their Python registrations are :mod:`gaussfield.autograd`."""

from typing import Optional

import torch
from torch import Tensor

from ._common import (DEFAULT_EPS, POINTS_PER_CELL, centres_of, check_cutoff, grid_geometry,
                      grid_ints, points_per_cell)


def gaussian_field(
    x: Tensor,
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    eps: float = DEFAULT_EPS,
    cutoff: Optional[float] = None,
    whitened: bool = False,
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
        cov: covariance parameters.  What they mean is said by ``whitened`` and, without
            it, by their shape (no shape is read two ways):

            * ``[N, 6]`` (full, the notebook's ``cov_tril``):
              ``L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]]``,
              ``Sigma = L L^T + eps * I``.
            * ``[N, 3]`` (diagonal, the notebook's ``log_scales``):
              ``Sigma = diag(e^{2 s})``; ``eps`` is not used.
            * ``[N, 7]`` (3D Gaussian Splatting's rotation and scales,
              ``(q_w, q_x, q_y, q_z, s_0, s_1, s_2)``):
              ``Sigma = R(q / |q|) diag(e^{2 s}) R(q / |q|)^T``; the quaternion is
              normalised inside the op (its gradient is that of the normalised form),
              and a zero quaternion is the identity rotation; ``eps`` is not used.
            * ``[N, 3, 3]`` (a covariance matrix): ``Sigma = (S + S^T) / 2``, the
              symmetric part of ``S = cov[n]`` (for a symmetric ``S``, ``S`` itself);
              ``eps`` is not used (pass ``S + eps * I`` for a jitter).  The value
              depends on the symmetric part alone, and ``cov``'s gradient is the exact
              gradient of that function: symmetric, ``grad_cov[n] = G = df/dSigma``
              (``(G + G^T) / 2`` of the gradient with respect to a Sigma read as it is;
              ``torch.linalg.cholesky``'s convention for a symmetric input).  Each
              Sigma must be positive definite: in eager use the op refuses one that is
              not (a ``ValueError`` naming the Gaussian; on CUDA the check costs one
              synchronisation per call).  The check is skipped while a CUDA graph is
              captured, while ``torch.compile`` traces (the compiled code checks when
              it runs, outside CUDA graphs) and in the backward ops; there a Gaussian
              whose Sigma is not positive definite in float64 is NaN at every point
              (its whitening factor is NaN), as a Gaussian with a NaN entry always is
              (NaN entries are not refused).
            * ``[N, 3, 3]`` with ``whitened=True`` (your own parameterisation): the
              whitening factor ``M``, lower triangular, ``Sigma^-1 = M^T M``; entries
              above the diagonal are ignored (zero gradient); ``eps`` is not used.
        weights: ``[N]``, or ``[N, C]`` for C feature channels (one exponential shared
            by the channels); raw (no normalisation constant).
        eps: added to the diagonal of Sigma in the full parameterisation; finite, >= 0.
        cutoff: ``None`` (every pair counts), or a Mahalanobis radius ``k``, a finite
            number > 0: a pair with ``q_n(x) > k^2`` contributes nothing to the value or
            to any gradient.  Per point and channel,
            ``|f_k(x) - f(x)| <= exp(-k^2/2) * sum_n |w_n|``; to keep the error below an
            absolute ``tol``, take ``k = sqrt(2 ln(sum_n |w_n| / tol))``.  The gradients'
            errors are bounded in docs/cutoff-and-culling.md.  Which pairs count is decided
            by one test, the same in the forward and the backward on one device; pairs
            within float rounding of the boundary may be decided differently on the CPU
            and on CUDA.

            With a cutoff, a large field is computed by *culling*: each point meets only
            the Gaussians whose k-sigma ellipsoid may reach its grid cell, so the cost
            follows the pairs that count instead of B x N.  The result is the same
            ``f_k`` (the same test decides every pair), summed in another order.  The op
            chooses the path itself; ``GAUSSFIELD_CULLING=always|never`` forces one, and
            ``GAUSSFIELD_CULLING_BUDGET_MB`` caps the culling's memory
            (docs/cutoff-and-culling.md).
        whitened: ``True``: ``cov`` is the whitening factor ``M`` ``[N, 3, 3]`` (any other
            shape is an error); ``False`` (default): ``cov`` is one of the
            parameterisations above, a ``[N, 3, 3]`` one a covariance matrix Sigma.
            (Before 0.2 an unnamed ``[N, 3, 3]`` was ``M``: docs/migration.md.)

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
    input is float64). Differentiable twice with respect to all four tensors, in
    reverse mode, forward mode and under ``torch.func`` (third derivatives raise);
    only the gradients that autograd asks for are computed.
    """
    if cutoff is not None:
        cutoff = check_cutoff(cutoff)
    return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff,
                                               whitened=bool(whitened))



def culling_stats(x: Tensor, means: Tensor, cov: Tensor, weights: Tensor, *, cutoff: float,
                  eps: float = DEFAULT_EPS, device_type: Optional[str] = None,
                  whitened: bool = False) -> dict:
    """How the culled path would divide this problem: the plan that the op builds on
    ``device_type`` (default: that of ``x``), computed on the CPU, with the points per
    cell that the op takes there (``GAUSSFIELD_CULLING_POINTS_PER_CELL`` where set).
    ``cov`` and ``whitened`` as in :func:`gaussian_field`.

    Returns ``{}`` when there is no plan within the culling budget; otherwise a dict
    with ``dims`` (cells along x, y, z), ``cell_size``, ``list_length`` (entries of the
    cell lists), ``pairs_estimate`` (the op's estimate, if points spread evenly),
    ``pairs_evaluated`` (exactly the pairs the culled path evaluates for the points) and
    ``workspace_bytes`` (of the CPU layout).  For benchmarks; not differentiable.
    """
    cutoff = check_cutoff(cutoff)
    kind = device_type or x.device.type
    if kind not in POINTS_PER_CELL:
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {kind!r}")
    cpu = [t.detach().cpu() for t in (x, means, cov, weights)]
    v = torch.ops.gaussfield._culling_stats(*cpu, eps, cutoff, points_per_cell(kind),
                                            whitened=bool(whitened))
    if not v:
        return {}
    return {"dims": [int(v[0]), int(v[1]), int(v[2])], "cell_size": v[3],
            "list_length": int(v[4]), "pairs_estimate": v[5], "pairs_evaluated": v[6],
            "workspace_bytes": int(v[7])}


def _subvolume(shape, offset, size):
    """shape, offset and size as checked lists of 3 ints (offset 0 and size the rest of the
    grid by default)."""
    shape = grid_ints(shape, "shape", 0)
    offset = [0, 0, 0] if offset is None else grid_ints(offset, "offset", 0)
    size = [d - o for d, o in zip(shape, offset)] if size is None else grid_ints(size, "size", 0)
    for c in range(3):
        if not isinstance(offset[c] + size[c] - shape[c], torch.SymInt) and offset[c] + size[c] > shape[c]:
            raise ValueError(f"offset + size must be <= shape on every axis, got offset "
                             f"{tuple(offset)}, size {tuple(size)}, shape {tuple(shape)}")
    return shape, offset, size


def voxel_centres(shape, *, lo=None, hi=None, affine=None, offset=None, size=None,
                  dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    """The centres of a regular grid's voxels, ``[S0, S1, S2, 3]``: exactly the points at
    which :func:`voxelize` evaluates the field, so that
    ``gaussian_field(voxel_centres(...), ...)`` equals ``voxelize(...)``.

    The box is ``lo``/``hi`` or ``affine``, ``offset``/``size`` the subvolume, as in
    :func:`voxelize`.  Voxel ``(i, j, k)`` (whole-grid indices) has its centre at
    ``origin + e_0 (i + 1/2) / D_0 + e_1 (j + 1/2) / D_1 + e_2 (k + 1/2) / D_2`` (``e_c``
    the box's edge along grid axis ``c``), computed in float64 in that order and rounded
    once to ``dtype`` (default: torch's default dtype); for ``lo``/``hi`` that is
    ``lo + (i + 1/2) (hi - lo) / D`` bit for bit.
    """
    shape, offset, size = _subvolume(shape, offset, size)
    origin, edges = grid_geometry(shape, lo, hi, affine)
    return centres_of(shape, origin, edges, offset, size, dtype or torch.get_default_dtype(),
                      device)


def voxelize(
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    shape,
    lo=None,
    hi=None,
    affine=None,
    eps: float = DEFAULT_EPS,
    cutoff: Optional[float] = None,
    offset=None,
    size=None,
    whitened: bool = False,
) -> Tensor:
    r"""The field of :func:`gaussian_field` at the centres of a regular grid's voxels,
    without a point tensor.

    Exactly ``gaussian_field(voxel_centres(shape, ...), means, cov, weights, eps=eps,
    cutoff=cutoff, whitened=whitened)`` (the same :math:`f_k` and the same gradients),
    computed with the grid as its own spatial structure: tiles of voxels, each with the
    Gaussians whose k-sigma ellipsoid reaches it.

    Args:
        means, cov, weights, eps, cutoff, whitened: as in :func:`gaussian_field`, every
            parameterisation of ``cov``.
        shape: the grid's voxels per axis ``(D0, D1, D2)``, integers >= 0; a zero gives
            an empty result.
        lo, hi: an axis-aligned box ``[lo, hi]`` (3 numbers each, ``lo < hi``
            strictly): voxel ``(i, j, k)`` is centred at ``lo + ((i, j, k) + 0.5) * (hi -
            lo) / shape``, axis 0 slowest, as ``torch.meshgrid(..., indexing="ij")``.
        affine: instead of ``lo``/``hi``, a voxel-to-world matrix of voxel centres
            (4x4 or 3x4, as NIfTI files carry: oblique axes and negative steps allowed):
            voxel ``v = (i, j, k)`` is centred at ``A v + t``.  Exactly one of ``lo``/``hi``
            and ``affine``.
        offset, size: the subvolume evaluated (3 integers each; default the whole grid):
            voxels ``offset[c] <= index < offset[c] + size[c]``.  Changing them does not
            recompile a ``torch.compile``'d caller.

    Returns:
        ``[S0, S1, S2]`` (``[S0, S1, S2, C]`` for weights ``[N, C]``), ``S = size``, the
        dtype and device of ``means``.

    Differentiable with respect to means, cov and weights (a fused backward that walks
    each Gaussian's tiles); double backward, forward mode and ``torch.func`` evaluate
    through :func:`gaussian_field` at the centres (the same values, O(S0 S1 S2) extra
    memory for the points).
    """
    if cutoff is not None:
        cutoff = check_cutoff(cutoff)
    shape, offset, size = _subvolume(shape, offset, size)
    origin, edges = grid_geometry(shape, lo, hi, affine)
    out_shape = (*size, *weights.shape[1:])
    if any(not isinstance(d, torch.SymInt) and d == 0 for d in shape):
        # an empty grid: no voxels (the op's grid has every D >= 1); 0 * sum keeps the
        # graph to the inputs
        out = means.new_zeros(out_shape)
        return out + 0 * weights.sum() if weights.requires_grad else out
    return torch.ops.gaussfield.voxelize(means, cov, weights, shape, origin, edges, offset, size,
                                         eps, cutoff, whitened=bool(whitened))
