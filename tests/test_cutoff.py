# SPDX-License-Identifier: Apache-2.0
"""The cutoff: with a Mahalanobis radius k the op computes exactly

    f_k(x) = sum_n w_n exp(-q_n(x) / 2) [q_n(x) <= k^2]

and its gradients (a pair beyond contributes nothing to the value or any gradient),
against a float64 reference whose mask is written in the tests (field_reference.py),
on points none of whose pairs lies within rounding of the boundary; the bound
|f_k - f| <= exp(-k^2 / 2) sum_n |w_n| element by element on adversarial cases; gradcheck;
cutoff=None is no cutoff, bit for bit; a huge cutoff is the dense op; bad values raise
naming `cutoff`; empty inputs; the backward op called directly."""
import math

import pytest
import torch

import gaussfield
import field_reference as fr
from conftest import DEVICES, DTYPES, MODES, make_inputs
from notebook import FastLearnableGaussianField, field_with

RTOL = {torch.float32: 5e-5, torch.float64: 1e-10}
F64 = torch.float64


def rounded(ts, dtype, device="cpu"):
    return [t.to(dtype=dtype, device=device) for t in ts]


def clear_points(x, means, cov, eps, k, rel=1e-3):
    """x without the points that have a pair within rel * k^2 of the boundary (most
    points stay: asserted, so the filter cannot empty a test)."""
    keep = fr.clear_of_boundary(x, means, cov, eps, k, rel)
    assert keep.float().mean() > 0.5, "too many points near the boundary"
    return x[keep.to(x.device)]


# ---- values and gradients against the masked float64 reference -------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
def test_matches_masked_reference(device, dtype, mode, k):
    x, means, cov, weights = make_inputs(240, 40, mode, dtype, device, seed=int(10 * k))
    x = clear_points(x, means, cov, 1e-6, k)
    kept, cut = fr.mask_counts(x, means, cov, 1e-6, k)
    assert kept > 50 and cut > 50  # the cutoff decides for many pairs, both ways
    grad_out = torch.randn(x.shape[0], dtype=F64).to(device=device, dtype=dtype)
    got = fr.ours(x, means, cov, weights, grad_out, cutoff=k)
    want = fr.reference(x, means, cov, weights, grad_out, cutoff=k)
    fr.assert_all_close(got, want, RTOL[dtype], f"k={k}")
    # and the cutoff matters at this k: the dense result is elsewhere
    dense = fr.reference(x, means, cov, weights, grad_out)
    assert fr.norm_rel(dense[0], want[0]) > 20 * RTOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("style", ["rotated", "diag"])
def test_needles_match_masked_reference(device, dtype, style):
    x, means, cov, weights = fr.needles(60, 400, style, seed=3, box=2.0)
    k = 3.0
    x = clear_points(x, means, cov, 1e-6, k)
    grad_out = torch.randn(x.shape[0], dtype=F64)
    ins = rounded((x, means, cov, weights, grad_out), dtype, device)
    kept, cut = fr.mask_counts(*ins[:3], 1e-6, k)
    assert kept > 100 and cut > 100
    fr.assert_all_close(fr.ours(*ins, cutoff=k), fr.reference(*ins, cutoff=k), 4 * RTOL[dtype], style)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_eps_enters_the_mask(device, mode, eps):
    """The mask uses the q of Sigma = L L^T + eps I (full mode; diag has no eps)."""
    x, means, cov, weights = make_inputs(150, 20, mode, F64, device, seed=5)
    k = 1.5
    x = clear_points(x, means, cov, eps, k)
    grad_out = torch.randn(x.shape[0], dtype=F64, device=device)
    fr.assert_all_close(fr.ours(x, means, cov, weights, grad_out, eps=eps, cutoff=k),
                        fr.reference(x, means, cov, weights, grad_out, eps=eps, cutoff=k),
                        RTOL[F64], f"eps={eps}")


# ---- beyond the cutoff: nothing at all ----------------------------------------------------

