# SPDX-License-Identifier: Apache-2.0
"""Edge cases a training run can hit: numerical extremes, NaN and Inf, 64-bit sizes and
strides, concurrent callers, hostile input.  Each gives the right numbers or a clear
error (the promises are listed in docs/guarantees.md)."""
import math
import threading

import pytest
import torch

import gaussfield
from checking import compare, rtol_for, worst_condition
from conftest import CUDA_OK, DEVICES, DTYPES, MODES, make_inputs, requires_cuda

f = gaussfield.gaussian_field
ref = gaussfield.gaussian_field_reference


def leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def near_means(means, scale, B, g):
    """B points within a few scales of the means."""
    idx = torch.randint(0, means.shape[0], (B,), generator=g)
    return means[idx] + 1.5 * scale * torch.randn(B, 3, generator=g, dtype=torch.float64)


def scaled_problem(mode, log_scale, B=40, N=12, corr=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = math.exp(log_scale)
    means = 4 * scale * torch.rand(N, 3, generator=g, dtype=torch.float64)
    ls = log_scale + 0.3 * torch.randn(N, 3, generator=g, dtype=torch.float64)
    if mode == "full":
        cov = torch.empty(N, 6, dtype=torch.float64)
        cov[:, [0, 2, 5]] = ls
        cov[:, [1, 3, 4]] = corr * scale * torch.randn(N, 3, generator=g, dtype=torch.float64)
    else:
        cov = ls
    x = near_means(means, scale, B, g)
    weights = torch.randn(N, generator=g, dtype=torch.float64)
    return x, means, cov, weights, torch.randn(B, generator=g, dtype=torch.float64)


# ---- numerical extremes ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("log_scale", [-12.0, -6.0, 6.0, 12.0])
def test_very_small_and_very_large_scales(device, dtype, mode, log_scale):
    x, means, cov, weights, go = scaled_problem(mode, log_scale)
    eps = 1e-6 * math.exp(2 * log_scale)  # eps in proportion, so that it does not swamp Sigma
    ins = leaves(*[t.to(device=device, dtype=dtype) for t in (x, means, cov, weights)])
    compare(*ins, go.to(device=device, dtype=dtype), eps, rtol_for(dtype, worst_condition(ins[2], eps)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eps_regularises_a_near_singular_covariance(device, dtype):
    """Full mode, L of rank 1 up to e^-20: Sigma = L L^T + eps I is as singular as eps
    allows; the op agrees with the reference to about cond(Sigma) times rounding."""
    x, means, _, weights, go = scaled_problem("full", 0.0, N=4)
    cov = torch.tensor([[0.0, 1.0, -20.0, 0.5, 0.3, -20.0]], dtype=torch.float64).repeat(4, 1)
    cov[:, 0] += torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    for eps in (1e-6, 1e-3):
        ins = leaves(*[t.to(device=device, dtype=dtype) for t in (x, means, cov, weights)])
        cond = worst_condition(ins[2], eps)
        assert cond > 1e3
        compare(*ins, go.to(device=device, dtype=dtype), eps, rtol_for(dtype, cond))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_narrower_than_float32_can_hold(device, mode):
    """Scales of e^-50: Sigma^-1 ~ e^100 overflows float32.  The op still gives the weight
    at the mean and 0 elsewhere, and the Gaussians' gradients (zero), as the float64
    maths does.  grad_x is NaN there: Sigma^-1 d overflows float32 (the documented
    limit)."""
    means = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    cov = torch.full((2, 6 if mode == "full" else 3), -50.0)
    if mode == "full":
        cov[:, [1, 3, 4]] = 0.0
    weights = torch.tensor([2.0, -3.0])
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [1.0, 2.0, 3.001], [0.0, 0.0, 0.0]])
    ins = leaves(*[t.to(device) for t in (x, means, cov, weights)])
    out = f(*ins, eps=0.0)
    torch.testing.assert_close(out.cpu(), torch.tensor([2.0, -3.0, 0.0, 0.0]), rtol=0, atol=0)
    grads = torch.autograd.grad(out, ins, torch.ones_like(out))
    for gr in grads[1:3]:
        assert (gr == 0).all(), gr
    torch.testing.assert_close(grads[3].cpu(), torch.tensor([1.0, 1.0]), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_points_far_from_every_gaussian_give_exact_zeros(device, dtype, mode):
    x, means, cov, weights, go = scaled_problem(mode, 0.0, B=8, corr=0.8)
    far = [1e3, 1e8, 1e15] + ([1e150] if dtype == torch.float64 else [])
    direction = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.5, 0.2], [0.3, -1.0, 1.0], [0.0, 0.0, -1.0]],
                             dtype=torch.float64)
    pts = torch.cat([d * direction for d in far])
    ins = leaves(*[t.to(device=device, dtype=dtype) for t in (pts, means, cov, weights)])
    out = f(*ins)
    assert (out == 0).all(), out
    grads = torch.autograd.grad(out, ins, torch.ones_like(out))
    for name, gr in zip(["x", "means", "cov", "weights"], grads):
        assert (gr == 0).all(), (name, gr)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_huge_and_negative_weights(device, dtype, mode):
    x, means, cov, weights, go = scaled_problem(mode, 0.0)
    big = 1e30 if dtype == torch.float32 else 1e200
    weights = big * torch.sign(weights) * (1 + weights.abs())
    ins = leaves(*[t.to(device=device, dtype=dtype) for t in (x, means, cov, weights)])
    compare(*ins, go.to(device=device, dtype=dtype), 1e-6, rtol_for(dtype, worst_condition(ins[2], 1e-6)))


