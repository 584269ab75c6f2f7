# SPDX-License-Identifier: Apache-2.0
"""CUDA voxelize and its backward against the float64 point op on the CPU at the voxel
centres (float32 tolerance), bitwise reproducibility run to run, both tile sides, every
parameterisation, channels, cutoff and none, an oblique affine, subvolumes, non-finite
inputs, one Gaussian spanning the grid, and a grid of more than 2^31 voxels."""
import pytest
import torch

import gaussfield as gf

D = torch.float64

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available()
    or not torch._C._dispatch_has_kernel_for_dispatch_key("gaussfield::voxelize", "CUDA"),
    reason="no CUDA voxelize kernel here")

BOX = dict(lo=(-1.0, -1.2, -0.9), hi=(1.1, 1.0, 1.3))
AFFINE = [[-0.11, 0.02, 0.01, 0.6], [0.015, 0.1, -0.03, -1.0], [0.0, 0.025, 0.12, -0.8],
          [0, 0, 0, 1]]  # oblique, a negative step on axis 0


def _cov(mode, n, g, spread=1.0):
    if mode == "full":
        return torch.randn(n, 6, dtype=D, generator=g) * 0.3 - 1.8 + (spread - 1)
    if mode == "diag":
        return torch.randn(n, 3, dtype=D, generator=g) * 0.3 - 1.8 + (spread - 1)
    if mode == "quat":
        return torch.cat([torch.randn(n, 4, dtype=D, generator=g),
                          torch.randn(n, 3, dtype=D, generator=g) * 0.3 - 1.8], 1)
    a = torch.randn(n, 3, 3, dtype=D, generator=g) * 0.15
    s = a @ a.mT + 0.02 * torch.eye(3, dtype=D)
    return s if mode == "sigma" else torch.linalg.inv(torch.linalg.cholesky(s))


def _field(n, mode="full", channels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, 3, dtype=D, generator=g) * 2.6 - 1.3
    c = _cov(mode, n, g)
    w = (torch.randn(n, dtype=D, generator=g) if channels is None
         else torch.randn(n, channels, dtype=D, generator=g))
    return m, c, w


def _reference(m, c, w, shape, cutoff, whitened=False, grad_out=None, **grid):
    """The float64 point op on the CPU at the float64 centres (the gf_grid_centre formula),
    and its gradients for grad_out."""
    x = gf.voxel_centres(shape, dtype=D, **grid)
    leaves = [t.clone().requires_grad_() for t in (m, c, w)]
    f = gf.gaussian_field(x, *leaves, cutoff=cutoff, whitened=whitened)
    if grad_out is None:
        return f.detach(), None
    grads = torch.autograd.grad(f, leaves, grad_out.to(D).cpu())
    return f.detach(), grads


def _cuda(m, c, w, shape, cutoff, whitened=False, grad_out=None, dtype=torch.float32, **grid):
    leaves = [t.to("cuda", dtype).requires_grad_() for t in (m, c, w)]
    f = gf.voxelize(*leaves, shape=shape, cutoff=cutoff, whitened=whitened, **grid)
    if grad_out is None:
        return f.detach(), None
    grads = torch.autograd.grad(f, leaves, grad_out.to("cuda", dtype))
    return f.detach(), grads


def _close(got, ref, scale, tol):
    got = got.detach().cpu().to(D)
    err = (got - ref).abs().max().item() if got.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} x {scale:.3g}"


def _check(m, c, w, shape, cutoff, whitened=False, tol=3e-5, **grid):
    out_shape = grid.get("size") or shape  # a subvolume's grad_out has its size
    go = torch.randn(*out_shape, *w.shape[1:], dtype=D, generator=torch.Generator().manual_seed(7))
    ref, gref = _reference(m, c, w, shape, cutoff, whitened, go, **grid)
    out, grads = _cuda(m, c, w, shape, cutoff, whitened, go, **grid)
    assert out.shape == ref.shape
    _close(out, ref, w.abs().sum(0).max().item(), tol)
    for g, r in zip(grads, gref):
        _close(g, r, max(r.abs().max().item(), 1e-30), 20 * tol)


@pytest.mark.parametrize("mode", ["full", "diag", "quat", "sigma", "whitened"])
@pytest.mark.parametrize("cutoff", [None, 3.0])
@pytest.mark.parametrize("grid", ["box", "affine"])
def test_equals_the_point_op(mode, cutoff, grid):
    m, c, w = _field(60, mode)
    g = BOX if grid == "box" else dict(affine=AFFINE)
    _check(m, c, w, (17, 13, 19), cutoff, whitened=mode == "whitened", **g)


@pytest.mark.parametrize("channels", [1, 3, 9])
@pytest.mark.parametrize("cutoff", [None, 2.5])
def test_channels(channels, cutoff):
    m, c, w = _field(50, "full", channels=channels)
    _check(m, c, w, (12, 15, 10), cutoff, **BOX)


@pytest.mark.parametrize("tile", ["4", "8"])
@pytest.mark.parametrize("cutoff", [3.0, 4.0])
def test_tile_sides_and_subvolumes(tile, cutoff, monkeypatch):
    monkeypatch.setenv("GAUSSFIELD_CUDA_CONFIG", f"voxel_tile={tile}")
    m, c, w = _field(80, "diag")
    _check(m, c, w, (21, 18, 25), cutoff, **BOX)
    _check(m, c, w, (40, 36, 50), cutoff, offset=(5, 9, 13), size=(11, 1, 23), **BOX)
    _check(m, c, w, (40, 36, 50), cutoff, offset=(3, 2, 1), size=(9, 7, 30), affine=AFFINE)