def identical_gaussians(N, mode, k, outside, seed, B=64):
    """N Gaussians with one mean and one covariance (positive weights) and B points at
    q = k^2 (1 + outside) from it, in random directions."""
    g = torch.Generator().manual_seed(seed)
    base_x, base_m, base_c, _ = make_inputs(1, 1, mode, F64, "cpu", seed)
    means = base_m.expand(N, 3).clone()
    cov = base_c.expand(N, base_c.shape[1]).clone()
    weights = 0.5 + torch.rand(N, generator=g, dtype=F64)
    chol = torch.linalg.cholesky(fr.sigma_of(cov[:1], 1e-6))[0]
    u = torch.randn(B, 3, generator=g, dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True) * k * math.sqrt(1.0 + outside)
    x = means[0] + u @ chol.T
    return x, means, cov, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_pairs_beyond_contribute_nothing(device, dtype, mode):
    """Points just beyond every Gaussian's cutoff: value and every gradient exactly 0,
    where the dense op has them of the size of the bound."""
    k = 2.0
    x, means, cov, weights = identical_gaussians(7, mode, k, 0.02, seed=1)
    grad_out = torch.randn(x.shape[0], dtype=F64)
    ins = rounded((x, means, cov, weights, grad_out), dtype, device)
    got = fr.ours(*ins, cutoff=k)
    for name, t in zip(fr.NAMES, got):
        assert t.abs().max() == 0, f"{name} is not exactly 0 beyond the cutoff"
    dense = fr.ours(*ins)
    assert all(t.abs().max() > 1e-3 for t in dense)  # the dense op is far from 0 here
    # and just inside, they are all there
    x_in, *_ = identical_gaussians(7, mode, k, -0.02, seed=1)
    ins[0] = x_in.to(dtype=dtype, device=device)
    fr.assert_all_close(fr.ours(*ins, cutoff=k), fr.ours(*ins), 1e-12 if dtype == F64 else 1e-6)


# ---- the bound, element by element, on adversarial cases ---------------------------------

def case_inputs(case, mode, k, seed):
    """Adversarial inputs (float64, CPU) for the bound."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    ru = lambda *s: torch.rand(*s, generator=g, dtype=F64)   # noqa: E731

    def cov_from(log_s, corr):
        if mode == "diag":
            return log_s
        c = torch.empty(log_s.shape[0], 6, dtype=F64)
        c[:, [0, 2, 5]] = log_s
        c[:, [1, 3, 4]] = corr * log_s.exp().mean(-1, keepdim=True) * rn(log_s.shape[0], 3)
        return c

    if case == "needles":
        x, means, cov, w = fr.needles(40, 200, "rotated" if mode == "full" else "diag", seed, box=1.5)
    elif case == "mixed_scales":
        N = 40
        means, x = 6 * ru(N, 3), 6 * ru(200, 3)
        cov = cov_from(math.log(0.02) + (math.log(5.0) - math.log(0.02)) * ru(N, 3), 0.5)
        w = rn(N)
    elif case == "clustered":
        N = 30
        means = 5 + 0.5 * rn(N, 3)
        x = 5 + 0.01 * rn(200, 3)
        cov = cov_from(math.log(0.3) + 0.3 * rn(N, 3), 0.5)
        w = rn(N)
    elif case == "far_outside":
        N = 30
        means, x = 10 * ru(N, 3), 20 + 5 * ru(100, 3)  # q in ~[50, 1000]: f tiny, not 0
        cov = cov_from(math.log(1.0) + 0.3 * rn(N, 3), 0.5)
        w = rn(N)
    elif case == "huge_among_small":
        N = 40
        means, x = 10 * ru(N, 3), 10 * ru(200, 3)
        log_s = math.log(0.1) + 0.3 * rn(N, 3)
        log_s[7] = math.log(50.0)
        cov = cov_from(log_s, 0.3)
        w = rn(N)
        w[7] = 3.0
    elif case == "negative_weights":
        N = 40
        means, x = 3 * ru(N, 3), 3 * ru(200, 3)
        cov = cov_from(math.log(0.5) + 0.3 * rn(N, 3), 0.5)
        w = 5 * torch.where(torch.arange(N) % 2 == 0, 1.0, -1.0).to(F64) * (0.5 + ru(N))
    elif case == "just_beyond":  # the bound is nearly attained
        x, means, cov, w = identical_gaussians(12, mode, k, 0.01, seed)
    else:
        raise ValueError(case)
    return x, means, cov, w


CASES = ["needles", "mixed_scales", "clustered", "far_outside", "huge_among_small",
         "negative_weights", "just_beyond"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels", [None, 3])
def test_bound(device, dtype, mode, case, channels):
    """|f_k(x) - f(x)| <= exp(-k^2/2) sum_n |w_n| per point (and channel), for k = 3, 4, 6:
    f_k is the op in `dtype`, f the dense float64 reference on the same inputs; the
    op's own rounding is allowed for on top (relative to sum_n |w_n| exp(-q_n/2))."""
    slack = 1e-4 if dtype == torch.float32 else 1e-12
    worst = 0.0
    for k in (3.0, 4.0, 6.0):
        x, means, cov, w = case_inputs(case, mode, k, seed=int(k))
        if channels:  # channels of their own sign (all positive where the bound is tight)
            c = torch.randn(w.shape[0], channels, generator=torch.Generator().manual_seed(9), dtype=F64)
            w = w[:, None] * (c.abs() if case == "just_beyond" else c)
        ins = rounded((x, means, cov, w), dtype, device)
        f_k = gaussfield.gaussian_field(*ins, cutoff=k).to(F64).cpu()
        ins64 = [t.to(F64).cpu() for t in ins]
        f = fr.field(*ins64)
        mag = fr.field(*ins64[:3], ins64[3].abs())      # sum_n |w_n| exp(-q_n/2)
        total = ins64[3].abs().sum(0)                   # sum_n |w_n| (per channel)
        bound = math.exp(-k * k / 2) * total
        err = (f_k - f).abs()
        assert (err <= bound + slack * mag + 1e-300).all(), (
            f"k={k}: |f_k - f| = {err.max().item():.3g} beyond the bound {bound.max().item():.3g}")
        worst = max(worst, float((err / bound).max()))
        if case == "far_outside":
            assert f_k.abs().max() == 0 and f.abs().max() > 0
    if case == "just_beyond" and dtype == F64:
        assert worst > 0.5  # nearly attained: the test has teeth


