# SPDX-License-Identifier: Apache-2.0
"""The distributed modes on several GPUs against one GPU, in one run (issue 13).

    python benchmarks/bench_distributed.py --out benchmarks/results          # all GPUs seen
    python benchmarks/bench_distributed.py --gpus 2 --cases 1e6:none:4,1e6:6:10 --out DIR
    python benchmarks/bench_distributed.py --device cpu --gpus 2 --batch 2000 \\
        --cases 500:none:3,500:6:3 --capacity none --out /tmp/d       # gloo, a smoke test

Without torchrun it is the driver: it launches itself under ``torchrun --standalone
--nproc-per-node K`` once on one GPU (K = 1, the plain ``gaussfield.GaussianField``) and
once on K = --gpus GPUs (``--mode ddp`` and ``--mode shard`` of
examples/train_distributed.py: DistributedDataParallel over the field, each rank B / K of
the points; ShardedGaussianField, each rank N / K of the Gaussians and all B points),
then writes ``distributed-<card>-x<K>-<date>.{json,md}``.

Each case ``N:cutoff:steps`` trains the notebook's initial field of N Gaussians (the same
seed on every rank and in every mode) with Adam (lr 0.01, the example's) on B = --batch
uniform points a step (the same points in every mode), float32, for ``steps`` steps, and
records per mode:

    ms_per_step   median over steps 2.. (step 1 warms up), the slowest rank's, each step
                  timed between a barrier and a device synchronisation
    comm_ms       the step's all-reduce alone (ddp: a buffer of the gradients' size per
                  dtype, as DDP's buckets; shard: the B values of the summed field),
                  median of 5 after a warm-up, and its bytes (comm_bytes)
    compute_ms    the same step with no communication (ddp: backward under no_sync();
                  shard: the shard's own partial field, not summed): ``alone`` pairs of
                  steps after the recorded ones, one with and one without communication
                  in alternating order; exposed communication = the median of the pairs'
                  differences (the step's time drifts as the field trains, so a pair
                  compares two steps of one field)
    peak_gib      torch.cuda.max_memory_allocated per rank (the field, its gradients,
                  Adam's state and the step's transients)
    losses        every step's loss (MSE over the whole batch)

and, for K > 1, the speed-up against the one-GPU run and the relative difference of each
step's loss from the one-GPU run's.  With a cutoff, the one-GPU run is repeated in
float64: a float32 run's own distance from float64 is the scale of its rounding, which
the K-GPU run's distance from the one-GPU run is measured against.

``--capacity K`` (default 6, 'none' to skip): the largest field of the run.  From the
one-GPU peaks of the cutoff cases it fits bytes per Gaussian, predicts the N that fills
one GPU, and tries N_big = 1.6 x that: on one GPU (expected to run out of memory) and
sharded over the K GPUs (each holding N_big / K).  ``GAUSSFIELD_CULLING_BUDGET_MB`` is
left at its default throughout.
"""
import argparse
import datetime as _dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VOLUME = 10.0
ADAM_LR = 0.01


# ---- the worker (under torchrun) ------------------------------------------------------------

def target(x):
    """A smooth target in the volume: any will do for timing and loss agreement."""
    c = x - VOLUME / 2
    return torch.exp(-c.square().sum(-1) / 8) + 0.5 * torch.sin(c[:, 0]) * torch.cos(c[:, 1])


def parse_case(text):
    n, cutoff, steps = text.split(":")
    return {"N": int(float(n)), "cutoff": None if cutoff == "none" else float(cutoff),
            "steps": int(steps)}


