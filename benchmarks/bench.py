"""gaussfield against the notebook's versions and the compiled closed form, in one run.

Peers, measured in the same process on the same inputs (float32, the notebook's
default):

  loop       the notebook's LearnableGaussianField (one torch.linalg.solve per Gaussian)
  batched    the notebook's FastLearnableGaussianField (one solve over [B, N, 3, 3])
  compiled   torch.compile of the closed form (gaussfield.gaussian_field_reference:
             inverse once per Gaussian, quadratic form over its 6 entries, exp, sum)
  gaussfield FastLearnableGaussianField.forward = gaussfield.fused_forward
  *+graphs   (GPU, S case) the same, with forward and loss under
             torch.compile(mode="reduce-overhead"): CUDA graphs take the host's
             per-launch costs away, which dominate a step this small

"fwd" is a forward; "train" is zero_grad + forward + MSE loss + backward to every
parameter, the user's training step.  Times are medians after warm-up (on a GPU, CUDA
events around each call with one synchronisation at the end, as triton's do_bench; on
the CPU, perf_counter).  Peak memory (GPU only) is the allocator's peak
during the timed calls minus what was allocated before them.

    python benchmarks/bench.py                 # the cases of this device
    python benchmarks/bench.py --sweep         # CUDA launch configurations of ours
    python benchmarks/bench.py --out DIR       # also write DIR/<device>-<date>.{json,md}
"""
import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gaussfield

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from notebook_models import FastLearnableGaussianField, LearnableGaussianField  # noqa: E402


class Patched(FastLearnableGaussianField):
    forward = gaussfield.fused_forward


class ClosedForm(FastLearnableGaussianField):
    def forward(self, x):
        cov = self.cov_tril if self.use_full_cov else self.log_scales
        return gaussfield.gaussian_field_reference(
            x, self.means, cov.to(self.means.dtype), self.weights, eps=1e-6
        )


def make_model(peer, n, device, state):
    base = peer.removesuffix("+graphs")
    cls = {"loop": LearnableGaussianField, "batched": FastLearnableGaussianField,
           "compiled": ClosedForm, "gaussfield": Patched}[base]
    model = cls(n).to(device)
    model.load_state_dict(state)
    if peer == "compiled":
        torch._dynamo.reset()
        model = torch.compile(model)
    return model


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def median_ms(self, fn, reps, warmup):
        """Median per-call time.  On a GPU, as triton's do_bench does: an event pair
        around every call and one synchronisation at the end, so the host runs ahead
        while the device works (a GPU-bound call is timed on the device; a host-bound
        one by the host's pace, as in a training loop)."""
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for a, b in events:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            times = [a.elapsed_time(b) for a, b in events]
        else:
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times), times