# ---- gradcheck away from the boundary ------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_with_cutoff(device, mode):
    x, means, cov, weights = make_inputs(12, 6, mode, F64, device, seed=21)
    k = 1.2
    x = clear_points(x, means, cov, 1e-6, k, rel=1e-2)
    kept, cut = fr.mask_counts(x, means, cov, 1e-6, k)
    assert kept > 3 and cut > 3
    ins = [t.detach().requires_grad_() for t in (x, means, cov, weights)]
    assert torch.autograd.gradcheck(lambda *a: gaussfield.gaussian_field(*a, cutoff=k), ins)


# ---- None, huge, bad ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_none_is_no_cutoff_bitwise(device, dtype, mode):
    x, means, cov, weights = make_inputs(100, 30, mode, dtype, device, seed=2)
    grad_out = torch.randn(100, dtype=F64).to(device=device, dtype=dtype)
    plain = fr.value_and_grads(gaussfield.gaussian_field, x, means, cov, weights, grad_out)
    none = fr.ours(x, means, cov, weights, grad_out, cutoff=None)
    op = fr.value_and_grads(lambda *a: torch.ops.gaussfield.gaussian_field(*a, 1e-6, None),
                            x, means, cov, weights, grad_out)
    for name, a, b, c in zip(fr.NAMES, plain, none, op):
        assert torch.equal(a, b) and torch.equal(a, c), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1e3, 1e30, 1e200])
def test_huge_cutoff_is_dense(device, dtype, mode, k):
    """k^2 beyond any q (and beyond the dtype's range: 1e30^2 overflows float32)."""
    x, means, cov, weights = make_inputs(100, 30, mode, dtype, device, seed=3)
    grad_out = torch.randn(100, dtype=F64).to(device=device, dtype=dtype)
    dense = fr.ours(x, means, cov, weights, grad_out)
    huge = fr.ours(x, means, cov, weights, grad_out, cutoff=k)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    for name, a, b in zip(fr.NAMES, huge, dense):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item(), msg=name)


