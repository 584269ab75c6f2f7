# SPDX-License-Identifier: Apache-2.0
"""The 3D Gaussian Splatting parameterisation, cov [N, 7] = (q_w, q_x, q_y, q_z, s_0, s_1,
s_2): values and all gradients against a float64 reference written from the 3DGS paper's
formula (Sigma = R S S^T R^T, R of the normalised quaternion, S = diag(e^s)), gradcheck,
the zero quaternion, cutoff and channels, culling, second order, opcheck, and the PLY
reader."""
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.func import hessian, jacrev

import gaussfield
import field_reference as fr
from conftest import DEVICES, DTYPES

F64 = torch.float64


def sigma_3dgs(cov):
    """Sigma [N, 3, 3] as 3DGS builds it (build_rotation, build_scaling_rotation)."""
    cov = cov.to(F64)
    # 3DGS normalises with F.normalize, whose floor (1e-12) the op shares
    q = cov[:, :4] / cov[:, :4].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r, x, y, z = q.unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
                     2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
                     2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)
    L = R @ torch.diag_embed(torch.exp(cov[:, 4:]))
    return L @ L.mT


def reference(x, means, cov, weights, cutoff=None):
    """f_k in float64 with q by a linear solve (mask without gradient, as the op)."""
    x, means, w = x.to(F64), means.to(F64), weights.to(F64)
    d = x[..., None, :] - means                                  # [B, N, 3]
    sig = sigma_3dgs(cov)
    v = torch.linalg.solve(sig, d.movedim(-2, 0).movedim(-1, 1)).movedim(1, -1).movedim(0, -2)
    q = (d * v).sum(-1)
    g = torch.exp(-0.5 * q)
    if cutoff is not None:
        g = torch.where(q.detach() <= cutoff * cutoff, g, torch.zeros_like(g))
    return (g * w).sum(-1) if w.dim() == 1 else g @ w


def inputs(B, N, device, dtype, seed, channels=None, zero_quats=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, generator=g, dtype=F64) * 4
    means = torch.rand(N, 3, generator=g, dtype=F64) * 4
    quat = torch.randn(N, 4, generator=g, dtype=F64) * torch.exp(torch.randn(N, 1, generator=g, dtype=F64))
    quat[:zero_quats] = 0.0
    scales = math.log(0.6) + 0.5 * torch.randn(N, 3, generator=g, dtype=F64)
    cov = torch.cat([quat, scales], 1)
    w = torch.randn(N, *([channels] if channels else []), generator=g, dtype=F64)
    return [t.to(device=device, dtype=dtype) for t in (x, means, cov, w)]


def ours_vg(ins, go, cutoff=None):
    return fr.value_and_grads(gaussfield.gaussian_field, *ins, go, cutoff=cutoff)


def ref_vg(ins, go, cutoff=None):
    c = [t.detach().to(F64).cpu() for t in ins]
    return fr.value_and_grads(reference, *c, go.to(F64).cpu(), cutoff=cutoff)


RTOL = {torch.float32: 2e-4, torch.float64: 1e-10}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cutoff, channels", [(None, None), (2.5, None), (None, 3), (3.0, 2)])
def test_against_3dgs_formula(device, dtype, cutoff, channels):
    ins = inputs(40, 17, device, dtype, seed=1, channels=channels)
    go = torch.randn(40, *([channels] if channels else []), dtype=dtype, device=device)
    fr.assert_all_close(ours_vg(ins, go, cutoff), ref_vg(ins, go, cutoff), RTOL[dtype], "quat")


