# SPDX-License-Identifier: Apache-2.0
"""gaussfield.io's volumes: NIfTI (through nibabel) and .npy read with their geometry,
a field's voxelization written back with its affine; and the training example's volume
loss."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gaussfield
from gaussfield import io

nib = pytest.importorskip("nibabel")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# an oblique affine with a negative step and entries that float32 cannot hold (1/3, 0.1)
OBLIQUE = torch.tensor([[-0.1, 0.02, 0.0, 1 / 3],
                        [0.0, 0.2, 0.05, -2.0],
                        [0.01, 0.0, 0.3, 7.0],
                        [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def test_nifti_round_trip_keeps_data_and_affine_exactly(tmp_path):
    data = torch.rand(5, 6, 7)
    for name, affine in [("oblique.nii.gz", OBLIQUE), ("f32.nii", torch.diag(torch.tensor([2.0, -1.5, 0.5, 1.0],
                                                                                          dtype=torch.float64)))]:
        io.write_nifti(tmp_path / name, data, affine)
        back = io.read_volume(tmp_path / name)
        assert torch.equal(back.affine, affine) and torch.equal(back.data, data)
        header = nib.load(tmp_path / name).header
        assert int(header["sform_code"]) == 2 and int(header["qform_code"]) == 2  # both set, "aligned"
    # float32-exact affines stay NIfTI-1 (what every viewer reads); others go to NIfTI-2
    assert isinstance(nib.load(tmp_path / "f32.nii"), nib.Nifti1Image)
    assert isinstance(nib.load(tmp_path / "oblique.nii.gz"), nib.Nifti2Image)
    # forced NIfTI-1 rounds the affine to float32, as the format stores it
    io.write_nifti(tmp_path / "n1.nii", data, OBLIQUE, nifti2=False)
    assert torch.equal(io.read_volume(tmp_path / "n1.nii").affine, OBLIQUE.float().double())


def test_example4d_first_volume_and_its_affine(tmp_path):
    from nibabel.testing import data_path
    path = os.path.join(data_path, "example4d.nii.gz")
    image = nib.load(path)
    assert image.ndim == 4 and image.shape[3] == 2
    first, second = io.read_volume(path), io.read_volume(path, index=1)
    assert first.data.shape == image.shape[:3] and first.box is None
    assert np.array_equal(first.data.numpy(), np.asarray(image.dataobj[..., 0], dtype=np.float32))
    assert np.array_equal(second.data.numpy(), np.asarray(image.dataobj[..., 1], dtype=np.float32))
    assert np.array_equal(first.affine.numpy(), image.affine) and first.affine[0, 0] < 0  # negative x step
    assert first.grid == {"shape": image.shape[:3], "affine": first.affine}
    with pytest.raises(ValueError, match="index 2 is outside"):
        io.read_volume(path, index=2)
    with pytest.raises(ValueError, match="its own geometry"):
        io.read_volume(path, lo=(0, 0, 0), hi=(1, 1, 1))
    # written back (a Volume carries its affine): the scan's affine exactly, NIfTI-1
    io.write_nifti(tmp_path / "back.nii.gz", first)
    back = io.read_volume(tmp_path / "back.nii.gz")
    assert torch.equal(back.affine, first.affine) and torch.equal(back.data, first.data)
    assert isinstance(nib.load(tmp_path / "back.nii.gz"), nib.Nifti1Image)
    # the centres are the affine at integer indices
    c = first.centres()
    torch.testing.assert_close(c[3, 4, 5], first.affine[:3, :3] @ torch.tensor([3.0, 4, 5], dtype=torch.float64)
                               + first.affine[:3, 3], rtol=0, atol=1e-12)


def test_npy_with_a_box_or_an_affine(tmp_path):
    array = np.random.default_rng(0).random((4, 5, 6))
    np.save(tmp_path / "v.npy", array)
    v = io.read_volume(tmp_path / "v.npy", lo=(0, -1, 2), hi=(4, 1, 8), dtype=torch.float64)
    assert np.array_equal(v.data.numpy(), array)
    assert v.grid == {"shape": (4, 5, 6), "lo": (0.0, -1.0, 2.0), "hi": (4.0, 1.0, 8.0)}
    # centres at lo + (i + 0.5) (hi - lo) / D, axis 0 slowest; the affine gives the same points
    c = v.centres()
    assert c[0, 0, 0].tolist() == [0.5, -0.8, 2.5] and c[3, 4, 5].tolist() == [3.5, 0.8, 7.5]
    via_affine = io.read_volume(tmp_path / "v.npy", affine=v.affine[:3])  # 3 x 4 works too
    torch.testing.assert_close(via_affine.centres(), c, rtol=0, atol=1e-12)
    for kwargs, message in [({}, "no geometry"), ({"lo": (0, 0, 0)}, "both lo and hi"),
                            ({"lo": (0, 0, 0), "hi": (1, 1, 0)}, "lo < hi"),
                            ({"affine": torch.zeros(4, 4)}, "last row"),
                            ({"affine": torch.eye(4)[:, :3]}, "shape")]:
        with pytest.raises(ValueError, match=message):
            io.read_volume(tmp_path / "v.npy", **kwargs)
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="3D array"):
        io.read_volume(tmp_path / "flat.npy", lo=(0, 0, 0), hi=(1, 1, 1))
    with pytest.raises(ValueError, match="not a volume file"):
        io.read_volume(tmp_path / "v.txt")


def test_a_clear_error_without_nibabel(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel raises ImportError
    with pytest.raises(ImportError, match=r"needs nibabel.*pip install gaussfield\[io\]"):
        io.read_volume(tmp_path / "scan.nii.gz")
    with pytest.raises(ImportError, match="write_nifti needs nibabel"):
        io.write_nifti(tmp_path / "out.nii", torch.zeros(2, 2, 2), torch.eye(4))


@pytest.mark.skipif(not hasattr(gaussfield, "voxelize"), reason="gaussfield.voxelize is not built yet "
                    "(helper CPU's branch); runs once it is merged")
def test_volume_grid_is_voxelize_s_grid():
    """voxelize(**volume.grid) is gaussian_field at volume.centres(), for a box and an affine."""
    g = torch.Generator().manual_seed(0)
    means = torch.rand(20, 3, generator=g, dtype=torch.float64) * 2
    cov = torch.randn(20, 6, generator=g, dtype=torch.float64) * 0.1 - 1.0
    weights = torch.rand(20, generator=g, dtype=torch.float64)
    for volume in [io.Volume(torch.zeros(4, 5, 6), io.box_affine((4, 5, 6), (0, 0, 0), (2, 2, 2)), ((0.0,) * 3, (2.0,) * 3)),
                   io.Volume(torch.zeros(4, 5, 6), OBLIQUE)]:
        got = gaussfield.voxelize(means, cov, weights, **volume.grid)
        want = gaussfield.gaussian_field(volume.centres(), means, cov, weights)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(gaussfield, "voxelize"), reason="gaussfield.voxelize is not built yet "
                    "(helper CPU's branch); runs once it is merged")
@pytest.mark.parametrize("extra", [[], ["--subvolume", "3", "--criterion", "l1"]])
def test_example_volume_loss_trains_on_a_nifti(tmp_path, extra):
    """The example's --loss volume on a small oblique NIfTI target: it trains, writes its
    curve, and --nifti writes the fit with the target's affine."""
    data = torch.zeros(6, 5, 4)
    data[1:5, 1:4, 1:3] = 1.0
    io.write_nifti(tmp_path / "scan.nii.gz", data, OBLIQUE)
    out, fit = tmp_path / "out", tmp_path / "fit.nii.gz"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_end_to_end.py"), "--device", "cpu",
                           "--gaussians", "16", "--steps", "30", "--evals", "3", "--quiet", "--dtype", "float64",
                           "--target", str(tmp_path / "scan.nii.gz"), "--loss", "volume", "--out", str(out),
                           "--nifti", str(fit), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = out.glob("*.json")
    s = json.loads(summary.read_text())
    assert "-volume" in summary.name and s["args"]["loss"] == "volume"
    assert [c["step"] for c in s["curve"]] == [10, 20, 30]
    assert all(b["train_s"] > a["train_s"] for a, b in zip(s["curve"], s["curve"][1:]))
    assert s["losses"][-1] < s["losses"][0]  # it trains
    written = io.read_volume(fit)
    assert torch.equal(written.affine, OBLIQUE) and written.data.shape == (6, 5, 4)


def test_example_refuses_volume_loss_without_fused(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_end_to_end.py"), "--device", "cpu", "--quiet",
                           "--impl", "batched", "--loss", "volume", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--loss volume needs --impl fused" in proc.stderr
