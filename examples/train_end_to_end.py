# SPDX-License-Identifier: Apache-2.0
"""Train the notebook's Gaussian field to fit a 3D density: the user's script, with the
implementation of the forward chosen by a flag.

    --impl loop      the notebook's LearnableGaussianField (one solve per Gaussian)
    --impl batched   the notebook's FastLearnableGaussianField (one solve over [B, N, 3, 3])
    --impl fused     the same class, after the one-line drop-in
                         FastLearnableGaussianField.forward = gaussfield.fused_forward

Everything else (model, initialisation, data, optimiser, loss) is shared, so the same
--seed and --dtype float64 give the same loss curve for batched and fused.

The target is the 3D Shepp-Logan head phantom, built in (examples/phantom.py), or a
volume of yours: --target scan.nii.gz (NIfTI, with its affine; a 4-D file gives its first
volume) or --target vol.npy (a [D, H, W] array; --lo/--hi give its box), carried into the
model's [0, 10]^3 volume by one per-axis scale and shift (an oblique grid stays oblique).

    --loss points    (default) each step draws --batch uniform random points
    --loss volume    each step voxelizes the field (gaussfield.voxelize) on the target's
                     whole grid (the phantom on the --grid^3 grid; a file on its own
                     voxels), or on a random N^3 subvolume with --subvolume N
    --criterion      mse (default) or l1

The field is judged on the phantom's --grid^3 grid of voxel centres (a file: on its own
voxels), at --evals checkpoints during training (the clock paused), and at 2^15 random
points between the centres ("off-grid"); the script prints the PSNR and the time per
step, and writes into --out:

    <stem>-loss.png    the loss curve
    <stem>-slice.png   the central slice (axis 2), target beside prediction
    <stem>.json        the settings, the losses of every step, PSNR, time per step, and
                       the PSNR-against-training-time curve

    python examples/train_end_to_end.py                       # GPU if there is one
    python examples/train_end_to_end.py --impl batched --steps 100
    python examples/train_end_to_end.py --target my_volume.npy --gaussians 5000
    python examples/train_end_to_end.py --cutoff 6 --save field.pt   # f_k, k = 6; keep the field
    python examples/train_end_to_end.py --loss volume --cutoff 3 --subvolume 32
    python examples/train_end_to_end.py --target scan.nii.gz --loss volume --cutoff 3 --nifti fit.nii.gz

--cutoff K sets the model's cutoff (``model.cutoff = K``, honoured by fused_forward): the
field becomes f_k, the sum of the terms with Mahalanobis distance at most K, which
gaussfield culls (it evaluates only the pairs that can pass).  The GPU defaults train a
field of 100,000 Gaussians on 2^18 points a step with K = 6, a size that only culling
trains quickly (--cutoff none for the exact field); on a CPU there is no cutoff by
default.  On a GPU the points of each step are drawn on the device by default (--points
device; drawing 2^18 points on the host costs about as much as a culled step), on a CPU
on the host (--points host), as before.  --save PATH writes the model's state_dict at the
end (benchmarks/bench_cull.py measures such a trained field).  --nifti PATH writes the
trained field voxelized on the target's grid as NIfTI, with the target's affine (world
coordinates), for the viewer you already use.
"""
import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import gaussfield
from gaussfield._common import DEFAULT_EPS
from gaussfield._devices import device_name, slug
from gaussfield.notebook import FastLearnableGaussianField, LearnableGaussianField
from cli import cutoff_arg  # examples/cli.py, beside this script
from phantom import grid_points, target_from_args  # examples/phantom.py, beside this script

VOLUME = 10.0  # the notebook's volume_size

# Defaults per device: a CPU run finishes in well under two minutes on two cores; the GPU
# defaults are a field that only culling (the cutoff) trains quickly.
DEFAULTS = {
    "cpu": dict(gaussians=2000, batch=4096, steps=2000, grid=64, cutoff=None, points="host"),
    "cuda": dict(gaussians=100_000, batch=2**18, steps=3000, grid=128, cutoff=6.0, points="device"),
}


