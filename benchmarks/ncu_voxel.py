# SPDX-License-Identifier: Apache-2.0
"""One voxelize forward and one voxelize_backward (256^3, the issue's field, N = 10^5,
cutoff 4) for Nsight Compute:  ncu --kernel-name regex:'items|tiles|fill' python3 ..."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_voxel  # noqa: E402

import gaussfield as gf  # noqa: E402

k = float(os.environ.get("K", "4"))
m, c, w = bench_voxel.field(100_000)
shape = (256, 256, 256)
go = torch.randn(shape, device="cuda")
out = gf.voxelize(m, c, w, shape=shape, lo=(0.0,) * 3, hi=(10.0,) * 3, cutoff=k)
g = torch.ops.gaussfield.voxelize_backward(go, m, c, w, list(shape), [0.0] * 3,
                                           [10.0, 0, 0, 0, 10.0, 0, 0, 0, 10.0], [0, 0, 0],
                                           list(shape), gf.DEFAULT_EPS, k, [True, True, True])
torch.cuda.synchronize()
print("ok", out.shape, [t.shape for t in g])
