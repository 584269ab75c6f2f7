# SPDX-License-Identifier: Apache-2.0
"""The culling issue's speed goals, measured: gaussfield's culled cutoff op against its
dense masked path and against KeOps, per case, in one run on one device.

Peers (same float32 parameters, the notebook's class and state_dict, cutoff k = 6):

  gaussfield    FastLearnableGaussianField.forward = gaussfield.fused_forward with
                model.cutoff = 6, GAUSSFIELD_CULLING=auto (the op picks its path)
  dense         the same with GAUSSFIELD_CULLING=never (the dense kernels, masked)
  keops_dense   KeOps, one dense LazyTensor reduction with a step on k^2 - q
                (benchmarks/keops_peer.py)
  keops_sparse  KeOps's block-sparse reduction as its documentation sets it up (grid
                clusters of 0.5, blocks kept within the clusters' radii plus the
                Gaussians' k-sigma extent; keops_peer.py), the clustering and ranges
                computed at every call (a training step must: the means move)
  keops_sparse_planned  the same with the clustering and ranges computed once, before
                the timed calls (the reduction alone; exact here because the timed
                calls repeat one step on one batch without moving the means)

The KeOps peers run where pykeops imports (on the GPU machine: carry its wheels, see
benchmarks/gpu_session.sh's `cull` stage); KeOps compiles its kernels at first use,
which the warm-up calls absorb.

"fwd" is a forward under no_grad; "train" is zero_grad + forward + MSE loss + backward
to every parameter.  Timing and memory are benchmarks/bench.py's (its Meter: two calls
first, then the median of as many calls as fit in about a second, 3 to 50, CUDA events
on a GPU; peak extra memory over the calls).  A KeOps peer whose time per call, predicted
from a probe on a slice of the points, passes --max-call-s is "not run" (the prediction
is written down); gaussfield and dense always run.

Per case, where the build has gaussfield.culling_stats: the pairs the culled path
evaluates, the pairs that pass the test q <= k^2 (counted exactly, in float64 on the
device, over a grid of cells: only pairs within each Gaussian's k sigma_max reach the
test), and their ratio (how tight the culling is); the same for KeOps's kept blocks.
The op decides the test in float32: its own count may differ from this one by the
pairs within rounding of the boundary.

Cases (GPU; the sizes and goals of the issue; `notebook` = FastLearnableGaussianField(N)'s
initialisation, points uniform in [0, 10]^3):

  big      B = 10^6,    N = 10^5, notebook: forward <= 1.9 ms, train <= 4.4 ms
  mid      B = 131,072, N = 30,000, notebook: forward <= 0.42 ms, train <= 0.8 ms
  giant    B = 10^5,    N = 10^4, every Gaussian ten times the volume (sigma = 100):
           culling cannot pay; gaussfield within 15 % of dense
  small    B = 500,     N = 1,000, notebook: within 15 % of dense
  trained  the training example's field (--trained, a state_dict saved by
           examples/train_end_to_end.py --save; benchmarks/results/trained-field.pt is the
           one measured), B = 2^18 points: forward <= 0.43 ms, train <= 0.82 ms
  aniso    B = 2^20, N = 10^5, k = 3: means U(0,10)^3, quaternions N(0,1)^4, log-scales
           log(10/N^(1/3)) + 0.6 N(0,1) per axis
  sheets   B = 2^20, N = 10^5, k = 3: means on a sphere of radius 4 about (5,5,5), tangent
           scale 4*10/sqrt(N), normal scale 1/8 of it, log-scales + 0.2 N(0,1): most of the
           volume empty
  tiny     B = 10^6, N = 10^7, k = 3: isotropic, scale 10/N^(1/3) (N >> B: a 3DGS scene
           queried at points)
  grid     the aniso field (N = 10^5, k = 3) at the 256^3 voxel centres of [0, 10]^3
  The culling issue's goals for these four: forward <= 3x its limit + the sort floor,
  train <= 3x its limit; tiny: reported.  A case's limit (its "limits" entry): its pairs
  that pass q <= k^2 (counted on 4096 sampled points in float64, scaled to B) at the
  dense kernels' pair rate measured in the same run (forward, and forward + backward to
  the Gaussians), plus the bytes it must read and write at 4.3 TB/s; the sort floor: a
  CUB radix sort of B (key, index) pairs (torch.sort), timed in the same run.
CPU (--threads, 2 by default):
  big      B = 10^5, N = 3 x 10^4, notebook: train >= 10x faster than dense
  giant    B = 2 x 10^4, N = 5,000, sigma = 100: within 15 % of dense
  small    B = 500, N = 1,000: within 15 % of dense
  trained  B = 2^15

Writes cull-<device>-<date>.json and .md into --out.

    python benchmarks/bench_cull.py --out benchmarks/results
    python benchmarks/bench_cull.py --device cpu --cases small,giant --quick
"""
import argparse
import datetime as _dt
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gaussfield
from gaussfield._devices import device_name, slug
from gaussfield.notebook import FastLearnableGaussianField

