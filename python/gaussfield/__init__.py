"""gaussfield: a fused PyTorch operator for a learnable field of anisotropic 3D Gaussians.

    f(x) = sum_n w_n exp(-0.5 (x - mu_n)^T Sigma_n^{-1} (x - mu_n))

evaluated, with its gradients, in one pass over the Gaussian-point pairs, on the CPU and
on CUDA GPUs, in memory that grows with B + N (never B x N).

* :func:`gaussian_field` - the functional operator; :data:`DEFAULT_EPS` its default eps.
* :class:`GaussianField` - an ``nn.Module`` with the parameters, initialisation and
  ``state_dict`` of the notebook's ``FastLearnableGaussianField``.
* :func:`fused_forward` - drop-in ``forward`` for the notebook's classes:
  ``FastLearnableGaussianField.forward = gaussfield.fused_forward``.
* :mod:`gaussfield.notebook` - what belongs to the notebook: the two above, and the
  notebook's own classes as it prints them (the reference they are checked against).
* :func:`gaussian_field_reference` - the closed form in plain PyTorch (materialises
  ``[..., N]``), for checking and comparison.
"""
from ._library import load_library as _load_library

_load_library()

from .ops import DEFAULT_EPS, culling_stats, gaussian_field  # noqa: E402
from .notebook import GaussianField, fused_forward  # noqa: E402
from .reference import gaussian_field_reference, inverse_covariance  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "gaussian_field",
    "culling_stats",
    "DEFAULT_EPS",
    "GaussianField",
    "fused_forward",
    "gaussian_field_reference",
    "inverse_covariance",
]
