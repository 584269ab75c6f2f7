# SPDX-License-Identifier: Apache-2.0
"""Train a Gaussian field on several processes (and GPUs) with torch.distributed.

    torchrun --nproc-per-node K examples/train_distributed.py --mode ddp   --out runs/ddp
    torchrun --nproc-per-node K examples/train_distributed.py --mode shard --out runs/shard
    python examples/train_distributed.py ...      # one process, no process group

Two ways to split a step over K ranks:

    --mode ddp     data parallel: every rank holds the whole field (a gaussfield.GaussianField
                   in DistributedDataParallel) and evaluates its own B / K of the step's B
                   points; DDP all-reduces the gradients (about 10 N numbers) in the backward.
    --mode shard   Gaussian sharding: every rank holds N / K of the Gaussians
                   (gaussfield.distributed.ShardedGaussianField) and evaluates them at all
                   B points; the partial fields (B numbers) are summed by one all-reduce in
                   the forward, and nothing is communicated in the backward.  Parameters and
                   optimiser state are split K ways: for fields that outgrow one device.

It fits the target of examples/train_end_to_end.py (the 3D Shepp-Logan phantom, or
--target vol.npy) with the same model (the notebook's initialisation, drawn from --seed)
and the same random points (--batch uniform points a step, from a generator seeded with
--seed + 1).  Runs are deterministic and comparable across K: every rank builds the same
initial field, in shard mode every rank draws the same points, and in ddp mode every
rank draws the whole batch and keeps its contiguous B / K slice, so the union over the
ranks is exactly the batch of a one-process run.  The loss is the mean squared error
over the whole batch, so a K-process run follows the one-process run to float rounding
(tests/test_distributed.py).

On CPUs the ranks talk through gloo, on GPUs through NCCL, one GPU per rank
(LOCAL_RANK); --device auto takes the GPUs where there are any.  Rank 0 writes into --out:

    losses.json   the loss of every step (a list)
    run.json      the settings, world size, backend, device, time per step, PSNR
    field.pt      the trained field's state_dict (gathered from the shards in shard mode),
                  loadable into gaussfield.GaussianField(N, use_full_cov=...)
"""
import argparse
import datetime as _dt
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gaussfield
from gaussfield.distributed import ShardedGaussianField, shutdown
from gaussfield._devices import device_name
from cli import cutoff_arg  # examples/cli.py, beside this script
from phantom import grid_points, target_from_args  # examples/phantom.py, beside this script

VOLUME = 10.0  # the notebook's volume_size, as in train_end_to_end.py

DEFAULTS = {
    "cpu": dict(gaussians=2000, batch=4096, steps=200, grid=32, cutoff=None),
    "cuda": dict(gaussians=100_000, batch=2**18, steps=1000, grid=128, cutoff=6.0),
}
# SGD's step on a Gaussian scales with its share of the volume, ~1/N, so its learning rate
# grows with N: 3.0 at N = 2,000 (the best of 0.1 ... 100 over 200 steps on the phantom).
# Adam's normalised step does not care (train_end_to_end.py's 0.01).
ADAM_LR = 0.01
SGD_LR_PER_GAUSSIAN = 3.0 / 2000


