# SPDX-License-Identifier: Apache-2.0
"""Readers and writers of other formats: a trained 3D Gaussian Splatting scene (PLY) as
gaussfield's inputs, and Gaussians back to such a file; a volume (NIfTI, ``.npy``) with
its voxel geometry as a training target, and a trained field's voxelization back to NIfTI.

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
that read or write a file, so that this module imports without it.  NIfTI files are read
and written by nibabel, the neuroimaging ecosystem's maintained reader, imported the same
way (``pip install gaussfield[io]``, or ``pip install nibabel``).

A volume's geometry is its voxel-to-world affine ``A`` (4 x 4, float64), NIfTI's
convention: voxel ``(i, j, k)`` has its centre at ``A @ (i, j, k, 1)``, centres at integer
indices, axis 0 of the array along the affine's first column.  That is the grid
:func:`gaussfield.voxelize` evaluates with ``shape=data.shape, affine=A``.
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

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


# ---- Volumes: NIfTI and .npy ---------------------------------------------------------

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _nibabel(function: str):
    """The nibabel module, or an ImportError that says how to install it."""
    try:
        import nibabel
    except ImportError as e:
        raise ImportError(f"gaussfield.io.{function} needs nibabel, which is not installed: "
                          "pip install gaussfield[io] (or pip install nibabel)") from e
    return nibabel


def box_affine(shape: Sequence[int], lo: Sequence[float], hi: Sequence[float]) -> Tensor:
    """The voxel-to-world affine ``[4, 4]`` (float64) of the grid of ``shape`` spanning
    the box ``[lo, hi]``: voxel ``(i, j, k)`` centred at ``lo + ((i, j, k) + 0.5) * (hi -
    lo) / shape``, the centres :func:`gaussfield.voxelize` takes with ``lo=, hi=``.
    (Through the affine the centres agree with the box's to rounding, not bitwise: keep
    ``lo``/``hi`` where they are what you have; :attr:`Volume.grid` does.)"""
    shape, lo, hi = _triple(shape, "shape", int), _triple(lo, "lo"), _triple(hi, "hi")
    if any(d < 1 for d in shape):
        raise ValueError(f"shape must be positive, got {shape}")
    if not all(a < b for a, b in zip(lo, hi)):
        raise ValueError(f"the box needs lo < hi on every axis, got lo={lo}, hi={hi}")
    affine = torch.eye(4, dtype=torch.float64)
    for r in range(3):
        step = (hi[r] - lo[r]) / shape[r]
        affine[r, r] = step
        affine[r, 3] = lo[r] + 0.5 * step
    return affine


def _triple(value, name, kind=float):
    values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values, got {len(values)}")
    return tuple(kind(v) for v in values)


def _as_affine(affine, name="affine") -> Tensor:
    """A 4 x 4 float64 CPU tensor from a 4 x 4 or 3 x 4 affine (tensor, array, lists)."""
    a = torch.as_tensor(np.asarray(affine.detach().cpu() if isinstance(affine, Tensor) else affine,
                                   dtype=np.float64))
    if a.shape == (3, 4):
        a = torch.cat([a, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    if a.shape != (4, 4):
        raise ValueError(f"{name} must have shape [4, 4] or [3, 4], got {list(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    if not torch.equal(a[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise ValueError(f"{name}'s last row must be (0, 0, 0, 1), got {a[3].tolist()}")
    if torch.linalg.det(a[:3, :3]) == 0:
        raise ValueError(f"{name}'s 3 x 3 part is singular (a flat grid has no voxels to speak of)")
    return a


class Volume(NamedTuple):
    """A volume and its voxel geometry.

    ``data`` ``[D0, D1, D2]`` (a tensor), ``affine`` ``[4, 4]`` float64 voxel index ->
    world (centres at integer indices), and ``box`` the ``(lo, hi)`` the volume was given
    with, if it was (``.npy`` with ``lo``/``hi``), else ``None``."""

    data: Tensor
    affine: Tensor
    box: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    @property
    def grid(self) -> dict:
        """The grid as :func:`gaussfield.voxelize`'s keyword arguments: ``shape`` and
        ``affine``, or ``shape``, ``lo`` and ``hi`` for a volume given by its box (whose
        centres voxelize then computes bitwise as ``lo + (i + 0.5) * (hi - lo) / D``)::

            f = gaussfield.voxelize(means, cov, weights, **volume.grid)  # like volume.data
        """
        if self.box is not None:
            return {"shape": self.shape, "lo": self.box[0], "hi": self.box[1]}
        return {"shape": self.shape, "affine": self.affine}

    def centres(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """World coordinates of the voxel centres ``[D0, D1, D2, 3]``, computed in float64
        (``A[:3, :3] @ (i, j, k) + A[:3, 3]``, or the box formula for a box)."""
        if self.box is not None:
            axes = [torch.as_tensor(lo, dtype=torch.float64)
                    + (torch.arange(d, dtype=torch.float64) + 0.5) * (hi - lo) / d
                    for lo, hi, d in zip(*self.box, self.shape)]
            return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).to(dtype)
        index = torch.stack(torch.meshgrid(*[torch.arange(d, dtype=torch.float64) for d in self.shape],
                                           indexing="ij"), dim=-1)
        return (index @ self.affine[:3, :3].T + self.affine[:3, 3]).to(dtype)


def _is_nifti(path) -> bool:
    return os.fspath(path).lower().endswith(_NIFTI_SUFFIXES)


def read_volume(path: Union[str, os.PathLike], *, lo=None, hi=None, affine=None,
                index: int = 0, dtype: torch.dtype = torch.float32,
                device: Optional[Union[str, torch.device]] = None) -> Volume:
    """The volume in the file at ``path`` and its voxel geometry, as a :class:`Volume`.

    - NIfTI (``.nii``, ``.nii.gz``, through nibabel): the data with its scaling
      (``scl_slope``, ``scl_inter``) applied, and the file's affine (the sform where its
      code is set, else the qform, nibabel's ``img.affine``).  A 4-D file (a time series,
      an fMRI run) gives its volume ``index`` along axis 3, the first by default; a 2-D
      file one slice ``[D0, D1, 1]``; more than 4 axes (other than trailing 1s) is refused.
      ``lo``, ``hi`` and ``affine`` must not be given: the geometry is the file's.
    - ``.npy``: a 3-D array, with the geometry you give: ``lo`` and ``hi`` (the box; see
      :func:`box_affine`) or ``affine`` (4 x 4 or 3 x 4, voxel index -> world).

    ``data`` is ``[D0, D1, D2]`` in ``dtype`` on ``device``; ``affine`` a float64 CPU tensor.
    Raises ``ValueError`` for a wrong geometry or shape, ``ImportError`` for a NIfTI
    file without nibabel."""
    path = os.fspath(path)
    box = None
    if _is_nifti(path):
        if lo is not None or hi is not None or affine is not None:
            raise ValueError(f"{path}: a NIfTI file carries its own geometry; "
                             "lo, hi and affine are for .npy volumes")
        image = _nibabel("read_volume").load(path)
        shape = tuple(image.shape)
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 4:
            raise ValueError(f"{path}: a {len(image.shape)}-D NIfTI image {image.shape}; "
                             "read_volume reads 2-D, 3-D and 4-D (time series) images")
        if len(shape) == 4:
            if not -shape[3] <= index < shape[3]:
                raise ValueError(f"{path}: index {index} is outside the file's {shape[3]} volumes")
            array = np.asarray(image.dataobj[..., index] if image.ndim == 4
                               else image.dataobj[(Ellipsis, index) + (0,) * (image.ndim - 4)])
        else:
            array = np.asarray(image.dataobj).reshape(shape)
            if array.ndim == 2:
                array = array[:, :, None]
        geometry = _as_affine(image.affine, f"{path}'s affine")
    elif path.lower().endswith(".npy"):
        array = np.load(path)
        if array.ndim != 3:
            raise ValueError(f"{path}: a .npy volume must be a 3D array [D0, D1, D2], got shape {array.shape}")
        if (lo is None) != (hi is None):
            raise ValueError("give both lo and hi (the box), or affine")
        if lo is not None and affine is not None:
            raise ValueError("give the box (lo, hi) or affine, not both")
        if lo is not None:
            geometry = box_affine(array.shape, lo, hi)
            box = (_triple(lo, "lo"), _triple(hi, "hi"))
        elif affine is not None:
            geometry = _as_affine(affine)
        else:
            raise ValueError(f"{path}: a .npy file has no geometry: give lo and hi (the box) or affine")
    else:
        raise ValueError(f"{path}: not a volume file read_volume knows (.nii, .nii.gz, .npy)")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: the volume holds {array.dtype}, not numbers")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(device=device, dtype=dtype)
    return Volume(data, geometry, box)


def write_nifti(path: Union[str, os.PathLike], data, affine=None, *, code: str = "aligned",
                nifti2: Optional[bool] = None) -> None:
    """Write ``data`` (a trained field's voxelization ``[D0, D1, D2]``, or ``[D0, D1, D2,
    C]`` with channels as NIfTI's 4th axis; a tensor or an array) as a NIfTI file with the
    voxel-to-world ``affine`` (4 x 4 or 3 x 4; or pass a :class:`Volume` as ``data`` and
    its affine is used).  The sform and the qform are both set, with ``code``
    (``"aligned"``, ``"scanner"``, ...: NIfTI's xform codes); the data is stored as float32
    (float64 for float64 data).

    The affine reads back exactly: NIfTI-1 stores the sform in float32, so a file is
    NIfTI-1 when every entry of the affine is a float32 number (always so for one read
    from a NIfTI-1 file) and NIfTI-2 (float64 sform, read by nibabel, FSL, AFNI, ITK)
    otherwise; ``nifti2=True`` / ``False`` chooses (``False`` with such an affine rounds
    it to float32, as every NIfTI-1 writer does).  The qform, a rotation and a
    translation, holds what a shear-free affine has; readers that prefer the sform
    (nibabel, most viewers) use the exact one."""
    nib = _nibabel("write_nifti")
    if isinstance(data, Volume):
        if affine is None:
            affine = data.affine
        data = data.data
    if affine is None:
        raise ValueError("write_nifti needs the affine (voxel index -> world) or a Volume")
    a = _as_affine(affine).numpy()
    array = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if array.ndim not in (3, 4):
        raise ValueError(f"data must be [D0, D1, D2] or [D0, D1, D2, C], got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32)
    exact32 = bool((a.astype(np.float32).astype(np.float64) == a).all())
    use2 = (not exact32) if nifti2 is None else nifti2
    image = (nib.Nifti2Image if use2 else nib.Nifti1Image)(array, a)
    image.header.set_data_dtype(array.dtype)
    image.set_sform(a, code=code)
    image.set_qform(a, code=code)  # nibabel keeps the closest rigid part where A has a shear
    nib.save(image, os.fspath(path))