class Progress:
    """tqdm over the training steps, with steps/s and the loss: redrawn every 0.2 s on a
    terminal, every tenth of the run in a log.  The loss is read back (a synchronisation
    on a GPU) only for a redraw."""

    def __init__(self, total, quiet):
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // 10)
        cadence = dict(mininterval=0.2) if self.tty else dict(mininterval=0, miniters=self.every)
        self.bar = tqdm(total=total, unit="step", disable=quiet, **cadence)
        self.shown_at = -math.inf

    def update(self, loss):
        """One step done; ``loss`` its 0-d loss tensor."""
        if self.bar.disable:
            return
        done, now = self.bar.n + 1, time.perf_counter()
        if (now - self.shown_at >= 0.2 if self.tty else done % self.every == 0) or done == self.bar.total:
            self.bar.set_postfix(loss=f"{loss.item():.6f}", refresh=False)
            self.shown_at = now
        self.bar.update()

    def close(self):
        self.bar.close()


def voxelize_model(model, grid, **box):
    """The model's field on a grid (gaussfield.voxelize), with what fused_forward reads."""
    cov = model.cov_tril if model.use_full_cov else model.log_scales
    return gaussfield.voxelize(model.means, cov.to(model.means.dtype), model.weights, **grid, **box,
                               eps=DEFAULT_EPS, cutoff=getattr(model, "cutoff", None))


def train(model, target, args, device, sync, checkpoint):
    """Adam on fresh random points every step (--loss points) or on the voxelized field
    against the target volume (--loss volume); with --cuda-graph, steps from the fourth
    on replay one CUDA graph of the whole step (forward, loss, backward, Adam), the
    points and the target's values at them (the data, computed outside the graph)
    copied into its static inputs first.  ``checkpoint()`` runs after the steps in
    ``args.eval_steps`` with the clock stopped; returns (losses, s/step, curve)."""
    graphed = args.cuda_graph
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, capturable=graphed)
    criterion = F.l1_loss if args.criterion == "l1" else F.mse_loss
    # the data: with --points host the same on every device
    on_device = args.points == "device"
    points = (torch.Generator(device) if on_device else torch.Generator()).manual_seed(args.seed + 1)
    losses = torch.empty(args.steps, dtype=torch.float64, device=device)
    progress = Progress(args.steps, args.quiet)
    if args.loss == "volume":
        volume, grid = target.training_volume(args.grid, torch.get_default_dtype(), device)
        shape = volume.shape
        sub = tuple(min(args.subvolume, d) for d in shape) if args.subvolume else None
        corners = torch.Generator().manual_seed(args.seed + 1)

    def step(x, t):
        loss = criterion(model(x), t)
        loss.backward()
        opt.step()
        return loss.detach()

    def volume_step():
        if sub is None:
            loss = criterion(voxelize_model(model, grid), volume)
        else:  # a random subvolume: integer offsets, so torch.compile would not recompile
            o = [int(torch.randint(0, d - s + 1, (), generator=corners)) for d, s in zip(shape, sub)]
            pred = voxelize_model(model, grid, offset=o, size=sub)
            loss = criterion(pred, volume[o[0]:o[0] + sub[0], o[1]:o[1] + sub[1], o[2]:o[2] + sub[2]])
        loss.backward()
        opt.step()
        return loss.detach()

    warmup = 3  # eager steps before capture (on a side stream, as CUDA graphs ask)
    # timed from the first step after warm-up and capture (both modes alike, so the
    # times compare); from step 1 in short runs
    timed_from = warmup + 1 if args.steps > warmup + 1 else 1
    side = torch.cuda.Stream(device) if graphed else None
    static_x, static_t, static_loss, graph = None, None, None, None
    start = None
    curve, trained_s = [], 0.0   # training time from step 0, checkpoints excluded
    sync()
    clock = time.perf_counter()
    for step_index in range(args.steps):
        if step_index == timed_from:
            sync()
            start = time.perf_counter()
        if args.loss == "volume":
            opt.zero_grad(set_to_none=True)
            losses[step_index] = volume_step()
            progress.update(losses[step_index])
            if step_index + 1 in args.eval_steps:
                sync()
                now = time.perf_counter()
                trained_s += now - clock
                curve.append({"step": step_index + 1, "train_s": trained_s, "psnr_db": checkpoint()})
                if start is not None:
                    start += time.perf_counter() - now
                clock = time.perf_counter()
            continue
        x = target.sample(args.batch, points, device, on_device)
        t = target(x)
        if not graphed:
            opt.zero_grad(set_to_none=True)
            losses[step_index] = step(x, t)
        elif step_index < warmup:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                opt.zero_grad(set_to_none=True)
                losses[step_index] = step(x, t)
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            if graph is None:
                static_x, static_t = x.clone(), t.clone()
                graph = torch.cuda.CUDAGraph()
                opt.zero_grad(set_to_none=True)  # the graph's backward writes fresh grads
                with torch.cuda.graph(graph):
                    static_loss = step(static_x, static_t)
            static_x.copy_(x)
            static_t.copy_(t)
            graph.replay()
            losses[step_index] = static_loss
        progress.update(losses[step_index])
        if step_index + 1 in args.eval_steps:
            sync()
            now = time.perf_counter()
            trained_s += now - clock
            curve.append({"step": step_index + 1, "train_s": trained_s, "psnr_db": checkpoint()})
            if start is not None:  # the checkpoint is not training time
                start += time.perf_counter() - now
            clock = time.perf_counter()
    sync()
    per_step = ((time.perf_counter() - start) / (args.steps - timed_from)
                if args.steps > 1 else float("nan"))
    progress.close()
    return losses.tolist(), per_step, curve


