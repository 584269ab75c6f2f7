# SPDX-License-Identifier: Apache-2.0
"""The 3D Shepp-Logan head phantom, and targets for the training example.

The phantom is the standard analytic test object of CT reconstruction: ten ellipsoids,
each adding a constant to the density inside it.  The table is the "modified" version
(higher contrast, Toft's intensities) as tabulated for 3D by the usual phantom3d
implementations: value, semi-axes (a, b, c), centre (x0, y0, z0) and Euler angles
(phi, theta, psi, degrees), on the cube [-1, 1]^3.  Densities lie in [0, 1].

``target_from_args`` gives a target as a function of points in the model's volume
[0, volume]^3: the phantom (default), or a user's ``.npy`` volume, trilinearly
interpolated.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

#      A      a       b      c      x0      y0     z0    phi  theta  psi
MODIFIED_SHEPP_LOGAN = [
    (1.0, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.780, 0.00, -0.0184, 0.00, 0.0, 0.0, 0.0),
    (-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18.0, 0.0, 10.0),
    (-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18.0, 0.0, 10.0),
    (0.1, 0.2100, 0.250, 0.410, 0.00, 0.3500, -0.15, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, 0.1000, 0.25, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.25, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.023, 0.050, -0.08, -0.6050, 0.00, 0.0, 0.0, 0.0),
    (0.1, 0.0230, 0.023, 0.020, 0.00, -0.6060, 0.00, 0.0, 0.0, 0.0),
    (0.1, 0.0230, 0.046, 0.020, 0.06, -0.6050, 0.00, 0.0, 0.0, 0.0),
]


def _euler(phi, theta, psi):
    """Rotation applied to the coordinates before the ellipsoid test (z-x-z angles)."""
    cf, sf = math.cos(math.radians(phi)), math.sin(math.radians(phi))
    ct, st = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    cp, sp = math.cos(math.radians(psi)), math.sin(math.radians(psi))
    return [[cp * cf - ct * sf * sp, cp * sf + ct * cf * sp, sp * st],
            [-sp * cf - ct * sf * cp, -sp * sf + ct * cf * cp, cp * st],
            [st * sf, -st * cf, ct]]


def shepp_logan(u: torch.Tensor) -> torch.Tensor:
    """Density of the phantom at points ``u`` ``[..., 3]`` in [-1, 1]^3."""
    out = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
    for value, a, b, c, x0, y0, z0, phi, theta, psi in MODIFIED_SHEPP_LOGAN:
        rot = torch.tensor(_euler(phi, theta, psi), dtype=u.dtype, device=u.device)
        p = u @ rot.T - torch.tensor([x0, y0, z0], dtype=u.dtype, device=u.device)
        inside = ((p / torch.tensor([a, b, c], dtype=u.dtype, device=u.device)) ** 2).sum(-1) <= 1
        out = out + value * inside.to(u.dtype)
    return out


class PhantomTarget:
    """The phantom stretched over the model's volume [0, volume]^3."""

    name = "3D Shepp-Logan phantom"

    def __init__(self, volume: float):
        self.volume = volume

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return shepp_logan(2.0 * x / self.volume - 1.0)


class VolumeTarget:
    """A user's volume ``[D, H, W]`` (a ``.npy`` file) over [0, volume]^3, trilinear.

    Axis 0 of the array runs along x[..., 0], axis 1 along x[..., 1], axis 2 along
    x[..., 2]; voxel centres sit at (i + 0.5) * volume / size.
    """

    def __init__(self, path: str, volume: float):
        array = np.load(path)
        if array.ndim != 3:
            raise ValueError(f"--target must hold a 3D array [D, H, W], got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise ValueError("--target must hold finite numbers")
        self.name = f"volume {path} {tuple(array.shape)}"
        self.volume = volume
        self.data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        data = self.data.to(device=x.device, dtype=x.dtype)[None, None]  # [1, 1, D, H, W]
        # grid_sample's last grid coordinate indexes W, the first indexes D
        g = (2.0 * x / self.volume - 1.0).flip(-1).reshape(1, 1, 1, -1, 3)
        out = F.grid_sample(data, g, mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(x.shape[:-1])


def target_from_args(path, volume):
    return VolumeTarget(path, volume) if path else PhantomTarget(volume)


def grid_points(resolution: int, volume: float, dtype=torch.float32, device="cpu"):
    """Voxel centres of a resolution^3 grid over [0, volume]^3, ``[R, R, R, 3]``."""
    t = (torch.arange(resolution, dtype=torch.float64) + 0.5) * (volume / resolution)
    g = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1)
    return g.to(dtype=dtype, device=device)
