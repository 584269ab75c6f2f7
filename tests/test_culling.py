# SPDX-License-Identifier: Apache-2.0
"""Culling: with a cutoff, the culled path (GAUSSFIELD_CULLING=always) computes the same
f_k and gradients as the dense masked path (never): the same per-pair test decides every
pair, only the summation order differs.  Checked on the adversarial cases of the cutoff's
tests, on hypothesis draws, and on edge cases (non-finite inputs, all points in one spot,
a plane of points, one Gaussian over everything); bitwise reproducible run to run and
independent of the thread count; B x N beyond 2^31; empty inputs; the budget and the
switch's bad values; and that the culling really culls (its pairs against B x N)."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import gaussfield
import field_reference as fr
from conftest import DEVICES, DTYPES, MODES, make_inputs, requires_cuda
from test_cutoff import CASES, case_inputs, rounded

F64 = torch.float64
# culled against dense, both ours in one dtype: only the summation order differs
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def run(path, monkeypatch, fn, *args, **kw):
    monkeypatch.setenv("GAUSSFIELD_CULLING", path)
    try:
        return fn(*args, **kw)
    finally:
        monkeypatch.delenv("GAUSSFIELD_CULLING")


def both(monkeypatch, x, means, cov, weights, grad_out, k, eps=1e-6):
    """(culled, dense) value and four gradients."""
    culled = run("always", monkeypatch, fr.ours, x, means, cov, weights, grad_out, eps=eps, cutoff=k)
    dense = run("never", monkeypatch, fr.ours, x, means, cov, weights, grad_out, eps=eps, cutoff=k)
    return culled, dense


def assert_same_field(culled, dense, rtol, what=""):
    """Norm-relative agreement of each of the five; NaN and +-Inf exactly where the dense
    path has them."""
    for name, a, b in zip(fr.NAMES, culled, dense):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} {name}"
        assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what} {name}: NaN elsewhere than dense"
        fin_a, fin_b = torch.isfinite(a), torch.isfinite(b)
        assert torch.equal(fin_a, fin_b), f"{what} {name}: Inf elsewhere than dense"
        inf = torch.isinf(b)
        assert torch.equal(a[inf], b[inf]), f"{what} {name}: Inf of another sign"
        a, b = torch.where(fin_a, a, 0), torch.where(fin_b, b, 0)
        if b.numel() == 0 or b.abs().max() == 0:
            assert a.abs().max() == 0 if a.numel() else True, f"{what} {name}: nonzero where dense is 0"
            continue
        e = fr.norm_rel(a, b)
        assert e <= rtol, f"{what} {name}: culled differs from dense by {e:.3g} > {rtol:.3g}"


def grad_out_like(B, C, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (B,) if C is None else (B, C)
    return torch.randn(shape, generator=g, dtype=F64).to(device=device, dtype=dtype)


# ---- culled == dense --------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [None, 3, 9])
@pytest.mark.parametrize("k", [1.0, 3.0, 6.0])
def test_matches_dense(monkeypatch, device, dtype, mode, channels, k):
    x, means, cov, w = make_inputs(3000, 400, mode, dtype, device, seed=int(k) + 7)
    if channels:
        w = w[:, None] * torch.randn(w.shape[0], channels, generator=torch.Generator().manual_seed(2),
                                     dtype=F64).to(device=device, dtype=dtype)
    grad_out = grad_out_like(x.shape[0], channels, dtype, device)
    culled, dense = both(monkeypatch, x, means, cov, w, grad_out, k)
    assert_same_field(culled, dense, RTOL[dtype], f"k={k}")
    # and the field is not trivial at this k
    assert dense[0].abs().max() > 0.1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_adversarial_cases(monkeypatch, device, dtype, mode, case):
    for k in (1.0, 3.0, 6.0):
        x, means, cov, w = case_inputs(case, mode, k, seed=int(k))
        grad_out = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(3), dtype=F64)
        ins = rounded((x, means, cov, w, grad_out), dtype, device)
        culled, dense = both(monkeypatch, *ins, k)
        assert_same_field(culled, dense, 4 * RTOL[dtype], f"{case} k={k}")


def edge_inputs(edge, mode, seed=0):
    """Inputs of an edge case, on a field local enough that the culled path's cells
    matter (test_edges_are_culled)."""
    x, means, cov, w = make_inputs(2000, 300, mode, F64, "cpu", seed=seed)
    cov = cov.clone()
    if mode == "full":
        cov[:, [0, 2, 5]] -= 1.0
        cov[:, [1, 3, 4]] *= math.exp(-1.0)
    else:
        cov -= 1.0
    go = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(5), dtype=F64)
    if edge == "one_spot":
        x = means[3].expand(x.shape[0], 3).clone() + 0.05
    elif edge == "plane":
        x[:, 2] = 5.0
    elif edge == "line":
        x[:, 1] = 2.0
        x[:, 2] = 7.0
    elif edge == "one_point":
        x, go = x[:1], go[:1]
    elif edge == "one_gaussian":
        means, cov, w = means[:1], cov[:1], w[:1]
        x = means + 0.3 * torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    elif edge == "covers_everything":
        cov = cov.clone()
        cov[5, [0, 2, 5] if mode == "full" else [0, 1, 2]] = math.log(40.0)
    elif edge == "far_away_gaussians":
        means = means + 1e4
    elif edge == "huge_coordinates":
        x, means = x + 1e6, means + 1e6
    elif edge == "nan_point":
        x[[4, 77]] = float("nan")
        x[100, 1] = float("inf")
        x[101, 2] = -float("inf")
    elif edge == "nan_mean":
        means[[2, 9]] = float("nan")
    elif edge == "inf_mean":
        means[5, 0] = float("inf")
    elif edge == "inf_cov":
        cov[4, 0] = float("inf")
    elif edge == "nan_weight":
        w[7] = float("nan")
    elif edge == "inf_weight":
        w[8] = float("inf")
    elif edge == "nan_grad_out":
        go[[3, 1500]] = float("nan")
    elif edge == "zero_weights":
        w = torch.zeros_like(w)
    elif edge != "plain":
        raise ValueError(edge)
    return x, means, cov, w, go


EDGES = ["one_spot", "plane", "line", "one_point", "one_gaussian", "covers_everything",
         "far_away_gaussians", "huge_coordinates", "nan_point", "nan_mean", "inf_mean",
         "inf_cov", "nan_weight", "inf_weight", "nan_grad_out", "zero_weights"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("edge", EDGES)
def test_edges(monkeypatch, device, dtype, mode, edge):
    """The dense path's result, NaN where it has NaN, never an out-of-bounds access."""
    x, means, cov, w, grad_out = edge_inputs(edge, mode)
    ins = rounded((x, means, cov, w, grad_out), dtype, device)
    culled, dense = both(monkeypatch, *ins, 3.0)
    assert_same_field(culled, dense, 4 * RTOL[dtype], edge)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("edge", ["nan_weight", "inf_weight", "nan_grad_out"])
