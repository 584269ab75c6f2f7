# SPDX-License-Identifier: Apache-2.0
"""KeOps peers of gaussfield's cutoff op, for benchmarks/bench_cull.py.

Both compute exactly the op's

    f_k(x) = sum_n w_n exp(-q_n(x) / 2) [q_n(x) <= k^2],   q_n(x) = |M_n (x - mu_n)|^2

over the same parameters as the op and the notebook's class (means [N, 3]; cov_tril
[N, 6] or log_scales [N, 3]; weights [N]), with forward and autograd backward to all of
them (KeOps differentiates its reductions; the covariance front-end is torch):

  keops_dense          one LazyTensor reduction over all B x N pairs; the cutoff is a
                       step on k^2 - q (its derivative is 0, so the gradients are those
                       of f_k as well)
  keops_block_sparse   the same formula as a block-sparse reduction, set up as KeOps's
                       documentation shows ("Block-sparse reductions", pykeops.torch.cluster):
                       grid_cluster of the points and of the means (cubes of `cluster`,
                       0.5 by default), cluster_ranges_centroids, sort_clusters, a
                       cluster-to-cluster `keep` matrix turned into `ranges` by
                       from_matrix.  A block (point cluster i, Gaussian cluster j) is kept
                       when |c_i - c_j| <= r_i + R_j, with r_i the largest distance of a
                       point of i to its centroid and R_j the largest |mu_n - c_j| +
                       k sigma_max,n over the Gaussians n of j (k sigma_max,n: the
                       Gaussian's k-sigma extent, sigma_max,n its largest standard
                       deviation).  Every pair with q <= k^2 lies within that radius,
                       so no kept term is lost: the result is f_k, not an approximation
                       of it.  The clustering is recomputed at every call (the means move
                       while training), and its cost is part of the peer's time.

M_n is the inverse Cholesky factor of Sigma_n (Sigma = L L^T + eps I for cov_tril,
diag(e^{2s}) for log_scales), computed in float64 with torch ops and cast to the dtype
of the means, as the op does inside its kernels.

pykeops is imported at first use only, so this module imports without it (the
covariance helpers are shared with bench_cull.py).  Self-check against
gaussfield.gaussian_field(..., cutoff=6), float64 and float32, both parameterisations:

    python benchmarks/keops_peer.py [--device cuda]
"""
import torch

from gaussfield.notebook import FastLearnableGaussianField

_TRIL = ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2))  # cov_tril's entries in L


def have_keops():
    """(True, version) where pykeops imports, else (False, the reason)."""
    try:
        import pykeops
        import pykeops.torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any failure means: no KeOps peer
        return False, f"{type(e).__name__}: {e}"
    return True, getattr(pykeops, "__version__", "?")


def covariance(cov, eps=1e-6):
    """Sigma [N, 3, 3] in float64 from cov_tril [N, 6] or log_scales [N, 3]."""
    c = cov.double()
    if c.shape[-1] == 3:
        return torch.diag_embed(torch.exp(2 * c))
    n = c.shape[0]
    L = c.new_zeros(n, 3, 3)
    for col, (i, j) in enumerate(_TRIL):
        L[:, i, j] = c[:, col].exp() if i == j else c[:, col]
    return L @ L.transpose(1, 2) + eps * torch.eye(3, dtype=c.dtype, device=c.device)


def whitening(cov, eps=1e-6, dtype=torch.float32):
    """M [N, 3, 3] (lower triangular, M^T M = Sigma^-1), computed in float64 and cast to
    dtype, differentiable.  For log_scales M = diag(e^-s)."""
    c = cov.double()
    if c.shape[-1] == 3:
        return torch.diag_embed(torch.exp(-c)).to(dtype)
    C = torch.linalg.cholesky(covariance(c, eps))
    eye = torch.eye(3, dtype=c.dtype, device=c.device).expand_as(C)
    return torch.linalg.solve_triangular(C, eye, upper=False).to(dtype)


