# SPDX-License-Identifier: Apache-2.0
"""What belongs to the user's notebook (section 6, "Performance Profiling &
Optimization"): its two Gaussian-field classes, and the drop-in that puts the fused
operator in their place.

* :func:`fused_forward` - the drop-in ``forward`` for the notebook's classes, computed by
  the fused operator: ``FastLearnableGaussianField.forward = gaussfield.fused_forward``.
* :class:`FastLearnableGaussianField` - the notebook's batched class as it prints it
  (one ``torch.linalg.solve`` over ``[B, N, 3, 3]``), verbatim.
* :class:`LearnableGaussianField` - the notebook's loop version (one solve per
  Gaussian).  The notebook shows it only as its Mahalanobis loop; the rest of its
  forward is the fast version's.

The notebook's two classes are the reference that the drop-in is checked against and
the "before" of the training example and the benchmarks.  They materialise
``[B, N, 3, 3]`` and are meant for comparison, not for training at scale.  Patching
:class:`FastLearnableGaussianField` here (``.forward = fused_forward``) patches it for
the whole process; to hold both versions at once, subclass it::

    class Fused(gaussfield.notebook.FastLearnableGaussianField):
        forward = gaussfield.fused_forward

``gaussfield.fused_forward`` is the drop-in.  The library's own module,
:class:`gaussfield.GaussianField` (:mod:`gaussfield.module`), is re-exported here, where
it used to live.
"""
import numpy as np
import torch
from torch import Tensor, nn

from ._common import DEFAULT_EPS
from .module import GaussianField  # noqa: F401  (re-exported: its earlier home)
from .ops import gaussian_field

__all__ = ["fused_forward", "GaussianField", "FastLearnableGaussianField", "LearnableGaussianField"]


def fused_forward(module: nn.Module, x: Tensor) -> Tensor:
    """``forward`` of the notebook's ``FastLearnableGaussianField`` (and of its loop
    version ``LearnableGaussianField``), computed by the fused operator.

    Reads ``module.means``, ``module.weights``, ``module.use_full_cov`` and
    ``module.cov_tril`` (full) or ``module.log_scales`` (diagonal), exactly what the
    notebook's forward reads, so patching the class is the only change a script needs::

        FastLearnableGaussianField.forward = gaussfield.fused_forward

    ``x`` is ``[B, 3]`` (result ``[B]``) or ``[3]`` (0-d result), as in the notebook;
    any ``[..., 3]`` works.

    A ``cutoff`` attribute on the module (absent on the notebook's classes) is passed on
    to :func:`gaussian_field`: to patch the notebook's class with a cutoff, set it on
    the class or on an instance as well::

        FastLearnableGaussianField.forward = gaussfield.fused_forward
        FastLearnableGaussianField.cutoff = 6.0   # or model.cutoff = 6.0

    The notebook's ``cov_tril`` is float64 while its other parameters are float32
    (``torch.tensor`` infers float64 from the NumPy scalars it is built from), and its
    forward rounds it into a float32 ``L``.  This forward does the same: the covariance
    parameters are cast (differentiably) to the dtype of ``means``, and their gradient
    arrives in their own dtype.
    """
    cov = module.cov_tril if module.use_full_cov else module.log_scales
    means = module.means
    return gaussian_field(
        x, means, cov.to(means.dtype), module.weights, eps=DEFAULT_EPS,
        cutoff=getattr(module, "cutoff", None),
    )


# ---- The notebook's own classes ---------------------------------------------------
# FastLearnableGaussianField is the notebook's text (shared/seed/notebook-section6-
# performance.txt) character for character, less the trailing spaces of its blank lines;
# keep it so.  Its eps (1e-6 in get_covariance) is the notebook's, which DEFAULT_EPS
# follows.


