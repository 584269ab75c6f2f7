# SPDX-License-Identifier: Apache-2.0
"""Bad input gives a clear error naming the argument; empty, non-contiguous, 1-D and
batched inputs give the right result."""
import pytest
import torch

import gaussfield
from conftest import DEVICES, MODES, make_inputs, rel_err, requires_cuda

f = gaussfield.gaussian_field
ref = gaussfield.gaussian_field_reference


def good(mode="full", dtype=torch.float64, device="cpu"):
    return make_inputs(5, 4, mode, dtype, device, 11)


@pytest.mark.parametrize(
    "which, bad, message",
    [
        (0, torch.rand(5, 2), r"x must have shape \[\.\.\., 3\], got \[5, 2\]"),
        (0, torch.rand(()), r"x must have shape \[\.\.\., 3\], got \[\]"),
        (1, torch.rand(4, 2), r"means must have shape \[N, 3\], got \[4, 2\]"),
        (1, torch.rand(4), r"means must have shape \[N, 3\], got \[4\]"),
        (2, torch.rand(4, 5), r"cov must have shape \[N, 6\] \(full covariance, cov_tril\), \[N, 3\] "
                              r"\(diagonal, log_scales\), \[N, 7\] \(rotation quaternion .* or \[N, 3, 3\]"),
        (2, torch.rand(4, 3, 2), r"cov must have shape .* or \[N, 3, 3\] with whitened=True \(the whitening factor M\)"),
        (2, torch.rand(3, 6), r"cov must have N = 4 rows as in means, got \[3, 6\]"),
        (3, torch.rand(5), r"weights must have shape \[N\] or \[N, C\] with N = 4 as in means, got \[5\]"),
        (3, torch.rand(4, 1, 2), r"weights must have shape \[N\] or \[N, C\] with N = 4 as in means, got \[4, 1, 2\]"),
    ],
)
def test_bad_shapes_name_the_argument(which, bad, message):
    ins = good()
    ins[which] = bad.double()
    with pytest.raises(RuntimeError, match=message):
        f(*ins)


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_unsupported_dtype(dtype):
    ins = good()
    ins[0] = ins[0].to(dtype)
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64, got"):
        f(*ins)


@pytest.mark.parametrize("which, name", [(1, "means"), (2, "cov"), (3, "weights")])
def test_mixed_dtypes(which, name):
    ins = good()
    ins[which] = ins[which].float()
    with pytest.raises(RuntimeError, match=f"{name} must have the same dtype as x \\(Double\\), got Float"):
        f(*ins)


@requires_cuda
@pytest.mark.parametrize("which, name", [(0, "means"), (1, "means"), (2, "cov"), (3, "weights")])
def test_mixed_devices(which, name):
    ins = good()
    if which == 0:  # x on the GPU, the rest on the CPU: the first one named is means
        ins[0] = ins[0].cuda()
    else:
        ins[which] = ins[which].cuda()
    with pytest.raises(RuntimeError, match=f"{name} must be on the same device as x"):
        f(*ins)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf")])
def test_bad_eps(eps):
    with pytest.raises(RuntimeError, match="eps must be a finite number >= 0"):
        f(*good(), eps=eps)


