# SPDX-License-Identifier: Apache-2.0
"""The culling's structure and the culled pair of ops (issue 19): the cell test drops only
exact zeros (the culled forward is the dense forward bit for bit on the CPU, where both
sum each point's Gaussians in index order), on adversarial fields; the backward through
the forward's structure is the re-planning backward bit for bit; the structure's size is
what the fakes say; the private ops pass opcheck and compile; a captured culled step
equals the eager one (CUDA)."""
import math

import pytest
import torch

import gaussfield
from gaussfield.autograd import _structure_bytes
from conftest import DEVICES, DTYPES, requires_cuda

F64 = torch.float64


def rotations(n, g):
    q = torch.randn(n, 4, generator=g, dtype=F64)
    return q / q.norm(dim=1, keepdim=True)


def field(kind, B, N, seed=0):
    """Points and Gaussians [N, 7] (quaternion, log-scales) of one adversarial kind."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, generator=g, dtype=F64) * 10
    means = torch.rand(N, 3, generator=g, dtype=F64) * 10
    base = math.log(10 / N ** (1 / 3))
    s = torch.full((N, 3), base, dtype=F64) + 0.3 * torch.randn(N, 3, generator=g, dtype=F64)
    if kind == "needles":          # 1000:1, rotated
        s[:, 1:] += math.log(1e-3) + 0.5 * math.log(N ** (1 / 3))
        s[:, 0] += 1.5
    elif kind == "mixed":          # tiny and huge beside each other
        s[::2] += math.log(1e-3)
        s[1::7] += math.log(30.0)
    elif kind == "one_cell":       # every point in one spot
        x = means[0] + 1e-3 * torch.rand(B, 3, generator=g, dtype=F64)
    elif kind == "empty_cells":    # points on two planes: most cells empty
        x[:, 2] = torch.where(torch.rand(B, generator=g) < 0.5, 1.0, 9.0).to(F64)
    elif kind == "nonfinite":
        x[[3, 17]] = float("nan")
        means[5] = float("inf")
    cov = torch.cat([rotations(N, g), s], dim=1)
    w = torch.randn(N, generator=g, dtype=F64)
    go = torch.randn(B, generator=g, dtype=F64)
    return x, means, cov, w, go


KINDS = ["needles", "mixed", "one_cell", "empty_cells", "nonfinite"]


def with_culling(monkeypatch, mode, fn):
    monkeypatch.setenv("GAUSSFIELD_CULLING", mode)
    try:
        return fn()
    finally:
        monkeypatch.delenv("GAUSSFIELD_CULLING")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1.5, 3.0, 6.0])
def test_cpu_culled_forward_is_dense_bit_for_bit(monkeypatch, dtype, kind, k):
    x, means, cov, w, _ = (t.to(dtype) for t in field(kind, 3000, 700))
    call = lambda: gaussfield.gaussian_field(x, means, cov, w, cutoff=k)  # noqa: E731
    culled = with_culling(monkeypatch, "always", call)
    dense = with_culling(monkeypatch, "never", call)
    assert torch.equal(torch.isnan(culled), torch.isnan(dense))
    fin = ~torch.isnan(dense)
    assert torch.equal(culled[fin], dense[fin]), "the cell test dropped a kept pair"
    stats = gaussfield.culling_stats(x, means, cov, w, cutoff=k)
    assert stats["pairs_evaluated"] <= x.shape[0] * means.shape[0]


def grads_of(x, means, cov, w, go, k, retain=False):
    params = [t.detach().clone().requires_grad_() for t in (x, means, cov, w)]
    f = gaussfield.gaussian_field(*params, cutoff=k)
    first = torch.autograd.grad(f, params, go, retain_graph=retain)
    if not retain:
        return first
    second = torch.autograd.grad(f, params, go)
    return first, second


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["needles", "mixed", "nonfinite"])
@pytest.mark.parametrize("culling", ["always", "auto"])
def test_backward_through_the_structure_is_the_replanning_one(monkeypatch, device, dtype, kind,
                                                               culling):
    """autograd (the culled pair: the forward's structure) against the public backward
    op (its own plan), bit for bit; and a second backward through the same graph."""
    x, means, cov, w, go = (t.to(device=device, dtype=dtype) for t in field(kind, 3000, 500))
    monkeypatch.setenv("GAUSSFIELD_CULLING", culling)
    first, second = grads_of(x, means, cov, w, go, 3.0, retain=True)
    direct = torch.ops.gaussfield.gaussian_field_backward(go, x, means, cov, w, 1e-6, 3.0,
                                                          [True] * 4)
    for a, b, c in zip(first, second, direct):
        assert torch.equal(torch.isnan(a), torch.isnan(c))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(c))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("culling", ["always", "auto", "never"])
@pytest.mark.parametrize("B,N", [(1, 1), (100, 3), (5000, 2000), (70_000, 11), (3000, 3000)])
def test_structure_size_is_the_fakes(monkeypatch, device, dtype, culling, B, N):
    """The structure's size: what the fake says, for every switch (empty where nothing is
    culled: never, or a problem too small under auto)."""
    monkeypatch.setenv("GAUSSFIELD_CULLING", culling)
    x, means, cov, w, _ = (t.to(device=device, dtype=dtype) for t in field("mixed", B, N))
    _, structure = torch.ops.gaussfield._gaussian_field_culled(x, means, cov, w, 1e-6, 3.0)
    assert structure.dtype == torch.uint8 and structure.dim() == 1
    assert structure.numel() == _structure_bytes(x, means, w, x.device.type)


def test_structure_size_follows_the_cell_setting(monkeypatch):
    x, means, cov, w, _ = field("mixed", 5000, 300)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    monkeypatch.setenv("GAUSSFIELD_CULLING_POINTS_PER_CELL", "7.5")
    _, structure = torch.ops.gaussfield._gaussian_field_culled(x, means, cov, w, 1e-6, 3.0)
    assert structure.numel() == _structure_bytes(x, means, w, "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_culled_pair_opcheck(monkeypatch, device):
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    x, means, cov, w, go = (t.to(device) for t in field("needles", 600, 90))
    torch.library.opcheck(torch.ops.gaussfield._gaussian_field_culled.default,
                          (x, means, cov, w, 1e-6, 3.0))
    _, structure = torch.ops.gaussfield._gaussian_field_culled(x, means, cov, w, 1e-6, 3.0)
    torch.library.opcheck(torch.ops.gaussfield._gaussian_field_culled_backward.default,
                          (go, x, means, cov, w, 1e-6, 3.0, structure, [True] * 4))


def test_a_wrong_structure_is_refused():
    x, means, cov, w, go = field("mixed", 600, 90)
    with pytest.raises(RuntimeError, match="structure must be the culling structure"):
        torch.ops.gaussfield._gaussian_field_culled_backward(
            go, x, means, cov, w, 1e-6, 3.0, torch.zeros(10, dtype=torch.uint8), [True] * 4)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_culled_step_equals_eager(monkeypatch, device):
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    x, means, cov, w, go = (t.to(device=device, dtype=torch.float32)
                            for t in field("mixed", 4000, 600))

    def step(m, c, ww):
        return (gaussfield.gaussian_field(x, m, c, ww, cutoff=3.0) * go).sum()

    params = [t.clone().requires_grad_() for t in (means, cov, w)]
    eager = torch.autograd.grad(step(*params), params)
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    params = [t.clone().requires_grad_() for t in (means, cov, w)]
    got = torch.autograd.grad(compiled(*params), params)
    for a, b in zip(got, eager):
        assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("culling", ["auto", "always"])
def test_captured_culled_step_equals_eager(monkeypatch, culling):
    """A culled training step (forward, loss, backward) in one CUDA graph, replayed, gives
    the eager step's bits; the graph is captured before the field moves and replayed after
    (the structure is rebuilt on the device at every replay)."""
    monkeypatch.setenv("GAUSSFIELD_CULLING", culling)
    x, means, cov, w, go = (t.to(device="cuda", dtype=torch.float32)
                            for t in field("mixed", 200_000, 20_000))
    params = [t.clone().requires_grad_() for t in (means, cov, w)]

    def step():
        for p in params:
            p.grad = None
        (gaussfield.gaussian_field(x, *params, cutoff=3.0) * go).sum().backward()
        return [p.grad for p in params]

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        params[0].add_(0.05)  # move the field: the plan must follow on the device
    graph.replay()
    torch.cuda.synchronize()
    replayed = [g.clone() for g in captured]
    eager = step()
    for a, b in zip(replayed, eager):
        assert torch.equal(a, b)
