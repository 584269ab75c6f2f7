# SPDX-License-Identifier: Apache-2.0
"""Query the density of a trained 3D Gaussian Splatting scene with gaussfield.

A 3DGS scene (the PLY its reference implementation writes: means, log-scales, rotation
quaternions, opacities) is a field of anisotropic Gaussians; its density is

    f(x) = sum_n sigmoid(opacity_n) exp(-0.5 (x - mu_n)^T Sigma_n^{-1} (x - mu_n)),
    Sigma_n = R(q_n) diag(e^{2 s_n}) R(q_n)^T,

which gaussfield evaluates with cov = (q, s) ([N, 7]) and a cutoff (a real scene holds
millions of Gaussians; with the cutoff the op culls, so the cost follows the pairs that
count).  This script writes a slice of the density through the scene (a PNG and the
values as .npy), or the density at points you give.

    python examples/query_3dgs.py --ply point_cloud.ply --axis z --at 0.5 --out out/
    python examples/query_3dgs.py --ply point_cloud.ply --points xyz.npy --out out/
    python examples/query_3dgs.py --demo 20000 --out out/   # a random scene, written as a PLY first

The slice spans the 1st to 99th percentile of the means along the two other axes (a few
far-away Gaussians do not shrink the picture); --res sets its pixels along the longer one.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

import gaussfield
import gaussfield.io as gio
from cli import cutoff_arg  # examples/cli.py, beside this script

AXES = {"x": 0, "y": 1, "z": 2}


def demo_scene(path, n, seed):
    """A random scene of n Gaussians written as a 3DGS PLY: blobs along a helix, thin
    and rotated like a trained scene's."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 6 * torch.pi
    means = torch.stack([torch.cos(t), torch.sin(t), t / (3 * torch.pi) - 1], 1)
    means += 0.08 * torch.randn(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.log(torch.tensor([0.08, 0.04, 0.03])) + 0.3 * torch.randn(n, 3, generator=g)
    opacity = torch.randn(n, generator=g)
    gio.write_3dgs_ply(path, means, torch.cat([quats, scales], 1), opacity)


def slice_points(means, axis, at, res):
    """Pixel centres [H, W, 3] of the slice through `at` along `axis`, and its extent."""
    other = [a for a in range(3) if a != axis]
    lo = torch.quantile(means[:, other].double(), 0.01, dim=0)
    hi = torch.quantile(means[:, other].double(), 0.99, dim=0)
    span = (hi - lo).clamp_min(1e-6)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    width = int(res)
    height = max(1, int(round(res * float(span[1] / span[0]))))
    u = lo[0] + (torch.arange(width, dtype=torch.float64) + 0.5) * (hi[0] - lo[0]) / width
    v = lo[1] + (torch.arange(height, dtype=torch.float64) + 0.5) * (hi[1] - lo[1]) / height
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pts = torch.empty(height, width, 3, dtype=torch.float64)
    pts[..., axis] = at
    pts[..., other[0]] = uu
    pts[..., other[1]] = vv
    return pts, (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), other


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ply", help="a 3DGS scene (point_cloud.ply)")
    src.add_argument("--demo", type=int, metavar="N", help="a random scene of N Gaussians, written as a PLY first")
    ap.add_argument("--points", help="an .npy of points [..., 3]: write the density there instead of a slice")
    ap.add_argument("--axis", choices=list(AXES), default="z", help="the slice's normal (default z)")
    ap.add_argument("--at", type=float, help="the slice's coordinate along --axis (default: the means' median)")
    ap.add_argument("--res", type=int, default=512, help="pixels along the slice's longer side")
    ap.add_argument("--cutoff", default="3", help="Mahalanobis cutoff radius (3DGS uses 3), or 'none'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="query-3dgs", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        cutoff = cutoff_arg(args.cutoff)
    except ValueError as e:
        ap.error(f"--cutoff: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ply = args.ply
    if args.demo is not None:
        if args.demo < 1:
            ap.error("--demo must be at least 1")
        ply = out / f"demo-{args.demo}.ply"
        demo_scene(ply, args.demo, args.seed)
    device = torch.device(args.device)
    means, cov, weights = gio.read_3dgs_ply(ply, device=device)
    print(f"{ply}: {means.shape[0]:,} Gaussians on {device}; cutoff {cutoff}")

    if args.points:
        pts = torch.from_numpy(np.load(args.points)).to(device=device, dtype=means.dtype)
        if pts.shape[-1] != 3:
            ap.error(f"--points must hold an array [..., 3], got {tuple(pts.shape)}")
    else:
        axis = AXES[args.axis]
        at = float(means[:, axis].median()) if args.at is None else args.at
        grid, extent, other = slice_points(means.cpu(), axis, at, args.res)
        pts = grid.to(device=device, dtype=means.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        density = gaussfield.gaussian_field(pts, means, cov, weights, cutoff=cutoff)
    sync()
    ms = (time.perf_counter() - t0) * 1e3
    values = density.cpu().numpy()
    print(f"{density.numel():,} points in {ms:.1f} ms; density max {values.max():.4g}")

    if args.points:
        path = out / (Path(args.points).stem + "-density.npy")
        np.save(path, values)
        print(f"wrote {path}")
        return
    np.save(out / "slice.npy", values)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 7 * values.shape[0] / values.shape[1] + 0.6))
    im = ax.imshow(values, origin="lower", extent=extent, cmap="magma")
    names = "xyz"
    ax.set_xlabel(names[other[0]])
    ax.set_ylabel(names[other[1]])
    ax.set_title(f"density, {args.axis} = {at:.3g}, {means.shape[0]:,} Gaussians, cutoff {cutoff}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "slice.png", dpi=100)
    print(f"wrote {out / 'slice.png'} and {out / 'slice.npy'}")


if __name__ == "__main__":
    main()
