# SPDX-License-Identifier: Apache-2.0
"""voxelize against gaussian_field at voxel_centres (the same points bit for bit), its
gradients, the refusals, the subvolumes, reproducibility and the op registrations."""
import pytest
import torch

import gaussfield as gf

D = torch.float64


def _has_kernel(device):
    if device == "cpu":
        return True
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gaussfield::voxelize", "CUDA") and gf.build_info()["cuda_kernels"]


DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(
    not _has_kernel("cuda"), reason="no CUDA voxelize kernel here"))]


def _cov(mode, n, g):
    if mode == "full":
        return torch.randn(n, 6, dtype=D, generator=g) * 0.3 - 1.5
    if mode == "diag":
        return torch.randn(n, 3, dtype=D, generator=g) * 0.3 - 1.5
    if mode == "quat":
        return torch.cat([torch.randn(n, 4, dtype=D, generator=g),
                          torch.randn(n, 3, dtype=D, generator=g) * 0.3 - 1.5], 1)
    a = torch.randn(n, 3, 3, dtype=D, generator=g) * 0.2
    s = a @ a.mT + 0.05 * torch.eye(3, dtype=D)
    if mode == "sigma":
        return s
    return torch.linalg.inv(torch.linalg.cholesky(s))  # whitened


def _field(n, mode, device, channels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, 3, dtype=D, generator=g) * 3 - 1.5
    c = _cov(mode, n, g)
    w = torch.randn(n, dtype=D, generator=g) if channels is None else \
        torch.randn(n, channels, dtype=D, generator=g)
    return m.to(device), c.to(device), w.to(device)


BOX = dict(lo=(-1.0, -1.2, -0.9), hi=(1.1, 1.0, 1.3))
# oblique, with a negative step on axis 0
AFFINE = [[-0.11, 0.02, 0.01, 0.6], [0.015, 0.1, -0.03, -1.0], [0.0, 0.025, 0.12, -0.8],
          [0, 0, 0, 1]]


def _compare(m, c, w, shape, cutoff=None, whitened=False, **grid):
    out = gf.voxelize(m, c, w, shape=shape, cutoff=cutoff, whitened=whitened, **grid)
    x = gf.voxel_centres(shape, dtype=m.dtype, device=m.device, **grid)
    ref = gf.gaussian_field(x, m, c, w, cutoff=cutoff, whitened=whitened)
    assert out.shape == ref.shape
    return out, ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["full", "diag", "quat", "sigma", "whitened"])
@pytest.mark.parametrize("cutoff", [None, 3.0])
@pytest.mark.parametrize("grid", ["box", "affine"])
def test_equals_the_point_op_at_the_centres(device, mode, cutoff, grid):
    m, c, w = _field(40, mode, device)
    g = BOX if grid == "box" else dict(affine=AFFINE)
    out, ref = _compare(m, c, w, (13, 11, 17), cutoff, whitened=mode == "whitened", **g)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cutoff", [None, 2.5])
def test_gradients_equal_the_point_op(device, cutoff):
    m, c, w = _field(30, "full", device, channels=3)
    for t in (m, c, w):
        t.requires_grad_()
    shape = (10, 9, 12)
    go = torch.randn(*shape, 3, dtype=D, device=device)
    out = gf.voxelize(m, c, w, shape=shape, cutoff=cutoff, **BOX)
    a = torch.autograd.grad((out * go).sum(), (m, c, w))
    x = gf.voxel_centres(shape, dtype=D, device=device, **BOX)
    b = torch.autograd.grad((gf.gaussian_field(x, m, c, w, cutoff=cutoff) * go).sum(), (m, c, w))
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 9), (6, 1, 5), (8, 9, 1)])
def test_one_voxel_and_flat_grids(device, shape):
    m, c, w = _field(20, "diag", device)
    out, ref = _compare(m, c, w, shape, 3.0, **BOX)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_needles_and_gaussians_outside_the_box(device):
    g = torch.Generator().manual_seed(5)
    n = 60
    m = (torch.rand(n, 3, dtype=D, generator=g) * 6 - 3).to(device)  # many outside
    # needles 1000:1, randomly rotated
    q = torch.randn(n, 4, dtype=D, generator=g)
    s = torch.stack([torch.full((n,), -0.5, dtype=D), torch.full((n,), -7.4, dtype=D),
                     torch.full((n,), -4.0, dtype=D)], 1)
    c = torch.cat([q, s], 1).to(device)
    w = torch.randn(n, dtype=D, generator=g).to(device)
    for dtype in (torch.float64, torch.float32):
        mm, cc, ww = m.to(dtype), c.to(dtype), w.to(dtype)
        for grid in (BOX, dict(affine=AFFINE)):
            out, ref = _compare(mm, cc, ww, (20, 23, 19), 3.0, **grid)
            # the same pairs kept: equal up to the summation order
            torch.testing.assert_close(out, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                       atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_subvolumes_are_slices_of_the_whole(device):
    m, c, w = _field(25, "full", device)
    shape = (14, 12, 16)
    whole = gf.voxelize(m, c, w, shape=shape, cutoff=3.0, **BOX)
    for off, size in [((0, 0, 0), (5, 12, 3)), ((3, 4, 5), (7, 6, 9)), ((13, 11, 15), (1, 1, 1))]:
        part = gf.voxelize(m, c, w, shape=shape, cutoff=3.0, offset=off, size=size, **BOX)
        sl = tuple(slice(o, o + s) for o, s in zip(off, size))
        assert torch.equal(part, whole[sl])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_grids(device):
    m, c, w = _field(5, "full", device)
    assert gf.voxelize(m, c, w, shape=(0, 4, 4), **BOX).shape == (0, 4, 4)
    assert gf.voxelize(m, c, w, shape=(4, 4, 4), size=(4, 0, 4), **BOX).shape == (4, 0, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape=(4, 4, 4), lo=(0, 0, 0), hi=(1, 0, 1)), "lo < hi"),
    (dict(shape=(4, -1, 4), lo=(0, 0, 0), hi=(1, 1, 1)), "shape must have entries >= 0"),
    (dict(shape=(4, 4, 4)), "exactly one"),
    (dict(shape=(4, 4, 4), lo=(0, 0, 0), hi=(1, 1, 1), affine=AFFINE), "exactly one"),
    (dict(shape=(4, 4, 4), affine=[[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]),
     "invertible"),
    (dict(shape=(4, 4, 4), affine=[[1, 0, 0], [0, 1, 0]]), "affine must be a 4x4 or 3x4"),
    (dict(shape=(4, 4, 4), lo=(0, 0, 0), hi=(1, 1, 1), offset=(2, 0, 0), size=(3, 4, 4)),
     "offset \\+ size must be <= shape"),
    (dict(shape=(4, 4, 4), lo=(0, 0, 0), hi=(1, 1, 1), size=(-1, 4, 4)), "size must have"),
])
def test_bad_grids_are_refused_clearly(kwargs, match):
    m, c, w = _field(5, "full", "cpu")
    with pytest.raises((ValueError, RuntimeError), match=match):
        gf.voxelize(m, c, w, **kwargs)