@st.composite
def problems(draw):
    """Quaternions of norms 1e-8 .. 1e8 (and exact zeros), scales over e^-3 .. e^1 times
    the layout's, anisotropy up to e^1 a side; channels; a cutoff in float64 (where
    float32's rounding cannot move a pair across it against the reference)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return dict(B=draw(st.integers(1, 40)), N=draw(st.integers(1, 12)), dtype=dtype,
                log_norm=draw(st.floats(-8.0, 8.0)), zeros=draw(st.integers(0, 2)),
                log_scale=draw(st.floats(-3.0, 1.0)), spread=draw(st.floats(0.0, 1.0)),
                channels=draw(st.sampled_from([None, 2])),
                cutoff=draw(st.sampled_from([None, 1.5, 4.0])) if dtype == F64 else None,
                seed=draw(st.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("device", DEVICES)
@given(p=problems())
def test_matches_3dgs_formula_hypothesis(device, p):
    g = torch.Generator().manual_seed(p["seed"])
    B, N = p["B"], p["N"]
    scale = math.exp(p["log_scale"])
    box = 3 * scale * N ** (1 / 3)
    x = torch.rand(B, 3, generator=g, dtype=F64) * box
    means = torch.rand(N, 3, generator=g, dtype=F64) * box
    quat = torch.randn(N, 4, generator=g, dtype=F64)
    quat = quat / quat.norm(dim=-1, keepdim=True) * 10.0 ** (p["log_norm"] + torch.rand(N, 1, generator=g, dtype=F64))
    quat[:p["zeros"]] = 0.0
    log_s = p["log_scale"] + p["spread"] * torch.randn(N, 3, generator=g, dtype=F64)
    w = torch.randn(N, *([p["channels"]] if p["channels"] else []), generator=g, dtype=F64)
    ins = [t.to(device=device, dtype=p["dtype"]) for t in (x, means, torch.cat([quat, log_s], 1), w)]
    go = torch.randn(B, *([p["channels"]] if p["channels"] else []), generator=g, dtype=F64)
    go = go.to(device=device, dtype=p["dtype"])
    # anisotropy up to e^2 a side (condition e^4 ~ 55): float32 within a few 1e-5
    fr.assert_all_close(ours_vg(ins, go, p["cutoff"]), ref_vg(ins, go, p["cutoff"]),
                        1e-3 if p["dtype"] == torch.float32 else 1e-10, f"quat {p}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes(device, dtype):
    """Quaternion norms from the floor to 1e30 give the rotation of the unit quaternion
    (below the floor, the identity), with finite gradients; very wide and very narrow
    Gaussians give finite values; a NaN or Inf in a quaternion or a log-scale gives NaN
    at every point that Gaussian reaches (as a NaN in any other parameter does)."""
    x, m, c, w = inputs(25, 4, device, dtype, seed=8)
    unit = c.clone()
    unit[:, :4] = unit[:, :4] / unit[:, :4].norm(dim=-1, keepdim=True)
    base = gaussfield.gaussian_field(x, m, unit, w)
    tol = dict(rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7 if dtype == torch.float32 else 1e-14)
    for norm in [1e-10, 1e-3, 1e3, 1e30]:
        scaled = unit.clone()
        scaled[:, :4] *= norm
        scaled.requires_grad_()
        out = gaussfield.gaussian_field(x, m, scaled, w)
        assert torch.allclose(out, base, **tol), norm
        (gc,) = torch.autograd.grad(out.sum(), scaled)
        assert torch.isfinite(gc).all(), norm
    tiny = unit.clone()
    tiny[:, :4] *= 1e-20  # below the floor: the identity rotation
    ident = unit.clone()
    ident[:, :4] = torch.tensor([1.0, 0, 0, 0], dtype=dtype)
    assert torch.allclose(gaussfield.gaussian_field(x, m, tiny, w), gaussfield.gaussian_field(x, m, ident, w), **tol)
    for s in [30.0, -30.0]:  # sigma = e^30 (everything at the peak), e^-30 (nothing)
        wide = unit.clone()
        wide[:, 4:] = s
        out = gaussfield.gaussian_field(x, m, wide, w)
        assert torch.isfinite(out).all()
        if s > 0:
            assert torch.allclose(out, w.sum().expand_as(out), rtol=1e-5)
        else:
            assert out.abs().max() == 0
    for col in [0, 5]:  # a quaternion component, a log-scale
        for bad in [float("nan"), float("inf")]:
            c_bad = unit.clone()
            c_bad[1, col] = bad
            out = gaussfield.gaussian_field(x, m, c_bad, w)
            assert torch.isnan(out).all(), (col, bad)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_second_order(device):
    ins = [t.requires_grad_() for t in inputs(5, 3, device, F64, seed=2)]
    assert torch.autograd.gradcheck(gaussfield.gaussian_field, tuple(ins))
    assert torch.autograd.gradgradcheck(gaussfield.gaussian_field, tuple(ins))
    plain = [t.detach() for t in ins]
    f = lambda c: gaussfield.gaussian_field(plain[0], plain[1], c, plain[3])  # noqa: E731
    cpu = [t.cpu() for t in plain]  # the reference on the CPU, whole
    r = lambda c: reference(cpu[0], cpu[1], c, cpu[3])  # noqa: E731
    a, b = jacrev(f)(plain[2]), jacrev(r)(plain[2].cpu())
    assert fr.norm_rel(a, b) < 1e-9
    fx = lambda y: gaussfield.gaussian_field(y, *plain[1:]).sum()  # noqa: E731
    rx = lambda y: reference(y, *[t.cpu() for t in plain[1:]]).sum()  # noqa: E731
    assert fr.norm_rel(hessian(fx)(plain[0]), hessian(rx)(plain[0].cpu())) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_quaternion_is_the_identity(device, dtype):
    x, m, c, w = inputs(30, 6, device, dtype, seed=3, zero_quats=2)
    identity = c.clone()
    identity[:2, :4] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)
    assert torch.allclose(gaussfield.gaussian_field(x, m, c, w), gaussfield.gaussian_field(x, m, identity, w),
                          rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    c.requires_grad_()
    out = gaussfield.gaussian_field(x, m, c, w)
    (gc,) = torch.autograd.grad(out.sum(), c)
    assert torch.isfinite(gc).all()
    # a scaled quaternion is the same rotation, and its gradient is orthogonal to it
    scaled = c.detach().clone()
    scaled[2:, :4] *= 3.0
    assert torch.allclose(gaussfield.gaussian_field(x, m, scaled, w), out.detach(),
                          rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-12)
    radial = (gc[2:, :4] * c.detach()[2:, :4]).sum(-1).abs()
    assert (radial <= 1e-4 * gc[2:, :4].norm(dim=-1) * c.detach()[2:, :4].norm(dim=-1) + 1e-12).all()


@pytest.mark.parametrize("device", DEVICES)
def test_culled_equals_dense(monkeypatch, device):
    ins = inputs(3000, 400, device, torch.float64, seed=4)
    ins[1] = ins[1] * 2.5  # spread the Gaussians so that culling culls
    go = torch.randn(3000, dtype=F64, device=device)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    culled = ours_vg(ins, go, 3.0)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "never")
    dense = ours_vg(ins, go, 3.0)
    fr.assert_all_close(culled, dense, 1e-12, "culled")
    stats = gaussfield.culling_stats(*ins, cutoff=3.0)
    assert stats["pairs_evaluated"] < 0.5 * 3000 * 400


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, m, c, w = inputs(9, 5, device, F64, seed=5)
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field.default, (x, m, c, w, 1e-6))
    torch.library.opcheck(torch.ops.gaussfield.gaussian_field_backward.default,
                          (torch.randn(9, dtype=F64, device=device), x, m, c, w, 1e-6, 2.0, [True] * 4))


def test_ply_round_trip(tmp_path):
    pytest.importorskip("plyfile")
    import gaussfield.io as gio
    x, m, c, _ = inputs(20, 11, "cpu", torch.float32, seed=6)
    opacity = torch.randn(11)
    path = tmp_path / "scene.ply"
    gio.write_3dgs_ply(path, m, c, opacity)
    means, cov, weights = gio.read_3dgs_ply(path, dtype=torch.float64)
    assert means.shape == (11, 3) and cov.shape == (11, 7) and weights.shape == (11,)
    assert torch.equal(means, m.double()) and torch.equal(cov, c.double())
    assert torch.allclose(weights, torch.sigmoid(opacity.double()), rtol=1e-7)
    out = gaussfield.gaussian_field(x.double(), means, cov, weights, cutoff=4.0)
    assert fr.norm_rel(out, reference(x, means, cov, weights, cutoff=4.0)) < 1e-10


def test_ply_errors(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    import numpy as np
    import gaussfield.io as gio
    data = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = tmp_path / "points.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(path))
    with pytest.raises(ValueError, match="lack .*scale_0.*opacity"):
        gio.read_3dgs_ply(path)


def test_query_example(tmp_path):
    """examples/query_3dgs.py as a user runs it: a demo scene, a slice picture, and the
    density at given points equal to the op's on the scene read back."""
    pytest.importorskip("plyfile")
    import subprocess
    import sys
    from pathlib import Path
    import numpy as np
    import gaussfield.io as gio
    script = Path(__file__).resolve().parents[1] / "examples" / "query_3dgs.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=600, cwd=tmp_path)
    proc = run("--demo", "300", "--res", "64", "--out", str(tmp_path), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "slice.png").exists() and np.load(tmp_path / "slice.npy").max() > 0
    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    np.save(tmp_path / "pts.npy", pts)
    proc = run("--ply", str(tmp_path / "demo-300.ply"), "--points", str(tmp_path / "pts.npy"),
               "--out", str(tmp_path), "--device", "cpu", "--cutoff", "none")
    assert proc.returncode == 0, proc.stderr
    means, cov, weights = gio.read_3dgs_ply(tmp_path / "demo-300.ply")
    want = gaussfield.gaussian_field(torch.from_numpy(pts).float(), means, cov, weights)
    got = np.load(tmp_path / "pts-density.npy")
    assert np.allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)