BAD = [0.0, -1.0, -1e-300, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("bad", BAD)
def test_bad_cutoff_raises(bad):
    x, means, cov, weights = make_inputs(5, 4, "full", F64, "cpu", seed=4)
    err = (RuntimeError, ValueError)
    with pytest.raises(err, match="cutoff"):
        gaussfield.gaussian_field(x, means, cov, weights, cutoff=bad)
    with pytest.raises(err, match="cutoff"):
        torch.ops.gaussfield.gaussian_field(x, means, cov, weights, 1e-6, bad)
    with pytest.raises(err, match="cutoff"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(5, dtype=F64), x, means, cov, weights,
                                                     1e-6, bad, [True] * 4)
    with pytest.raises(err, match="cutoff"):
        gaussfield.GaussianField(4, cutoff=bad)(x.float())
    with pytest.raises(err, match="cutoff"):  # empty inputs are no excuse
        gaussfield.gaussian_field(x[:0], means[:0], cov[:0], weights[:0], cutoff=bad)


# ---- empty inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [None, 4])
@pytest.mark.parametrize("B, N", [(0, 5), (7, 0), (0, 0)])
def test_empty_inputs_with_cutoff(device, dtype, mode, channels, B, N):
    x, means, cov, weights = make_inputs(B, N, mode, dtype, device, seed=6)
    if channels:
        weights = torch.randn(N, channels, dtype=F64).to(device=device, dtype=dtype)
    shape = (B,) if channels is None else (B, channels)
    grad_out = torch.randn(shape, dtype=F64).to(device=device, dtype=dtype)
    got = fr.ours(x, means, cov, weights, grad_out, cutoff=2.0)
    for t, want_shape in zip(got, [shape, x.shape, means.shape, cov.shape, weights.shape]):
        assert t.shape == want_shape and t.dtype == dtype and t.device.type == device
        assert not t.any()  # all of it 0 (or nothing at all)


# ---- the backward op, directly ------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_backward_op_with_cutoff(device, dtype, mode):
    k = 1.5
    x, means, cov, weights = make_inputs(120, 25, mode, dtype, device, seed=8)
    x = clear_points(x, means, cov, 1e-6, k)
    grad_out = torch.randn(x.shape[0], dtype=F64).to(device=device, dtype=dtype)
    want = fr.reference(x, means, cov, weights, grad_out, cutoff=k)[1:]
    op = torch.ops.gaussfield.gaussian_field_backward
    full = op(grad_out, x, means, cov, weights, 1e-6, k, [True] * 4)
    for name, a, b in zip(fr.NAMES[1:], full, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert fr.norm_rel(a, b) <= RTOL[dtype], name
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    for mask in ([True, False, False, False], [False, True, True, True], [False, False, False, True]):
        part = op(grad_out, x, means, cov, weights, 1e-6, k, mask)
        for wanted, a, b in zip(mask, part, full):
            if wanted:
                torch.testing.assert_close(a, b, **tol)
            else:
                assert a is None
    # a different k gives different gradients: the op reads it
    other = op(grad_out, x, means, cov, weights, 1e-6, 2 * k, [True] * 4)
    assert not torch.equal(other[1], full[1])


# ---- the module and the notebook patch ----------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_module_and_patched_notebook_take_the_cutoff(mode):
    torch.manual_seed(0)
    k = 1.5
    model = gaussfield.GaussianField(40, use_full_cov=(mode == "full"), cutoff=k)
    with torch.no_grad():  # away from the notebook's all-equal initialisation
        model.means.add_(torch.randn_like(model.means))
        cov = model.cov_tril if mode == "full" else model.log_scales
        cov.add_(0.3 * torch.randn_like(cov))
    x = torch.rand(100, 3) * 10
    cov = (model.cov_tril if mode == "full" else model.log_scales).float()
    want = gaussfield.gaussian_field(x, model.means, cov, model.weights, cutoff=k)
    assert torch.equal(model(x), want)
    assert not torch.equal(want, gaussfield.gaussian_field(x, model.means, cov, model.weights))
    assert "cutoff" not in "".join(model.state_dict())
    nb = field_with(FastLearnableGaussianField, model.means, cov, model.weights)
    nb.cutoff = k  # the documented way to patch the notebook's class with a cutoff
    assert torch.equal(gaussfield.fused_forward(nb, x), want)
