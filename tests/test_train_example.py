# SPDX-License-Identifier: Apache-2.0
"""examples/train_end_to_end.py: the user's training script, run as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))  # the example's own phantom, tested here
from phantom import VolumeTarget, grid_points, shepp_logan  # noqa: E402

SMALL = ["--device", "cpu", "--gaussians", "32", "--batch", "128", "--grid", "8", "--quiet"]


def run_script(tmp_path, *args):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_end_to_end.py"), *SMALL,
                           "--out", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = out.glob("*.json")
    return json.loads(summary.read_text()), out, proc.stdout


def relative_gap(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def test_float64_batched_and_fused_give_the_same_curve(tmp_path):
    batched, _, _ = run_script(tmp_path / "b", "--impl", "batched", "--dtype", "float64", "--steps", "100")
    fused, out, stdout = run_script(tmp_path / "f", "--impl", "fused", "--dtype", "float64", "--steps", "100")
    assert len(fused["losses"]) == 100
    assert relative_gap(fused["losses"], batched["losses"]) < 1e-9
    assert fused["losses"][-1] < 0.1 * fused["losses"][0]  # it trains
    assert abs(fused["psnr_db"] - batched["psnr_db"]) < 1e-6
    names = sorted(p.name for p in out.iterdir())
    assert any(n.endswith("-loss.png") for n in names) and any(n.endswith("-slice.png") for n in names)
    assert "PSNR" in stdout and "ms per step" in stdout


def test_float32_curves_agree_to_rounding(tmp_path):
    batched, _, _ = run_script(tmp_path / "b", "--impl", "batched", "--steps", "50")
    fused, _, _ = run_script(tmp_path / "f", "--impl", "fused", "--steps", "50")
    assert relative_gap(fused["losses"], batched["losses"]) < 1e-5


def test_loop_version_and_diagonal(tmp_path):
    loop, _, _ = run_script(tmp_path / "l", "--impl", "loop", "--dtype", "float64", "--steps", "5",
                            "--diagonal", "--gaussians", "8")
    fused, _, _ = run_script(tmp_path / "f", "--impl", "fused", "--dtype", "float64", "--steps", "5",
                             "--diagonal", "--gaussians", "8")
    assert relative_gap(fused["losses"], loop["losses"]) < 1e-9


def test_user_volume(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.random((5, 6, 7))
    np.save(tmp_path / "vol.npy", vol)
    summary, _, _ = run_script(tmp_path, "--target", str(tmp_path / "vol.npy"), "--steps", "3")
    assert "vol.npy" in summary["target"]

    # at voxel centres the target is the array itself, axis i along x[..., i]
    target = VolumeTarget(str(tmp_path / "vol.npy"), 10.0)
    i, j, k = torch.meshgrid(torch.arange(5), torch.arange(6), torch.arange(7), indexing="ij")
    x = torch.stack([(i + 0.5) * 10 / 5, (j + 0.5) * 10 / 6, (k + 0.5) * 10 / 7], -1).double()
    torch.testing.assert_close(target(x), torch.from_numpy(vol), rtol=0, atol=1e-6)


def test_bad_user_volume(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_end_to_end.py"), *SMALL,
                           "--target", str(tmp_path / "flat.npy"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "3D array" in proc.stderr


def test_phantom_values():
    u = torch.tensor([[0.0, 0.0, 0.0],      # brain: 1 - 0.8
                      [0.0, 0.9, 0.0],      # skull
                      [0.95, 0.95, 0.95],   # outside the head
                      [0.22, 0.0, 0.0],     # right ventricle: 0.2 - 0.2
                      [0.0, 0.35, -0.15]],  # the large upper ellipsoid: 0.2 + 0.1
                     dtype=torch.float64)
    torch.testing.assert_close(shepp_logan(u), torch.tensor([0.2, 1.0, 0.0, 0.0, 0.3], dtype=torch.float64))
    g = grid_points(16, 10.0, dtype=torch.float64)
    v = shepp_logan(2 * g / 10 - 1)
    assert g.shape == (16, 16, 16, 3) and v.min() > -1e-12 and v.max() < 1 + 1e-12


def test_cutoff_and_save(tmp_path):
    # a cutoff too large to mask anything gives the exact curve; a small one changes it
    exact, _, _ = run_script(tmp_path / "e", "--dtype", "float64", "--steps", "10")
    wide, _, _ = run_script(tmp_path / "w", "--dtype", "float64", "--steps", "10", "--cutoff", "50")
    saved = tmp_path / "field" / "trained.pt"
    cut, out, stdout = run_script(tmp_path / "c", "--dtype", "float64", "--steps", "10", "--cutoff", "1.5",
                                  "--save", str(saved))
    assert exact["args"]["cutoff"] is None and wide["args"]["cutoff"] == 50 and cut["args"]["cutoff"] == 1.5
    assert wide["losses"] == exact["losses"]
    assert relative_gap(cut["losses"][1:], exact["losses"][1:]) > 1e-6
    assert "cutoff 1.5" in stdout and "-cut1.5-" in next(out.glob("*.json")).name
    assert str(saved) in stdout

    # the state_dict of the trained model: the notebook's class loads it
    from gaussfield.notebook import FastLearnableGaussianField
    state = torch.load(saved)
    assert set(state) == {"means", "cov_tril", "weights"} and state["means"].shape == (32, 3)
    torch.manual_seed(0)
    fresh = FastLearnableGaussianField(32)
    assert not torch.equal(fresh.means.double(), state["means"])  # it trained
    fresh.load_state_dict(state)


def test_cutoff_needs_fused(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_end_to_end.py"), *SMALL, "--impl", "batched",
                           "--cutoff", "6", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--cutoff needs --impl fused" in proc.stderr