from bench import Meter, _kib, cap_cpu_memory, fmt_mib, fmt_ms, is_oom
from keops_peer import KeopsBlockSparseField, KeopsBlockSparsePlannedField, KeopsDenseField, block_sparse_stats, have_keops, sigma_max, whitening

HERE = Path(__file__).resolve().parent

CUTOFF = 6.0
VOLUME = 10.0
PEERS = ["gaussfield", "dense", "keops_dense", "keops_sparse", "keops_sparse_planned"]
KINDS = ["fwd", "train"]
TOLERANCE = 1.15  # "within 15 % of the dense op"

# goal: (kind, "abs", ms) at most ms; (kind, "rel", f) at most f times dense;
# (kind, "speedup", s) dense / gaussfield at least s
CASES = {
    "cuda": {
        # the goals of the culling issue (19); "before" is where that issue started
        "big": dict(B=1_000_000, N=100_000, init="notebook",
                    goals=[("fwd", "abs", 1.9), ("train", "abs", 4.4)],
                    before="3.02 / 8.17 ms (issue 19, H200, 2026-12-01)"),
        "mid": dict(B=131_072, N=30_000, init="notebook", goals=[("fwd", "abs", 0.42), ("train", "abs", 0.8)],
                    before="0.81 / 1.91 ms (issue 19, H200, 2026-12-01)"),
        "giant": dict(B=100_000, N=10_000, init="giant",
                      goals=[("fwd", "rel", TOLERANCE), ("train", "rel", TOLERANCE)]),
        "small": dict(B=500, N=1_000, init="notebook",
                      goals=[("fwd", "rel", TOLERANCE), ("train", "rel", TOLERANCE)]),
        "trained": dict(B=2**18, N=None, init="trained", goals=[("fwd", "abs", 0.43), ("train", "abs", 0.82)]),
        "aniso": dict(B=2**20, N=100_000, init="aniso", k=3.0, goals=[("fwd", "limit", 3.0), ("train", "limit", 3.0)],
                      before="1.55 / 5.03 ms (issue 19, H200, 2026-12-01)"),
        "sheets": dict(B=2**20, N=100_000, init="sheets", k=3.0, goals=[("fwd", "limit", 3.0), ("train", "limit", 3.0)],
                       before="0.67 / 2.00 ms (issue 19, H200, 2026-12-01)"),
        "tiny": dict(B=1_000_000, N=10_000_000, init="tiny", k=3.0, goals=[],
                     before="22.4 / 99 ms (issue 19, H200, 2026-12-01)"),
        "grid": dict(B=256**3, N=100_000, init="grid", k=3.0, goals=[("fwd", "limit", 3.0), ("train", "limit", 3.0)],
                     before="10.0 / 43 ms (issue 19, H200, 2026-12-01)"),
    },
    "cpu": {
        "big": dict(B=100_000, N=30_000, init="notebook", goals=[("train", "speedup", 10.0)]),
        "giant": dict(B=20_000, N=5_000, init="giant",
                      goals=[("fwd", "rel", TOLERANCE), ("train", "rel", TOLERANCE)]),
        "small": dict(B=500, N=1_000, init="notebook",
                      goals=[("fwd", "rel", TOLERANCE), ("train", "rel", TOLERANCE)]),
        "trained": dict(B=2**15, N=None, init="trained", goals=[]),
    },
}
GIANT_SIGMA = 10 * VOLUME  # "every Gaussian ten times the volume's size"


class Fused(FastLearnableGaussianField):
    forward = gaussfield.fused_forward


MODEL = {"gaussfield": Fused, "dense": Fused, "keops_dense": KeopsDenseField,
         "keops_sparse": KeopsBlockSparseField, "keops_sparse_planned": KeopsBlockSparsePlannedField}
CULLING = {"gaussfield": "auto", "dense": "never"}  # GAUSSFIELD_CULLING, read at each call


FIELD_KINDS = ("aniso", "sheets", "tiny", "grid")


