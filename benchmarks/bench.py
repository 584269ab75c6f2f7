# SPDX-License-Identifier: Apache-2.0
"""gaussfield against the notebook's versions and the compiled closed form, in one run,
over a ladder of sizes from B = 500, N = 1000 up to where the peers run out of memory.

Peers, measured in the same process on the same inputs (float32, the notebook's
default), on whatever device is present (--device to choose):

  loop       the notebook's LearnableGaussianField (one torch.linalg.solve per Gaussian)
  batched    the notebook's FastLearnableGaussianField (one solve over [B, N, 3, 3])
  compiled   torch.compile of the closed form (gaussfield.gaussian_field_reference:
             inverse once per Gaussian, quadratic form over its 6 entries, exp, sum)
  gaussfield FastLearnableGaussianField.forward = gaussfield.fused_forward

"fwd" is a forward under no_grad; "train" is zero_grad + forward + MSE loss + backward
to every parameter, the user's training step.

Timing: two calls first (compilation and first-call costs stay out), then a median over
repetitions (as many as fit in about a second, 3 to 50).  On a GPU, CUDA events around
each call and one synchronisation at the end, as triton's do_bench; on the CPU,
perf_counter around each call.  Peak memory is the extra memory at the peak of the
timed calls: on a GPU the caching allocator's peak minus what was allocated before; on
the CPU the process's peak resident set (VmHWM, reset before the calls through
/proc/self/clear_refs) minus its resident set before.

Results per size and peer:
  * a time, pairs per second and peak memory;
  * "out of memory": it was run and ran out (on the CPU the process's address space is
    capped at --cpu-memory-gb, so that running out is an error and not the kernel's
    OOM killer);
  * "not run": its time at the previous size, scaled by the number of pairs, exceeds
    --max-call-s per call (the prediction is written down with it), and its peak memory
    scaled the same way fits the device (if it does not, it is run: out of memory is a
    result worth recording, and it comes at the first large allocation).

Writes <device>-<date>.json, .md and .png (time against B x N, log-log, one line per
implementation) into --out.

    python benchmarks/bench.py --out benchmarks/results
    python benchmarks/bench.py --plot benchmarks/results/X.json   # redraw a PNG
    python benchmarks/bench.py --sweep --out DIR                  # CUDA launch configurations
"""
import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gaussfield
from gaussfield._devices import device_name, slug
from gaussfield.notebook import FastLearnableGaussianField, LearnableGaussianField

PEERS = ["loop", "batched", "compiled", "gaussfield"]
KINDS = ["fwd", "train"]
# (B, N): 5e5 to 1e11 pairs
LADDER = [(500, 1_000), (2_000, 2_500), (10_000, 5_000), (30_000, 10_000),
          (100_000, 10_000), (300_000, 30_000), (1_000_000, 100_000)]
CPU_MAX_PAIRS = 1e9  # beyond, even ours takes seconds a call on a laptop's cores


class Patched(FastLearnableGaussianField):
    forward = gaussfield.fused_forward


class ClosedForm(FastLearnableGaussianField):
    def forward(self, x):
        cov = self.cov_tril if self.use_full_cov else self.log_scales
        return gaussfield.gaussian_field_reference(
            x, self.means, cov.to(self.means.dtype), self.weights, eps=1e-6
        )


def make_model(peer, n, device, state):
    cls = {"loop": LearnableGaussianField, "batched": FastLearnableGaussianField,
           "compiled": ClosedForm, "gaussfield": Patched}[peer]
    model = cls(n).to(device)
    model.load_state_dict(state)
    if peer == "compiled":
        torch._dynamo.reset()
        model = torch.compile(model)
    return model


def _kib(key, path="/proc/self/status"):
    """A "key: N kB" line of a /proc file, in KiB (None where there is none)."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path(path).read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _malloc_trim():
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Meter:
    """Times calls and measures the memory at their peak, on one device."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start_memory(self):
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                _malloc_trim()  # freed heap memory back to the system, out of the baseline
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
                self.base = _kib("VmRSS")
            except OSError:
                self.base = None

    def peak_extra_mib(self):
        self.sync()
        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        hwm = _kib("VmHWM")
        return None if self.base is None or hwm is None else (hwm - self.base) / 1024

    def times_ms(self, fn, budget_s=1.0):
        """Per-call times: as many calls as fit in about budget_s, 3 to 50.  On a GPU,
        as triton's do_bench: an event pair around every call and one synchronisation at
        the end, so the host runs ahead while the device works."""
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - t
        reps = int(min(50, max(3, budget_s / max(first, 1e-6))))
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for a, b in events:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in events]
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return times


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, (RuntimeError, MemoryError)) and "memory" in str(e).lower())


