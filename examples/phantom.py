# SPDX-License-Identifier: Apache-2.0
"""The 3D Shepp-Logan head phantom, and targets for the training example.

The phantom is the standard analytic test object of CT reconstruction: ten ellipsoids,
each adding a constant to the density inside it.  The table is the "modified" version
(higher contrast, Toft's intensities) as tabulated for 3D by the usual phantom3d
implementations: value, semi-axes (a, b, c), centre (x0, y0, z0) and Euler angles
(phi, theta, psi, degrees), on the cube [-1, 1]^3.  Densities lie in [0, 1].

``target_from_args`` gives a target as a function of points in the model's volume
[0, volume]^3: the phantom (default), or a user's volume (``.npy``, NIfTI), trilinearly
interpolated.  Each target also gives itself as a volume on a grid (``training_volume``,
for the volume loss) and the grid the result is judged on (``evaluation``).
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

    def sample(self, n, generator, device, on_device):
        """Uniform random points of the model's volume (the points loss's data)."""
        if on_device:
            return torch.rand(n, 3, generator=generator, device=device) * self.volume
        return (torch.rand(n, 3, generator=generator) * self.volume).to(device)

    def grid(self, resolution):
        """voxelize's keywords for the resolution^3 grid of voxel centres over the volume."""
        return {"shape": (resolution,) * 3, "lo": (0.0,) * 3, "hi": (self.volume,) * 3}

    def evaluation(self, resolution, dtype, device):
        """(points [R, R, R, 3], truth [R, R, R]): the phantom at the grid's centres."""
        points = grid_points(resolution, self.volume, dtype=dtype, device=device)
        return points, self(points)

    def training_volume(self, resolution, dtype, device):
        """(the phantom voxelized on the evaluation grid [R, R, R], its voxelize keywords)."""
        return self.evaluation(resolution, dtype, device)[1], self.grid(resolution)


class VolumeTarget:
    """A user's volume (``.npy`` ``[D, H, W]``, or NIfTI through gaussfield.io), trilinear.

    The volume's world geometry (a NIfTI file's affine; ``lo``/``hi`` for a ``.npy``,
    whose default box is the model's [0, volume]^3) is carried into the model's space by
    one per-axis scale and shift that takes the world bounding box of the voxels (their
    cells, index -0.5 to D - 0.5) onto [0, volume]^3.  The grid stays what it is (an
    oblique scan stays oblique, a negative step stays negative): the model sees the grid
    through ``affine = W @ A``, the affine voxelize takes.  Voxel (i, j, k) is at
    ``W @ A @ (i, j, k, 1)``; for a ``.npy`` without a box, at (i + 0.5) * volume / size.
    """

    def __init__(self, path: str, volume: float, lo=None, hi=None):
        from gaussfield.io import read_volume
        if str(path).lower().endswith(".npy") and lo is None and hi is None:
            lo, hi = (0.0,) * 3, (volume,) * 3
        self.scan = read_volume(path, lo=lo, hi=hi, dtype=torch.float64)
        if not torch.isfinite(self.scan.data).all():
            raise ValueError("--target must hold finite numbers")
        self.name = f"volume {path} {tuple(self.scan.data.shape)}"
        self.volume = volume
        self.data = self.scan.data
        shape = torch.tensor(self.scan.shape, dtype=torch.float64)
        corners = torch.stack(torch.meshgrid(*[torch.tensor([-0.5, d - 0.5], dtype=torch.float64)
                                               for d in shape.tolist()], indexing="ij"), -1).reshape(-1, 3)
        world = corners @ self.scan.affine[:3, :3].T + self.scan.affine[:3, 3]
        low, high = world.min(0).values, world.max(0).values
        w = torch.eye(4, dtype=torch.float64)                   # world -> model
        w[:3, :3] = torch.diag(volume / (high - low))
        w[:3, 3] = -low * volume / (high - low)
        self.world_to_model = w
        self.affine = w @ self.scan.affine                       # voxel index -> model
        self.to_index = torch.linalg.inv(self.affine)            # model -> voxel index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        data = self.data.to(device=x.device, dtype=x.dtype)[None, None]  # [1, 1, D, H, W]
        inv = self.to_index.to(device=x.device, dtype=x.dtype)
        u = x @ inv[:3, :3].T + inv[:3, 3]                       # voxel index coordinates
        size = torch.tensor(self.scan.shape, dtype=x.dtype, device=x.device)
        # grid_sample's last grid coordinate indexes W, the first indexes D
        g = ((2.0 * u + 1.0) / size - 1.0).flip(-1).reshape(1, 1, 1, -1, 3)
        out = F.grid_sample(data, g, mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(x.shape[:-1])

    def sample(self, n, generator, device, on_device):
        """Uniform random points of the voxels' cells (index -0.5 to D - 0.5), in model space."""
        size = torch.tensor(self.scan.shape, dtype=torch.float64)
        if on_device:
            u = torch.rand(n, 3, generator=generator, device=device)
        else:
            u = torch.rand(n, 3, generator=generator)
        a = self.affine.to(u.device)
        x = (u.double() * size.to(u.device) - 0.5) @ a[:3, :3].T + a[:3, 3]
        return x.to(device=device, dtype=torch.get_default_dtype())

    def grid(self, resolution=None):
        return {"shape": self.scan.shape, "affine": self.affine}

    def evaluation(self, resolution, dtype, device):
        """(the voxel centres in model space [D0, D1, D2, 3], the volume itself)."""
        index = torch.stack(torch.meshgrid(*[torch.arange(d, dtype=torch.float64) for d in self.scan.shape],
                                           indexing="ij"), -1)
        points = index @ self.affine[:3, :3].T + self.affine[:3, 3]
        return points.to(device=device, dtype=dtype), self.data.to(device=device, dtype=dtype)

    def training_volume(self, resolution, dtype, device):
        return self.data.to(device=device, dtype=dtype), self.grid()


def target_from_args(path, volume, lo=None, hi=None):
    return VolumeTarget(path, volume, lo, hi) if path else PhantomTarget(volume)


def grid_points(resolution: int, volume: float, dtype=torch.float32, device="cpu"):
    """Voxel centres of a resolution^3 grid over [0, volume]^3, ``[R, R, R, 3]``."""
    t = (torch.arange(resolution, dtype=torch.float64) + 0.5) * (volume / resolution)
    g = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1)
    return g.to(dtype=dtype, device=device)