def run_case(peer, kind, B, N, device, reps, warmup, seed=0):
    """Time one peer on one case; returns a result dict (or the reason it could not run)."""
    torch.manual_seed(seed)
    state = FastLearnableGaussianField(N).state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(B, 3, generator=g) * 10.0).to(device)
    target = torch.rand(B, generator=g).to(device)
    res = {"peer": peer, "kind": kind, "B": B, "N": N}
    timer = Timer(device)
    model = None
    try:
        model = make_model(peer, N, device, state)
        if kind == "fwd":
            def step():
                with torch.no_grad():
                    model(x)
        elif peer.endswith("+graphs"):
            torch._dynamo.reset()
            loss_fn = torch.compile(lambda: F.mse_loss(model(x), target), mode="reduce-overhead",
                                    fullgraph=True)

            def step():
                torch.compiler.cudagraph_mark_step_begin()
                model.zero_grad(set_to_none=True)
                loss_fn().backward()
        else:
            def step():
                model.zero_grad(set_to_none=True)
                loss = F.mse_loss(model(x), target)
                loss.backward()
        step()  # compile / first-call costs stay out of the numbers
        step()
        timer.sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        med, times = timer.median_ms(step, reps, warmup)
        res.update(ms=med, ms_all=times, pairs_per_s=B * N / (med * 1e-3))
        if device.type == "cuda":
            res["peak_extra_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.OutOfMemoryError:
        res["skipped"] = "out of memory"
    except RuntimeError as e:  # the CPU allocator reports OOM as a RuntimeError
        if "memory" not in str(e).lower():
            raise
        res["skipped"] = "out of memory"
    finally:
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def cases_for(device, quick):
    """(name, kind, B, N, peers, reps): the issue's cases for this device."""
    if device.type == "cuda":
        cases = [
            ("S", "train", 500, 1000, ["loop", "batched", "compiled", "gaussfield",
                                       "compiled+graphs", "gaussfield+graphs"], 50),
            ("M", "fwd", 100_000, 10_000, ["batched", "compiled", "gaussfield"], 20),
            ("M", "train", 100_000, 10_000, ["batched", "compiled", "gaussfield"], 10),
            ("L", "train", 1_000_000, 100_000, ["compiled", "gaussfield"], 3),
        ]
    else:
        cases = [
            ("S", "train", 500, 1000, ["loop", "batched", "compiled", "gaussfield"], 15),
            ("CPU-1e4", "fwd", 10_000, 10_000, ["batched", "compiled", "gaussfield"], 5),
        ]
    if quick:
        cases = [(n, k, b, nn, p, max(3, r // 5)) for n, k, b, nn, p, r in cases]
    return cases


def reps_for(peer, reps):
    # the loop version runs one solve per Gaussian: hundreds of ms a step
    return min(reps, 5) if peer == "loop" else reps


def cpu_model():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} CPU, {torch.get_num_threads()} threads"


def environment(device):
    env = {
        "date": _dt.date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["sm_count"] = torch.cuda.get_device_properties(device).multi_processor_count
    return env


def markdown(env, rows):
    lines = [f"# gaussfield benchmark: {env['device']}, {env['date']}", "",
             f"torch {env['torch']}, {env['threads']} CPU threads" +
             (f", CUDA {env.get('cuda')}" if env.get("cuda") else ""), "",
             "| case | kind | B | N | peer | median ms | pairs/s | x vs batched | x vs compiled | peak extra MiB |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | {r['kind']} | {r['B']} | {r['N']} | {r['peer']} | "
                         f"{r['skipped']} | | | | |")
            continue
        def ratio(other):
            # compare like with like: ours under CUDA graphs against the closed form under them
            if other == "compiled" and r["peer"].endswith("+graphs"):
                other += "+graphs"
            o = next((q for q in rows if q["case"] == r["case"] and q["kind"] == r["kind"]
                      and q["peer"] == other and "ms" in q), None)
            return f"{o['ms'] / r['ms']:.1f}" if o and r["peer"].startswith("gaussfield") else ""
        mem = f"{r['peak_extra_MiB']:.1f}" if "peak_extra_MiB" in r else "n/a"
        lines.append(f"| {r['case']} | {r['kind']} | {r['B']} | {r['N']} | {r['peer']} | "
                     f"{r['ms']:.4g} | {r['pairs_per_s']:.3g} | {ratio('batched')} | "
                     f"{ratio('compiled')} | {mem} |")
    return "\n".join(lines) + "\n"


SWEEP = [
    "points_r=8,points_warps=8,gauss_k=2,gauss_warps=8",
    "points_r=8,points_warps=4,gauss_k=2,gauss_warps=4",
    "points_r=4,points_warps=8,gauss_k=1,gauss_warps=8",
    "points_r=4,points_warps=4,gauss_k=4,gauss_warps=4",
    "points_r=8,points_warps=2,gauss_k=2,gauss_warps=2",
    "points_r=2,points_warps=8,gauss_k=1,gauss_warps=4",
]


def sweep(device, out):
    """Ours under several launch configurations (GAUSSFIELD_CUDA_CONFIG), M and L sizes."""
    rows = []
    for cfg in [""] + SWEEP:
        os.environ["GAUSSFIELD_CUDA_CONFIG"] = cfg
        for name, kind, B, N, reps in [("M", "fwd", 100_000, 10_000, 20),
                                       ("M", "train", 100_000, 10_000, 10),
                                       ("L", "train", 1_000_000, 100_000, 2)]:
            r = run_case("gaussfield", kind, B, N, device, reps, 2)
            r.update(case=name, config=cfg or "heuristic")
            rows.append(r)
            print(f"{r['config']:55s} {name} {kind:5s} {r.get('ms', float('nan')):9.3f} ms "
                  f"{r.get('pairs_per_s', 0) / 1e12:6.3f} Tpairs/s", flush=True)
    os.environ.pop("GAUSSFIELD_CUDA_CONFIG", None)
    if out:
        path = Path(out) / f"sweep-{slug(device)}-{_dt.date.today().isoformat()}.json"
        path.write_text(json.dumps({"env": environment(device), "rows": rows}, indent=1))


def slug(device):
    return "".join(c if c.isalnum() else "-" for c in device_name(device).lower()).strip("-")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="directory for <device>-<date>.json and .md")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sweep", action="store_true", help="CUDA launch configurations of ours")
    ap.add_argument("--cases", help="comma-separated case names to run (default: all)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.sweep:
        return sweep(device, args.out)

    env = environment(device)
    print(json.dumps(env))
    rows = []
    for name, kind, B, N, peers, reps in cases_for(device, args.quick):
        if args.cases and name not in args.cases.split(","):
            continue
        for peer in peers:
            r = run_case(peer, kind, B, N, device, reps_for(peer, reps), 2 if peer != "loop" else 1)
            r["case"] = name
            rows.append(r)
            shown = r.get("skipped") or f"{r['ms']:10.4f} ms  {r['pairs_per_s']:.3g} pairs/s" + (
                f"  peak +{r['peak_extra_MiB']:.1f} MiB" if "peak_extra_MiB" in r else "")
            print(f"{name:8s} {kind:5s} B={B:<8d} N={N:<7d} {peer:10s} {shown}", flush=True)
    md = markdown(env, rows)
    print()
    print(md)
    if args.out:
        stem = Path(args.out) / f"{slug(device)}-{env['date']}"
        stem.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
