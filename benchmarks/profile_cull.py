# SPDX-License-Identifier: Apache-2.0
"""Where the culled path spends its time on a GPU, and how the grid's cell size moves it.

For the culling issue's two notebook cases (cutoff 6, float32, points uniform in the
volume; FastLearnableGaussianField.forward = gaussfield.fused_forward):

  big  B = 10^6,    N = 10^5
  mid  B = 131,072, N = 30,000

1. Kernel time per call, by kernel, from torch.profiler over a few forward calls and a
   few training steps (zero_grad + forward + MSE + backward to every parameter), beside
   the wall time per call: the gap is host work and the plan's synchronisation.
2. Forward and training-step medians (CUDA events) for several targets of points per
   cell (GAUSSFIELD_CULLING_POINTS_PER_CELL), and the pairs the culled path evaluates.

    python benchmarks/profile_cull.py --out benchmarks/results
"""
import argparse
import datetime as _dt
import json
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import gaussfield
from gaussfield._devices import device_name, slug
from gaussfield.notebook import FastLearnableGaussianField

HERE = Path(__file__).resolve().parent

CUTOFF, VOLUME = 6.0, 10.0
CASES = {"big": (1_000_000, 100_000), "mid": (131_072, 30_000),
         # the culling issue's fields (bench_cull.py's), cutoff 3
         "aniso": (2**20, 100_000), "sheets": (2**20, 100_000), "grid": (256**3, 100_000),
         "tiny": (1_000_000, 10_000_000),
         # the training example's field (benchmarks/results/trained-field.pt), cutoff 6
         "trained": (2**18, 100_000)}
FIELD_CUTOFF = 3.0


class Fused(FastLearnableGaussianField):
    forward = gaussfield.fused_forward


def setup(B, N, device, name="big"):
    if name == "trained":
        state = torch.load(HERE / "results" / "trained-field.pt", map_location="cpu")
        model = Fused(state["means"].shape[0]).to(device)
        model.load_state_dict(state)
        model.cutoff = CUTOFF
        g = torch.Generator().manual_seed(1)  # bench_cull's points (seed 0 + 1)
        x = (torch.rand(B, 3, generator=g) * VOLUME).to(device)
        target = torch.rand(B, generator=g).to(device)
        return model, x, target
    if name in ("aniso", "sheets", "grid", "tiny"):
        from bench_cull import FieldModel, field_kind_tensors
        x, means, cov, w = field_kind_tensors(name, B, N, 0)
        model = FieldModel(means, cov, w, FIELD_CUTOFF).to(device)
        target = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1)).to(device)
        return model, x.to(device), target
    torch.manual_seed(0)
    model = Fused(N).to(device)
    model.cutoff = CUTOFF
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(B, 3, generator=g) * VOLUME).to(device)
    target = torch.rand(B, generator=g).to(device)
    return model, x, target


def calls(model, x, target):
    def fwd():
        with torch.no_grad():
            model(x)

    def train():
        model.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()
    return {"fwd": fwd, "train": train}


def median_ms(fn, reps=15):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def kernel_table(fn, reps=5):
    """[(kernel name, microseconds per call, launches per call)], largest first, and the
    wall time per call."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
    wall = a.elapsed_time(b) / reps
    rows = []
    for e in prof.key_averages():
        # a kernel's (or copy's) own device time; an aten op's is its children's
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((e.key[:90], t / reps, e.count / reps))
    rows.sort(key=lambda r: -r[1])
    return rows, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--cases", default="big,mid")
    ap.add_argument("--per-cell", default="64,128,256")
    args = ap.parse_args()
    device = torch.device("cuda")
    env = {"date": _dt.date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
           "cutoff": CUTOFF}
    print(json.dumps(env))
    result = {"env": env, "cases": {}}
    for name in args.cases.split(","):
        B, N = CASES[name]
        model, x, target = setup(B, N, device, name)
        fns = calls(model, x, target)
        case = {"B": B, "N": N, "profile": {}, "per_cell": []}
        for kind, fn in fns.items():
            rows, wall = kernel_table(fn)
            total = sum(r[1] for r in rows)
            case["profile"][kind] = {"wall_ms": wall, "kernels_us": total, "rows": rows}
            print(f"\n[{name}] B={B:,} N={N:,} {kind}: {wall:.3f} ms per call, kernels {total / 1e3:.3f} ms")
            for k, us, n in rows[:16]:
                print(f"  {us:9.1f} us  x{n:4.1f}  {k}")
        for ppc in [float(v) for v in args.per_cell.split(",") if v and v != "none"]:
            os.environ["GAUSSFIELD_CULLING_POINTS_PER_CELL"] = str(ppc)
            try:
                row = {"points_per_cell": ppc}
                for kind, fn in fns.items():
                    row[kind + "_ms"] = median_ms(fn)
                cov = model.cov if hasattr(model, "cov") else model.cov_tril.to(x.dtype)
                st = gaussfield.culling_stats(x, model.means, cov, model.weights,
                                              cutoff=getattr(model, "cutoff", CUTOFF), device_type="cuda")
                row["pairs_evaluated"] = st.get("pairs_evaluated")
                row["cells"] = st.get("dims")
            finally:
                del os.environ["GAUSSFIELD_CULLING_POINTS_PER_CELL"]
            case["per_cell"].append(row)
            print(f"  per cell {ppc:5g}: fwd {row['fwd_ms']:.3f} ms, train {row['train_ms']:.3f} ms, "
                  f"pairs {row['pairs_evaluated']:.4g}, cells {row['cells']}", flush=True)
        result["cases"][name] = case
        del model, x, target
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / f"profile-cull-{slug(device)}-{env['date']}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