@torch.no_grad()
def sigma_max(cov, eps=1e-6):
    """Largest standard deviation of each Gaussian, [N], float64, from the closed form of
    a symmetric 3x3 matrix's largest eigenvalue (trigonometric; well conditioned, and
    batched cuSOLVER eigvalsh fails on large batches), rounded up by a hair."""
    c = cov.double()
    if c.shape[-1] == 3:
        return c.max(dim=1).values.exp()
    A = covariance(c, eps)
    a00, a11, a22 = A[:, 0, 0], A[:, 1, 1], A[:, 2, 2]
    a01, a02, a12 = A[:, 0, 1], A[:, 0, 2], A[:, 1, 2]
    q = (a00 + a11 + a22) / 3
    p1 = a01 ** 2 + a02 ** 2 + a12 ** 2
    p = torch.sqrt(((a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2 * p1) / 6)
    ps = torch.where(p > 0, p, torch.ones_like(p))
    b00, b11, b22, b01, b02, b12 = (a00 - q) / ps, (a11 - q) / ps, (a22 - q) / ps, a01 / ps, a02 / ps, a12 / ps
    r = (b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)) / 2
    lam = q + 2 * p * torch.cos(torch.acos(r.clamp(-1, 1)) / 3)
    lam = lam * (1 + 1e-12) + 1e-12 * 3 * q  # rounding
    return lam.clamp_min(0).sqrt()


def _terms(x, means, cov, weights, eps, cutoff):
    """The LazyTensor of the pair terms w_n exp(-q/2) [q <= k^2], [B, N, 1]."""
    from pykeops.torch import LazyTensor
    X = LazyTensor(x[:, None, :].contiguous())
    MU = LazyTensor(means[None, :, :].contiguous())
    W = LazyTensor(weights.reshape(1, -1, 1).contiguous())
    d = X - MU
    if cov.shape[-1] == 3:  # diagonal: M d = d * e^-s
        inv = LazyTensor(torch.exp(-cov.to(means.dtype))[None, :, :].contiguous())
        q = (d * inv).sqnorm2()
    else:
        M = whitening(cov, eps, means.dtype).reshape(1, -1, 9).contiguous()
        q = LazyTensor(M).matvecmult(d).sqnorm2()
    term = (-0.5 * q).exp() * W
    if cutoff is not None:
        term = term * (float(cutoff) ** 2 - q).step()  # Step(t) = 1 for t >= 0: q <= k^2
    return term


def keops_dense(x, means, cov, weights, *, eps=1e-6, cutoff=6.0):
    """f_k at the points x [B, 3]: one dense KeOps reduction.  Returns [B]."""
    return _terms(x, means, cov, weights, eps, cutoff).sum(dim=1).reshape(-1)


def _grid_labels(p, size):
    """KeOps's grid_cluster where the cells fit its 10-bit-per-axis labels; beyond (means
    spread over more than 1024 cells an axis, e.g. a trained field whose Gaussians ran
    off), the same cubic cells with 64-bit labels."""
    from pykeops.torch.cluster import grid_cluster
    lo = p.min(dim=0, keepdim=True).values
    cells = ((p - lo) / size).floor().long()
    if int(cells.max()) < 1024:
        return grid_cluster(p, size)
    span = cells.max(dim=0).values + 1
    lab = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]
    return torch.unique(lab, return_inverse=True)[1].int()


