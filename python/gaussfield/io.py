# SPDX-License-Identifier: Apache-2.0
"""Readers and writers of other formats: a trained 3D Gaussian Splatting scene (PLY) as
gaussfield's inputs, and Gaussians back to such a file.

The PLY that 3DGS's reference implementation (and gsplat, and most tools after it)
writes holds one vertex per Gaussian with the properties ``x, y, z`` (the mean),
``scale_0..2`` (log standard deviations along the Gaussian's axes), ``rot_0..3`` (a
rotation quaternion, real part first, not necessarily normalised), ``opacity`` (a logit)
and colour coefficients (``f_dc_*``, ``f_rest_*``, not read here).  In gaussfield's terms
that is the ``[N, 7]`` parameterisation: ``cov = (rot_0..3, scale_0..2)``, ``Sigma =
R(q/|q|) diag(e^{2 s}) R^T``, exactly 3DGS's ``R S S^T R^T``; and the density a scene's
opacities describe is the field with ``weights = sigmoid(opacity)``.

The file is parsed by plyfile, not by code of ours: an optional dependency
(``pip install gaussfield[io]``, or ``pip install plyfile``), imported by the functions
that read or write a file, so that this module imports without it.
"""
from typing import Optional, Tuple, Union

import os

import numpy as np
import torch
from torch import Tensor

#: The vertex properties read_3dgs_ply needs.
PLY_FIELDS = ("x", "y", "z", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2",
              "rot_3", "opacity")


def _plyfile(function: str):
    """The plyfile module, or an ImportError that says how to install it."""
    try:
        import plyfile
    except ImportError as e:
        raise ImportError(f"gaussfield.io.{function} needs plyfile, which is not installed: "
                          "pip install gaussfield[io] (or pip install plyfile)") from e
    return plyfile


def read_3dgs_ply(path: Union[str, os.PathLike], *, device: Optional[Union[str, torch.device]] = None,
                  dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
    """``(means [N, 3], cov [N, 7], weights [N])`` of the 3DGS scene in the PLY at
    ``path``, ready for :func:`gaussfield.gaussian_field` (``cov`` in the quaternion
    parameterisation, ``weights = sigmoid(opacity)``), in ``dtype`` on ``device``.

    Raises ``ValueError`` naming the missing properties when the file is not a 3DGS
    scene, and ``ImportError`` when plyfile is not installed."""
    ply = _plyfile("read_3dgs_ply").PlyData.read(os.fspath(path))
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element; not a 3D Gaussian Splatting PLY")
    vertex = ply["vertex"]
    names = set(vertex.data.dtype.names or ())
    missing = [f for f in PLY_FIELDS if f not in names]
    if missing:
        raise ValueError(f"{path}: not a 3D Gaussian Splatting PLY: the vertices lack {missing}")
    column = lambda name: np.asarray(vertex[name], dtype=np.float64)  # noqa: E731
    means = np.stack([column(f) for f in ("x", "y", "z")], axis=1)
    cov = np.stack([column(f) for f in ("rot_0", "rot_1", "rot_2", "rot_3",
                                        "scale_0", "scale_1", "scale_2")], axis=1)
    weights = 1.0 / (1.0 + np.exp(-column("opacity")))
    as_tensor = lambda a: torch.from_numpy(a).to(device=device, dtype=dtype)  # noqa: E731
    return as_tensor(means), as_tensor(cov), as_tensor(weights)


def write_3dgs_ply(path: Union[str, os.PathLike], means: Tensor, cov: Tensor, opacity: Tensor) -> None:
    """Write Gaussians as a minimal 3DGS PLY (the fields read_3dgs_ply reads, colours
    zero): ``means [N, 3]``, ``cov [N, 7]`` (quaternion, log-scales), ``opacity [N]``
    logits.  For tests and examples that need a scene file."""
    plyfile = _plyfile("write_3dgs_ply")
    n = means.shape[0]
    cols = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2],
            **{f"rot_{i}": cov[:, i] for i in range(4)},
            **{f"scale_{i}": cov[:, 4 + i] for i in range(3)},
            "opacity": opacity}
    fields = [*PLY_FIELDS[:3], "f_dc_0", "f_dc_1", "f_dc_2", *PLY_FIELDS[3:]]
    data = np.zeros(n, dtype=[(f, "f4") for f in fields])
    for name, values in cols.items():
        data[name] = values.detach().cpu().numpy()
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(os.fspath(path))