def test_bad_op_arguments_name_them():
    m, c, w = _field(5, "full", "cpu")
    op = torch.ops.gaussfield.voxelize
    with pytest.raises(RuntimeError, match="offset \\+ size must be <= shape"):
        op(m, c, w, [4, 4, 4], [0.0] * 3, [1.0, 0, 0, 0, 1, 0, 0, 0, 1], [1, 0, 0], [4, 4, 4], 1e-6, None)
    with pytest.raises(RuntimeError, match="edges must be an invertible"):
        op(m, c, w, [4, 4, 4], [0.0] * 3, [0.0] * 9, [0, 0, 0], [4, 4, 4], 1e-6, None)
    with pytest.raises(RuntimeError, match="cov must have the same dtype as means"):
        op(m, c.float(), w, [4, 4, 4], [0.0] * 3, [1.0, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0], [4, 4, 4], 1e-6, None)


def test_gradcheck():
    m, c, w = _field(6, "full", "cpu", channels=2)
    for cutoff in (None, 2.0):
        f = lambda m, c, w: gf.voxelize(m, c, w, shape=(3, 4, 2), cutoff=cutoff, **BOX)
        assert torch.autograd.gradcheck(f, (m.requires_grad_(), c.requires_grad_(), w.requires_grad_()))


def test_double_backward_and_forward_mode_match_the_point_op():
    m, c, w = _field(6, "diag", "cpu")
    f = lambda m, c, w: gf.voxelize(m, c, w, shape=(3, 4, 2), cutoff=2.5, **BOX)
    assert torch.autograd.gradgradcheck(f, (m.requires_grad_(), c.requires_grad_(), w.requires_grad_()))
    t = tuple(torch.randn_like(v) for v in (m, c, w))
    _, jv = torch.func.jvp(f, (m.detach(), c.detach(), w.detach()), t)
    x = gf.voxel_centres((3, 4, 2), dtype=D, **BOX)
    _, jr = torch.func.jvp(lambda m, c, w: gf.gaussian_field(x, m, c, w, cutoff=2.5),
                           (m.detach(), c.detach(), w.detach()), t)
    torch.testing.assert_close(jv, jr.reshape(jv.shape))


def test_vmap_over_fields():
    ms, cs, ws = zip(*(_field(7, "full", "cpu", seed=s) for s in range(3)))
    m, c, w = torch.stack(ms), torch.stack(cs), torch.stack(ws)
    f = lambda m, c, w: gf.voxelize(m, c, w, shape=(3, 4, 5), cutoff=3.0, **BOX)
    out = torch.func.vmap(f)(m, c, w)
    for k in range(3):
        assert torch.equal(out[k], f(m[k], c[k], w[k]))


