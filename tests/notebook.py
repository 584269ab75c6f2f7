# SPDX-License-Identifier: Apache-2.0
"""The two versions of the user's notebook (section 6), transcribed for the tests.

Written from shared/seed/notebook-section6-performance.txt, independently of gaussfield:

* ``FastLearnableGaussianField`` is the notebook's class as printed, with one change:
  ``get_covariance`` builds its matrices in the dtype of ``means``.  The notebook builds
  them in the default dtype (``torch.zeros(N, 3, 3, device=...)``): the same thing for a
  freshly built module, but after ``.double()`` it silently rounds the parameters to
  float32, so the class as printed cannot serve as a float64 reference.  (Note that its
  ``cov_tril`` is float64 even in a float32 module: ``torch.tensor`` infers float64 from
  the NumPy scalars it is built from.)
* ``LearnableGaussianField`` is the loop version: the notebook shows its forward only as
  the loop over Gaussians with one ``torch.linalg.solve`` each; the rest (difference,
  covariance, exp, weighted sum) is shared with the fast version.
"""
import numpy as np
import torch
import torch.nn as nn


class FastLearnableGaussianField(nn.Module):
    def __init__(self, num_gaussians: int, volume_size: float = 10.0, use_full_cov: bool = True):
        super().__init__()
        self.num_gaussians = num_gaussians
        self.volume_size = volume_size
        self.use_full_cov = use_full_cov
        scale = volume_size / np.cbrt(num_gaussians)
        self.means = nn.Parameter(torch.rand(num_gaussians, 3) * volume_size)
        if use_full_cov:
            init_scale = np.log(scale)
            self.cov_tril = nn.Parameter(
                torch.tensor([[init_scale, 0.0, init_scale, 0.0, 0.0, init_scale]]).repeat(
                    num_gaussians, 1
                )
            )
        else:
            self.log_scales = nn.Parameter(torch.ones(num_gaussians, 3) * np.log(scale))
        self.weights = nn.Parameter(torch.ones(num_gaussians))

    def get_covariance(self) -> torch.Tensor:
        if not self.use_full_cov:
            scales = torch.exp(self.log_scales)
            cov = torch.zeros(self.num_gaussians, 3, 3, device=scales.device, dtype=self.means.dtype)
            cov[:, 0, 0] = scales[:, 0] ** 2
            cov[:, 1, 1] = scales[:, 1] ** 2
            cov[:, 2, 2] = scales[:, 2] ** 2
            return cov
        c = self.cov_tril
        L = torch.zeros(self.num_gaussians, 3, 3, device=c.device, dtype=self.means.dtype)
        L[:, 0, 0] = torch.exp(c[:, 0])
        L[:, 1, 1] = torch.exp(c[:, 2])
        L[:, 2, 2] = torch.exp(c[:, 5])
        L[:, 1, 0] = c[:, 1]
        L[:, 2, 0] = c[:, 3]
        L[:, 2, 1] = c[:, 4]
        cov = torch.bmm(L, L.transpose(-2, -1))
        cov = cov + 1e-6 * torch.eye(3, device=cov.device, dtype=cov.dtype).unsqueeze(0)
        return cov

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
            squeeze_output = True
        else:
            squeeze_output = False
        B = x.shape[0]
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)
        cov = self.get_covariance()
        cov_expanded = cov.unsqueeze(0).expand(B, -1, -1, -1)
        v = torch.linalg.solve(cov_expanded, diff.unsqueeze(-1)).squeeze(-1)
        mahal = (diff * v).sum(dim=-1)
        gaussians = torch.exp(-0.5 * mahal)
        output = (gaussians * self.weights.unsqueeze(0)).sum(dim=-1)
        return output.squeeze(0) if squeeze_output else output


class LearnableGaussianField(FastLearnableGaussianField):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
            squeeze_output = True
        else:
            squeeze_output = False
        B = x.shape[0]
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)
        cov = self.get_covariance()
        mahal = torch.zeros(B, self.num_gaussians, device=x.device, dtype=x.dtype)
        for i in range(self.num_gaussians):
            diff_i = diff[:, i, :]
            v = torch.linalg.solve(cov[i].unsqueeze(0).expand(B, -1, -1), diff_i.unsqueeze(-1))
            mahal[:, i] = (diff_i * v.squeeze(-1)).sum(dim=-1)
        gaussians = torch.exp(-0.5 * mahal)
        output = (gaussians * self.weights.unsqueeze(0)).sum(dim=-1)
        return output.squeeze(0) if squeeze_output else output


def field_with(cls, means, cov, weights):
    """A notebook module of class `cls` holding exactly these parameter values."""
    n = means.shape[0]
    full = cov.shape[-1] == 6
    module = cls(n, use_full_cov=full)
    with torch.no_grad():
        module.means = nn.Parameter(means.detach().clone())
        if full:
            module.cov_tril = nn.Parameter(cov.detach().clone())
        else:
            module.log_scales = nn.Parameter(cov.detach().clone())
        module.weights = nn.Parameter(weights.detach().clone())
    return module.to(means.device)
