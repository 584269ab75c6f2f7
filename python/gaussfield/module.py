"""The drop-in module and forward for the notebook's Gaussian-field classes."""
import math

import torch
from torch import Tensor, nn

from .ops import gaussian_field

#: eps that the notebook's ``get_covariance`` adds to the diagonal of a full covariance.
NOTEBOOK_EPS = 1e-6


def _cbrt(v: float) -> float:
    # The notebook uses np.cbrt; math.cbrt (3.11+) calls the same libm routine, and a
    # different rounding would change the initial parameters in their last bit.
    if hasattr(math, "cbrt"):
        return math.cbrt(v)
    import numpy as np

    return float(np.cbrt(v))


def fused_forward(module: nn.Module, x: Tensor) -> Tensor:
    """``forward`` of the notebook's ``FastLearnableGaussianField`` (and of its loop
    version ``LearnableGaussianField``), computed by the fused operator.

    Reads ``module.means``, ``module.weights``, ``module.use_full_cov`` and
    ``module.cov_tril`` (full) or ``module.log_scales`` (diagonal), exactly what the
    notebook's forward reads, so patching the class is the only change a script needs::

        FastLearnableGaussianField.forward = gaussfield.fused_forward

    ``x`` is ``[B, 3]`` (result ``[B]``) or ``[3]`` (0-d result), as in the notebook;
    any ``[..., 3]`` works.
    """
    cov = module.cov_tril if module.use_full_cov else module.log_scales
    return gaussian_field(x, module.means, cov, module.weights, eps=NOTEBOOK_EPS)


class GaussianField(nn.Module):
    """A learnable field of ``num_gaussians`` anisotropic 3D Gaussians.

    Same constructor, parameters (``means``, ``cov_tril`` or ``log_scales``,
    ``weights``), initialisation (drawing from torch's global generator in the same
    order) and ``state_dict`` keys as the notebook's ``FastLearnableGaussianField``, so
    checkpoints move between the two classes in both directions. ``forward`` is
    :func:`fused_forward`.
    """

    def __init__(self, num_gaussians: int, volume_size: float = 10.0, use_full_cov: bool = True):
        super().__init__()
        self.num_gaussians = num_gaussians
        self.volume_size = volume_size
        self.use_full_cov = use_full_cov

        scale = volume_size / _cbrt(num_gaussians)
        self.means = nn.Parameter(torch.rand(num_gaussians, 3) * volume_size)
        if use_full_cov:
            init_scale = math.log(scale)
            self.cov_tril = nn.Parameter(
                torch.tensor([[init_scale, 0.0, init_scale, 0.0, 0.0, init_scale]]).repeat(
                    num_gaussians, 1
                )
            )
        else:
            self.log_scales = nn.Parameter(torch.ones(num_gaussians, 3) * math.log(scale))
        self.weights = nn.Parameter(torch.ones(num_gaussians))

    def get_covariance(self) -> Tensor:
        """The covariance matrices ``[N, 3, 3]``, as the notebook builds them (in the
        parameters' dtype; the notebook builds them in the default dtype)."""
        if not self.use_full_cov:
            return torch.diag_embed(torch.exp(self.log_scales) ** 2)
        c = self.cov_tril
        zero = torch.zeros_like(c[:, 0])
        L = torch.stack(
            [
                torch.stack([torch.exp(c[:, 0]), zero, zero], dim=-1),
                torch.stack([c[:, 1], torch.exp(c[:, 2]), zero], dim=-1),
                torch.stack([c[:, 3], c[:, 4], torch.exp(c[:, 5])], dim=-1),
            ],
            dim=-2,
        )
        eye = torch.eye(3, dtype=c.dtype, device=c.device)
        return L @ L.transpose(-2, -1) + NOTEBOOK_EPS * eye

    def forward(self, x: Tensor) -> Tensor:
        return fused_forward(self, x)

    def extra_repr(self) -> str:
        return (
            f"num_gaussians={self.num_gaussians}, volume_size={self.volume_size}, "
            f"use_full_cov={self.use_full_cov}"
        )
