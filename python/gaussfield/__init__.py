# SPDX-License-Identifier: Apache-2.0
"""gaussfield: a fused PyTorch operator for a learnable field of anisotropic 3D Gaussians.

    f(x) = sum_n w_n exp(-0.5 (x - mu_n)^T Sigma_n^{-1} (x - mu_n))

evaluated, with its gradients, in one pass over the Gaussian-point pairs, on the CPU and
on CUDA GPUs, in memory that grows with B + N (never B x N).

* :func:`gaussian_field` - the functional operator; :data:`DEFAULT_EPS` its default eps.
* :func:`voxelize` - the field at the centres of a regular grid's voxels, without a
  point tensor; :func:`voxel_centres` - those centres.
* :class:`GaussianField` (:mod:`gaussfield.module`) - an ``nn.Module`` with the
  parameters, initialisation and ``state_dict`` of the notebook's
  ``FastLearnableGaussianField``.
* :func:`fused_forward` - drop-in ``forward`` for the notebook's classes:
  ``FastLearnableGaussianField.forward = gaussfield.fused_forward``.
* :mod:`gaussfield.notebook` - what belongs to the notebook: the drop-in above, and the
  notebook's own classes as it prints them (the reference it is checked against).
* :func:`gaussian_field_reference` - the closed form in plain PyTorch (materialises
  ``[..., N]``), for checking and comparison.
* :func:`build_info` - how the compiled library was built (the torch it is tied to,
  CUDA kernels or not).
* :mod:`gaussfield.io` (3DGS scenes as PLY files; reading and writing them needs
  plyfile, ``pip install gaussfield[io]``) and :mod:`gaussfield.distributed` (several
  processes) are imported on first use: ``gaussfield.io.read_3dgs_ply(...)`` works after
  ``import gaussfield``, which itself needs no plyfile.
"""
import importlib as _importlib

from ._library import build_info, load_library as _load_library

# The ops first (the compiled library defines them), then their Python registrations
# (fakes, Autograd kernels, vmap rules), once, before anything can call them.
_load_library(__path__)
from . import autograd as _autograd  # noqa: E402, F401

from ._common import DEFAULT_EPS  # noqa: E402
from .module import GaussianField  # noqa: E402
from .notebook import fused_forward  # noqa: E402
from .ops import culling_stats, gaussian_field, voxel_centres, voxelize  # noqa: E402
from .reference import gaussian_field_reference, inverse_covariance  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "gaussian_field",
    "voxelize",
    "voxel_centres",
    "culling_stats",
    "DEFAULT_EPS",
    "GaussianField",
    "fused_forward",
    "gaussian_field_reference",
    "inverse_covariance",
    "build_info",
]

# submodules imported on first use (PEP 562), for what they import themselves
_LAZY_SUBMODULES = ("io", "distributed")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)  # also sets the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