def world_from_env():
    """(rank, local rank, world size) as torchrun sets them; one process without it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    return 0, 0, 1


def parse_args(argv=None, world_size=1, rank=0):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ddp", "shard"], default="ddp",
                    help="ddp: each rank the whole field and B/K points; shard: each rank N/K "
                         "Gaussians and all B points (default: ddp)")
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="cuda: NCCL, one GPU per rank; cpu: gloo (default: cuda where there is a GPU)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--gaussians", type=int, help="N, Gaussians of the whole field (default: per device)")
    ap.add_argument("--batch", type=int, help="B, points per step over all ranks (default: per device)")
    ap.add_argument("--steps", type=int, help="training steps (default: per device)")
    ap.add_argument("--lr", type=float,
                    help=f"learning rate (default: Adam {ADAM_LR}, SGD {SGD_LR_PER_GAUSSIAN:g} x N)")
    ap.add_argument("--cutoff", metavar="K",
                    help="Mahalanobis cutoff radius of the field ('none': exact field; default: "
                         "6 on a GPU, none on a CPU)")
    ap.add_argument("--diagonal", action="store_true", help="diagonal covariances (use_full_cov=False)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", metavar="VOL.npy", help="fit this [D, H, W] volume instead of the phantom")
    ap.add_argument("--grid", type=int, help="PSNR on a grid^3 grid at the end; 0: none (default: per device)")
    ap.add_argument("--out", required=True, help="directory where rank 0 writes losses.json, run.json, field.pt")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)

    def fail(message):
        # every rank finds the same error; one message is enough
        if rank == 0:
            ap.error(message)
        raise SystemExit(2)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA GPU")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if isinstance(args.cutoff, str):
        try:
            args.cutoff = cutoff_arg(args.cutoff)
        except ValueError as e:
            fail(f"--cutoff: {e}")
    for key in ("gaussians", "batch", "steps"):
        if getattr(args, key) < 1:
            fail(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.grid < 0:
        fail(f"--grid must be 0 (no evaluation) or more, got {args.grid}")
    if args.mode == "shard" and args.gaussians < world_size:
        fail(f"--mode shard splits the Gaussians over the ranks: --gaussians {args.gaussians} "
             f"is fewer than the {world_size} ranks")
    if args.mode == "ddp" and args.batch < world_size:
        fail(f"--mode ddp splits each step's points over the ranks: --batch {args.batch} is "
             f"fewer than the {world_size} ranks")
    if args.lr is None:
        args.lr = ADAM_LR if args.optimizer == "adam" else SGD_LR_PER_GAUSSIAN * args.gaussians
    if not (math.isfinite(args.lr) and args.lr > 0):
        fail(f"--lr must be a finite number > 0, got {args.lr}")
    return args


def setup(args, rank, local_rank, world_size):
    """The device of this rank and, under torchrun, the process group."""
    if args.device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"rank {rank}: local rank {local_rank} has no GPU of its own "
                             f"({torch.cuda.device_count()} visible); one GPU per rank")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def build_model(args, device, world_size):
    """The same initial field on every rank (and in a one-process run): the notebook's
    initialisation drawn from --seed, whole, then (shard mode) this rank's slice of it.
    The whole field is built on the host, so only the slice reaches the device."""
    torch.manual_seed(args.seed)
    field = gaussfield.GaussianField(args.gaussians, volume_size=VOLUME, use_full_cov=not args.diagonal,
                                     cutoff=args.cutoff)
    if args.mode == "shard":
        return ShardedGaussianField.from_field(field).to(device)
    field = field.to(device)
    if world_size == 1:
        return field
    return DistributedDataParallel(field, device_ids=[device.index] if device.type == "cuda" else None)


def train(model, target, args, device, rank, world_size):
    """--steps steps; returns the per-step losses (MSE over the whole batch) and the time
    per step from the second step on."""
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    ddp = args.mode == "ddp"
    # The points of a step are the same numbers in every mode and on every rank: one
    # generator per rank, seeded alike, drawing the whole batch.  In ddp mode each rank
    # keeps its contiguous slice (drawing B * 3 numbers to use B * 3 / K costs far less
    # than the step's B / K x N pairs).
    generator = torch.Generator(device).manual_seed(args.seed + 1)
    start, stop = ((args.batch * rank // world_size, args.batch * (rank + 1) // world_size)
                   if ddp else (0, args.batch))
    # DDP averages the ranks' gradients (divides by K); scaling each rank's sum of squared
    # errors by K / B makes that average the gradient of the batch's mean, also where B / K
    # is not an integer.  In shard mode the K ranks compute the same loss (the same total
    # at the same points): the mean over the batch, as is.
    loss_scale = world_size if ddp else 1
    squared_sums = torch.zeros(args.steps, dtype=torch.float64, device=device)
    report_every = max(1, args.steps // 10)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    began = None
    for step in range(args.steps):
        if step == 1:
            sync()
            began = time.perf_counter()
        x = (torch.rand(args.batch, 3, generator=generator, device=device) * VOLUME)[start:stop]
        squared = (model(x) - target(x)).square().sum()
        loss = squared * loss_scale / args.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        squared_sums[step] = squared.detach()
        if not args.quiet and ((step + 1) % report_every == 0 or step + 1 == args.steps):
            # all ranks take part in this all-reduce: the schedule is the same on each
            now = squared_sums[step].clone()
            if ddp and world_size > 1:
                dist.all_reduce(now)
            if rank == 0:
                rate = "" if began is None else f", {step / (time.perf_counter() - began):.1f} steps/s"
                print(f"step {step + 1}/{args.steps}: loss {now.item() / args.batch:.6f}{rate}", flush=True)
    sync()
    per_step = (time.perf_counter() - began) / (args.steps - 1) if args.steps > 1 else float("nan")
    if ddp and world_size > 1:
        # each rank holds its slice's sums; one all-reduce for the run, not one a step
        dist.all_reduce(squared_sums)
    return (squared_sums / args.batch).tolist(), per_step


def whole_state_dict(model, args):
    """The trained field's parameters, whole, on every rank (a collective in shard mode)."""
    if args.mode == "shard":
        return model.gather_state_dict()
    field = model.module if isinstance(model, DistributedDataParallel) else model
    return {name: tensor.detach() for name, tensor in field.state_dict().items()}


