# SPDX-License-Identifier: Apache-2.0
"""A small CUDA voxelize forward + backward for compute-sanitizer (memcheck, racecheck,
initcheck): both tile sides, cutoff and none, channels, a subvolume of an oblique grid,
non-finite grad_out, float32 and float64."""
import os

import torch

import gaussfield as gf

AFFINE = [[-0.11, 0.02, 0.01, 0.6], [0.015, 0.1, -0.03, -1.0], [0.0, 0.025, 0.12, -0.8],
          [0, 0, 0, 1]]
g = torch.Generator().manual_seed(0)
for tile in ("4", "8"):
    os.environ["GAUSSFIELD_CUDA_CONFIG"] = f"voxel_tile={tile}"
    for dtype in (torch.float32, torch.float64):
        for channels in (None, 3):
            for cutoff in (None, 3.0):
                n = 37
                m = (torch.rand(n, 3, generator=g) * 2 - 1).to("cuda", dtype).requires_grad_()
                c = (torch.randn(n, 6, generator=g) * 0.3 - 1.8).to("cuda", dtype).requires_grad_()
                w = torch.randn(n, *(() if channels is None else (channels,)), generator=g)
                w = w.to("cuda", dtype).requires_grad_()
                for grid in (dict(lo=(-1, -1, -1), hi=(1, 1.2, 0.9)),
                             dict(affine=AFFINE, offset=(2, 1, 3), size=(9, 7, 10))):
                    shape = (13, 11, 17)
                    out = gf.voxelize(m, c, w, shape=shape, cutoff=cutoff, **grid)
                    go = torch.randn_like(out)
                    go.view(-1)[5] = float("nan")
                    torch.autograd.grad(out, (m, c, w), go)
torch.cuda.synchronize()
print("voxel sanitize: all cases ran")