def test_float64_matches_closely():
    m, c, w = _field(40, "full")
    ref, _ = _reference(m, c, w, (9, 10, 11), 3.0, **BOX)
    out, _ = _cuda(m, c, w, (9, 10, 11), 3.0, dtype=D, **BOX)
    _close(out, ref, w.abs().sum().item(), 1e-12)


@pytest.mark.parametrize("cutoff", [None, 3.0])
def test_bitwise_reproducible(cutoff):
    m, c, w = _field(300, "full", channels=3)
    shape = (33, 29, 31)
    go = torch.randn(*shape, 3, dtype=D)
    a = _cuda(m, c, w, shape, cutoff, grad_out=go, **BOX)
    b = _cuda(m, c, w, shape, cutoff, grad_out=go, **BOX)
    assert torch.equal(a[0], b[0])
    for x, y in zip(a[1], b[1]):
        assert torch.equal(x, y)


def test_one_gaussian_spanning_the_grid():
    # its box holds far more than GF_CUDA_VOXEL_ITEM_ROWS rows: many work items
    m = torch.tensor([[0.05, -0.1, 0.2]], dtype=D)
    c = torch.tensor([[0.3, 0.1, 0.2, -0.1, 0.05, 0.4]], dtype=D)
    w = torch.tensor([1.3], dtype=D)
    for cutoff in (None, 4.0):
        _check(m, c, w, (40, 64, 48), cutoff, **BOX)
    # beside small ones
    m2, c2, w2 = _field(30, "full", seed=3)
    _check(torch.cat([m2, m]), torch.cat([c2, c]), torch.cat([w2, w]), (40, 64, 48), 3.0, **BOX)


def test_non_finite_inputs():
    m, c, w = _field(20, "full")
    shape = (10, 12, 9)
    for which in ("weight", "mean", "grad_out"):
        mm, cc, ww = m.clone(), c.clone(), w.clone()
        go = torch.randn(*shape, dtype=D)
        if which == "weight":
            ww[3] = float("nan")
        elif which == "mean":
            mm[5, 1] = float("inf")
        else:
            go[2, 3, 4] = float("nan")
            go[9, 0, 8] = float("inf")
        for cutoff in (None, 3.0):
            ref, gref = _reference(mm, cc, ww, shape, cutoff, grad_out=go, **BOX)
            out, grads = _cuda(mm, cc, ww, shape, cutoff, grad_out=go, **BOX)
            out, grads = out.cpu().to(D), [g.cpu().to(D) for g in grads]
            assert torch.equal(out.isnan(), ref.isnan()), which
            for g, r in zip(grads, gref):
                assert torch.equal(g.isnan(), r.isnan()), which
                assert torch.equal(g.isinf(), r.isinf()), which


def test_empty_and_no_gaussians():
    m, c, w = _field(5, "full")
    out, _ = _cuda(m, c, w, (0, 4, 5), 3.0, **BOX)
    assert out.shape == (0, 4, 5)
    out, _ = _cuda(m[:0], c[:0], w[:0], (3, 4, 5), 3.0, **BOX)
    assert out.shape == (3, 4, 5) and not out.any()
    far = m + 100.0  # reaches no tile: the lists are empty
    _check(far, c, w, (6, 7, 8), 3.0, **BOX)


@pytest.mark.skipif(not torch.cuda.is_available() or
                    torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
                    reason="needs a GPU of 60 GiB (a 2^31-voxel grid, its grad_out)")
def test_more_than_2_31_voxels():
    # 1300^3 = 2.197e9 voxels: voxel and list indices pass 2^31; checked on a sample
    shape = (1300, 1300, 1300)
    m = torch.tensor([[0.0, 0.0, 0.0], [0.9, -0.8, 0.95], [-0.97, 0.99, -0.96]], dtype=D)
    c = torch.tensor([[-2.0, 0.1, -2.2, 0.0, -0.1, -2.1]] * 3, dtype=D)
    w = torch.tensor([1.0, 0.5, -0.7], dtype=D)
    box = dict(lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0))
    f = gf.voxelize(m.cuda().float(), c.cuda().float(), w.cuda().float(), shape=shape, cutoff=3.0,
                    **box)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 1300, (4000, 3), generator=gen)
    idx = torch.cat([idx, torch.tensor([[1299, 1299, 1299], [1280, 20, 1290], [650, 650, 650]])])
    x = -1.0 + (idx.to(D) + 0.5) * 2.0 / 1300
    ref = gf.gaussian_field(x, m, c, w, cutoff=3.0)
    got = f[idx[:, 0].cuda(), idx[:, 1].cuda(), idx[:, 2].cuda()].cpu().to(D)
    _close(got, ref, 2.2, 3e-5)
    assert ref.abs().max() > 0.1  # the sample sees the Gaussians
    del f
    go = torch.ones(shape, device="cuda")
    leaves = [t.cuda().float().requires_grad_() for t in (m, c, w)]
    out = gf.voxelize(*leaves, shape=shape, cutoff=3.0, **box)
    gw = torch.autograd.grad(out, leaves[2], go)[0]
    # sum of the kept pairs' values: the field's integral over the grid's centres
    assert torch.isfinite(gw).all() and (gw > 0).all()
    del out, go
    torch.cuda.empty_cache()