# ---- NaN and Inf ------------------------------------------------------------------------

def run_both(ins64, go64, device, dtype):
    """(ours, reference): value and the four gradients, as float64 on the CPU."""
    ours_in = leaves(*[t.to(device=device, dtype=dtype) for t in ins64])
    out = f(*ours_in)
    ours = [out, *torch.autograd.grad(out, ours_in, go64.to(device=device, dtype=dtype))]
    ref_in = leaves(*ins64)
    r = ref(*ref_in)
    theirs = [r, *torch.autograd.grad(r, ref_in, go64)]
    return [t.detach().double().cpu() for t in ours], [t.detach() for t in theirs]


NAMES = ["value", "grad x", "grad means", "grad cov", "grad weights"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["x", "means", "cov", "weights", "grad_out"])
def test_nan_propagates_as_in_the_reference(device, dtype, mode, where):
    x, means, cov, weights, go = scaled_problem(mode, 0.0, B=10, N=6)
    target = {"x": x, "means": means, "cov": cov, "weights": weights, "grad_out": go}[where]
    target.view(-1)[3] = float("nan")
    ours, theirs = run_both([x, means, cov, weights], go, device, dtype)
    for name, a, b in zip(NAMES, ours, theirs):
        assert torch.equal(a.isnan(), b.isnan()), (name, a, b)
        ok = ~b.isnan()
        torch.testing.assert_close(a[ok], b[ok], rtol=1e-4 if dtype == torch.float32 else 1e-9,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_infinite_weight(device, dtype, mode):
    """+-Inf in a weight: values are +-Inf / NaN exactly where the reference's are, and the
    gradients are not finite exactly where the reference's are not (the reference's
    expanded quadratic form turns some of our +-Inf into NaN), equal elsewhere.  Points
    near the Gaussians, so that no exp underflows."""
    x, means, cov, weights, go = scaled_problem(mode, 1.0, B=10, N=3)
    weights[1] = float("inf")
    weights[2] = -float("inf") if mode == "diag" else weights[2]
    ours, theirs = run_both([x, means, cov, weights], go, device, dtype)
    assert torch.equal(ours[0].isnan(), theirs[0].isnan()) and torch.equal(ours[0].isinf(), theirs[0].isinf())
    assert torch.equal(ours[0][ours[0].isinf()], theirs[0][theirs[0].isinf()])
    for name, a, b in zip(NAMES, ours, theirs):
        assert torch.equal(a.isfinite(), b.isfinite()), (name, a, b)
        torch.testing.assert_close(a[a.isfinite()], b[b.isfinite()], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_point(device, dtype):
    """A point at infinity: its value is 0 (the limit) or NaN (0 * inf in the whitening
    M d, as in the reference's expanded quadratic form), never a finite wrong number; its
    grad_x is NaN.  The other points' values and grad_x are unaffected."""
    for mode in MODES:
        x, means, cov, weights, go = scaled_problem(mode, 0.0, B=6, N=4)
        x[2, 0] = float("inf")
        ours, theirs = run_both([x, means, cov, weights], go, device, dtype)
        assert ours[0][2] == 0 or ours[0][2].isnan()
        assert ours[1][2].isnan().all()
        keep = torch.arange(6) != 2
        for a, b in zip(ours[:2], theirs[:2]):
            torch.testing.assert_close(a[keep], b[keep], rtol=1e-4 if dtype == torch.float32 else 1e-9,
                                       atol=1e-6)


def test_nan_and_inf_never_crash():
    """Every input, every special value, both modes: the op returns (no crash, no hang)."""
    for mode in MODES:
        for special in (float("nan"), float("inf"), -float("inf")):
            for k in range(5):
                ins = list(scaled_problem(mode, 0.0, B=5, N=3))
                ins[k].view(-1)[0] = special
                a = leaves(*ins[:4])
                out = f(*a, eps=1e-6)
                torch.autograd.grad(out, a, ins[4])


# ---- 64-bit sizes and strides ------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_to_the_31_pairs(device):
    """B = 70,000 and N = 40,000: 2.8e9 pairs.  Checked on samples of points and Gaussians
    against the float64 reference."""
    B, N = 70_000, 40_000
    x, means, cov, weights = make_inputs(B, N, "full", torch.float32, device, 5)
    ins = leaves(x, means, cov, weights)
    out = f(*ins)
    go = torch.ones_like(out)
    gx, gm, gc, gw = torch.autograd.grad(out, ins, go)

    pts = torch.tensor([0, 1, 12_345, 2**15 + 7, B - 1])
    gs = torch.tensor([0, 1, 9_999, 2**15 + 3, N - 1])
    x64, m64, c64, w64 = [t.detach().double().cpu() for t in (x, means, cov, weights)]
    # values and grad_x at sampled points (every Gaussian)
    xs = x64[pts].requires_grad_()
    r = ref(xs, m64, c64, w64)
    (rgx,) = torch.autograd.grad(r, xs, torch.ones_like(r))
    torch.testing.assert_close(out.detach().cpu()[pts].double(), r, rtol=2e-4, atol=1e-4)
    torch.testing.assert_close(gx.cpu()[pts].double(), rgx, rtol=2e-4, atol=1e-4)
    # Gaussian gradients of sampled Gaussians (every point)
    sub = leaves(m64[gs], c64[gs], w64[gs])
    r = ref(x64, *sub)
    rgm, rgc, rgw = torch.autograd.grad(r, sub, torch.ones_like(r))
    for a, b in [(gm, rgm), (gc, rgc), (gw, rgw)]:
        torch.testing.assert_close(a.cpu()[gs].double(), b, rtol=2e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_strides_beyond_2_to_the_31(device):
    """Inputs whose strides exceed 2^31 elements (rows 2^31 + 7 floats apart in one 16 GiB
    buffer, of which only the few pages touched are ever written)."""
    big = 2**31 + 7
    try:
        buf = torch.empty(2 * big + 16, dtype=torch.float32, device=device)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        pytest.skip(f"no room for a 16 GiB buffer here: {e}")
    x0, means0, cov0, weights0 = make_inputs(3, 3, "full", torch.float32, device, 6)
    x = buf.as_strided((3, 3), (big, 1))
    means = buf.as_strided((3, 3), (1, big), 4)
    cov = buf.as_strided((3, 6), (big, 1), 8)
    weights = buf.as_strided((3,), (big,), 14)
    for view, val in ((x, x0), (means, means0), (cov, cov0), (weights, weights0)):
        view.copy_(val)
    assert max(x.stride() + means.stride()) > 2**31
    torch.testing.assert_close(f(x, means, cov, weights), f(x0, means0, cov0, weights0), rtol=0, atol=0)
    ins = leaves(x0, means0, cov0, weights0)
    expect = torch.autograd.grad(f(*ins), ins, torch.ones(3, device=device))
    got = torch.ops.gaussfield.gaussian_field_backward(torch.ones(3, device=device), x, means, cov,
                                                       weights, 1e-6, None, [True] * 4)
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- concurrency ----------------------------------------------------------------------

def _call(ins, go):
    ins = leaves(*ins)
    out = f(*ins)
    return [out.detach(), *torch.autograd.grad(out, ins, go)]


def test_python_threads_on_the_cpu():
    problems = [make_inputs(2000 + 17 * i, 300 + 5 * i, MODES[i % 2], torch.float64, "cpu", 40 + i)
                for i in range(6)]
    gos = [torch.randn(p[0].shape[0], dtype=torch.float64) for p in problems]
    serial = [_call(p, g) for p, g in zip(problems, gos)]
    results = {}

    def worker(k):
        for rep in range(4):
            i = (k + rep) % len(problems)
            results[(k, rep)] = (i, _call(problems[i], gos[i]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 24
    for i, got in results.values():
        for a, b in zip(got, serial[i]):
            assert torch.equal(a, b)


@requires_cuda
def test_threads_on_separate_cuda_streams():
    problems = [make_inputs(3000 + 100 * i, 500, MODES[i % 2], torch.float32, "cuda", 60 + i)
                for i in range(4)]
    gos = [torch.randn(p[0].shape[0], device="cuda") for p in problems]
    serial = [_call(p, g) for p, g in zip(problems, gos)]
    torch.cuda.synchronize()
    results = {}

    def worker(k):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for rep in range(5):
                results[(k, rep)] = [t.clone() for t in _call(problems[k], gos[k])]
        stream.synchronize()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    for (k, rep), got in results.items():
        for a, b in zip(got, serial[k]):
            assert torch.equal(a, b), (k, rep)


# ---- hostile input ----------------------------------------------------------------------

@pytest.mark.parametrize("which", range(4))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_integer_bool_complex_inputs_are_refused(which, dtype):
    ins = make_inputs(5, 4, "full", torch.float32, "cpu", 3)
    ins[which] = ins[which].to(dtype)
    name = ["x", "means", "cov", "weights"][which]
    with pytest.raises(RuntimeError, match=f"{name} must (be float16, bfloat16, float32 or float64|have the same dtype as x)"):
        f(*ins)


def test_backward_op_is_differentiable():
    """The backward op called directly with inputs that require grad records a graph
    (it is differentiable: gaussian_field_double_backward), and without grad mode none."""
    x, means, cov, weights = make_inputs(5, 4, "full", torch.float64, "cpu", 3)
    go = torch.ones(5, dtype=torch.float64, requires_grad=True)
    grads = torch.ops.gaussfield.gaussian_field_backward(go, x, means, cov, weights, 1e-6, None, [True] * 4)
    assert all(g.grad_fn is not None for g in grads)
    # linear in grad_out: d <1, grad_x(go)> / d go = <1, grad_x(e_b)> per point
    (d,) = torch.autograd.grad(grads[0].sum(), go)
    rows = torch.ops.gaussfield.gaussian_field_backward(torch.eye(5, dtype=torch.float64)[1], x, means,
                                                        cov, weights, 1e-6, None, [True] * 4)[0]
    assert torch.allclose(d[1], rows.sum(), rtol=1e-12, atol=0)
    with torch.no_grad():
        grads = torch.ops.gaussfield.gaussian_field_backward(go, x, means, cov, weights, 1e-6, None, [True] * 4)
    assert all(g.grad_fn is None for g in grads)


@pytest.mark.parametrize("mask", [[True], [True] * 5, []])
def test_bad_output_mask(mask):
    x, means, cov, weights = make_inputs(5, 4, "full", torch.float32, "cpu", 3)
    with pytest.raises(RuntimeError):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(5), x, means, cov, weights, 1e-6, None, mask)


@pytest.mark.skipif(not CUDA_OK, reason="needs CUDA")
def test_grad_out_on_another_device():
    x, means, cov, weights = make_inputs(5, 4, "full", torch.float32, "cuda", 3)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(5), x, means, cov, weights, 1e-6, None, [True] * 4)