def measure(peer, kind, B, N, device, seed=0):
    """One peer, one kind, one size: a result dict."""
    torch.manual_seed(seed)
    state = FastLearnableGaussianField(N).state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(B, 3, generator=g) * 10.0).to(device)
    target = torch.rand(B, generator=g).to(device)
    res = {"peer": peer, "kind": kind, "B": B, "N": N, "pairs": B * N}
    meter = Meter(device)
    model = None
    try:
        model = make_model(peer, N, device, state)
        if kind == "fwd":
            def call():
                with torch.no_grad():
                    model(x)
        else:
            def call():
                model.zero_grad(set_to_none=True)
                F.mse_loss(model(x), target).backward()
        call()  # compilation and first-call costs stay out of the numbers
        call()
        meter.start_memory()
        times = meter.times_ms(call)
        med = statistics.median(times)
        res.update(ms=med, ms_all=times, pairs_per_s=B * N / (med * 1e-3),
                   peak_extra_MiB=meter.peak_extra_mib())
    except Exception as e:  # noqa: BLE001 -- only running out of memory is a result
        if not is_oom(e):
            raise
        res["result"] = "out of memory"
    finally:
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def ladder(device):
    return LADDER if device.type == "cuda" else [s for s in LADDER if s[0] * s[1] <= CPU_MAX_PAIRS]