def test_nonfinite_channel(monkeypatch, device, dtype, edge):
    """A non-finite weight or grad_out in one channel of three: the culled path gives the
    dense path's NaN (every pair of the dense path meets it), and really culls."""
    x, means, cov, w, grad_out = edge_inputs("plain", "full")
    w = w[:, None] * torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    grad_out = grad_out[:, None] * torch.tensor([0.3, 1.0, -1.0], dtype=F64)
    if edge == "nan_weight":
        w[7, 2] = float("nan")
    elif edge == "inf_weight":
        w[8, 1] = -float("inf")
    else:
        grad_out[[3, 1500], [0, 2]] = float("nan")
    ins = rounded((x, means, cov, w, grad_out), dtype, device)
    culled, dense = both(monkeypatch, *ins, 3.0)
    assert any(torch.isnan(t).any() for t in dense)
    assert_same_field(culled, dense, 4 * RTOL[dtype], edge)
    stats = gaussfield.culling_stats(*ins[:4], cutoff=3.0)
    assert stats["pairs_evaluated"] < x.shape[0] * means.shape[0] / 3


@pytest.mark.parametrize("mode", MODES)
def test_edges_are_culled(mode):
    """The edge cases' field is local: the culled path evaluates under a third of B x N."""
    x, means, cov, w, _ = edge_inputs("plain", mode)
    stats = gaussfield.culling_stats(x, means, cov, w, cutoff=3.0)
    assert stats["pairs_evaluated"] < x.shape[0] * means.shape[0] / 3


