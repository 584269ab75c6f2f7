# SPDX-License-Identifier: Apache-2.0
"""The general ``nn.Module`` of gaussfield: :class:`GaussianField`, a learnable field
of anisotropic 3D Gaussians whose constructor, parameters, initialisation and
``state_dict`` are those of the notebook's ``FastLearnableGaussianField``, so that a
checkpoint of either loads into the other, and whose forward is the fused operator."""
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ._common import DEFAULT_EPS, check_cutoff
from .ops import gaussian_field

__all__ = ["GaussianField"]


class GaussianField(nn.Module):
    """A learnable field of ``num_gaussians`` anisotropic 3D Gaussians.

    Same constructor, parameters (``means``, ``cov_tril`` or ``log_scales``,
    ``weights``), initialisation (drawing from torch's global generator in the same
    order), parameter dtypes and ``state_dict`` as the notebook's
    ``FastLearnableGaussianField``, so checkpoints move between the two classes in both
    directions, bit for bit.  That includes the notebook's float64 ``cov_tril`` beside
    float32 ``means`` and ``weights``; ``forward`` computes in the dtype of ``means``,
    as the notebook's does.

    ``cutoff`` (a Mahalanobis radius, see :func:`gaussian_field`) is a plain attribute,
    not part of the ``state_dict``.
    """

    def __init__(
        self,
        num_gaussians: int,
        volume_size: float = 10.0,
        use_full_cov: bool = True,
        cutoff: Optional[float] = None,
    ):
        super().__init__()
        self.num_gaussians = num_gaussians
        self.volume_size = volume_size
        self.use_full_cov = use_full_cov
        # not a buffer: the state_dict stays the notebook's
        self.cutoff = None if cutoff is None else check_cutoff(cutoff)

        # NumPy, as in the notebook: np.cbrt and math.cbrt differ in the last bit
        scale = volume_size / np.cbrt(num_gaussians)
        self.means = nn.Parameter(torch.rand(num_gaussians, 3) * volume_size)
        if use_full_cov:
            init_scale = float(np.log(scale))
            # float64, as in the notebook (see the class docstring)
            self.cov_tril = nn.Parameter(
                torch.tensor(
                    [[init_scale, 0.0, init_scale, 0.0, 0.0, init_scale]], dtype=torch.float64
                ).repeat(num_gaussians, 1)
            )
        else:
            self.log_scales = nn.Parameter(torch.ones(num_gaussians, 3) * np.log(scale))
        self.weights = nn.Parameter(torch.ones(num_gaussians))

    def get_covariance(self) -> Tensor:
        """The covariance matrices ``[N, 3, 3]``, computed as the notebook computes them,
        in the dtype of ``means`` (the notebook uses the default dtype, which is the
        same thing until the module is converted with ``.double()``)."""
        dtype, device = self.means.dtype, self.means.device
        if not self.use_full_cov:
            scales = torch.exp(self.log_scales)
            return torch.diag_embed((scales**2).to(dtype))
        c = self.cov_tril
        # each entry is computed in cov_tril's dtype and then rounded, as the notebook
        # does by assigning into a zeros tensor
        zero = torch.zeros(c.shape[0], dtype=dtype, device=device)
        l00, l11, l22 = (torch.exp(c[:, i]).to(dtype) for i in (0, 2, 5))
        l10, l20, l21 = (c[:, i].to(dtype) for i in (1, 3, 4))
        L = torch.stack(
            [
                torch.stack([l00, zero, zero], dim=-1),
                torch.stack([l10, l11, zero], dim=-1),
                torch.stack([l20, l21, l22], dim=-1),
            ],
            dim=-2,
        )
        cov = torch.bmm(L, L.transpose(-2, -1))
        return cov + DEFAULT_EPS * torch.eye(3, dtype=dtype, device=device).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        """The field at ``x`` ``[..., 3]``: :func:`gaussian_field` of the parameters,
        the covariance parameters cast (differentiably) to the dtype of ``means``, as
        the notebook's forward rounds them (what :func:`gaussfield.fused_forward` does
        for the notebook's own classes)."""
        cov = self.cov_tril if self.use_full_cov else self.log_scales
        return gaussian_field(x, self.means, cov.to(self.means.dtype), self.weights,
                              eps=DEFAULT_EPS, cutoff=self.cutoff)

    def extra_repr(self) -> str:
        return (
            f"num_gaussians={self.num_gaussians}, volume_size={self.volume_size}, "
            f"use_full_cov={self.use_full_cov}, cutoff={self.cutoff}"
        )