@torch.no_grad()
def block_sparse_plan(x, means, cov, *, eps=1e-6, cutoff=6.0, cluster=0.5):
    """The clustering and the block-sparsity pattern, as KeOps's documentation builds
    them.  Returns a dict: perm_x, perm_g (the sorting permutations), inv_x (its
    inverse), ranges (from_matrix's 6-uple), and counts for statistics."""
    from pykeops.torch.cluster import cluster_ranges_centroids, from_matrix, sort_clusters
    B, N = x.shape[0], means.shape[0]
    xd, md = x.detach(), means.detach()
    x_lab = _grid_labels(xd, cluster)
    g_lab = _grid_labels(md, cluster)
    x_ranges, x_cent, x_cnt = cluster_ranges_centroids(xd, x_lab)
    g_ranges, g_cent, g_cnt = cluster_ranges_centroids(md, g_lab)
    (_, perm_x), _ = sort_clusters((xd, torch.arange(B, device=x.device)), x_lab)
    (_, perm_g), _ = sort_clusters((md, torch.arange(N, device=x.device)), g_lab)
    # radii: points to their centroid; Gaussians' means to theirs, plus k sigma_max
    r_x = torch.zeros(len(x_cnt), dtype=torch.float64, device=x.device).scatter_reduce_(
        0, x_lab.long(), (xd - x_cent[x_lab.long()]).double().norm(dim=1), "amax")
    reach = (md - g_cent[g_lab.long()]).double().norm(dim=1) + float(cutoff) * sigma_max(cov, eps)
    r_g = torch.zeros(len(g_cnt), dtype=torch.float64, device=x.device).scatter_reduce_(
        0, g_lab.long(), reach, "amax")
    # keep: |c_i - c_j| - r_i - R_j <= 0 (in place: one [Cx, Cg] float64 matrix at a time)
    gap = torch.cdist(x_cent.double(), g_cent.double(), compute_mode="donot_use_mm_for_euclid_dist")
    gap.sub_(r_x[:, None]).sub_(r_g[None, :])
    keep = gap <= 1e-6 * (1 + r_x.max() + r_g.max())  # rounding slack
    del gap
    return {"perm_x": perm_x, "perm_g": perm_g, "inv_x": torch.argsort(perm_x),
            "ranges": from_matrix(x_ranges, g_ranges, keep), "keep": keep,
            "x_cnt": x_cnt, "g_cnt": g_cnt}


def keops_block_sparse(x, means, cov, weights, *, eps=1e-6, cutoff=6.0, cluster=0.5, plan=None):
    """f_k at the points x [B, 3] as a KeOps block-sparse reduction.  Returns [B].
    ``plan``: block_sparse_plan's result for these points and means, where the caller
    keeps one (it is exact only while neither moves)."""
    if cutoff is None:
        raise ValueError("the block-sparse peer needs a cutoff")
    if plan is None:
        plan = block_sparse_plan(x, means, cov, eps=eps, cutoff=cutoff, cluster=cluster)
    px, pg = plan["perm_x"], plan["perm_g"]
    term = _terms(x[px], means[pg], cov[pg], weights[pg], eps, cutoff)
    term.ranges = plan["ranges"]
    return term.sum(dim=1).reshape(-1)[plan["inv_x"]]


@torch.no_grad()
def block_sparse_stats(x, means, cov, *, eps=1e-6, cutoff=6.0, cluster=0.5):
    """How many pairs the block-sparse reduction evaluates: the kept blocks' sizes."""
    plan = block_sparse_plan(x, means, cov, eps=eps, cutoff=cutoff, cluster=cluster)
    keep = plan["keep"]
    per_x = keep.double() @ plan["g_cnt"].double()
    return {"clusters_points": int(keep.shape[0]), "clusters_gaussians": int(keep.shape[1]),
            "blocks_kept": int(keep.sum()), "blocks": int(keep.numel()),
            "pairs_evaluated": int((per_x * plan["x_cnt"].double()).sum().round())}


class _KeopsField(FastLearnableGaussianField):
    """The notebook's class with a KeOps forward; same parameters and state_dict.
    ``cutoff`` (6 by default) is a plain attribute, as for fused_forward."""
    cutoff = 6.0
    fn = None

    def forward(self, x):
        cov = self.cov_tril if self.use_full_cov else self.log_scales
        squeeze = x.dim() == 1
        out = type(self).fn(x.reshape(-1, 3), self.means, cov.to(self.means.dtype), self.weights,
                            eps=1e-6, cutoff=self.cutoff)
        return out.reshape(()) if squeeze else out.reshape(x.shape[:-1])