def worker(args):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import gaussfield
    from gaussfield._devices import device_name
    from gaussfield.distributed import ShardedGaussianField

    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if args.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    cuda = device.type == "cuda"
    # built and drawn in float32 in every run (the same field and points), then cast
    dtype = getattr(torch, args.dtype)
    modes = ["single"] if world == 1 else [m for m in args.modes.split(",")]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn):
        dist.barrier()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        mine = torch.tensor([time.perf_counter() - t], dtype=torch.float64, device=device)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        return mine.item() * 1e3

    def gather(value):
        t = torch.tensor([value], dtype=torch.float64, device=device)
        out = [torch.zeros_like(t) for _ in range(world)]
        dist.all_gather(out, t)
        return [o.item() for o in out]

    results = []
    for case in map(parse_case, args.cases.split(",")):
        N, cutoff, steps = case["N"], case["cutoff"], case["steps"]
        for mode in modes:
            rec = {"mode": mode, "world_size": world, "N": N, "B": args.batch, "cutoff": cutoff,
                   "steps": steps, "dtype": args.dtype}
            model = opt = None
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                t0 = time.perf_counter()
                torch.manual_seed(args.seed)
                field = gaussfield.GaussianField(N, volume_size=VOLUME, use_full_cov=True, cutoff=cutoff)
                if mode == "shard":
                    model = ShardedGaussianField.from_field(field).to(device=device, dtype=dtype)
                else:
                    model = field.to(device=device, dtype=dtype)
                    if mode == "ddp":
                        model = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
                del field
                sync()
                rec["setup_s"] = time.perf_counter() - t0
                opt = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
                gen = torch.Generator(device).manual_seed(args.seed + 1)
                ddp = mode == "ddp"
                lo, hi = ((args.batch * rank // world, args.batch * (rank + 1) // world) if ddp
                          else (0, args.batch))
                scale = world if ddp else 1
                squared = torch.zeros(steps, dtype=torch.float64, device=device)

                def step(i, alone=False, record=True):
                    x = (torch.rand(args.batch, 3, generator=gen, device=device) * VOLUME)[lo:hi]
                    x = x.to(dtype)
                    if alone and mode == "shard":
                        # the shard's own partial field, with nothing summed over the ranks
                        out = gaussfield.gaussian_field(x, model.means, model.cov.to(model.means.dtype),
                                                        model.weights, cutoff=model.cutoff)
                    else:
                        out = model(x)
                    sq = (out - target(x)).square().sum()
                    loss = sq * scale / args.batch
                    opt.zero_grad(set_to_none=True)
                    if alone and ddp:
                        with model.no_sync():
                            loss.backward()
                    else:
                        loss.backward()
                    opt.step()
                    if record:
                        squared[i] = sq.detach()

                times = [timed(lambda i=i: step(i)) for i in range(steps)]
                rec["step_ms"] = times
                rec["ms_per_step"] = statistics.median(times[1:]) if steps > 1 else times[0]
                if world > 1 and args.alone > 0:
                    # pairs of steps, with and without communication, in alternating order
                    # after the recorded ones: the step's time drifts as the field trains
                    # (its Gaussians change size), and a pair sees the same field
                    pairs = []
                    for j in range(min(args.alone, steps)):
                        order = (False, True) if j % 2 == 0 else (True, False)
                        t = {a: timed(lambda a=a: step(0, alone=a, record=False)) for a in order}
                        pairs.append((t[False], t[True]))
                    rec["pair_ms"] = pairs
                    rec["compute_ms"] = statistics.median(p[1] for p in pairs)
                    rec["exposed_comm_ms"] = statistics.median(p[0] - p[1] for p in pairs)
                    # the step's all-reduce alone: ddp the gradients (one buffer per dtype,
                    # as DDP's buckets), shard the summed field (B values)
                    if ddp:
                        sizes = {}
                        for q in model.parameters():
                            sizes[q.dtype] = sizes.get(q.dtype, 0) + q.numel()
                        payload = [torch.zeros(n, dtype=d, device=device) for d, n in sizes.items()]
                    else:
                        payload = [torch.zeros(args.batch, dtype=dtype, device=device)]
                    rec["comm_bytes"] = sum(t.numel() * t.element_size() for t in payload)

                    def reduce():
                        for t in payload:
                            dist.all_reduce(t)
                    comm = [timed(reduce) for _ in range(6)]
                    rec["comm_ms"] = statistics.median(comm[1:])
                    del payload
                if ddp:
                    dist.all_reduce(squared)
                rec["losses"] = (squared / args.batch).tolist()
                rec["oom"] = None
            except torch.OutOfMemoryError as e:
                rec["oom"] = str(e).splitlines()[0][:300]
                print(f"rank {rank}: {mode} N={N}: out of memory: {rec['oom']}", flush=True)
            finally:
                del model, opt
            if cuda:
                rec["peak_gib"] = [v / 2**30 for v in gather(torch.cuda.max_memory_allocated(device))]
                rec["reserved_gib"] = [v / 2**30 for v in gather(torch.cuda.max_memory_reserved(device))]
                torch.cuda.empty_cache()
            if rank == 0:
                rec["device"] = device_name(device)
                if cuda:
                    rec["total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
                    rec["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
                ms = rec.get("ms_per_step")
                print(f"K={world} {mode:6s} N={N:.0e} cutoff={cutoff} {args.dtype}: "
                      + ("OOM" if rec["oom"] else f"{ms:.2f} ms/step")
                      + (f", compute {rec['compute_ms']:.2f} ms" if "compute_ms" in rec else "")
                      + (f", peak {max(rec['peak_gib']):.2f} GiB/GPU" if "peak_gib" in rec else "")
                      + (f", loss[0] {rec['losses'][0]:.9g}" if rec.get("losses") else ""), flush=True)
            results.append(rec)
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps(results, indent=1))


# ---- the driver ------------------------------------------------------------------------------

def launch(args, world, cases, out, dtype="float32", modes="ddp,shard", timeout=None):
    """One torchrun of the worker; its records, or [] with the failure printed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           __file__, "--worker", "--worker-out", str(out), "--cases", cases, "--batch", str(args.batch),
           "--device", args.device, "--dtype", dtype, "--modes", modes, "--alone", str(args.alone),
           "--seed", str(args.seed)]
    print("$", " ".join(cmd[2:]), flush=True)
    try:
        subprocess.run(cmd, check=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"the run failed: {e}", flush=True)
        return []
    return json.loads(Path(out).read_text())


def rel(a, b):
    return abs(a - b) / abs(b) if b else abs(a - b)


def compare(records, singles, singles64):
    """Speed-up and loss agreement of each K-GPU record against the one-GPU run."""
    key = lambda r: (r["N"], r["cutoff"])
    one = {key(r): r for r in singles if not r["oom"]}
    ref64 = {key(r): r for r in singles64 if not r["oom"]}
    for r in records:
        s = one.get(key(r))
        if r["oom"] or s is None or r["world_size"] == 1:
            continue
        r["speedup"] = s["ms_per_step"] / r["ms_per_step"]
        r["loss_rel_diff"] = [rel(a, b) for a, b in zip(r["losses"], s["losses"])]
        d = ref64.get(key(r))
        if d:
            r["float32_rel_err"] = [rel(a, b) for a, b in zip(s["losses"], d["losses"])]


def capacity_n(singles, total_bytes):
    """(bytes per Gaussian, N that fills one GPU) from the one-GPU cutoff cases' peaks."""
    pts = sorted((r["N"], max(r["peak_gib"]) * 2**30) for r in singles
                 if r["cutoff"] is not None and not r["oom"] and "peak_gib" in r)
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None, None
    (n0, p0), (n1, p1) = pts[0], pts[-1]
    per = (p1 - p0) / (n1 - n0)
    return per, int((total_bytes - p0) / per + n0)


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def markdown(summary):
    lines = [f"# Distributed training steps: {summary['world_size']} x {summary['device']}", "",
             f"torch {summary['torch']}, CUDA {summary['cuda']}, {summary['date']}, NCCL "
             f"{summary['nccl']}, NCCL_NVLS_ENABLE={summary['nvls']}; B = {summary['batch']:,} points a "
             "step, the notebook's initial field (full covariance, float64 cov_tril cast to float32 in "
             "the forward), Adam, float32 "
             "(`benchmarks/bench_distributed.py`). Times: median step of the slowest rank; "
             "compute: the same step with no communication, and exposed communication the median difference of "
             "pairs of the two; all-reduce alone: the step's payload reduced by itself; peak: "
             "max_memory_allocated per GPU.", "",
             "| N | cutoff | mode | GPUs | ms / step | compute ms | exposed comm ms | all-reduce alone ms (MB) | speed-up vs 1 GPU "
             "| peak GiB / GPU | loss step 1: rel. diff vs 1 GPU | later steps: max rel. diff "
             "| float32 vs float64 (1 GPU), max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["records"]:
        if r["dtype"] != "float32":
            continue
        peak = fmt(max(r["peak_gib"])) if r.get("peak_gib") else "—"
        diffs = r.get("loss_rel_diff") or []
        f32 = r.get("float32_rel_err") or []
        lines.append(
            f"| {r['N']:.3g} | {r['cutoff'] if r['cutoff'] is not None else 'none'} | {r['mode']} "
            f"| {r['world_size']} | " + ("out of memory" if r["oom"] else fmt(r.get("ms_per_step")))
            + f" | {fmt(r.get('compute_ms'))} | {fmt(r.get('exposed_comm_ms'))} "
            + (f"| {r['comm_ms']:.2f} ({r['comm_bytes'] / 1e6:.1f}) " if "comm_ms" in r else "| — ")
            + f"| {fmt(r.get('speedup'))} "
            f"| {peak} | {fmt(diffs[0], '.1e') if diffs else '—'} "
            f"| {fmt(max(diffs[1:]), '.1e') if len(diffs) > 1 else '—'} "
            f"| {fmt(max(f32), '.1e') if f32 else '—'} |")
    cap = summary.get("capacity")
    if cap:
        lines += ["", f"Capacity: {fmt(cap['bytes_per_gaussian'], '.0f')} bytes per Gaussian (one GPU, "
                  f"cutoff {cap['cutoff']}, fitted between the cases' peaks); one GPU's "
                  f"{cap['gpu_gib']:.0f} GiB would hold about {cap['n_one_gpu']:.3g} Gaussians; "
                  f"N_big = {cap['N']:.3g}."]
    return "\n".join(lines) + "\n"


def driver(args):
    from gaussfield._devices import device_name

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    if cuda:
        count = torch.cuda.device_count()
        world = args.gpus or count
        if count < 2 or world > count:
            raise SystemExit(f"needs {max(world, 2)} GPUs, sees {count}")
    else:
        world = args.gpus or 2
    # the driver leaves CUDA alone (a context of its own would take memory from GPU 0):
    # the workers report the card, its memory and NCCL's version
    began = time.time()
    singles = launch(args, 1, args.cases, work / "single.json", modes="single")
    cut = ",".join(c for c in args.cases.split(",") if parse_case(c)["cutoff"] is not None)
    singles64 = launch(args, 1, cut, work / "single64.json", dtype="float64", modes="single") \
        if cut and args.float64 else []
    records = launch(args, world, args.cases, work / "multi.json", modes=args.modes)
    capacity = None
    if args.capacity != "none" and cuda:
        total = next((r["total_gib"] * 2**30 for r in singles if "total_gib" in r), None)
        per, n_one = capacity_n(singles, total) if total else (None, None)
        if per:
            k = float(args.capacity)
            n_big = int(math.ceil(1.6 * n_one / 1e7) * 1e7)
            capacity = {"cutoff": k, "bytes_per_gaussian": per, "n_one_gpu": n_one, "N": n_big,
                        "gpu_gib": total / 2**30}
            print(f"capacity: {per:.0f} bytes per Gaussian, one GPU ~{n_one:.3g}; trying {n_big:.3g}",
                  flush=True)
            big = f"{n_big}:{k:g}:{args.capacity_steps}"
            one = launch(args, 1, big, work / "big-single.json", modes="single", timeout=args.capacity_timeout)
            many = launch(args, world, big, work / "big-multi.json", modes="shard", timeout=args.capacity_timeout)
            for r in one + many:
                r["capacity_case"] = True
            singles += one
            records += many
    compare(records, singles, singles64)
    summary = {"date": _dt.date.today().isoformat(), "torch": torch.__version__,
               "cuda": torch.version.cuda,
               "device": next((r["device"] for r in singles + records if "device" in r),
                              device_name(torch.device("cpu"))),
               "world_size": world, "nccl": next((r["nccl"] for r in records if "nccl" in r), None),
               "nvls": os.environ.get("NCCL_NVLS_ENABLE"), "batch": args.batch,
               "wall_s": time.time() - began, "capacity": capacity,
               "records": singles + singles64 + records}
    card = "".join(c if c.isalnum() else "-" for c in summary["device"].lower()).strip("-")
    name = f"distributed-{card}-x{world}{'-' + args.tag if args.tag else ''}-{summary['date']}"
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{name}.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if records and all(not r["oom"] or r.get("capacity_case") for r in records) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="/tmp/bench-distributed", help="the runs' own records")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gpus", type=int, default=0, help="K (default: every GPU seen)")
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--cases", default="1e6:none:4,1e7:none:2,1e6:6:20,1e7:6:20",
                    help="N:cutoff:steps, comma-separated")
    ap.add_argument("--modes", default="ddp,shard")
    ap.add_argument("--alone", type=int, default=10,
                    help="pairs of steps with and without communication per multi-GPU record "
                         "(at most the case's steps)")
    ap.add_argument("--no-float64", dest="float64", action="store_false")
    ap.add_argument("--capacity", default="6")
    ap.add_argument("--capacity-steps", type=int, default=4)
    ap.add_argument("--capacity-timeout", type=float, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="a word in the result files' names")
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args) or 0
    return driver(args)


if __name__ == "__main__":
    # a worker leaves through gaussfield.distributed.shutdown (a barrier, the group
    # destroyed, no interpreter finalization, where torch 2.13's gloo threads can abort)
    from gaussfield.distributed import shutdown

    shutdown(main())