class FastLearnableGaussianField(nn.Module):
    """
    Optimized version with vectorized Mahalanobis distance computation.

    Key improvement: Replaces loop over Gaussians with batched solve operation.
    Expected speedup: 5-10x faster for large N.
    """

    def __init__(self, num_gaussians: int, volume_size: float = 10.0, use_full_cov: bool = True):
        super().__init__()

        self.num_gaussians = num_gaussians
        self.volume_size = volume_size
        self.use_full_cov = use_full_cov

        scale = volume_size / np.cbrt(num_gaussians)

        self.means = nn.Parameter(torch.rand(num_gaussians, 3) * volume_size)

        if use_full_cov:
            init_scale = np.log(scale)
            self.cov_tril = nn.Parameter(torch.tensor([
                [init_scale, 0.0, init_scale, 0.0, 0.0, init_scale]
            ]).repeat(num_gaussians, 1))
        else:
            self.log_scales = nn.Parameter(torch.ones(num_gaussians, 3) * np.log(scale))

        self.weights = nn.Parameter(torch.ones(num_gaussians))

    def get_covariance(self) -> torch.Tensor:
        """Reconstruct full covariance matrices from Cholesky parameters."""
        if not self.use_full_cov:
            scales = torch.exp(self.log_scales)
            cov = torch.zeros(self.num_gaussians, 3, 3, device=scales.device)
            cov[:, 0, 0] = scales[:, 0] ** 2
            cov[:, 1, 1] = scales[:, 1] ** 2
            cov[:, 2, 2] = scales[:, 2] ** 2
            return cov

        L = torch.zeros(self.num_gaussians, 3, 3, device=self.cov_tril.device)
        L[:, 0, 0] = torch.exp(self.cov_tril[:, 0])
        L[:, 1, 1] = torch.exp(self.cov_tril[:, 2])
        L[:, 2, 2] = torch.exp(self.cov_tril[:, 5])
        L[:, 1, 0] = self.cov_tril[:, 1]
        L[:, 2, 0] = self.cov_tril[:, 3]
        L[:, 2, 1] = self.cov_tril[:, 4]

        cov = torch.bmm(L, L.transpose(-2, -1))
        cov = cov + 1e-6 * torch.eye(3, device=cov.device).unsqueeze(0)

        return cov

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        OPTIMIZED forward pass with vectorized operations.

        Key change: Single batched solve instead of loop over Gaussians.
        """
        if x.dim() == 1:
            x = x.unsqueeze(0)
            squeeze_output = True
        else:
            squeeze_output = False

        B = x.shape[0]
        N = self.num_gaussians

        # Compute differences: [B, N, 3]
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)

        # Get covariance matrices: [N, 3, 3]
        cov = self.get_covariance()

        # OPTIMIZATION: Vectorized Mahalanobis distance
        # Expand cov to match batch dimension: [N, 3, 3] -> [B, N, 3, 3]
        cov_expanded = cov.unsqueeze(0).expand(B, -1, -1, -1)

        # Solve for all (B, N) pairs at once: [B, N, 3, 1]
        v = torch.linalg.solve(cov_expanded, diff.unsqueeze(-1)).squeeze(-1)  # [B, N, 3]

        # Compute Mahalanobis distances: [B, N]
        mahal = (diff * v).sum(dim=-1)

        # Weighted sum of Gaussians
        gaussians = torch.exp(-0.5 * mahal)  # [B, N]
        output = (gaussians * self.weights.unsqueeze(0)).sum(dim=-1)  # [B]

        return output.squeeze(0) if squeeze_output else output


class LearnableGaussianField(FastLearnableGaussianField):
    """The original version: a loop over Gaussians, one torch.linalg.solve each."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
            squeeze_output = True
        else:
            squeeze_output = False

        B = x.shape[0]
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)
        cov = self.get_covariance()

        mahal = torch.zeros(B, self.num_gaussians, device=x.device)
        # SLOW: Loop over each Gaussian sequentially
        for i in range(self.num_gaussians):
            diff_i = diff[:, i, :]
            v = torch.linalg.solve(cov[i].unsqueeze(0).expand(B, -1, -1),
                                   diff_i.unsqueeze(-1))
            mahal[:, i] = (diff_i * v.squeeze(-1)).sum(dim=-1)

        gaussians = torch.exp(-0.5 * mahal)
        output = (gaussians * self.weights.unsqueeze(0)).sum(dim=-1)
        return output.squeeze(0) if squeeze_output else output