@st.composite
def problems(draw):
    B = draw(st.integers(1, 400))
    N = draw(st.integers(1, 80))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    span = 10.0 ** draw(st.floats(-2, 3))
    offset = draw(st.floats(-1e3, 1e3))
    log_scale = math.log(span) + draw(st.floats(-5, 0.5))
    aniso = draw(st.floats(0, 3))
    x = offset + span * torch.rand(B, 3, generator=g, dtype=F64)
    means = offset + span * torch.rand(N, 3, generator=g, dtype=F64)
    log_s = log_scale + aniso * torch.randn(N, 3, generator=g, dtype=F64)
    if mode == "full":
        cov = torch.empty(N, 6, dtype=F64)
        cov[:, [0, 2, 5]] = log_s
        cov[:, [1, 3, 4]] = math.exp(log_scale) * torch.randn(N, 3, generator=g, dtype=F64)
    else:
        cov = log_s
    C = draw(st.sampled_from([None, 1, 2, 5]))
    w = torch.randn(N if C is None else (N, C), generator=g, dtype=F64)
    k = draw(st.floats(0.3, 10.0))
    return x, means, cov, w, k, C


@given(problems())
def test_hypothesis_culled_is_dense(monkeypatch_session, problem):
    x, means, cov, w, k, C = problem
    grad_out = torch.randn((x.shape[0],) if C is None else (x.shape[0], C),
                           generator=torch.Generator().manual_seed(0), dtype=F64)
    mp = monkeypatch_session
    culled, dense = both(mp, x, means, cov, w, grad_out, k)
    assert_same_field(culled, dense, 1e-10, "hypothesis")


@pytest.fixture(scope="module")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# ---- it culls ---------------------------------------------------------------------------

@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_culling_culls(device_type):
    """On a local field, the culled path evaluates a small share of B x N, and never fewer
    pairs than those that pass the test."""
    B, N, k = 20000, 3000, 3.0
    x, means, cov, w = make_inputs(B, N, "full", F64, "cpu", seed=4)
    stats = gaussfield.culling_stats(x, means, cov, w, cutoff=k, device_type=device_type)
    q = fr.mahalanobis_sq(x, means, cov, 1e-6)
    kept = int((q <= k * k).sum())
    assert kept <= stats["pairs_evaluated"] < 0.2 * B * N
    assert stats["list_length"] > 0 and min(stats["dims"]) > 1
    assert abs(stats["pairs_estimate"] - stats["pairs_evaluated"]) < 0.2 * stats["pairs_evaluated"]
    # without a cutoff, no plan is asked for
    with pytest.raises(ValueError):
        gaussfield.culling_stats(x, means, cov, w, cutoff=None)


# ---- reproducibility ----------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [None, 4])
def test_bitwise_reproducible(monkeypatch, device, channels):
    x, means, cov, w = make_inputs(4000, 500, "full", torch.float32, device, seed=8)
    if channels:
        w = w[:, None].repeat(1, channels) * torch.linspace(-1, 1, channels, device=device)
    grad_out = grad_out_like(x.shape[0], channels, torch.float32, device)
    runs = [run("always", monkeypatch, fr.ours, x, means, cov, w, grad_out, cutoff=4.0) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_independent(monkeypatch, dtype):
    x, means, cov, w = make_inputs(5000, 600, "full", dtype, "cpu", seed=9)
    grad_out = grad_out_like(x.shape[0], None, dtype, "cpu")
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run("always", monkeypatch, fr.ours, x, means, cov, w, grad_out, cutoff=3.0))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---- sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_beyond_2_31_pairs(monkeypatch, device):
    """B x N = 2^32 pairs with small Gaussians: the culled path's rows and Gaussians agree
    with dense runs on a slice of the points (against every Gaussian) and on a slice of the
    Gaussians (against every point): a Gaussian's gradient depends on the points alone, a
    point's on the Gaussians alone."""
    B, N, k = 1 << 17, 1 << 15, 3.0
    g = torch.Generator().manual_seed(11)
    means = 10 * torch.rand(N, 3, generator=g)
    cov = torch.log(torch.full((N, 3), 0.02))
    w = torch.randn(N, generator=g)
    x = means[torch.randint(0, N, (B,), generator=g)] + 0.03 * torch.randn(B, 3, generator=g)
    grad_out = torch.randn(B, generator=g)
    ins = [t.to(device) for t in (x, means, cov, w, grad_out)]
    culled = run("always", monkeypatch, fr.ours, *ins, cutoff=k)
    assert culled[0].abs().max() > 0.1
    rows = torch.arange(0, B, 97, device=device)
    dense_rows = run("never", monkeypatch, fr.ours, ins[0][rows], *ins[1:4], ins[4][rows], cutoff=k)
    for a, b in zip(culled[:2], dense_rows[:2]):
        assert fr.norm_rel(a[rows], b) < 1e-5
    cols = torch.arange(0, N, 61, device=device)
    dense_cols = run("never", monkeypatch, fr.ours, ins[0], ins[1][cols], ins[2][cols],
                     ins[3][cols], ins[4], cutoff=k)
    for a, b in zip(culled[2:], dense_cols[2:]):
        assert fr.norm_rel(a[cols], b) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("B, N", [(0, 5), (7, 0), (0, 0)])