def field_kind_tensors(kind, B, N, seed):
    """(x [B, 3], means [N, 3], cov [N, 7] (quaternion, log-scales), weights [N]) of one of
    the culling issue's fields, float32 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    base = math.log(VOLUME / N ** (1 / 3))
    q = torch.randn(N, 4, generator=g)
    if kind in ("aniso", "grid"):
        means = torch.rand(N, 3, generator=g) * VOLUME
        logs = base + 0.6 * torch.randn(N, 3, generator=g)
    elif kind == "sheets":
        d = torch.randn(N, 3, generator=g)
        d = d / d.norm(dim=1, keepdim=True)
        means = 5.0 + 4.0 * d
        t = math.log(4 * VOLUME / math.sqrt(N))
        logs = torch.stack([torch.full((N,), t), torch.full((N,), t), torch.full((N,), t - math.log(8))], 1)
        logs = logs + 0.2 * torch.randn(N, 3, generator=g)
        # the rotation that takes the third axis to the sphere's normal d (q = (w, x, y, z))
        z = torch.tensor([0.0, 0.0, 1.0]).expand_as(d)
        axis = torch.cross(z, d, dim=1)
        w = 1.0 + d[:, 2]
        q = torch.cat([w[:, None], axis], 1)
        flip = w < 1e-6
        q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    elif kind == "tiny":
        means = torch.rand(N, 3, generator=g) * VOLUME
        logs = torch.full((N, 3), base)
        q = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(N, 4).clone()
    else:
        raise ValueError(kind)
    cov = torch.cat([q, logs], 1)
    weights = torch.rand(N, generator=g) * 0.9 + 0.1
    if kind == "grid":
        D = round(B ** (1 / 3))
        c = (torch.arange(D, dtype=torch.float32) + 0.5) * (VOLUME / D)
        x = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    else:
        x = torch.rand(B, 3, generator=g) * VOLUME
    return x, means, cov, weights


class FieldModel(torch.nn.Module):
    """The field of a kind as parameters, its forward the op with the case's cutoff."""

    def __init__(self, means, cov, weights, cutoff):
        super().__init__()
        self.means = torch.nn.Parameter(means.clone())
        self.cov = torch.nn.Parameter(cov.clone())
        self.weights = torch.nn.Parameter(weights.clone())
        self.cutoff = cutoff

    def forward(self, x):
        return gaussfield.gaussian_field(x, self.means, self.cov, self.weights, cutoff=self.cutoff)


