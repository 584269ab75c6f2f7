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
volume of yours (--target vol.npy, a [D, H, W] array), stretched over the model's
[0, 10]^3 volume.  Each step draws --batch uniform random points; at the end the field
is evaluated on a regular --grid^3 grid of voxel centres, and the script prints the PSNR
there and the time per step, and writes into --out:

    <stem>-loss.png    the loss curve
    <stem>-slice.png   the central slice (axis 2), target beside prediction
    <stem>.json        the settings, the losses of every step, PSNR, time per step

    python examples/train_end_to_end.py                       # GPU if there is one
    python examples/train_end_to_end.py --impl batched --steps 100
    python examples/train_end_to_end.py --target my_volume.npy --gaussians 5000
    python examples/train_end_to_end.py --cutoff 6 --save field.pt   # f_k, k = 6; keep the field

--cutoff K sets the model's cutoff (``model.cutoff = K``, honoured by fused_forward): the
field becomes f_k, the sum of the terms with Mahalanobis distance at most K, which
gaussfield culls (it evaluates only the pairs that can pass).  The GPU defaults train a
field of 100,000 Gaussians on 2^18 points a step with K = 6, a size that only culling
trains quickly (--cutoff none for the exact field); on a CPU there is no cutoff by
default.  On a GPU the points of each step are drawn on the device by default (--points
device; drawing 2^18 points on the host costs about as much as a culled step), on a CPU
on the host (--points host), as before.  --save PATH writes the model's state_dict at the
end (benchmarks/bench_cull.py measures such a trained field).
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


def train(model, target, args, device, sync):
    """Adam on fresh random points every step; with --cuda-graph, steps from the fourth
    on replay one CUDA graph of the whole step (forward, loss, backward, Adam), the
    points and the target's values at them (the data, computed outside the graph)
    copied into its static inputs first."""
    graphed = args.cuda_graph
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, capturable=graphed)
    # the data: with --points host the same on every device
    on_device = args.points == "device"
    points = (torch.Generator(device) if on_device else torch.Generator()).manual_seed(args.seed + 1)
    losses = torch.empty(args.steps, dtype=torch.float64, device=device)
    progress = Progress(args.steps, args.quiet)

    def step(x, t):
        loss = F.mse_loss(model(x), t)
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
    for step_index in range(args.steps):
        if step_index == timed_from:
            sync()
            start = time.perf_counter()
        if on_device:
            x = torch.rand(args.batch, 3, generator=points, device=device) * VOLUME
        else:
            x = (torch.rand(args.batch, 3, generator=points) * VOLUME).to(device)
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
    sync()
    per_step = ((time.perf_counter() - start) / (args.steps - timed_from)
                if args.steps > 1 else float("nan"))
    progress.close()
    return losses.tolist(), per_step


@torch.no_grad()
def evaluate(model, target, args, device, dtype):
    grid = grid_points(args.grid, VOLUME, dtype=dtype, device=device)
    flat = grid.reshape(-1, 3)
    # the notebook's versions hold [chunk, N, 3, 3]: keep that near 2^22 pairs
    chunk = flat.shape[0] if args.impl == "fused" else max(1, 2**22 // args.gaussians)
    pred = torch.cat([model(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
    truth = target(flat)
    mse = F.mse_loss(pred, truth).item()
    peak = (truth.max() - truth.min()).item() or 1.0
    psnr = 10 * math.log10(peak**2 / mse) if mse > 0 else float("inf")
    shape = grid.shape[:3]
    return psnr, truth.reshape(shape), pred.reshape(shape)


def write_pictures(stem, losses, truth, pred, title):
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
    ax.set_ylabel("MSE loss (training batch)")
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
                       extent=(0, VOLUME, 0, VOLUME))
        ax.set_title(f"{name}, slice x2 = {VOLUME / 2:g}", fontsize=9)
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
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
    ap.add_argument("--target", metavar="VOL.npy", help="fit this [D, H, W] volume instead of the phantom")
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
    for key in ("gaussians", "batch", "steps", "grid"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be at least 1")
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
    target = target_from_args(args.target, VOLUME)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"{args.impl}: {args.gaussians} Gaussians ({'diagonal' if args.diagonal else 'full'} "
          f"covariance), {args.dtype}, fitting the {target.name} on {device_name(device)}; "
          f"{args.steps} Adam steps of {args.batch} random points (drawn on the {args.points})"
          + (f"; cutoff {args.cutoff:g}" if args.cutoff is not None else ""))
    losses, per_step = train(model, target, args, device, sync)
    psnr, truth, pred = evaluate(model, target, args, device, dtype)

    date = _dt.date.today().isoformat()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cut = f"-cut{args.cutoff:g}" if args.cutoff is not None else ""
    stem = out / f"train-{args.impl}{cut}{'-graph' if args.cuda_graph else ''}-{slug(device)}-{date}"
    title = (f"{args.impl}, N={args.gaussians}, {args.steps} steps of {args.batch} points, "
             + (f"cutoff {args.cutoff:g}, " if args.cutoff is not None else "") +
             f"{device_name(device)}, {date}: PSNR {psnr:.2f} dB")
    files = write_pictures(stem, losses, truth, pred, title)
    summary = {"date": date, "device": device_name(device), "torch": torch.__version__,
               "args": vars(args), "target": target.name, "psnr_db": psnr,
               "ms_per_step": per_step * 1e3, "losses": losses}
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))
    files.append(f"{stem}.json")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
        files.append(args.save)

    print(f"loss {losses[0]:.6f} -> {losses[-1]:.6f}; PSNR {psnr:.2f} dB on the {args.grid}^3 grid; "
          f"{per_step * 1e3:.2f} ms per step")
    print("wrote " + ", ".join(files))
    return 0 if all(math.isfinite(v) for v in losses) else 1


if __name__ == "__main__":
    raise SystemExit(main())