def psnr_db(pred, truth):
    mse = F.mse_loss(pred, truth).item()
    peak = (truth.max() - truth.min()).item() or 1.0
    return 10 * math.log10(peak**2 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def evaluate(model, target, args, device, dtype):
    """PSNR on the evaluation grid, (truth, prediction) there."""
    grid, truth = target.evaluation(args.grid, dtype, device)
    flat = grid.reshape(-1, 3)
    # the notebook's versions hold [chunk, N, 3, 3]: keep that near 2^22 pairs
    chunk = flat.shape[0] if args.impl == "fused" else max(1, 2**22 // args.gaussians)
    pred = torch.cat([model(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
    shape = grid.shape[:3]
    return psnr_db(pred, truth.reshape(-1)), truth.reshape(shape), pred.reshape(shape)


@torch.no_grad()
def evaluate_off_grid(model, target, args, device):
    """PSNR at 2^15 uniform random points of the target's region (fixed seed), against
    the target there (the analytic phantom; a file's trilinear interpolation)."""
    x = target.sample(2**15, torch.Generator().manual_seed(12345), device, False)
    return psnr_db(model(x), target(x))


def write_pictures(stem, losses, truth, pred, title, extent=(0, VOLUME, 0, VOLUME)):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install matplotlib)")
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(range(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (training batch or volume)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{stem}-loss.png", dpi=120)
    plt.close(fig)

    k = truth.shape[2] // 2
    t, p = truth[:, :, k].cpu().T, pred[:, :, k].cpu().T  # rows: axis 1, columns: axis 0
    lo, hi = float(t.min()), float(t.max())
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), layout="constrained")
    for ax, img, name in [(axes[0], t, "target"), (axes[1], p, "prediction")]:
        im = ax.imshow(img.float().numpy(), origin="lower", cmap="gray", vmin=lo, vmax=hi,
                       extent=extent)
        ax.set_title(f"{name}, central slice of axis 2", fontsize=9)
        ax.set_xlabel("x0" if extent[1] == VOLUME else "voxel index, axis 0")
        ax.set_ylabel("x1" if extent[1] == VOLUME else "voxel index, axis 1")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(f"{stem}-slice.png", dpi=120)
    plt.close(fig)
    return [f"{stem}-loss.png", f"{stem}-slice.png"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["loop", "batched", "fused"], default="fused")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--gaussians", type=int, help="number of Gaussians (default: per device)")
    ap.add_argument("--batch", type=int, help="points per step (default: per device)")
    ap.add_argument("--steps", type=int, help="training steps (default: per device)")
    ap.add_argument("--grid", type=int, help="evaluation grid resolution (default: per device)")
    ap.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    ap.add_argument("--diagonal", action="store_true", help="diagonal covariances (use_full_cov=False)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", metavar="VOL",
                    help="fit this volume instead of the phantom: NIfTI (.nii, .nii.gz; a 4-D file's first "
                         "volume) or .npy [D, H, W]")
    ap.add_argument("--lo", type=float, nargs=3, help="a .npy target's box: lower corner (world)")
    ap.add_argument("--hi", type=float, nargs=3, help="a .npy target's box: upper corner (world)")
    ap.add_argument("--loss", choices=["points", "volume"], default="points",
                    help="points: random points each step (default); volume: voxelize against the target volume")
    ap.add_argument("--criterion", choices=["mse", "l1"], default="mse", help="the loss (default mse)")
    ap.add_argument("--subvolume", type=int, metavar="N",
                    help="--loss volume: a random N^3 subvolume per step instead of the whole volume")
    ap.add_argument("--evals", type=int, default=10,
                    help="PSNR checkpoints during training (the clock stopped), default 10")
    ap.add_argument("--nifti", metavar="PATH",
                    help="write the trained field voxelized on the target's grid as NIfTI (target's affine)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="directory for the pictures and the JSON (default: examples/results)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture the whole training step in one CUDA graph (fused, CUDA only)")
    ap.add_argument("--cutoff", metavar="K",
                    help="Mahalanobis cutoff radius of the field (fused only; 'none': exact field; "
                         "default: 6 on a GPU, none on a CPU)")
    ap.add_argument("--points", choices=["host", "device"],
                    help="where each step's random points are drawn (default: device on a GPU, host on a CPU)")
    ap.add_argument("--save", metavar="PATH", help="write the model's state_dict here at the end")
    args = ap.parse_args(argv)
    if args.cuda_graph and (args.impl != "fused" or not args.device.startswith("cuda")):
        ap.error("--cuda-graph needs --impl fused on a CUDA device")
    if args.loss == "volume" and (args.impl != "fused" or args.cuda_graph):
        ap.error("--loss volume needs --impl fused (gaussfield.voxelize) and no --cuda-graph")
    if args.subvolume is not None and (args.loss != "volume" or args.subvolume < 1):
        ap.error("--subvolume N needs --loss volume and N >= 1")
    if (args.lo is None) != (args.hi is None) or (args.lo is not None and not
                                                  str(args.target or "").lower().endswith(".npy")):
        ap.error("--lo and --hi go together, with a .npy --target")
    cutoff_given = args.cutoff is not None
    for key, value in DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if isinstance(args.cutoff, str):
        try:
            args.cutoff = cutoff_arg(args.cutoff)
        except ValueError as e:
            ap.error(f"--cutoff: {e}")
    if args.cutoff is not None and args.impl != "fused":
        if cutoff_given:
            ap.error("--cutoff needs --impl fused (the notebook's forward has no cutoff)")
        args.cutoff = None  # the device's default cutoff is the fused forward's
    for key in ("gaussians", "batch", "steps", "grid", "evals"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be at least 1")
    # the checkpoints: evenly spaced, the last step always among them
    args.eval_steps = sorted({max(1, round(args.steps * (i + 1) / args.evals)) for i in range(args.evals)})
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    # The notebook's classes build their tensors in the default dtype.
    torch.set_default_dtype(dtype)

    if args.impl == "fused":
        FastLearnableGaussianField.forward = gaussfield.fused_forward  # the one-line drop-in

    torch.manual_seed(args.seed)
    cls = LearnableGaussianField if args.impl == "loop" else FastLearnableGaussianField
    model = cls(args.gaussians, volume_size=VOLUME, use_full_cov=not args.diagonal).to(device)
    if args.cutoff is not None:
        model.cutoff = args.cutoff  # honoured by fused_forward: f_k, culled
    target = target_from_args(args.target, VOLUME, args.lo, args.hi)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"{args.impl}: {args.gaussians} Gaussians ({'diagonal' if args.diagonal else 'full'} "
          f"covariance), {args.dtype}, fitting the {target.name} on {device_name(device)}; "
          + (f"{args.steps} Adam steps of {args.batch} random points (drawn on the {args.points})"
             if args.loss == "points" else
             f"{args.steps} Adam steps against the volume"
             + (f" ({args.subvolume}^3 subvolumes)" if args.subvolume else ""))
          + f", {args.criterion}" + (f"; cutoff {args.cutoff:g}" if args.cutoff is not None else ""))
    losses, per_step, curve = train(model, target, args, device, sync,
                                    lambda: evaluate(model, target, args, device, dtype)[0])
    psnr, truth, pred = evaluate(model, target, args, device, dtype)
    psnr_off = evaluate_off_grid(model, target, args, device)

    date = _dt.date.today().isoformat()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cut = f"-cut{args.cutoff:g}" if args.cutoff is not None else ""
    mode = "" if args.loss == "points" else f"-volume{args.subvolume or ''}"
    mode += "" if args.target is None else "-" + Path(args.target).name.split(".")[0]
    stem = out / f"train-{args.impl}{mode}{cut}{'-graph' if args.cuda_graph else ''}-{slug(device)}-{date}"
    data = f"{args.batch} points" if args.loss == "points" else (
        f"{args.subvolume}^3 subvolumes" if args.subvolume else "the volume")
    title = (f"{args.impl}, N={args.gaussians}, {args.steps} steps of {data}, "
             + (f"cutoff {args.cutoff:g}, " if args.cutoff is not None else "") +
             f"{device_name(device)}, {date}: PSNR {psnr:.2f} dB")
    extent = (0, VOLUME, 0, VOLUME) if args.target is None else (0, truth.shape[0], 0, truth.shape[1])
    files = write_pictures(stem, losses, truth, pred, title, extent)
    voxelizer = gaussfield.voxelize if hasattr(gaussfield, "voxelize") else None
    summary = {"date": date, "device": device_name(device), "torch": torch.__version__,
               "args": vars(args), "target": target.name, "psnr_db": psnr,
               "psnr_off_grid_db": psnr_off, "ms_per_step": per_step * 1e3, "curve": curve,
               "voxelize": None if voxelizer is None else getattr(voxelizer, "__module__", None),
               "losses": losses}
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))
    files.append(f"{stem}.json")
    if args.nifti:
        from gaussfield.io import box_affine, write_nifti
        with torch.no_grad():  # the target's grid; a file's own affine (world coordinates)
            field = voxelize_model(model, target.grid(args.grid))
        world = box_affine(field.shape, (0.0,) * 3, (VOLUME,) * 3) if args.target is None else target.scan.affine
        Path(args.nifti).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(args.nifti, field, world)
        files.append(args.nifti)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
        files.append(args.save)

    judged = f"the {args.grid}^3 grid" if args.target is None else "the target's voxels"
    print(f"loss {losses[0]:.6f} -> {losses[-1]:.6f}; PSNR {psnr:.2f} dB on {judged} "
          f"({psnr_off:.2f} dB off-grid); {per_step * 1e3:.2f} ms per step")
    print("wrote " + ", ".join(files))
    return 0 if all(math.isfinite(v) for v in losses) else 1


if __name__ == "__main__":
    raise SystemExit(main())
