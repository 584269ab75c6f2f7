# SPDX-License-Identifier: Apache-2.0
"""What several modules of gaussfield share: the default eps and the argument checks the
Python layer makes itself.  A leaf module (it imports nothing of gaussfield), so that
every other module can import it without an import circle."""
import math
import os

import torch

#: eps added to the diagonal of a full covariance (``Sigma = L L^T + eps * I``) when the
#: caller gives none: the 1e-6 that the notebook's ``get_covariance`` adds.  The op
#: schema's default is ``GF_DEFAULT_EPS`` (csrc/gaussfield.h), the same number.
DEFAULT_EPS = 1e-6


def check_cutoff(cutoff) -> float:
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


#: points per cell of each device's culling plan (torch_ext/cpu.cpp, cuda.cpp: their
#: policies), where GAUSSFIELD_CULLING_POINTS_PER_CELL does not set it
POINTS_PER_CELL = {"cpu": 64.0, "cuda": 128.0}


def points_per_cell(device_type: str) -> float:
    """The culling plan's points per cell on ``device_type`` ('cpu' or 'cuda'), as
    torch_ext's points_per_cell_setting reads it: GAUSSFIELD_CULLING_POINTS_PER_CELL (a
    number >= 1) where set, else the device's default."""
    v = os.environ.get("GAUSSFIELD_CULLING_POINTS_PER_CELL", "")
    if not v:
        return POINTS_PER_CELL[device_type]
    try:
        n = float(v)
    except ValueError:
        n = math.nan
    if not (1 <= n < 1e12):
        raise ValueError(f"GAUSSFIELD_CULLING_POINTS_PER_CELL must be a number of points >= 1, got {v!r}")
    return n


# ---- covariance matrices (cov [N, 3, 3] without whitened) ------------------------------

def symmetric_part(cov):
    """``(S + S^T) / 2`` of ``cov`` ``[N, 3, 3]`` in float64: the Sigma that the op reads
    from a covariance matrix (differentiable)."""
    s = cov.double()
    return 0.5 * (s + s.mT)


def positive_definite(sigma):
    """Bool ``[N]``: whether each symmetric ``sigma`` ``[N, 3, 3]`` (float64) is positive
    definite by the C front-end's own test (csrc/gf_frontends.h,
    gf_whitening_of_covariance: every Cholesky pivot > 0; a NaN pivot is not).  The
    op gives a NaN whitening factor exactly where this is False."""
    s = sigma.detach()
    xx, yy, zz = s[..., 0, 0], s[..., 1, 1], s[..., 2, 2]
    xy, xz, yz = s[..., 0, 1], s[..., 0, 2], s[..., 1, 2]
    k00 = torch.sqrt(xx)
    k10, k20 = xy / k00, xz / k00
    p1 = yy - k10 * k10
    k21 = (yz - k20 * k10) / torch.sqrt(p1)
    p2 = zz - k20 * k20 - k21 * k21
    return (xx > 0) & (p1 > 0) & (p2 > 0)


def _unwrapped(t):
    """(t without torch.func's wrappers, whether one was vmap's): a batched tensor's value
    holds every sample, its batch dimension where vmap keeps it."""
    try:
        from torch._C import _functorch as F
    except ImportError:  # pragma: no cover - depends on torch's internals
        return t, False
    batched = False
    while F.is_functorch_wrapped_tensor(t):
        batched = batched or F.is_batchedtensor(t)
        t = F.get_unwrapped(t)
    return t, batched


def _eager(t):
    """Whether a value of t may be read on the host here: not while torch.compile traces,
    not for fake or meta tensors, not while a CUDA graph is being captured (reading would
    synchronise, which capture forbids)."""
    if torch.compiler.is_compiling():
        return False
    if t.device.type == "meta" or isinstance(t, torch._subclasses.FakeTensor):
        return False
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_covariance_matrices(sigma):
    """Raise a ValueError naming the first Gaussian whose ``sigma`` (``[N, 3, 3]``,
    symmetric, float64) has finite entries and is not positive definite, as the op does
    (torch_ext/ops.cpp, check_covariance_matrices), in eager use only (see ``_eager``):
    elsewhere such a Gaussian gives NaN.  NaN and infinite entries pass.  Works under
    torch.func's transforms (the test runs on every sample of a batch)."""
    if torch.compiler.is_compiling() or sigma.shape[0] == 0 or not _eager(_unwrapped(sigma)[0]):
        return
    s = sigma.detach()
    finite = torch.isfinite(s).flatten(-2).all(-1)
    bad = finite & ~positive_definite(s)
    # the first bad Gaussian's index, -1 for none (0-d: each sample's under vmap)
    first = torch.where(bad.any(), torch.argmax(bad.to(torch.int32)), -1)
    found = _unwrapped(first)[0].flatten()
    found = found[found >= 0]
    if found.numel() == 0:
        return
    n = int(found[0])
    # its entries, where no vmap hides which sample it is in
    plain, batched = _unwrapped(s)
    values = "" if batched else f": {plain[n].tolist()}"
    raise ValueError(
        f"cov: the covariance matrix Sigma of Gaussian {n} is not positive definite (its "
        f"symmetric part has no Cholesky factor in float64){values}. If cov is a "
        "whitening factor M, pass whitened=True (gaussfield 0.2 reads an unnamed "
        "[N, 3, 3] as Sigma)")


