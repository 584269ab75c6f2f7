# SPDX-License-Identifier: Apache-2.0
"""Several processes: Gaussian sharding (gaussfield.distributed) and data parallel (DDP),
two ranks on gloo on the CPU, against one process.

Each multi-process check runs real processes under torchrun (``--standalone``: a free
port of its own): this file itself is the worker script of the helper checks (see
``_worker`` at the bottom), and ``examples/train_distributed.py`` is run as a user runs
it.  Everything is float64, so that rounding differences are ~1e-16 and any real error
(a gradient counted K times, a shard misplaced, points drawn differently) stands out by
many orders of magnitude.

What is bitwise and what is not: the op sums a point's terms over its Gaussians, and a
Gaussian's gradient over the points, each in a fixed order.  So where the same terms are
summed in the same order the results are bitwise equal: each shard's Gaussian gradients
for a given d loss / d field (they do not depend on the other shards), a point's value
from the whole field (ddp), the initial field, every rank's copy of the summed field.
Where K partial sums are added instead of one sum (the all-reduce of the partial fields
in shard mode, of the half-batch gradients in ddp mode) the results differ from one
process by rounding, and training carries that on: compared with a relative tolerance.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import gaussfield
from gaussfield.distributed import (ShardedGaussianField, all_reduce_sum, gather_state_dict,
                                    shard_bounds, shard_state_dict, sharded_gaussian_field, shutdown)

# the checks of several processes; those of one process run on any build
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build of torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
WORLD = 2
N, B, C = 13, 40, 2  # 13 Gaussians: shards of 7 and 6, uneven on purpose

# Training comparisons, float64: the K-process and one-process runs differ per step by a
# few units of rounding (1.1e-16) in the sums that the reduction orders split differently,
# and 20 SGD steps at the example's rate amplify that by little (measured: 3e-16 relative
# after 20 steps).  1e-12 leaves four orders of margin, while a gradient counted twice
# changes the second step's loss by O(1).
TRAIN_RTOL = 1e-12
# one evaluation (no training): a few roundings of sums of ~N or ~B terms
ONE_STEP_RTOL = 1e-13


def _env():
    # one thread per process: two ranks on two cores; gaussfield's results do not depend
    # on the thread count
    return dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(nproc, *args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- one process: the pieces, without communication ---------------------------------

def test_shard_bounds_are_contiguous_near_equal_and_cover_the_field():
    for n in range(1, 30):
        for k in range(1, n + 1):
            bounds = [shard_bounds(n, k, r) for r in range(k)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_bounds_reject_bad_input():
    with pytest.raises(ValueError, match="at least one Gaussian per rank: 3 Gaussians cannot be split over 4"):
        shard_bounds(3, 4, 0)
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        shard_bounds(3, 0, 0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        shard_bounds(3, 2, 2)
    with pytest.raises(TypeError, match="num_gaussians must be an integer"):
        shard_bounds(3.0, 2, 0)


def test_shard_and_gather_state_dicts_round_trip_without_a_process_group():
    torch.manual_seed(0)
    state = gaussfield.GaussianField(N).state_dict()
    shards = [shard_state_dict(state, rank=r, world_size=3) for r in range(3)]
    for name, tensor in state.items():
        assert torch.equal(torch.cat([s[name] for s in shards]), tensor)
    assert [len(s["means"]) for s in shards] == [5, 4, 4]
    # without a process group this process is rank 0 of 1: the whole field
    whole = gather_state_dict(shard_state_dict(state), num_gaussians=N)
    assert all(torch.equal(whole[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="give both rank and world_size"):
        shard_state_dict(state, rank=0)
    with pytest.raises(ValueError, match="same number of Gaussians"):
        shard_state_dict({"means": state["means"], "weights": state["weights"][:-1]})


def test_one_process_sharded_field_is_the_field_bit_for_bit():
    torch.manual_seed(1)
    field = gaussfield.GaussianField(N, cutoff=4.0).double()
    sharded = ShardedGaussianField.from_field(field)
    assert sharded.cutoff == 4.0 and (sharded.shard_start, sharded.shard_stop) == (0, N)
    x = torch.rand(B, 3, dtype=torch.float64) * 10
    f, fs = field(x), sharded(x)
    assert torch.equal(f, fs)
    f.square().sum().backward()
    fs.square().sum().backward()
    for p, q in zip(field.parameters(), sharded.parameters()):
        assert torch.equal(p.grad, q.grad)
    partial = torch.randn(3)
    assert all_reduce_sum(partial) is partial


def test_without_torch_distributed_it_is_one_rank(monkeypatch):
    """A build of torch without torch.distributed has no process group: one rank of one,
    and a clear error where a group is asked for."""
    monkeypatch.setattr(dist, "is_available", lambda: False)
    torch.manual_seed(0)
    field = gaussfield.GaussianField(N).double()
    x = torch.rand(B, 3, dtype=torch.float64) * 10
    assert torch.equal(ShardedGaussianField.from_field(field)(x), field(x))
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        all_reduce_sum(x, group=object())


def test_sharded_module_rejects_bad_shards():
    torch.manual_seed(0)
    state = gaussfield.GaussianField(N).state_dict()
    with pytest.raises(ValueError, match="one of 'cov_tril'"):
        ShardedGaussianField({"means": state["means"], "weights": state["weights"]}, num_gaussians=N)
    with pytest.raises(ValueError, match="should hold Gaussians 0:14 of 14"):
        ShardedGaussianField(state, num_gaussians=N + 1)
    with pytest.raises(ValueError, match=r"shard\['log_scales'\] must have shape \[n, 3\]"):
        ShardedGaussianField({"means": state["means"], "log_scales": state["cov_tril"],
                              "weights": state["weights"]}, num_gaussians=N)


# ---- two ranks: the helpers and DDP, one torchrun for all the checks ----------------

def _inputs():
    """The field and data that the workers and the one-process references share."""
    torch.manual_seed(0)
    field = gaussfield.GaussianField(N).double()  # full covariance
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, generator=g, dtype=torch.float64) * 10
    grad_out = torch.randn(B, generator=g, dtype=torch.float64)  # d loss / d field of a linear loss
    target = torch.rand(B, generator=g, dtype=torch.float64)
    diag = {"means": torch.rand(N, 3, generator=g, dtype=torch.float64) * 10,
            "log_scales": 0.3 * torch.randn(N, 3, generator=g, dtype=torch.float64),
            "weights": torch.randn(N, C, generator=g, dtype=torch.float64)}
    grad_out_c = torch.randn(B, C, generator=g, dtype=torch.float64)
    return field, x, grad_out, target, diag, grad_out_c


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def _worker(out):
    """One rank of the helper checks (run by torchrun): results into out/rank<r>.pt."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    field, x, grad_out, target, diag, grad_out_c = _inputs()
    res = {"bounds": shard_bounds(N, world, rank)}

    sharded = ShardedGaussianField.from_field(field)
    res["initial"] = sharded.gather_state_dict()
    total = sharded(x)
    res["total"] = total.detach()
    (total * grad_out).sum().backward()
    res["grad_linear"] = _grads(sharded)

    sharded.zero_grad()
    F.mse_loss(sharded(x), target).backward()
    res["grad_mse"] = _grads(sharded)

    # the points' gradient: one part per shard, summed over the ranks in the backward
    xg = x.clone().requires_grad_()
    (sharded(xg) * grad_out).sum().backward()
    res["grad_x"] = xg.grad

    # diagonal covariance and channels, through the functional form
    start, stop = res["bounds"]
    shard = {k: v[start:stop].clone().requires_grad_() for k, v in diag.items()}
    total_c = sharded_gaussian_field(x, shard["means"], shard["log_scales"], shard["weights"])
    (total_c * grad_out_c).sum().backward()
    res["total_c"] = total_c.detach()
    res["grad_c"] = {k: v.grad for k, v in shard.items()}

    # torch.compile traces the all-reduce and its identity backward without a break
    sharded.zero_grad()
    compiled = torch.compile(sharded, fullgraph=True)
    (compiled(x) * grad_out).sum().backward()
    res["grad_compiled"] = _grads(sharded)

    # data parallel: each rank the whole field and its half of the points
    ddp = torch.nn.parallel.DistributedDataParallel(field)
    lo, hi = B * rank // world, B * (rank + 1) // world
    pred = ddp(x[lo:hi])
    res["ddp_pred"] = pred.detach()
    # DDP averages over the ranks: K / B makes that the gradient of the mean over B
    ((pred - target[lo:hi]).square().sum() * world / B).backward()
    res["ddp_grad"] = _grads(ddp.module)

    torch.save(res, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    _torchrun(WORLD, Path(__file__), out)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    field, x, grad_out, target, diag, grad_out_c = _inputs()
    ref = {"initial": {k: v.detach().clone() for k, v in field.state_dict().items()}}
    f = field(x)
    ref["total"] = f.detach()
    (f * grad_out).sum().backward()
    ref["grad_linear"] = _grads(field)
    field.zero_grad()
    F.mse_loss(field(x), target).backward()
    ref["grad_mse"] = _grads(field)
    xg = x.clone().requires_grad_()
    (field(xg) * grad_out).sum().backward()
    ref["grad_x"] = xg.grad
    full = {k: v.clone().requires_grad_() for k, v in diag.items()}
    total_c = gaussfield.gaussian_field(x, full["means"], full["log_scales"], full["weights"])
    (total_c * grad_out_c).sum().backward()
    ref["total_c"] = total_c.detach()
    ref["grad_c"] = {k: v.grad for k, v in full.items()}
    return ref


@needs_gloo
def test_every_rank_gets_the_same_summed_field(ranks, one_process):
    for key in ("total", "total_c"):
        assert torch.equal(ranks[0][key], ranks[1][key])  # so every rank computes the same loss
        assert _max_rel(ranks[0][key], one_process[key]) < ONE_STEP_RTOL


@needs_gloo
def test_same_seed_same_initial_field_on_every_rank(ranks, one_process):
    for r in ranks:
        assert r["initial"].keys() == one_process["initial"].keys()
        for name, tensor in one_process["initial"].items():
            assert torch.equal(r["initial"][name], tensor) and r["initial"][name].dtype == tensor.dtype


@needs_gloo
def test_each_shard_gets_the_one_process_gradient_once(ranks, one_process):
    """For a given d loss / d field (a linear loss) a shard's gradient is bitwise the
    slice of the one-process gradient: not twice it, as a summed backward would give."""
    for r in ranks:
        start, stop = r["bounds"]
        for name, grad in one_process["grad_linear"].items():
            assert torch.equal(r["grad_linear"][name], grad[start:stop]), name
            assert torch.equal(r["grad_compiled"][name], grad[start:stop]), name
        for name, grad in one_process["grad_c"].items():
            assert torch.equal(r["grad_c"][name], grad[start:stop]), name
    assert [r["bounds"] for r in ranks] == [(0, 7), (7, 13)]


@needs_gloo
def test_shard_gradient_of_the_mse_loss(ranks, one_process):
    """The MSE's d loss / d field is computed from the summed field, which differs from
    one process's by rounding: the gradients agree to rounding, ratio 1 (not K)."""
    for r in ranks:
        start, stop = r["bounds"]
        for name, grad in one_process["grad_mse"].items():
            assert _max_rel(r["grad_mse"][name], grad[start:stop]) < ONE_STEP_RTOL, name


@needs_gloo
def test_points_gradient_is_summed_over_the_shards(ranks, one_process):
    assert torch.equal(ranks[0]["grad_x"], ranks[1]["grad_x"])
    assert _max_rel(ranks[0]["grad_x"], one_process["grad_x"]) < ONE_STEP_RTOL


@needs_gloo
def test_ddp_over_the_op(ranks, one_process):
    """Each rank's field at its points is bitwise the one-process field there, and DDP's
    averaged gradient is the one-process gradient of the mean over all the points."""
    assert torch.equal(torch.cat([r["ddp_pred"] for r in ranks]), one_process["total"])
    for name, grad in one_process["grad_mse"].items():
        assert torch.equal(ranks[0]["ddp_grad"][name], ranks[1]["ddp_grad"][name])
        assert _max_rel(ranks[0]["ddp_grad"][name], grad) < ONE_STEP_RTOL, name


# ---- the example, as users run it: two ranks against one process -------------------

SMALL = ["--device", "cpu", "--dtype", "float64", "--optimizer", "sgd", "--gaussians", "24",
         "--batch", "256", "--steps", "20", "--grid", "8", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    script = EXAMPLES / "train_distributed.py"
    proc = subprocess.run([sys.executable, str(script), *SMALL, "--out", str(out / "one")],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for mode in ("ddp", "shard"):
        _torchrun(WORLD, script, *SMALL, "--mode", mode, "--out", out / mode)
    return {run: (json.loads((out / run / "losses.json").read_text()),
                  torch.load(out / run / "field.pt"),
                  json.loads((out / run / "run.json").read_text()))
            for run in ("one", "ddp", "shard")}


@needs_gloo
@pytest.mark.parametrize("mode", ["ddp", "shard"])
def test_two_ranks_train_as_one_process(example_runs, mode):
    losses, field, summary = example_runs[mode]
    ref_losses, ref_field, _ = example_runs["one"]
    assert summary["world_size"] == WORLD and summary["backend"] == "gloo"
    assert summary["args"]["mode"] == mode
    assert len(losses) == len(ref_losses) == 20
    assert ref_losses[-1] < 0.2 * ref_losses[0]  # it trains
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=TRAIN_RTOL, atol=0)
    assert field.keys() == ref_field.keys()
    for name, tensor in ref_field.items():
        assert field[name].dtype == tensor.dtype
        assert _max_rel(field[name], tensor) < TRAIN_RTOL, name


def test_one_process_run_is_train_end_to_end(tmp_path):
    """The same model, target, points and loss as examples/train_end_to_end.py: its
    fused run and a one-process run of this example give the same Adam loss curve
    (observed bit for bit; asserted to float64 rounding)."""
    common = ["--device", "cpu", "--dtype", "float64", "--gaussians", "24", "--batch", "256",
              "--steps", "10", "--grid", "8", "--seed", "3", "--quiet"]
    for script, extra in (("train_end_to_end.py", ["--impl", "fused"]),
                          ("train_distributed.py", ["--optimizer", "adam", "--lr", "0.01"])):
        proc = subprocess.run([sys.executable, str(EXAMPLES / script), *common, *extra,
                               "--out", str(tmp_path / script)],
                              capture_output=True, text=True, timeout=300, env=_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = (tmp_path / "train_end_to_end.py").glob("*.json")
    end_to_end = json.loads(summary.read_text())["losses"]
    distributed = json.loads((tmp_path / "train_distributed.py" / "losses.json").read_text())
    torch.testing.assert_close(torch.tensor(distributed), torch.tensor(end_to_end), rtol=TRAIN_RTOL, atol=0)


def test_example_rejects_bad_arguments(capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_distributed
    finally:
        sys.path.remove(str(EXAMPLES))
    base = ["--device", "cpu", "--out", "unused"]
    with pytest.raises(SystemExit):
        train_distributed.parse_args(base + ["--mode", "both"])
    assert "invalid choice: 'both'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_distributed.parse_args(base + ["--mode", "shard", "--gaussians", "3"], world_size=4)
    assert "--gaussians 3 is fewer than the 4 ranks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_distributed.parse_args(base + ["--batch", "1"], world_size=2)
    assert "--batch 1 is fewer than the 2 ranks" in capsys.readouterr().err
    args = train_distributed.parse_args(base + ["--optimizer", "sgd", "--gaussians", "4000"])
    assert args.lr == pytest.approx(6.0) and args.mode == "ddp" and args.cutoff is None


if __name__ == "__main__":
    _worker(sys.argv[1])
    shutdown()  # the ranks leave together, as users' scripts do (gaussfield.distributed)