@torch.no_grad()
def count_passing_sampled(x, means, cov, cutoff, samples=4096, chunk=1 << 22):
    """Pairs with q <= cutoff^2 (float64), counted exactly on `samples` points drawn
    without replacement (fixed seed) and scaled to B."""
    B = x.shape[0]
    g = torch.Generator().manual_seed(123)
    pick = torch.randperm(B, generator=g)[:min(samples, B)].to(x.device)
    xs = x[pick].double()
    M = gaussfield.frontends.whitening_factor(cov.double())
    mu = means.double()
    k2 = float(cutoff) ** 2
    passing = 0
    step = max(1, chunk // max(1, xs.shape[0]))
    for a in range(0, mu.shape[0], step):
        d = xs[:, None, :] - mu[None, a:a + step]
        u = torch.einsum("nij,bnj->bni", M[a:a + step], d)
        passing += int((u.square().sum(-1) <= k2).sum())
    return passing * B / xs.shape[0]


def field_state(case, seed, trained_path):
    """The case's state_dict (float32 means and weights, float64 cov_tril as the
    notebook's class has them), or a reason why there is none."""
    if case["init"] in FIELD_KINDS:
        x, means, cov, w = field_kind_tensors(case["init"], case["B"], case["N"], seed)
        return {"_x": x, "means": means, "cov": cov, "weights": w}, None
    if case["init"] == "trained":
        if not trained_path or not Path(trained_path).exists():
            return None, (f"no trained field at {trained_path}: run examples/train_end_to_end.py "
                          "--save PATH first (benchmarks/gpu_session.sh cull does)")
        state = torch.load(trained_path, map_location="cpu")
        return state, None
    torch.manual_seed(seed)
    state = FastLearnableGaussianField(case["N"]).state_dict()
    if case["init"] == "giant":
        state["cov_tril"][:, [0, 2, 5]] = math.log(GIANT_SIGMA)
    return state, None


def make_model(peer, state, device, cutoff=CUTOFF):
    if "cov" in state:
        return FieldModel(state["means"], state["cov"], state["weights"], cutoff).to(device)
    n = state["means"].shape[0]
    model = MODEL[peer](n, use_full_cov="cov_tril" in state).to(device)
    model.load_state_dict(state)
    model.cutoff = CUTOFF
    return model


def _params(state, device):
    if "cov" in state:
        return state["means"].to(device), state["cov"].to(device), state["weights"].to(device)
    cov = state["cov_tril"] if "cov_tril" in state else state["log_scales"]
    return state["means"].to(device), cov.to(device).to(state["means"].dtype), state["weights"].to(device)


@torch.no_grad()
def count_passing(x, means, cov, cutoff, eps=1e-6, cell=0.5, budget=2**23):
    """The number of pairs with q <= cutoff^2, exactly (float64), without visiting all
    B x N pairs: the points are binned into cubes of `cell`, and each Gaussian meets
    only the points of the cubes its sphere of radius cutoff * sigma_max touches (a
    3D prefix sum gives their number, so the work is chunked to `budget` pairs)."""
    dev = x.device
    x, mu = x.double(), means.double()
    M = whitening(cov, eps, torch.float64)
    R = cutoff * sigma_max(cov, eps) * (1 + 1e-9) + 1e-12
    lo = x.min(dim=0).values
    dims = ((x.max(dim=0).values - lo) / cell).floor().long() + 1
    D0, D1, D2 = (int(d) for d in dims)
    cidx = torch.minimum(((x - lo) / cell).floor().long().clamp_min(0), dims - 1)
    lin = (cidx[:, 0] * D1 + cidx[:, 1]) * D2 + cidx[:, 2]
    order = torch.argsort(lin)
    xs = x[order]
    counts = torch.bincount(lin, minlength=D0 * D1 * D2)
    starts = torch.cumsum(counts, 0) - counts
    S = torch.zeros(D0 + 1, D1 + 1, D2 + 1, dtype=torch.long, device=dev)
    S[1:, 1:, 1:] = counts.view(D0, D1, D2).cumsum(0).cumsum(1).cumsum(2)
    top = (dims - 1).double()
    blo_f = ((mu - R[:, None] - lo) / cell).floor()
    bhi_f = ((mu + R[:, None] - lo) / cell).floor()
    empty = ((bhi_f < 0) | (blo_f > top) | ~torch.isfinite(blo_f) | ~torch.isfinite(bhi_f)).any(dim=1)
    blo = torch.minimum(blo_f.clamp_min(0), top).nan_to_num(0).long()
    bhi = torch.minimum(bhi_f.clamp_min(0), top).nan_to_num(0).long()
    l0, l1, l2 = blo.unbind(1)
    h0, h1, h2 = (bhi + 1).unbind(1)
    cand = (S[h0, h1, h2] - S[l0, h1, h2] - S[h0, l1, h2] - S[h0, h1, l2]
            + S[l0, l1, h2] + S[l0, h1, l2] + S[h0, l1, l2] - S[l0, l1, l2])
    ext = bhi - blo + 1
    ncell = ext.prod(dim=1)
    cand[empty], ncell[empty] = 0, 0
    cum = torch.cumsum(cand + ncell, 0).cpu()
    k2 = float(cutoff) ** 2
    passing, candidates, a, N = 0, int(cand.sum()), 0, mu.shape[0]
    while a < N:
        base = int(cum[a - 1]) if a else 0
        b = max(a + 1, int(torch.searchsorted(cum, base + budget, right=True)))
        b = min(b, N)
        g = torch.arange(a, b, device=dev)
        nc = ncell[a:b]
        gi = torch.repeat_interleave(g, nc)
        if gi.numel():
            off = torch.arange(gi.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(nc, 0) - nc, nc)
            e = ext[gi]
            c2 = off % e[:, 2]
            t = off // e[:, 2]
            c1, c0 = t % e[:, 1], t // e[:, 1]
            cellid = ((blo[gi, 0] + c0) * D1 + blo[gi, 1] + c1) * D2 + blo[gi, 2] + c2
            cn = counts[cellid]
            gj = torch.repeat_interleave(gi, cn)
            if gj.numel():
                off2 = torch.arange(gj.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(cn, 0) - cn, cn)
                p = torch.repeat_interleave(starts[cellid], cn) + off2
                d = xs[p] - mu[gj]
                q = torch.einsum("pij,pj->pi", M[gj], d).square().sum(dim=1)
                passing += int((q <= k2).sum())
        a = b
    return passing, candidates


def probe_ms(call_on, B, N, device, args):
    """Predicted ms per full call, from a call on a slice of the points (None: no probe
    needed, the case is small)."""
    pairs = B * N
    limit = 2e9 if device.type == "cuda" else 2e7
    if args.quick:
        limit /= 10
    if pairs <= limit:
        return None
    Bp = max(64, int(limit // N))
    if Bp >= B:
        return None
    meter = Meter(device)

    def timed(b):
        meter.sync()
        t = time.perf_counter()
        call_on(b)
        meter.sync()
        return (time.perf_counter() - t) * 1e3

    Bp = min(Bp, B // 2)
    timed(Bp)  # compilation, first-call costs (a planned peer's plan for these points)
    t1 = timed(Bp)
    timed(2 * Bp)
    t2 = timed(2 * Bp)
    # affine in B: a fixed cost per call (the block-sparse peers' clustering of the
    # Gaussians) and a cost per point
    return max(t2, t2 + (t2 - t1) * (B - 2 * Bp) / Bp)


def measure(peer, kind, state, x, target, device, args, cutoff=CUTOFF):
    res = {"peer": peer, "kind": kind}
    old = os.environ.get("GAUSSFIELD_CULLING")
    if peer in CULLING:
        os.environ["GAUSSFIELD_CULLING"] = CULLING[peer]
    meter = Meter(device)
    model = None
    try:
        model = make_model(peer, state, device, cutoff)

        def call_on(b):
            xb, tb = x[:b], target[:b]
            if kind == "fwd":
                with torch.no_grad():
                    model(xb)
            else:
                model.zero_grad(set_to_none=True)
                F.mse_loss(model(xb), tb).backward()

        # gaussfield and its dense path always run (the goals compare them); a KeOps peer
        # predicted to take too long does not
        predicted = (probe_ms(call_on, x.shape[0], state["means"].shape[0], device, args)
                     if peer.startswith("keops") else None)
        if predicted is not None:
            res["predicted_ms"] = predicted
            if predicted > args.max_call_s * 1e3:
                res["result"] = (f"not run: about {predicted / 1e3:.3g} s per call, predicted from a "
                                 "slice of the points")
                return res
        B = x.shape[0]
        call_on(B)  # compilation and first-call costs stay out of the numbers
        call_on(B)
        meter.start_memory()
        times = meter.times_ms(lambda: call_on(B), budget_s=0.3 if args.quick else 1.0)
        res.update(ms=statistics.median(times), ms_all=times, peak_extra_MiB=meter.peak_extra_mib())
    except Exception as e:  # noqa: BLE001 -- running out of memory is a result
        if is_oom(e):
            res["result"] = "out of memory"
        elif peer.startswith("keops"):  # a peer that does not run here: say why, go on
            res["result"] = f"error: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
        else:
            raise
    finally:
        model = None
        if old is None:
            os.environ.pop("GAUSSFIELD_CULLING", None)
        else:
            os.environ["GAUSSFIELD_CULLING"] = old
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def _plain(v):
    """A statistic as JSON: tensors as lists, integral floats as ints."""
    if torch.is_tensor(v):
        v = v.tolist()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


def case_stats(state, x, device, keops_ok, cutoff=CUTOFF):
    """Pairs evaluated (gaussfield's culled path, KeOps's blocks) and pairs passing."""
    means, cov, weights = _params(state, device)
    B, N = x.shape[0], means.shape[0]
    st = {"pairs": B * N}
    t = time.perf_counter()
    try:
        if "cov" in state:
            st["pairs_passing"] = int(count_passing_sampled(x, means, cov, cutoff))
            st["pairs_passing_method"] = "4096 sampled points, float64, scaled to B"
        else:
            st["pairs_passing"], st["pairs_in_spheres_boxes"] = count_passing(x, means, cov, cutoff)
    except Exception as e:  # noqa: BLE001 -- a stat, not the benchmark
        st["count_error"] = f"{type(e).__name__}: {e}"
        print(f"  pairs passing not counted: {st['count_error'][:300]}", flush=True)
        return st
    st["count_s"] = time.perf_counter() - t
    st["passing_share_of_all"] = st["pairs_passing"] / (B * N)
    if hasattr(gaussfield, "culling_stats"):
        old = os.environ.get("GAUSSFIELD_CULLING")
        os.environ["GAUSSFIELD_CULLING"] = "auto"
        try:
            with torch.no_grad():
                cs = gaussfield.culling_stats(x, means, cov, weights, cutoff=cutoff, eps=1e-6)
            st["culling"] = {k: _plain(v) for k, v in dict(cs).items()}
            if not st["culling"]:  # no plan within the culling budget: the op runs dense
                st["culling"] = {"plan": "none within the culling budget (dense path)", "pairs_evaluated": B * N}
            ev = st["culling"].get("pairs_evaluated")
            if ev:
                st["passing_share_of_evaluated"] = st["pairs_passing"] / ev
        except Exception as e:  # noqa: BLE001 -- a stat, not the benchmark
            st["culling"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            if old is None:
                os.environ.pop("GAUSSFIELD_CULLING", None)
            else:
                os.environ["GAUSSFIELD_CULLING"] = old
    else:
        st["culling"] = {"error": "gaussfield.culling_stats is not in this build"}
    if keops_ok and "cov" not in state:
        try:
            ks = block_sparse_stats(x, means, cov, cutoff=cutoff)
            ks["passing_share_of_evaluated"] = st["pairs_passing"] / max(ks["pairs_evaluated"], 1)
            st["keops_sparse"] = ks
        except Exception as e:  # noqa: BLE001
            st["keops_sparse"] = {"error": f"{type(e).__name__}: {e}"}
    return st


def judge(case, rows, quick, limits=None):
    """The case's goals beside the measured numbers."""
    cell = {(r["peer"], r["kind"]): r for r in rows}
    out = []
    for kind, how, value in case["goals"]:
        ours, dense = cell.get(("gaussfield", kind), {}), cell.get(("dense", kind), {})
        g = {"kind": kind, "how": how, "value": value}
        if how == "limit":
            lim = (limits or {}).get(f"{kind}_ms")
            floor = (limits or {}).get("sort_floor_ms", 0.0) if kind == "fwd" else 0.0
            g["goal"] = f"{kind} <= {value:g}x its limit" + (" + the sort floor" if kind == "fwd" else "")
            g["measured"] = ours["ms"] / lim if "ms" in ours and lim else None
            g["bound_ms"] = None if lim is None else value * lim + floor
            met = g["bound_ms"] is not None and "ms" in ours and ours["ms"] <= g["bound_ms"]
        elif how == "abs":
            g["goal"] = f"{kind} <= {value:g} ms"
            g["measured"] = ours.get("ms")
            met = "ms" in ours and ours["ms"] <= value
        elif how == "rel":
            g["goal"] = f"{kind} within {100 * (value - 1):.0f} % of dense"
            g["measured"] = ours["ms"] / dense["ms"] if "ms" in ours and "ms" in dense else None
            met = g["measured"] is not None and g["measured"] <= value
        else:
            g["goal"] = f"{kind} >= {value:g}x faster than dense"
            g["measured"] = dense["ms"] / ours["ms"] if "ms" in ours and "ms" in dense else None
            met = g["measured"] is not None and g["measured"] >= value
        g["status"] = "not judged (--quick sizes)" if quick else ("met" if met else "not met")
        out.append(g)
    return out


HBM_BYTES_PER_S = 4.3e12  # the H200's achievable copy bandwidth (device README, KINDS.md)
DENSE_MAX_PAIRS = 3e11    # past this the dense peer is not run (its time follows from its rate)


def case_limits(case, state, B, N, passing, rates, sort_ms):
    """The case's limits (culling issue): passing pairs at the dense pair rates of this run
    plus the bytes a forward / train step must move at HBM bandwidth."""
    if not rates or passing is None:
        return None
    P = 7 if "cov" in state else 6
    fwd_bytes = 12 * B + 4 * B + 4 * N * (3 + P + 1)
    train_bytes = 2 * fwd_bytes + 4 * B + 4 * N * (3 + P + 1)
    return {"fwd_ms": 1e3 * (passing / rates["fwd_pairs_per_s"] + fwd_bytes / HBM_BYTES_PER_S),
            "train_ms": 1e3 * (passing / rates["train_pairs_per_s"] + train_bytes / HBM_BYTES_PER_S),
            "sort_floor_ms": sort_ms, "pairs_passing": passing, "rates": rates}


def dense_rates(device):
    """The dense path's pair rates in this run (B = 10^6, N = 2 x 10^4, no cutoff): forward
    and train step (forward + MSE + backward to the Gaussians)."""
    if device.type != "cuda":
        return None
    torch.manual_seed(0)
    B, N = 1_000_000, 20_000
    x = torch.rand(B, 3, device=device) * VOLUME
    t = torch.rand(B, device=device)
    m = FieldModel(*[a.to(device) for a in field_kind_tensors("aniso", 16, N, 0)[1:]], None)
    meter = Meter(device)

    def fwd():
        with torch.no_grad():
            m(x)

    def train():
        m.zero_grad(set_to_none=True)
        F.mse_loss(m(x), t).backward()

    out = {}
    for name, fn in (("fwd", fwd), ("train", train)):
        fn()
        ms = statistics.median(meter.times_ms(fn, budget_s=0.5))
        out[f"{name}_ms"] = ms
        out[f"{name}_pairs_per_s"] = B * N / (ms * 1e-3)
    out["at"] = f"B = {B:,}, N = {N:,}, dense, no cutoff"
    return out


def sort_floor_ms(B, device):
    """A CUB radix sort of B (cell, index) pairs (torch.sort, stable, int32 keys under
    2^15): the culled path sorts its points once a call."""
    if device.type != "cuda":
        return 0.0
    keys = torch.randint(0, 1 << 15, (B,), device=device, dtype=torch.int32)
    meter = Meter(device)
    fn = lambda: torch.sort(keys, stable=True)  # noqa: E731
    fn()
    return statistics.median(meter.times_ms(fn, budget_s=0.2))


def run_case(name, case, device, args, keops_ok):
    state, why = field_state(case, args.seed, args.trained)
    B = case["B"]
    if state is None:
        print(f"[{name}] skipped: {why}", flush=True)
        return {"case": name, "skipped": why}
    N = state["means"].shape[0]
    if args.quick:
        B, scale = max(256, B // 16), 16
        if case["init"] != "trained":
            case = dict(case, N=max(256, N // scale))
            state, _ = field_state(case, args.seed, None)
            N = case["N"]
    g = torch.Generator().manual_seed(args.seed + 1)
    if "_x" in state:
        x = state.pop("_x").to(device)
        B = x.shape[0]
    else:
        x = (torch.rand(B, 3, generator=g) * VOLUME).to(device)
    target = torch.rand(B, generator=g).to(device)
    cutoff = case.get("k", CUTOFF)
    info = {"case": name, "B": B, "N": N, "init": case["init"], "cutoff": cutoff,
            "full_cov": "cov_tril" in state, "before": case.get("before")}
    if case["init"] == "trained":
        info["trained_file"] = str(args.trained)
        means, cov, _ = _params(state, "cpu")
        sm = sigma_max(cov)
        info["field"] = {"sigma_max_median": float(sm.median()), "sigma_max_max": float(sm.max()),
                         "means_outside_volume": int(((means < 0) | (means > VOLUME)).any(1).sum())}
    print(f"[{name}] B={B:,} N={N:,} ({case['init']})", flush=True)
    rows = []
    for kind in KINDS:
        for peer in args.peers:
            if peer.startswith("keops") and (not keops_ok or "cov" in state):
                continue
            if peer == "dense" and B * N > DENSE_MAX_PAIRS:
                rows.append({"peer": peer, "kind": kind, "result": f"not run: {B * N:.2g} pairs"})
                print(f"  {kind:5s} {peer:12s} not run ({B * N:.2g} pairs)", flush=True)
                continue
            r = measure(peer, kind, state, x, target, device, args, cutoff)
            rows.append(r)
            print(f"  {kind:5s} {peer:12s} " + (r.get("result") or
                  f"{r['ms']:10.4f} ms  peak +{fmt_mib(r['peak_extra_MiB'])}"), flush=True)
    stats = case_stats(state, x, device, keops_ok, cutoff) if not args.no_stats else {}
    limits = case_limits(case, state, B, N, stats.get("pairs_passing"), args.rates,
                         sort_floor_ms(B, device))
    if limits:
        info["limits"] = limits
        print(f"  limits: forward {limits['fwd_ms']:.3f} ms, train {limits['train_ms']:.3f} ms, "
              f"sort floor {limits['sort_floor_ms']:.3f} ms", flush=True)
    if "pairs_passing" in stats:
        ev = stats.get("culling", {}).get("pairs_evaluated")
        print(f"  pairs passing {stats['pairs_passing']:,} of {B * N:,}"
              + (f"; gaussfield evaluates {ev:,} ({stats['passing_share_of_evaluated']:.1%} pass)" if ev else
                 f"; {stats['culling'].get('error', '')}")
              + (f"; KeOps blocks {stats['keops_sparse']['pairs_evaluated']:,}" if "pairs_evaluated" in
                 stats.get("keops_sparse", {}) else ""), flush=True)
    goals = judge(case, rows, args.quick, limits)
    for gl in goals:
        print(f"  goal {gl['goal']}: {gl['status']}"
              + (f" (measured {gl['measured']:.3g})" if gl["measured"] is not None else ""), flush=True)
    return dict(info, rows=rows, stats=stats, goals=goals)


def environment(device, args, keops):
    env = {"date": _dt.date.today().isoformat(), "device": device_name(device),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "cutoff": CUTOFF,
           "max_call_s": args.max_call_s, "quick": args.quick,
           "culling_stats_in_build": hasattr(gaussfield, "culling_stats"),
           "keops": keops[1] if keops[0] else f"not available ({keops[1]})"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, sm_count=p.multi_processor_count, memory_GiB=p.total_memory / 2**30)
    else:
        env["memory_cap_GiB"] = args.cpu_memory_gb
    return env


def _num(v):
    return f"{v:,}" if isinstance(v, int) else ("" if v is None else f"{v:.3g}")


def markdown(env, cases):
    lines = [f"# Culling benchmark: {env['device']}, {env['date']}", "",
             f"torch {env['torch']}, {env['threads']} CPU threads"
             + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
             + f", cutoff k = {env['cutoff']:g}, float32; KeOps: {env['keops']}"
             + ("; gaussfield.culling_stats: " + ("yes" if env["culling_stats_in_build"] else "not in this build"))
             + (". **--quick: reduced sizes, goals not judged.**" if env["quick"] else "."), "",
             "Median time per call, peak extra memory in brackets. gaussfield: the op with "
             "GAUSSFIELD_CULLING=auto; dense: GAUSSFIELD_CULLING=never.", "",
             "## Goals", "", "| case | B | N | goal | measured | status |", "|---|---:|---:|---|---:|---|"]
    for c in cases:
        for g in c.get("goals", []):
            m = g["measured"]
            ms = "" if m is None else (f"{m:.3g} ms" if g["how"] == "abs" else f"{m:.3g}x" if g["how"] == "speedup"
                                       else f"{m:.2f}x its limit (bound {g['bound_ms']:.3g} ms)" if g["how"] == "limit"
                                       else f"{m:.3f} of dense")
            lines.append(f"| {c['case']} | {c['B']:,} | {c['N']:,} | {g['goal']} | {ms} | {g['status']} |")
    lines.append("")
    for c in cases:
        if "skipped" in c:
            lines += [f"## {c['case']}: skipped", "", c["skipped"], ""]
            continue
        lines += [f"## {c['case']}: B = {c['B']:,}, N = {c['N']:,} ({c['init']})", ""]
        if c.get("before"):
            lines += [f"Before (issue): {c['before']}.", ""]
        if c.get("field"):
            lines += ["Field: " + ", ".join(f"{k} {_num(v)}" for k, v in c["field"].items()), ""]
        if c.get("limits"):
            lm = c["limits"]
            lines += [f"Limits (cutoff {c['cutoff']:g}): forward {lm['fwd_ms']:.3g} ms, train {lm['train_ms']:.3g} ms "
                      f"({lm['pairs_passing']:.3g} passing pairs at the dense rates of this run, "
                      f"{lm['rates']['fwd_pairs_per_s']:.3g} / {lm['rates']['train_pairs_per_s']:.3g} pairs/s, "
                      f"plus the inputs and outputs at 4.3 TB/s); sort floor {lm['sort_floor_ms']:.3g} ms.", ""]
        lines += ["| peer | forward | train step |", "|---|---|---|"]
        peers = [p for p in PEERS if any(r["peer"] == p for r in c["rows"])]
        for p in peers:
            cols = []
            for kind in KINDS:
                r = next((r for r in c["rows"] if r["peer"] == p and r["kind"] == kind), None)
                if r is None:
                    cols.append("")
                elif "ms" in r:
                    t = f"{fmt_ms(r['ms'])} ({fmt_mib(r['peak_extra_MiB'])})"
                    cols.append(f"**{t}**" if p == "gaussfield" else t)
                else:
                    cols.append(r["result"])
            lines.append(f"| {p} | " + " | ".join(cols) + " |")
        st = c.get("stats") or {}
        if st.get("count_error"):
            lines += ["", f"Pairs passing not counted: {st['count_error'][:300]}."]
        if "pairs_passing" in st:
            lines += ["", f"Pairs: {st['pairs']:,} in all; {st['pairs_passing']:,} pass q <= k^2 "
                          f"({st['passing_share_of_all']:.3%} of all)."]
            cs = st.get("culling", {})
            if "pairs_evaluated" in cs:
                lines.append(f"gaussfield evaluates {cs['pairs_evaluated']:,} pairs: "
                             f"{st['passing_share_of_evaluated']:.1%} of them pass. Culling: "
                             + ", ".join(f"{k} {_num(v) if isinstance(v, (int, float)) else v}"
                                         for k, v in cs.items() if k != "pairs_evaluated") + ".")
            elif cs:
                lines.append(f"gaussfield's culling statistics: {cs.get('error')}.")
            ks = st.get("keops_sparse", {})
            if "pairs_evaluated" in ks:
                lines.append(f"KeOps block-sparse evaluates {ks['pairs_evaluated']:,} pairs "
                             f"({ks['passing_share_of_evaluated']:.1%} pass; {ks['blocks_kept']:,} of "
                             f"{ks['blocks']:,} blocks kept).")
        lines.append("")
    skipped = [(c["case"], r) for c in cases for r in c.get("rows", []) if r.get("result", "").startswith("not run")]
    if skipped:
        lines += [f"\"not run\": predicted to take more than {env['max_call_s']} s per call."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="directory for cull-<device>-<date>.json and .md")
    ap.add_argument("--cases", help="comma-separated cases (default: all of the device's: "
                    + "; ".join(f"{d}: {','.join(c)}" for d, c in CASES.items()) + ")")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers (default: all)")
    ap.add_argument("--quick", action="store_true", help="sizes divided by 16, shorter timing; goals not judged")
    ap.add_argument("--trained", default=str(HERE / "results" / "trained-field.pt"),
                    help="state_dict of a trained field (examples/train_end_to_end.py --save)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: 2 on the CPU)")
    ap.add_argument("--max-call-s", type=float, default=3.0,
                    help="do not run a peer whose predicted time per call exceeds this (default 3)")
    ap.add_argument("--cpu-memory-gb", type=float,
                    help="address space on the CPU (default: 80%% of available memory)")
    ap.add_argument("--no-stats", action="store_true", help="skip the pair counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rejudge", metavar="JSON",
                    help="no run: judge a results file's measured numbers against today's goals, "
                         "rewrite its .json and .md in place")
    args = ap.parse_args()
    if args.rejudge:
        data = json.loads(Path(args.rejudge).read_text())
        table = CASES["cuda" if data["env"].get("cuda") else "cpu"]
        for c in data["cases"]:
            if c["case"] in table and "rows" in c:
                c["goals"] = judge(table[c["case"]], c["rows"], data["env"]["quick"], c.get("limits"))
                c["before"] = table[c["case"]].get("before", c.get("before"))
        Path(args.rejudge).write_text(json.dumps(data, indent=1))
        Path(args.rejudge).with_suffix(".md").write_text(markdown(data["env"], data["cases"]))
        print(markdown(data["env"], data["cases"]).split("## ", 3)[1])
        return
    device = torch.device(args.device)
    table = CASES["cuda" if device.type == "cuda" else "cpu"]
    names = args.cases.split(",") if args.cases else list(table)
    bad = [n for n in names if n not in table]
    if bad:
        ap.error(f"unknown case(s) {bad} on {device.type}: choose from {list(table)}")
    args.peers = [p for p in args.peers.split(",") if p]
    if any(p not in PEERS for p in args.peers):
        ap.error(f"peers are {PEERS}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 2)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # KeOps's CPU code
        if args.cpu_memory_gb is None:
            args.cpu_memory_gb = 0.8 * _kib("MemAvailable", "/proc/meminfo") / 2**20
        cap_cpu_memory(args.cpu_memory_gb)
    elif args.threads:
        torch.set_num_threads(args.threads)
    keops = have_keops() if any(p.startswith("keops") for p in args.peers) else (False, "not asked for")
    if any(p.startswith("keops") for p in args.peers) and not keops[0]:
        print(f"KeOps peers skipped: {keops[1]}")
    env = environment(device, args, keops)
    args.rates = dense_rates(device)
    env["dense_rates"] = args.rates
    print(json.dumps(env), flush=True)
    cases = [run_case(n, table[n], device, args, keops[0]) for n in names]
    md = markdown(env, cases)
    print()
    print(md)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        stem = Path(args.out) / f"cull-{slug(device)}-{env['date']}"
        stem.with_suffix(".json").write_text(json.dumps({"env": env, "cases": cases}, indent=1))
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