class KeopsDenseField(_KeopsField):
    fn = staticmethod(keops_dense)


class KeopsBlockSparseField(_KeopsField):
    fn = staticmethod(keops_block_sparse)


class KeopsBlockSparsePlannedField(_KeopsField):
    """The block-sparse peer with its clustering and ranges computed at the first call
    and reused: the reduction alone, as when the plan is built once outside the loop.
    Exact only while the points and the means stay where they were (a benchmark that
    repeats one step on one batch; not a training loop, whose means move)."""
    _plan, _key = None, None

    def forward(self, x):
        cov = self.cov_tril if self.use_full_cov else self.log_scales
        cov = cov.to(self.means.dtype)
        key = (x.data_ptr(), x.shape, self.means.data_ptr(), self.means._version)  # these points, these means
        if self._key != key:
            self._plan = block_sparse_plan(x.reshape(-1, 3), self.means, cov, eps=1e-6, cutoff=self.cutoff)
            self._key = key
        return keops_block_sparse(x.reshape(-1, 3), self.means, cov, self.weights, eps=1e-6,
                                  cutoff=self.cutoff, plan=self._plan).reshape(x.shape[:-1])


def _self_check(device):
    import gaussfield
    ok, info = have_keops()
    if not ok:
        print("pykeops does not import:", info)
        return 1
    print("pykeops", info, "on", device)
    g = torch.Generator().manual_seed(0)
    B, N = 3000, 400
    worst = 0.0
    # k = 2 cuts terms of e^-2: a mask that did nothing would show (float64 only: in
    # float32 the op and KeOps may decide pairs at the boundary differently)
    for dtype, tol, k in [(torch.float64, 1e-10, 6.0), (torch.float64, 1e-10, 2.0), (torch.float32, 2e-5, 6.0)]:
        for full in (True, False):
            x = (torch.rand(B, 3, generator=g, dtype=torch.float64) * 10)
            m = torch.rand(N, 3, generator=g, dtype=torch.float64) * 10
            s = torch.log(torch.rand(N, 3, generator=g, dtype=torch.float64) * 0.6 + 0.2)
            if full:
                c = torch.zeros(N, 6, dtype=torch.float64)
                c[:, [0, 2, 5]] = s
                c[:, [1, 3, 4]] = torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.2
            else:
                c = s
            w = torch.randn(N, generator=g, dtype=torch.float64)
            go = torch.randn(B, generator=g, dtype=torch.float64)
            ins = [t.to(device, dtype) for t in (x, m, c, w)]

            def run(fn, **kw):
                leaves = [t.clone().requires_grad_() for t in ins]
                f = fn(*leaves, eps=1e-6, cutoff=k, **kw)
                return [f, *torch.autograd.grad(f, leaves, go.to(device, dtype))]

            ref = run(gaussfield.gaussian_field)
            if k < 3:  # the cutoff changes the result: the check has teeth
                exact = gaussfield.gaussian_field(*ins, eps=1e-6)
                assert (exact - ref[0]).norm() > 1e-3 * ref[0].norm()
            for name, fn in [("dense", keops_dense), ("block-sparse", keops_block_sparse)]:
                got = run(fn)
                errs = [((a - r).norm() / r.norm()).item() for a, r in zip(got, ref)]
                worst = max(worst, max(errs) / tol)
                print(f"{str(dtype)[6:]:8s} k={k:g} {'cov_tril' if full else 'log_scales':10s} {name:12s} "
                      "rel. error value, grad x, means, cov, weights: "
                      + " ".join(f"{e:.1e}" for e in errs) + ("" if max(errs) < tol else "  FAIL"))
            st = block_sparse_stats(*ins[:3], cutoff=k)
            print(f"  block-sparse evaluates {st['pairs_evaluated']:,} of {B * N:,} pairs "
                  f"({st['blocks_kept']:,} of {st['blocks']:,} blocks)")
    print("ok" if worst < 1 else "FAILED")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    raise SystemExit(_self_check(torch.device(ap.parse_args().device)))
