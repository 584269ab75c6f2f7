# SPDX-License-Identifier: Apache-2.0
"""Property-based: random shapes, parameterisations, dtypes, scales and layouts, values
and every gradient against the float64 reference (hypothesis; HYPOTHESIS_PROFILE=long
for a longer search, see conftest.py)."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from checking import LAYOUTS, compare, make_base, rtol_for, view_of, worst_condition
from conftest import DEVICES


@st.composite
def problems(draw):
    B = draw(st.integers(0, 24))
    N = draw(st.integers(0, 12))
    mode = draw(st.sampled_from(["full", "diag"]))
    return dict(
        B=B, N=N, mode=mode,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        log_scale=draw(st.floats(-5.0, 4.0)),     # Gaussian scales e^-5 .. e^4
        spread=draw(st.floats(0.0, 1.0)),          # anisotropy, in log scale
        corr=draw(st.floats(0.0, 0.9)) if mode == "full" else 0.0,
        offset=draw(st.sampled_from([0.0, 5.0, 100.0])),
        eps=draw(st.sampled_from([0.0, 1e-6, 1e-2])) if mode == "full" else 1e-6,
        x_layout=draw(st.sampled_from(list(LAYOUTS))),
        means_layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"])),
        cov_layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"])),
        w_layout=draw(st.sampled_from(["contiguous", "strided", "expanded"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build(p, device):
    g = torch.Generator().manual_seed(p["seed"])
    B, N, scale = p["B"], p["N"], math.exp(p["log_scale"])
    box = 3 * scale * (max(N, 1) ** (1 / 3))  # pairs within a few scales of each other
    means = p["offset"] + box * torch.rand(N, 3, generator=g, dtype=torch.float64)
    x = p["offset"] + box * torch.rand(B, 3, generator=g, dtype=torch.float64)
    log_s = p["log_scale"] + p["spread"] * torch.randn(N, 3, generator=g, dtype=torch.float64)
    if p["mode"] == "full":
        cov = torch.empty(N, 6, dtype=torch.float64)
        cov[:, [0, 2, 5]] = log_s
        cov[:, [1, 3, 4]] = p["corr"] * scale * torch.randn(N, 3, generator=g, dtype=torch.float64)
    else:
        cov = log_s
    weights = torch.randn(N, generator=g, dtype=torch.float64)
    dt = p["dtype"]
    bases = [make_base(x, p["x_layout"], dt, device), make_base(means, p["means_layout"], dt, device),
             make_base(cov, p["cov_layout"], dt, device),
             make_base(weights, p["w_layout"], dt, device, vector=True)]
    C = cov.shape[1]

    def views(xb, mb, cb, wb):
        return (view_of(xb, p["x_layout"], B, 3), view_of(mb, p["means_layout"], N, 3),
                view_of(cb, p["cov_layout"], N, C), view_of(wb, p["w_layout"], N))

    out_shape = (2, B) if p["x_layout"] == "batched" else (B,)
    grad_out = torch.randn(out_shape, generator=g, dtype=torch.float64).to(device=device, dtype=dt)
    return bases, views, grad_out


@pytest.mark.parametrize("device", DEVICES)
@given(p=problems())
def test_matches_float64_reference(device, p):
    (x, means, cov, weights), views, grad_out = build(p, device)
    cond = worst_condition(views(x, means, cov, weights)[2], p["eps"])
    compare(x, means, cov, weights, grad_out, p["eps"], rtol_for(p["dtype"], cond), views=views)
