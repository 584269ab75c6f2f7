# SPDX-License-Identifier: Apache-2.0
"""Bitwise snapshots of the ops' outputs on fixed test fields, to show that a reshaping of
the code changes no bit (issue 18's "outputs bitwise identical before and after").

    python benchmarks/bitwise.py save snap.pt [--device cuda]     # with the old build
    python benchmarks/bitwise.py compare snap.pt [--device cuda]  # with the new build

Every case runs the forward, the backward (all four gradients) and, for the whitening
factor, the double backward, dense and culled (GAUSSFIELD_CULLING never / always), for
each parameterisation, dtype, one and several channels, with and without a cutoff.
`compare` prints the cases whose bits differ and exits 1 if any do.
"""
import argparse
import os
import sys

import torch

import gaussfield  # noqa: F401  (loads the ops)


def fields(device):
    g = torch.Generator().manual_seed(1234)
    out = []
    for mode, width in (("full", 6), ("diag", 3), ("quat", 7), ("factor", None)):
        for dtype in (torch.float32, torch.float64):
            for C in (1, 3, 9):
                B, N = 700, 300
                x = torch.rand(B, 3, generator=g, dtype=torch.float64) * 10
                means = torch.rand(N, 3, generator=g, dtype=torch.float64) * 10
                if mode == "factor":
                    m = torch.randn(N, 3, 3, generator=g, dtype=torch.float64) * 0.3
                    m = m.tril() + torch.diag_embed(torch.rand(N, 3, generator=g, dtype=torch.float64) + 0.6)
                    cov = m
                else:
                    cov = torch.randn(N, width, generator=g, dtype=torch.float64) * 0.3
                    if mode == "full":
                        cov[:, [0, 2, 5]] += 0.2
                    if mode in ("diag", "quat"):
                        cov[:, -3:] += 0.2
                w = torch.randn(N, generator=g, dtype=torch.float64) if C == 1 else \
                    torch.randn(N, C, generator=g, dtype=torch.float64)
                go = torch.randn((B,) if C == 1 else (B, C), generator=g, dtype=torch.float64)
                t = [a.to(device=device, dtype=dtype) for a in (x, means, cov, w, go)]
                out.append((f"{mode}-{str(dtype)[6:]}-C{C}", mode, t))
    return out


def run(device):
    res = {}
    for name, mode, (x, means, cov, w, go) in fields(device):
        for cutoff in (None, 3.0):
            for culling in ("never", "always"):
                if cutoff is None and culling == "always":
                    continue
                os.environ["GAUSSFIELD_CULLING"] = culling
                key = f"{name}-cut{cutoff}-{culling}"
                named = {"whitened": mode == "factor"}
                f = torch.ops.gaussfield.gaussian_field(x, means, cov, w, 1e-6, cutoff, **named)
                grads = torch.ops.gaussfield.gaussian_field_backward(
                    go, x, means, cov, w, 1e-6, cutoff, [True, True, True, True], **named)
                res[key] = [f.cpu(), *[t.cpu() for t in grads]]
                if mode == "factor" and culling == "never":
                    dirs = [torch.randn_like(a) for a in (x, means, cov, w)]
                    sec = torch.ops.gaussfield.gaussian_field_double_backward(
                        go, x, means, cov, w, 1e-6, cutoff, *dirs, [True] * 5)
                    res[key + "-second"] = [t.cpu() for t in sec]
    os.environ.pop("GAUSSFIELD_CULLING", None)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["save", "compare"])
    ap.add_argument("path")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)  # the double backward's directions
    res = run(a.device)
    if a.what == "save":
        torch.save(res, a.path)
        print(f"saved {len(res)} cases to {a.path}")
        return 0
    ref = torch.load(a.path)
    bad = []
    for k, v in ref.items():
        got = res.get(k)
        same = got is not None and len(got) == len(v) and all(
            (p is None and q is None) or (p is not None and q is not None and p.dtype == q.dtype
                                          and p.shape == q.shape and torch.equal(p.view(-1).view(torch.uint8) if p.numel() else p,
                                                                                 q.view(-1).view(torch.uint8) if q.numel() else q))
            for p, q in zip(got, v))
        if not same:
            bad.append(k)
    missing = sorted(set(res) - set(ref))
    print(f"bitwise: {len(ref) - len(bad)} of {len(ref)} cases identical ({a.device})"
          + (f"; new cases not in the snapshot: {missing}" if missing else ""))
    for k in bad:
        print("  differs:", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