@pytest.mark.parametrize("cutoff", [None, 3.0])
def test_opcheck(cutoff):
    m, c, w = _field(6, "full", "cpu", channels=2)
    grid = ([5, 4, 6], [-1.0, -1, -1], [2.0, 0, 0, 0, 2, 0, 0, 0, 2], [1, 0, 2], [3, 4, 3])
    m.requires_grad_(), c.requires_grad_(), w.requires_grad_()
    torch.library.opcheck(torch.ops.gaussfield.voxelize.default, (m, c, w, *grid, 1e-6, cutoff))
    g = torch.randn(3, 4, 3, 2, dtype=D)
    torch.library.opcheck(torch.ops.gaussfield.voxelize_backward.default,
                          (g, m.detach(), c.detach(), w.detach(), *grid, 1e-6, cutoff, [True] * 3))


def test_bitwise_reproducible_across_thread_counts():
    m, c, w = _field(300, "full", "cpu")
    g = torch.randn(24, 20, 28, dtype=D)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for cutoff in (None, 3.0):
                mm, cc, ww = (t.clone().requires_grad_() for t in (m, c, w))
                out = gf.voxelize(mm, cc, ww, shape=(24, 20, 28), cutoff=cutoff, **BOX)
                grads = torch.autograd.grad((out * g).sum(), (mm, cc, ww))
                runs.append((out, *grads))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[:2], runs[2:]):
        for p, q in zip(a, b):
            assert torch.equal(p, q)


def test_float32_within_the_point_ops_tolerance():
    m, c, w = _field(50, "full", "cpu")
    exact = gf.voxelize(m, c, w, shape=(16, 16, 16), cutoff=4.0, **BOX)
    f32 = gf.voxelize(m.float(), c.float(), w.float(), shape=(16, 16, 16), cutoff=4.0, **BOX)
    x = gf.voxel_centres((16, 16, 16), dtype=torch.float32, **BOX)
    p32 = gf.gaussian_field(x, m.float(), c.float(), w.float(), cutoff=4.0)
    err, perr = (f32.double() - exact).abs().max(), (p32.double() - exact).abs().max()
    assert err <= 2 * perr + 1e-6


def test_non_finite_inputs_match_the_point_op():
    m, c, w = _field(20, "full", "cpu")
    w[3] = float("nan")
    m[5, 1] = float("inf")
    shape = (8, 7, 9)
    out, ref = _compare(m, c, w, shape, 3.0, **BOX)
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out, ref, equal_nan=True)
    m, c, w = _field(20, "full", "cpu")
    g = torch.randn(*shape, dtype=D)
    g[2, 3, 4] = float("nan")
    x = gf.voxel_centres(shape, dtype=D, **BOX)
    a = torch.ops.gaussfield.voxelize_backward(g, m, c, w, list(shape), [-1.0, -1.2, -0.9],
                                               [2.1, 0, 0, 0, 2.2, 0, 0, 0, 2.2], [0, 0, 0],
                                               list(shape), 1e-6, 3.0, [True] * 3)
    b = torch.ops.gaussfield.gaussian_field_backward(g.reshape(-1), x.reshape(-1, 3), m, c, w, 1e-6,
                                                     3.0, [False, True, True, True])[1:]
    for p, q in zip(a, b):
        assert torch.equal(p.isnan(), q.isnan())


def test_compile_does_not_recompile_per_offset():
    import torch._dynamo
    torch._dynamo.reset()
    m, c, w = _field(10, "full", "cpu")
    compiles = []

    def backend(gm, inputs):
        compiles.append(1)
        return gm.forward

    @torch.compile(backend=backend)
    def f(m, c, w, off):
        return gf.voxelize(m, c, w, shape=(12, 12, 12), cutoff=3.0, offset=off, size=(4, 4, 4), **BOX)

    for k in range(5):
        off = (k, 2 * k % 8, 1)
        assert torch.equal(f(m, c, w, off), gf.voxelize(m, c, w, shape=(12, 12, 12), cutoff=3.0,
                                                        offset=off, size=(4, 4, 4), **BOX))
    assert len(compiles) <= 2  # the first, and automatic-dynamic's one


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grid", ["box", "affine"])
def test_tiles_keep_every_pair_of_tiny_and_huge_gaussians(dtype, grid):
    """The index-space tiles (gf_voxel.h) never drop a kept pair: a dropped one would
    differ by about w exp(-k^2 / 2), far beyond these tolerances."""
    g = torch.Generator().manual_seed(11)
    n = 40
    m = torch.rand(n, 3, dtype=D, generator=g) * 2.4 - 1.2
    # tiny (well under a voxel), voxel-sized, and huge (beyond the box)
    logs = torch.cat([torch.full((n // 4, 3), -7.0), torch.full((n // 4, 3), -2.5),
                      torch.full((n // 4, 3), 1.5), torch.randn(n - 3 * (n // 4), 3) - 2.0]).to(D)
    c = torch.cat([torch.randn(n, 4, dtype=D, generator=g), logs], 1)
    w = torch.rand(n, dtype=D, generator=g) + 0.5
    spec = BOX if grid == "box" else dict(affine=AFFINE)
    mm, cc, ww = m.to(dtype), c.to(dtype), w.to(dtype)
    for k in (1.0, 3.0):
        out, ref = _compare(mm, cc, ww, (17, 19, 18), k, **spec)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