def test_empty_inputs(monkeypatch, device, channels, B, N):
    x, means, cov, w = make_inputs(B, N, "full", torch.float32, device, seed=1)
    if channels:
        w = w[:, None].repeat(1, channels)
    grad_out = grad_out_like(B, channels, torch.float32, device)
    culled, dense = both(monkeypatch, x, means, cov, w, grad_out, 3.0)
    for a, b in zip(culled, dense):
        assert torch.equal(a, b)


# ---- the switch and the budget ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget_mb", ["0.0001", "0.05", "1"])
def test_budget(monkeypatch, device, budget_mb):
    """A budget too small for the lists gives coarser cells, or the dense path: the same
    result either way."""
    x, means, cov, w = make_inputs(6000, 800, "full", F64, device, seed=12)
    grad_out = grad_out_like(x.shape[0], None, F64, device)
    monkeypatch.setenv("GAUSSFIELD_CULLING_BUDGET_MB", budget_mb)
    culled, dense = both(monkeypatch, x, means, cov, w, grad_out, 3.0)
    assert_same_field(culled, dense, RTOL[F64], f"budget {budget_mb}")


@requires_cuda
def test_default_budget_grows_with_the_field_cuda(monkeypatch):
    """The default budget grows with B + N: a field of 1.2 x 10^7 Gaussians (the
    notebook's initial sizes, cutoff 6), whose CUDA workspace (records, offsets and cell
    lists: about 1.4 GB) passes a fixed 1 GiB, still takes the culled path (its kernels
    run), with the dense path's result.  Under a fixed 1 GiB cap the cells coarsened to
    one and auto fell back to all 7.9 x 10^11 pairs."""
    monkeypatch.delenv("GAUSSFIELD_CULLING_BUDGET_MB", raising=False)
    free, _ = torch.cuda.mem_get_info()
    if free < 8 << 30:
        pytest.skip("needs 8 GiB of free GPU memory")
    B, N, k = 2**16, 12_000_000, 6.0
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.rand(B, 3, device="cuda", generator=g) * 10
    means = torch.rand(N, 3, device="cuda", generator=g) * 10
    cov = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], device="cuda") * math.log(10 / N ** (1 / 3))
    cov = cov.expand(N, 6).contiguous()
    w = torch.randn(N, device="cuda", generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        auto = gaussfield.gaussian_field(x, means, cov, w, cutoff=k)
        torch.cuda.synchronize()
    kernels = {e.key for e in prof.key_averages()}
    assert any("fill_kernel" in name for name in kernels), sorted(kernels)[:20]
    dense = run("never", monkeypatch, gaussfield.gaussian_field, x, means, cov, w, cutoff=k)
    assert fr.norm_rel(auto.double(), dense.double()) <= RTOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
def test_auto_matches_dense(monkeypatch, device):
    """auto (the default) gives the dense path's field on a small problem, a large local
    one and one whose Gaussians cover everything."""
    for B, N, scale in [(500, 1000, None), (20000, 2000, None), (5000, 1000, 100.0)]:
        x, means, cov, w = make_inputs(B, N, "diag", F64, device, seed=B)
        if scale:
            cov = torch.full_like(cov, math.log(scale))
        grad_out = grad_out_like(B, None, F64, device)
        auto = fr.ours(x, means, cov, w, grad_out, cutoff=3.0)
        dense = run("never", monkeypatch, fr.ours, x, means, cov, w, grad_out, cutoff=3.0)
        assert_same_field(auto, dense, RTOL[F64], f"B={B} N={N}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("var, value", [("GAUSSFIELD_CULLING", "sometimes"),
                                        ("GAUSSFIELD_CULLING", "ALWAYS"),
                                        ("GAUSSFIELD_CULLING_BUDGET_MB", "-1"),
                                        ("GAUSSFIELD_CULLING_BUDGET_MB", "lots"),
                                        ("GAUSSFIELD_CULLING_POINTS_PER_CELL", "0"),
                                        ("GAUSSFIELD_CULLING_POINTS_PER_CELL", "many")])