def test_bad_grad_out_shape():
    x, means, cov, weights = good()
    with pytest.raises(RuntimeError, match=r"grad_out must have the shape of the result \(x.shape\[:-1\]\) = \[5\], got \[4\]"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(4, dtype=torch.float64), x, means, cov,
                                                     weights, 1e-6, None, [True] * 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_points(device, mode, dtype):
    x, means, cov, weights = make_inputs(0, 4, mode, dtype, device, 12, requires_grad=True)
    out = f(x, means, cov, weights)
    assert out.shape == (0,) and out.dtype == dtype and out.device.type == device
    out.sum().backward()
    for t in (x, means, cov, weights):
        assert t.grad.shape == t.shape and torch.all(t.grad == 0)
    assert f(torch.rand(2, 0, 3, dtype=dtype, device=device), means, cov, weights).shape == (2, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_gaussians(device, mode, dtype):
    x, means, cov, weights = make_inputs(5, 0, mode, dtype, device, 13, requires_grad=True)
    out = f(x, means, cov, weights)
    assert out.shape == (5,) and torch.all(out == 0)
    out.sum().backward()
    assert torch.all(x.grad == 0) and means.grad.shape == (0, 3) and cov.grad.shape == cov.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(device, mode):
    x, means, cov, weights = make_inputs(40, 12, mode, torch.float64, device, 14)
    expected = f(x, means, cov, weights)
    # transposed storage, every-other-row views, and an expanded (stride 0) tensor
    xt = x.t().contiguous().t()
    means2 = torch.stack([means, means], 1)[:, 0]
    cov_t = cov.t().contiguous().t()
    w2 = torch.stack([weights, -weights], 1)[:, 0]
    for args in [(xt, means, cov, weights), (x, means2, cov, weights), (x, means, cov_t, weights),
                 (x, means, cov, w2), (xt, means2, cov_t, w2)]:
        assert not all(a.is_contiguous() for a in args)
        torch.testing.assert_close(f(*args), expected, rtol=0, atol=0)
    xe = x[:1].expand(40, 3)
    torch.testing.assert_close(f(xe, means, cov, weights), expected[:1].expand(40), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_grads(device):
    x, means, cov, weights = make_inputs(30, 7, "full", torch.float64, device, 15)
    grads = []
    for args in [(x, means, cov, weights), (x.t().contiguous().t(), means.t().contiguous().t(),
                                            cov.t().contiguous().t(), weights)]:
        ins = [a.detach().clone().requires_grad_() if a.is_contiguous() else a.detach().requires_grad_()
               for a in args]
        g_out = torch.linspace(-1, 1, 60, dtype=torch.float64, device=device)[::2]  # strided grad_out
        grads.append(torch.autograd.grad(f(*ins), ins, g_out))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_one_point_gives_0d(device, mode):
    x, means, cov, weights = make_inputs(3, 6, mode, torch.float64, device, 16)
    out = f(x[1], means, cov, weights)
    assert out.shape == ()
    torch.testing.assert_close(out, ref(x[1], means, cov, weights))
    xg = x[1].clone().requires_grad_()
    f(xg, means, cov, weights).backward()
    assert xg.grad.shape == (3,)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_batch_dims(device):
    x, means, cov, weights = make_inputs(None, 6, "full", torch.float64, device, 17, batch_shape=(2, 3, 4))
    out = f(x, means, cov, weights)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, ref(x, means, cov, weights))
    torch.testing.assert_close(out.reshape(-1), f(x.reshape(-1, 3), means, cov, weights))


def test_eps_applies_to_full_only():
    x, means, cov, weights = make_inputs(20, 5, "full", torch.float64, "cpu", 18)
    assert rel_err(f(x, means, cov, weights, eps=0.5), f(x, means, cov, weights)) > 1e-3
    torch.testing.assert_close(f(x, means, cov, weights, eps=0.5), ref(x, means, cov, weights, eps=0.5))
    x, means, cov, weights = make_inputs(20, 5, "diag", torch.float64, "cpu", 18)
    torch.testing.assert_close(f(x, means, cov, weights, eps=0.5), f(x, means, cov, weights, eps=0.0),
                               rtol=0, atol=0)


def test_nan_propagates():
    x, means, cov, weights = make_inputs(6, 4, "full", torch.float64, "cpu", 19)
    means[2, 1] = float("nan")
    out = f(x, means, cov, weights)
    assert torch.isnan(out).all()


# ---- what cov means is named, never read from a shape two ways ----------------------------

def _factor(c):
    """A whitening factor [N, 3, 3] of cov_tril parameters (eps 0)."""
    from field_reference import sigma_of
    return torch.linalg.inv(torch.linalg.cholesky(sigma_of(c, 0.0)))


def test_whitened_true_takes_the_factor():
    x, m, c, w = good()
    M = _factor(c)
    assert torch.equal(f(x, m, M, w, whitened=True), f(x, m, M, w, eps=0.0, whitened=True))
    torch.testing.assert_close(f(x, m, M, w, whitened=True), f(x, m, c, w, eps=0.0),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(4, 6), (4, 3), (4, 7), (4, 9), (4, 3, 2)])
def test_whitened_true_with_another_shape_is_an_error(shape):
    x, m, _, w = good()
    with pytest.raises(RuntimeError, match=r"with whitened=True, cov must be the whitening "
                                           r"factor M \[N, 3, 3\]"):
        f(x, m, torch.rand(shape, dtype=torch.float64), w, whitened=True)
    with pytest.raises(RuntimeError, match=r"with whitened=True, cov must be the whitening factor"):
        torch.ops.gaussfield.gaussian_field_backward(
            torch.ones(5, dtype=torch.float64), x, m, torch.rand(shape, dtype=torch.float64), w,
            1e-6, None, [True] * 4, whitened=True)


def test_an_unnamed_matrix_is_sigma():
    """[N, 3, 3] without whitened is a covariance matrix, never the factor: Sigma's field
    (the factor M read as Sigma would give another, or be refused)."""
    x, m, c, w = good()
    from field_reference import sigma_of
    sigma = sigma_of(c, 1e-6)
    torch.testing.assert_close(f(x, m, sigma, w), f(x, m, c, w), rtol=1e-12, atol=1e-14)
    # the factor unnamed is read as Sigma: the field of (M + M^T) / 2, not of M
    M = _factor(c)
    sym = 0.5 * (M + M.mT)
    if bool((torch.linalg.eigvalsh(sym) > 0).all()):
        torch.testing.assert_close(f(x, m, M, w), f(x, m, sym, w), rtol=0, atol=0)
        assert not torch.allclose(f(x, m, M, w), f(x, m, M, w, whitened=True))
    else:
        with pytest.raises(ValueError, match="pass whitened=True"):
            f(x, m, M, w)