@torch.no_grad()
def psnr(state, target, args, device):
    field = gaussfield.GaussianField(args.gaussians, volume_size=VOLUME, use_full_cov=not args.diagonal,
                                     cutoff=args.cutoff).to(device)
    field.load_state_dict(state)
    grid = grid_points(args.grid, VOLUME, dtype=torch.get_default_dtype(), device=device).reshape(-1, 3)
    truth = target(grid)
    mse = torch.nn.functional.mse_loss(field(grid), truth).item()
    peak = (truth.max() - truth.min()).item() or 1.0
    return 10 * math.log10(peak**2 / mse) if mse > 0 else float("inf")


def main(argv=None):
    rank, local_rank, world_size = world_from_env()
    args = parse_args(argv, world_size, rank)
    # the notebook's class builds its tensors in the default dtype (as train_end_to_end.py)
    torch.set_default_dtype(getattr(torch, args.dtype))
    device = setup(args, rank, local_rank, world_size)
    target = target_from_args(args.target, VOLUME)
    model = build_model(args, device, world_size)
    if rank == 0:
        backend = dist.get_backend() if world_size > 1 else "none (one process)"
        split = (f"{args.batch} points a step split over {world_size} ranks, each the whole field"
                 if args.mode == "ddp" else
                 f"{args.gaussians} Gaussians split over {world_size} ranks, each all {args.batch} points")
        print(f"{args.mode}: {world_size} rank(s) on {device_name(device)}, backend {backend}; {split}; "
              f"{args.steps} {args.optimizer} steps (lr {args.lr:g}), {args.dtype}, fitting the "
              f"{target.name}" + (f"; cutoff {args.cutoff:g}" if args.cutoff is not None else ""),
              flush=True)
    losses, per_step = train(model, target, args, device, rank, world_size)
    state = whole_state_dict(model, args)
    return report(losses, per_step, state, target, args, device, world_size) if rank == 0 else 0


def report(losses, per_step, state, target, args, device, world_size):
    """Rank 0's files and summary line; the exit code."""
    quality = psnr(state, target, args, device) if args.grid > 0 else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "losses.json").write_text(json.dumps(losses))
    torch.save({name: tensor.cpu() for name, tensor in state.items()}, out / "field.pt")
    summary = {"date": _dt.date.today().isoformat(), "torch": torch.__version__,
               "device": device_name(device), "world_size": world_size,
               "backend": dist.get_backend() if world_size > 1 else None, "args": vars(args),
               "target": target.name, "psnr_db": quality,
               "ms_per_step": per_step * 1e3 if math.isfinite(per_step) else None,
               "first_loss": losses[0], "last_loss": losses[-1]}
    (out / "run.json").write_text(json.dumps(summary, indent=1))
    print(f"loss {losses[0]:.6f} -> {losses[-1]:.6f}; "
          + (f"PSNR {quality:.2f} dB on the {args.grid}^3 grid; " if quality is not None else "")
          + (f"{per_step * 1e3:.2f} ms per step; " if math.isfinite(per_step) else "")
          + f"wrote {out}/losses.json, run.json, field.pt")
    return 0 if all(math.isfinite(v) for v in losses) else 1


if __name__ == "__main__":
    # every rank: a barrier, the process group destroyed, and an exit without the
    # interpreter's finalization, where torch 2.13's gloo threads can abort a finished run
    # (gaussfield.distributed.shutdown); an ordinary exit without a process group
    shutdown(main())