# ---- regular grids (voxelize) ----------------------------------------------------------

def _as_int(v, name):
    """An int (or a SymInt under torch.compile) or a TypeError naming the argument."""
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        try:
            import operator
            return operator.index(v)
        except TypeError:
            raise TypeError(f"{name} must hold integers, got {v!r}") from None
    return v


def grid_ints(values, name, minimum):
    """Three integers >= minimum as a list, or a ValueError / TypeError naming ``name``."""
    try:
        vals = list(values)
    except TypeError:
        raise TypeError(f"{name} must be 3 integers, got {values!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must be 3 integers, got {values!r}")
    vals = [_as_int(v, name) for v in vals]
    for v in vals:
        if not isinstance(v, torch.SymInt) and v < minimum:
            raise ValueError(f"{name} must have entries >= {minimum}, got {tuple(vals)}")
        torch._check(v >= minimum, lambda: f"{name} must have entries >= {minimum}")
    return vals


def _floats(values, name, count):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().reshape(-1).tolist()
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {count} numbers, got {values!r}") from None
    if len(vals) != count:
        raise ValueError(f"{name} must be {count} numbers, got {values!r}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name} must be finite, got {vals}")
    return vals


def grid_geometry(shape, lo=None, hi=None, affine=None):
    """The grid's box as the C core takes it (gf_grid): ``origin`` (3 floats) and
    ``edges`` (9 floats, row-major, ``edges[r][c]`` the coordinate r of the box's edge
    along grid axis c), from ``lo``/``hi`` (origin lo, edges diag(hi - lo)) or from a
    voxel-to-world ``affine`` of voxel centres (4x4 or 3x4: edges A diag(D), origin
    t - A (1/2, 1/2, 1/2)), in float64 (Python floats).  Exactly one of the two ways."""
    if (lo is None) != (hi is None):
        raise ValueError("lo and hi go together: give both (an axis-aligned box) or neither")
    if (lo is None) == (affine is None):
        raise ValueError("give the grid's box as lo and hi, or as affine (a voxel-to-world "
                         "matrix), exactly one of the two")
    if lo is not None:
        lo_, hi_ = _floats(lo, "lo", 3), _floats(hi, "hi", 3)
        if not all(a < b for a, b in zip(lo_, hi_)):
            raise ValueError(f"the box must have lo < hi on every axis, got lo={lo_}, hi={hi_}")
        origin = lo_
        edges = [0.0] * 9
        for c in range(3):
            edges[4 * c] = hi_[c] - lo_[c]
        return origin, edges
    if isinstance(affine, torch.Tensor):
        rows = affine.detach().cpu().double().tolist()
    else:
        try:
            rows = [list(map(float, r)) for r in affine]
        except (TypeError, ValueError):
            raise TypeError(f"affine must be a 4x4 or 3x4 matrix, got {affine!r}") from None
    if len(rows) not in (3, 4) or any(len(r) != 4 for r in rows):
        raise ValueError(f"affine must be a 4x4 or 3x4 matrix, got {len(rows)} rows of "
                         f"{[len(r) for r in rows]}")
    vals = [v for r in rows[:3] for v in r]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError("affine must be finite")
    if len(rows) == 4 and rows[3] != [0.0, 0.0, 0.0, 1.0]:
        raise ValueError(f"affine's last row must be (0, 0, 0, 1), got {rows[3]}")
    a = [r[:3] for r in rows[:3]]
    t = [r[3] for r in rows[:3]]
    edges = [a[r][c] * float(shape[c]) for r in range(3) for c in range(3)]
    origin = [t[r] - (a[r][0] * 0.5 + a[r][1] * 0.5 + a[r][2] * 0.5) for r in range(3)]
    return origin, edges


def centres_of(shape, origin, edges, offset, size, dtype, device):
    """The voxel centres ``[S0, S1, S2, 3]`` of a grid (origin, edges as grid_geometry
    gives them), computed in float64 with gf_grid_centre's formula and order
    (``origin + e0 (i + 1/2) / D0 + e1 (j + 1/2) / D1 + e2 (k + 1/2) / D2``, summed left to
    right), then rounded once to ``dtype``."""
    f64 = torch.float64
    t = [torch.arange(offset[c], offset[c] + size[c], dtype=f64, device=device) + 0.5
         for c in range(3)]
    coords = []
    for r in range(3):
        term = [edges[3 * r + c] * t[c] / shape[c] for c in range(3)]
        x = origin[r] + term[0][:, None, None]
        x = x + term[1][None, :, None]
        x = x + term[2][None, None, :]
        coords.append(x)
    return torch.stack(coords, dim=-1).to(dtype)