def test_bad_settings_raise(monkeypatch, device, var, value):
    x, means, cov, w = make_inputs(100, 10, "full", torch.float32, device, seed=1)
    monkeypatch.setenv(var, value)
    if var != "GAUSSFIELD_CULLING":
        monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    with pytest.raises(RuntimeError, match=var):
        gaussfield.gaussian_field(x, means, cov, w, cutoff=3.0)


def test_without_cutoff_the_switch_changes_nothing(monkeypatch):
    x, means, cov, w = make_inputs(300, 40, "full", F64, "cpu", seed=2)
    a = run("always", monkeypatch, gaussfield.gaussian_field, x, means, cov, w)
    b = run("never", monkeypatch, gaussfield.gaussian_field, x, means, cov, w)
    assert torch.equal(a, b)


# ---- CUDA graphs ------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("culling", ["auto", "always"])
def test_cuda_graph_capture(monkeypatch, culling):
    """Nothing of the culled path waits on the host: under capture both switches give the
    eager call's bits (the plan, its path and its lists stay on the device)."""
    x, means, cov, w = make_inputs(200_000, 3000, "full", torch.float32, "cuda", seed=3)
    eager = run(culling, monkeypatch, gaussfield.gaussian_field, x, means, cov, w, cutoff=3.0)
    monkeypatch.setenv("GAUSSFIELD_CULLING", culling)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        gaussfield.gaussian_field(x, means, cov, w, cutoff=3.0)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gaussfield.gaussian_field(x, means, cov, w, cutoff=3.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_cell", ["20", "128", "700"])
def test_points_block_shape_does_not_change_bits_cuda(monkeypatch, dtype, per_cell):
    """The culled points kernel in blocks of one warp (eight slots a thread) and of four
    warps (two): every point adds its cell's records in list order either way, so the
    forward and the gradient to the points are the same bits (and the Gaussians' gradients
    too); cells of under 32, of 32 to 256 (1 to 8 slots) and of several chunks."""
    monkeypatch.setenv("GAUSSFIELD_CULLING_POINTS_PER_CELL", per_cell)
    x, means, cov, w = make_inputs(5000, 300, "full", dtype, "cuda", seed=5)
    grad_out = grad_out_like(x.shape[0], None, dtype, "cuda")
    got = {}
    for warps in ("1", "4"):
        monkeypatch.setenv("GAUSSFIELD_CUDA_CONFIG", f"cull_warps={warps}")
        got[warps] = run("always", monkeypatch, fr.ours, x, means, cov, w, grad_out, cutoff=3.0)
    monkeypatch.delenv("GAUSSFIELD_CUDA_CONFIG")
    for name, a, b in zip(fr.NAMES, got["1"], got["4"]):
        assert torch.equal(a, b), f"{name}: one warp and four warps differ"
    dense = run("never", monkeypatch, fr.ours, x, means, cov, w, grad_out, cutoff=3.0)
    assert_same_field(got["1"], dense, RTOL[dtype], f"per_cell={per_cell}")


def test_culling_stats_reads_the_points_per_cell_override(monkeypatch):
    """culling_stats describes the plan the op builds, so it takes the op's override of
    the points per cell (it used the device's default whatever the variable said)."""
    x, means, cov, w = make_inputs(20_000, 300, "full", torch.float32, "cpu", seed=3)
    monkeypatch.delenv("GAUSSFIELD_CULLING_POINTS_PER_CELL", raising=False)
    default = gaussfield.culling_stats(x, means, cov, w, cutoff=3.0)
    monkeypatch.setenv("GAUSSFIELD_CULLING_POINTS_PER_CELL", "8")
    fine = gaussfield.culling_stats(x, means, cov, w, cutoff=3.0)
    assert math.prod(fine["dims"]) > math.prod(default["dims"]), (fine["dims"], default["dims"])
    assert fine["pairs_evaluated"] < default["pairs_evaluated"]
    monkeypatch.setenv("GAUSSFIELD_CULLING_POINTS_PER_CELL", "0.5")
    with pytest.raises(ValueError, match="GAUSSFIELD_CULLING_POINTS_PER_CELL"):
        gaussfield.culling_stats(x, means, cov, w, cutoff=3.0)