def cap_cpu_memory(gb):
    """Cap the address space so that a peer that runs out of memory gets an error."""
    limit = int(_kib("VmSize") * 1024 + gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


def environment(device, args):
    env = {"date": _dt.date.today().isoformat(), "device": device_name(device),
           "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "max_call_s": args.max_call_s}
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["sm_count"] = torch.cuda.get_device_properties(device).multi_processor_count
        env["memory_GiB"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    else:
        env["memory_cap_GiB"] = args.cpu_memory_gb
    return env


def run_all(device, args):
    if device.type == "cuda":
        memory_mib = torch.cuda.get_device_properties(device).total_memory / 2**20
    else:
        memory_mib = args.cpu_memory_gb * 1024
    rows = []
    for kind in KINDS:
        for peer in PEERS:
            if args.peers and peer not in args.peers.split(","):
                continue
            last = None  # (pairs, ms, peak MiB) of the largest size this peer finished
            for B, N in ladder(device):
                if args.max_pairs and B * N > args.max_pairs:
                    continue
                scale = B * N / last[0] if last else 0
                # too slow to run, unless it is expected to run out of memory (then it
                # fails at its first large allocation, and that is the result)
                if last and last[1] * scale > args.max_call_s * 1e3 and (last[2] or 0) * scale < memory_mib:
                    r = {"peer": peer, "kind": kind, "B": B, "N": N, "pairs": B * N,
                         "result": f"not run: about {last[1] * scale / 1e3:.3g} s per call, scaled "
                                   f"from {last[1]:.4g} ms at {last[0]:.3g} pairs"}
                else:
                    r = measure(peer, kind, B, N, device)
                    if "ms" in r:
                        last = (B * N, r["ms"], r["peak_extra_MiB"])
                rows.append(r)
                print(f"{kind:5s} B={B:<8d} N={N:<7d} {peer:10s} " + (
                    r.get("result") or f"{r['ms']:10.4f} ms  {r['pairs_per_s']:.3g} pairs/s  "
                                       f"peak +{r['peak_extra_MiB'] or 0:.1f} MiB"), flush=True)
    return rows


def fmt_ms(ms):
    return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


def fmt_mib(mib):
    if mib is None:
        return "n/a"
    return f"{mib / 1024:.3g} GiB" if mib >= 1024 else f"{mib:.1f} MiB"


def markdown(env, rows):
    lines = [f"# gaussfield benchmark: {env['device']}, {env['date']}", "",
             f"torch {env['torch']}, {env['threads']} CPU threads"
             + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
             + (f", address space capped at {env['memory_cap_GiB']:.3g} GiB" if "memory_cap_GiB" in env else "")
             + ". Median time per call; peak extra memory in brackets. float32.", ""]
    sizes = sorted({(r["B"], r["N"]) for r in rows}, key=lambda s: s[0] * s[1])
    peers = [p for p in PEERS if any(r["peer"] == p for r in rows)]
    for kind in KINDS:
        cell = {(r["B"], r["N"], r["peer"]): r for r in rows if r["kind"] == kind}
        if not cell:
            continue
        lines += [f"## {'forward (no_grad)' if kind == 'fwd' else 'train step (forward + MSE + backward)'}", "",
                  "| B | N | B x N | " + " | ".join(peers) + " | gaussfield pairs/s | vs batched | vs compiled |",
                  "|---:|---:|---:|" + "---|" * len(peers) + "---:|---:|---:|"]
        for B, N in sizes:
            cols = []
            for p in peers:
                r = cell.get((B, N, p))
                if r is None:
                    cols.append("")
                elif "ms" in r:
                    text = f"{fmt_ms(r['ms'])} ({fmt_mib(r['peak_extra_MiB'])})"
                    cols.append(f"**{text}**" if p == "gaussfield" else text)
                else:
                    cols.append("out of memory" if r["result"] == "out of memory" else "not run")
            ours = cell.get((B, N, "gaussfield"), {})

            def ratio(p):
                o = cell.get((B, N, p), {})
                return f"{o['ms'] / ours['ms']:.1f}x" if "ms" in o and "ms" in ours else ""
            rate = f"{ours['pairs_per_s']:.3g}" if "ms" in ours else ""
            lines.append(f"| {B:,} | {N:,} | {B * N:.0e} | " + " | ".join(cols)
                         + f" | {rate} | {ratio('batched')} | {ratio('compiled')} |")
        lines.append("")
    skipped = [r for r in rows if r.get("result", "").startswith("not run")]
    if skipped:
        lines += ["\"not run\": the time at the previous size, scaled by the number of pairs, "
                  f"exceeds {env['max_call_s']} s per call:", ""]
        lines += [f"- {r['kind']} {r['peer']} at B={r['B']:,}, N={r['N']:,}: {r['result'][9:]}"
                  for r in skipped]
        lines.append("")
    return "\n".join(lines)


def plot(env, rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for ax, kind in zip(axes, KINDS):
        stacked = {}  # labels already placed at one x
        for p, marker in zip(PEERS, "s^Do"):
            pts = sorted((r["pairs"], r["ms"]) for r in rows if r["kind"] == kind and r["peer"] == p and "ms" in r)
            line, = ax.loglog(*zip(*pts), marker=marker, label=p, lw=2.5 if p == "gaussfield" else 1.2) \
                if pts else ax.loglog([], [], marker=marker, label=p)
            oom = [r["pairs"] for r in rows if r["kind"] == kind and r["peer"] == p
                   and r.get("result") == "out of memory"]
            if oom:
                first = min(oom)
                k = stacked[first] = stacked.get(first, -1) + 1
                ax.axvline(first, color=line.get_color(), ls=":", lw=1)
                ax.annotate(f"{p}: out of memory", (first, 0.98 - 0.3 * k),
                            xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                            fontsize=7, color=line.get_color())
        ax.set_xlabel("pairs B x N")
        ax.set_ylabel("median time per call (ms)")
        ax.set_title("forward" if kind == "fwd" else "train step (forward + backward)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{env['device']}, torch {env['torch']}, {env['date']}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SWEEP = [
    "points_r=8,points_warps=8,gauss_k=2,gauss_warps=8",
    "points_r=8,points_warps=4,gauss_k=2,gauss_warps=4",
    "points_r=4,points_warps=8,gauss_k=1,gauss_warps=8",
    "points_r=4,points_warps=4,gauss_k=4,gauss_warps=4",
    "points_r=8,points_warps=2,gauss_k=2,gauss_warps=2",
    "points_r=2,points_warps=8,gauss_k=1,gauss_warps=4",
]


def sweep(device, args):
    """Ours under several launch configurations (GAUSSFIELD_CUDA_CONFIG), M and L sizes."""
    rows = []
    for cfg in [""] + SWEEP:
        os.environ["GAUSSFIELD_CUDA_CONFIG"] = cfg
        for kind, B, N in [("fwd", 100_000, 10_000), ("train", 100_000, 10_000),
                           ("train", 1_000_000, 100_000)]:
            r = measure("gaussfield", kind, B, N, device)
            r.update(config=cfg or "heuristic")
            rows.append(r)
            print(f"{r['config']:55s} {B}x{N} {kind:5s} {r.get('ms', float('nan')):9.3f} ms "
                  f"{r.get('pairs_per_s', 0) / 1e12:6.3f} Tpairs/s", flush=True)
    os.environ.pop("GAUSSFIELD_CUDA_CONFIG", None)
    if args.out:
        path = Path(args.out) / f"sweep-{slug(device)}-{_dt.date.today().isoformat()}.json"
        path.write_text(json.dumps({"env": environment(device, args), "rows": rows}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="directory for <device>-<date>.json, .md and .png")
    ap.add_argument("--peers", help="comma-separated peers to run (default: all)")
    ap.add_argument("--max-pairs", type=float, help="largest B x N to run")
    ap.add_argument("--max-call-s", type=float, default=3.0,
                    help="do not run a peer whose predicted time per call exceeds this (default 3)")
    ap.add_argument("--cpu-memory-gb", type=float,
                    help="address space for the CPU peers (default: 80%% of available memory)")
    ap.add_argument("--sweep", action="store_true", help="CUDA launch configurations of ours")
    ap.add_argument("--plot", metavar="JSON", help="only redraw the PNG of a results file")
    args = ap.parse_args()
    if args.plot:
        data = json.loads(Path(args.plot).read_text())
        print(plot(data["env"], data["rows"], Path(args.plot).with_suffix(".png")))
        return
    device = torch.device(args.device)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.sweep:
        return sweep(device, args)
    if device.type == "cpu":
        if args.cpu_memory_gb is None:
            args.cpu_memory_gb = 0.8 * _kib("MemAvailable", "/proc/meminfo") / 2**20
        cap_cpu_memory(args.cpu_memory_gb)

    env = environment(device, args)
    print(json.dumps(env))
    rows = run_all(device, args)
    md = markdown(env, rows)
    print()
    print(md)
    if args.out:
        stem = Path(args.out) / f"{slug(device)}-{env['date']}"
        stem.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(md)
        png = plot(env, rows, stem.with_suffix(".png"))
        print(f"wrote {stem}.json, {stem}.md" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
