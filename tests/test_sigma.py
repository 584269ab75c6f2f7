# SPDX-License-Identifier: Apache-2.0
"""A covariance matrix Sigma [N, 3, 3] as cov (gaussfield 0.2), beside the whitening
factor that whitened=True names: values and all gradients against a float64 reference
written here (q by a linear solve with the symmetric part), the gradient's symmetric
convention, eps, positive definiteness (refused in eager use, NaN where the check is
skipped), NaN entries, gradcheck and gradgradcheck, vmap, culling, opcheck of every op
with the flag, culling_stats (torch.compile of both: test_compile.py)."""
import math
import warnings

import pytest
import torch
from torch.func import jacfwd, jacrev, jvp, vmap

import gaussfield
import field_reference as fr
from conftest import DEVICES, DTYPES, requires_cuda

F64 = torch.float64
RTOL = {torch.float32: 2e-4, torch.float64: 1e-10}


# ---- the reference and the inputs --------------------------------------------------------

def sym(S):
    """The Sigma the op reads from a covariance matrix: (S + S^T) / 2."""
    S = S.to(F64)
    return 0.5 * (S + S.mT)


def reference(x, means, S, weights, cutoff=None):
    """f_k in float64 of Sigma = (S + S^T) / 2 (no eps), q by a linear solve, the mask
    without gradient: torch's autograd of it is the convention the op promises."""
    x, means, w = x.to(F64), means.to(F64), weights.to(F64)
    d = x.reshape(-1, 1, 3) - means                              # [B, N, 3]
    v = torch.linalg.solve(sym(S), d.permute(1, 2, 0))          # [N, 3, B]
    q = (d.permute(1, 2, 0) * v).sum(1).T.reshape(*x.shape[:-1], means.shape[0])
    g = torch.exp(-0.5 * q)
    if cutoff is not None:
        g = torch.where(q.detach() <= cutoff * cutoff, g, torch.zeros_like(g))
    return (g * w).sum(-1) if w.dim() == 1 else g @ w


def covariances(N, g, antisymmetric=0.3):
    """N covariance matrices: random rotations and axes e^(-1 .. 0.5) (anisotropy up to
    ~5), plus an antisymmetric part (which the op must not read)."""
    q, r = torch.linalg.qr(torch.randn(N, 3, 3, generator=g, dtype=F64))
    R = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    s = torch.exp(-1.0 + 1.5 * torch.rand(N, 3, generator=g, dtype=F64))
    sigma = R @ torch.diag_embed(s * s) @ R.mT
    K = antisymmetric * torch.randn(N, 3, 3, generator=g, dtype=F64)
    return sigma + (K - K.mT)


def inputs(B, N, device, dtype, seed, channels=None, antisymmetric=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, generator=g, dtype=F64) * 4
    means = torch.rand(N, 3, generator=g, dtype=F64) * 4
    S = covariances(N, g, antisymmetric)
    w = torch.randn(N, *([channels] if channels else []), generator=g, dtype=F64)
    return [t.to(device=device, dtype=dtype) for t in (x, means, S, w)]


def factor(S):
    """The whitening factor M = chol(Sigma)^-1 of a covariance matrix, with noise above
    the diagonal (which whitened=True must ignore)."""
    M = torch.linalg.inv(torch.linalg.cholesky(sym(S)))
    return M + torch.triu(torch.full_like(M, 0.7), diagonal=1)


def ours_vg(ins, go, cutoff=None, whitened=False):
    return fr.value_and_grads(gaussfield.gaussian_field, *ins, go, cutoff=cutoff, whitened=whitened)


def ref_vg(ins, go, cutoff=None):
    c = [t.detach().to(F64).cpu() for t in ins]
    return fr.value_and_grads(reference, *c, go.to(F64).cpu(), cutoff=cutoff)


def not_positive_definite(S, n=3):
    """S with Gaussian n's Sigma indefinite (finite entries)."""
    S = S.clone()
    S[n] = torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=S.dtype, device=S.device))
    return S


# ---- values and gradients ----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cutoff, channels", [(None, None), (2.5, None), (None, 3), (3.0, 2)])
def test_sigma_against_reference(device, dtype, cutoff, channels):
    ins = inputs(40, 17, device, dtype, seed=1, channels=channels)
    go = torch.randn(40, *([channels] if channels else []), dtype=dtype, device=device)
    fr.assert_all_close(ours_vg(ins, go, cutoff), ref_vg(ins, go, cutoff), RTOL[dtype], "sigma")


@pytest.mark.parametrize("device", DEVICES)
def test_sigma_is_the_field_of_that_covariance(device):
    """Sigma = L L^T + eps I of cov_tril parameters gives cov_tril's field (an
    independent front-end), and Sigma read as it is (symmetric) equals its symmetric
    part, its transpose, and the same with any eps (eps is not used)."""
    x, means, cov, w = [t.to(device) for t in fr.needles(12, 50, "rotated", seed=2)]
    S = fr.sigma_of(cov.cpu(), 1e-6).to(device)
    out = gaussfield.gaussian_field(x, means, S, w)
    torch.testing.assert_close(out, gaussfield.gaussian_field(x, means, cov, w), rtol=1e-9, atol=1e-12)
    x, means, S, w = inputs(30, 9, device, F64, seed=3)
    out = gaussfield.gaussian_field(x, means, S, w)
    for same in (sym(S), S.mT):
        assert torch.equal(gaussfield.gaussian_field(x, means, same, w), out)
    for eps in (0.0, 1e-2):
        assert torch.equal(gaussfield.gaussian_field(x, means, S, w, eps=eps), out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_whitened_gives_the_factor_field(device, dtype):
    """whitened=True reads cov as M (lower triangle): the field of Sigma = (M^T M)^-1,
    whatever lies above the diagonal, with a zero gradient there."""
    x, means, S, w = inputs(30, 11, device, F64, seed=4)
    M = factor(S.cpu()).to(device)
    ins = [t.to(dtype) for t in (x, means, M, w)]
    go = torch.randn(30, dtype=dtype, device=device)
    got = ours_vg(ins, go, whitened=True)
    want = ref_vg([x, means, sym(S), w], go)
    fr.assert_all_close(got[:3] + got[4:], want[:3] + want[4:], RTOL[dtype], "factor")
    assert torch.equal(torch.triu(got[3], diagonal=1), torch.zeros_like(got[3]))
    # and the same Gaussians as covariance matrices
    torch.testing.assert_close(got[0], gaussfield.gaussian_field(*[t.to(dtype) for t in (x, means, S, w)]),
                               rtol=RTOL[dtype], atol=1e-6 if dtype == torch.float32 else 1e-13)


def test_gradient_is_symmetric_and_that_of_the_symmetric_part():
    """The convention: grad_cov = d f / d S of f(S) = F((S + S^T) / 2), symmetric; for a
    symmetric S, (G + G^T) / 2 of the gradient of F read as it is, and what a Cholesky of
    S in PyTorch gives (torch.linalg.cholesky's convention)."""
    x, means, S, w = inputs(25, 8, "cpu", F64, seed=5)
    go = torch.randn(25, dtype=F64)
    gc = ours_vg([x, means, S, w], go)[3]
    assert torch.equal(gc, gc.mT)
    torch.testing.assert_close(gc, ref_vg([x, means, S, w], go)[3], rtol=1e-11, atol=1e-14)

    def field_as_read(sigma):  # Sigma read as it is (inverse, no symmetrisation)
        d = x[:, None, :] - means
        q = torch.einsum("bni,nij,bnj->bn", d, torch.linalg.inv(sigma), d)
        return (w * torch.exp(-0.5 * q)).sum(-1)

    def field_by_cholesky(sigma):  # torch.linalg.cholesky reads the lower triangle
        u = torch.linalg.solve_triangular(torch.linalg.cholesky(sigma), (x[:, None, :] - means).permute(1, 2, 0),
                                          upper=False)
        return (w * torch.exp(-0.5 * (u * u).sum(1).T)).sum(-1)

    Ss = sym(S)
    gs = ours_vg([x, means, Ss, w], go)[3]
    for fn in (field_as_read, field_by_cholesky):
        leaf = Ss.clone().requires_grad_()
        (G,) = torch.autograd.grad(fn(leaf), leaf, go)
        torch.testing.assert_close(gs, 0.5 * (G + G.mT), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    ins = [t.requires_grad_() for t in inputs(5, 3, device, F64, seed=6)]
    assert torch.autograd.gradcheck(gaussfield.gaussian_field, tuple(ins))
    assert torch.autograd.gradgradcheck(gaussfield.gaussian_field, tuple(ins))
    f = lambda *a: gaussfield.gaussian_field(*a, cutoff=2.0)  # noqa: E731
    chans = [t.detach().requires_grad_() for t in inputs(5, 3, device, F64, seed=7, channels=2)]
    assert torch.autograd.gradgradcheck(f, tuple(chans))
    M = factor(ins[2].detach().cpu()).to(device).requires_grad_()
    fw = lambda x, m, c, w: gaussfield.gaussian_field(x, m, c, w, whitened=True)  # noqa: E731
    assert torch.autograd.gradcheck(fw, (ins[0], ins[1], M, ins[3]))
    assert torch.autograd.gradgradcheck(fw, (ins[0], ins[1], M, ins[3]))


# ---- second order, torch.func and vmap, against the reference ------------------------------

def _close(a, b, rtol=1e-9):
    assert fr.norm_rel(a, b) <= rtol, fr.norm_rel(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("whitened", [False, True], ids=["sigma", "factor"])
def test_higher_order_paths(device, whitened):
    """Forward mode, jacrev, jvp, jacfwd, create_graph and vmap of the op, with respect to
    cov, equal the reference's (PyTorch's derivatives of it), for a covariance matrix
    and for the named factor (the higher-order paths hand the ops the factor)."""
    x, means, S, w = inputs(7, 4, device, F64, seed=8, channels=2)
    cov = factor(S.cpu()).to(device) if whitened else S

    def ours(c):
        return gaussfield.gaussian_field(x, means, c, w, cutoff=3.0, whitened=whitened)

    def theirs(c):
        sigma = torch.linalg.inv(torch.tril(c).mT @ torch.tril(c)) if whitened else c
        return reference(x.cpu(), means.cpu(), sigma, w.cpu(), cutoff=3.0)

    c64 = cov.cpu()
    _close(jacrev(ours)(cov), jacrev(theirs)(c64))
    _close(jacfwd(ours)(cov), jacrev(theirs)(c64))
    t = torch.randn_like(cov)
    _close(jvp(ours, (cov,), (t,))[1], jvp(theirs, (c64,), (t.cpu(),))[1])
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(cov, t))).tangent
    _close(tangent, jvp(theirs, (c64,), (t.cpu(),))[1])
    # create_graph: the gradient of a gradient norm
    a, b = cov.clone().requires_grad_(), c64.clone().requires_grad_()
    (ga,) = torch.autograd.grad(ours(a).square().sum(), a, create_graph=True)
    (gb,) = torch.autograd.grad(theirs(b).square().sum(), b, create_graph=True)
    _close(torch.autograd.grad(ga.square().sum(), a)[0], torch.autograd.grad(gb.square().sum(), b)[0])
    # vmap over a batch of fields and over a batch of point sets, without the fallback
    covs = torch.stack([cov, cov * 1.1, cov * 0.9])
    xs = torch.stack([x, x + 0.3, x - 0.2])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        got = vmap(ours)(covs)
        gx = vmap(lambda p: gaussfield.gaussian_field(p, means, cov, w, whitened=whitened))(xs)
    assert torch.equal(got, torch.stack([ours(c) for c in covs]))
    assert torch.equal(gx, torch.stack([gaussfield.gaussian_field(p, means, cov, w, whitened=whitened)
                                        for p in xs]))


# ---- positive definiteness and NaN --------------------------------------------------------

PD_MESSAGE = r"Sigma of Gaussian 3 is not positive definite .* pass whitened=True"


@pytest.mark.parametrize("bad", ["indefinite", "semidefinite", "negative"])
def test_not_positive_definite_is_refused_eagerly(monkeypatch, bad):
    """Every eager way into the op refuses a Sigma that is not positive definite, naming
    the Gaussian: the plain call, with gradients, with a cutoff on the culled pair, the op
    itself, torch.func and forward mode (the front-end in PyTorch), the front-end."""
    x, means, S, w = inputs(20, 6, "cpu", F64, seed=9)
    S = S.clone()
    S[3] = {"indefinite": torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=F64)),
            "semidefinite": torch.outer(torch.ones(3, dtype=F64), torch.ones(3, dtype=F64)),
            "negative": -sym(S[3])}[bad]
    leaf = S.clone().requires_grad_()
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    calls = [
        lambda: gaussfield.gaussian_field(x, means, S, w),
        lambda: gaussfield.gaussian_field(x, means, leaf, w),
        lambda: gaussfield.gaussian_field(x, means, leaf, w, cutoff=3.0),
        lambda: torch.ops.gaussfield.gaussian_field(x, means, S, w, 1e-6, None),
        lambda: torch.ops.gaussfield._gaussian_field_culled(x, means, S, w, 1e-6, 3.0),
        lambda: jacrev(lambda c: gaussfield.gaussian_field(x, means, c, w))(S),
        lambda: jacfwd(lambda c: gaussfield.gaussian_field(x, means, c, w))(S),
        lambda: vmap(lambda c: gaussfield.gaussian_field(x, means, c, w))(torch.stack([S, S])),
        lambda: gaussfield.frontends.whitening_factor(S),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=PD_MESSAGE):
            call()
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level(), pytest.raises(ValueError, match=PD_MESSAGE):
        gaussfield.gaussian_field(x, means, fwAD.make_dual(S, torch.ones_like(S)), w)
    # positive definite, however close to the edge, passes
    near = S.clone()
    near[3] = torch.diag(torch.tensor([1.0, 1e-12, 2.0], dtype=F64))
    assert torch.isfinite(gaussfield.gaussian_field(x, means, near, w)).all()


def test_the_first_refused_gaussian_is_named():
    """Over many Gaussians (the check runs on several threads), strided, float32 too."""
    g = torch.Generator().manual_seed(18)
    S = covariances(20000, g)
    x, means, w = torch.rand(3, 3, dtype=F64), torch.rand(20000, 3, dtype=F64), torch.ones(20000, dtype=F64)
    for n in (19999, 12345, 4097):
        S[n] = -torch.eye(3, dtype=F64)
    for cov in (S, S.mT.contiguous().mT, S.float()):
        args = (x.to(cov.dtype), means.to(cov.dtype), cov, w.to(cov.dtype))
        with pytest.raises(ValueError, match=r"Sigma of Gaussian 4097 is not positive definite"):
            gaussfield.gaussian_field(*args)


def test_where_the_check_is_skipped_the_gaussian_is_nan():
    """The backward ops do not check, and the front-end unchecked: a Gaussian that is
    not positive definite is NaN wherever it is evaluated, and only that Gaussian's
    terms are (its own gradients; every point's value and grad_x)."""
    x, means, S, w = inputs(20, 6, "cpu", F64, seed=10)
    S = not_positive_definite(S)
    grads = torch.ops.gaussfield.gaussian_field_backward(torch.ones(20, dtype=F64), x, means, S, w,
                                                         1e-6, None, [True] * 4)
    gx, gm, gc, gw = grads
    assert gx.isnan().all() and gm[3].isnan().all() and gc[3].isnan().all() and gw[3].isnan()
    others = [n for n in range(6) if n != 3]
    assert torch.isfinite(gm[others]).all() and torch.isfinite(gc[others]).all()
    M = gaussfield.frontends.whitening_factor(S, check=False)
    assert M[3].isnan().all() and torch.isfinite(M[others]).all()


def test_compiled_code_checks_when_it_runs():
    """torch.compile traces no check (fakes have no values); the compiled code runs the
    op's kernel, which checks as in eager use (on the CPU, and on CUDA outside graphs)."""
    x, means, S, w = inputs(20, 6, "cpu", F64, seed=11)
    torch._dynamo.reset()
    fn = torch.compile(lambda x, m, c, w: gaussfield.gaussian_field(x, m, c, w).sum(), fullgraph=True)
    torch.testing.assert_close(fn(x, means, S, w), gaussfield.gaussian_field(x, means, S, w).sum())
    with pytest.raises(ValueError, match=PD_MESSAGE):
        fn(x, means, not_positive_definite(S), w)


@requires_cuda
def test_captured_graph_skips_the_check():
    """Under CUDA graph capture the check (a synchronisation) is skipped: a Gaussian that
    is not positive definite gives NaN when the graph replays, the others are unaffected
    (with a cutoff too)."""
    x, means, S, w = inputs(200, 6, "cuda", F64, seed=12)
    good = gaussfield.gaussian_field(x, means, S, w, cutoff=3.0)
    static = S.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        gaussfield.gaussian_field(x, means, static, w, cutoff=3.0)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gaussfield.gaussian_field(x, means, static, w, cutoff=3.0)
    graph.replay()
    torch.testing.assert_close(out, good)
    static.copy_(not_positive_definite(S))
    graph.replay()
    assert out.isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_nan_entry_is_not_refused(device, cutoff):
    """A NaN entry is not refused: that Gaussian is NaN at every point (with a cutoff
    too), as a NaN in any other parameter is."""
    x, means, S, w = inputs(20, 6, device, F64, seed=13)
    S = S.clone()
    S[2, 1, 0] = float("nan")
    assert gaussfield.gaussian_field(x, means, S, w, cutoff=cutoff).isnan().all()


# ---- culling, the ops' contract, compile ---------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("whitened", [False, True], ids=["sigma", "factor"])
def test_culled_equals_dense(monkeypatch, device, whitened):
    x, means, S, w = inputs(3000, 300, device, F64, seed=14)
    means = means * 2.5  # spread, so that culling culls
    cov = factor(S.cpu()).to(device) if whitened else S
    go = torch.randn(3000, dtype=F64, device=device)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    culled = ours_vg([x, means, cov, w], go, 3.0, whitened)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "never")
    dense = ours_vg([x, means, cov, w], go, 3.0, whitened)
    fr.assert_all_close(culled, dense, 1e-12, "culled")
    stats = gaussfield.culling_stats(x, means, cov, w, cutoff=3.0, whitened=whitened)
    assert 0 < stats["pairs_evaluated"] < 0.5 * 3000 * 300
    if whitened:  # the factor of the same Gaussians: the same plan, to rounding
        same = gaussfield.culling_stats(x, means, S, w, cutoff=3.0)
        assert same["dims"] == stats["dims"]
        assert abs(same["list_length"] - stats["list_length"]) <= 0.01 * stats["list_length"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("whitened", [False, True], ids=["sigma", "factor"])
@pytest.mark.parametrize("channels", [None, 2])
def test_opcheck(monkeypatch, device, whitened, channels):
    x, means, S, w = inputs(9, 5, device, F64, seed=15, channels=channels)
    cov = factor(S.cpu()).to(device) if whitened else S
    go = torch.randn(9, *([channels] if channels else []), dtype=F64, device=device)
    named = {"whitened": whitened}
    ops = torch.ops.gaussfield
    torch.library.opcheck(ops.gaussian_field.default, (x, means, cov, w, 1e-6), named)
    torch.library.opcheck(ops.gaussian_field.default, (x, means, cov.requires_grad_(), w, 1e-6, 2.0), named)
    cov = cov.detach()
    torch.library.opcheck(ops.gaussian_field_backward.default,
                          (go, x, means, cov, w, 1e-6, None, [True] * 4), named)
    monkeypatch.setenv("GAUSSFIELD_CULLING", "always")
    torch.library.opcheck(ops._gaussian_field_culled.default, (x, means, cov, w, 1e-6, 3.0), named)
    _, structure = ops._gaussian_field_culled(x, means, cov, w, 1e-6, 3.0, **named)
    torch.library.opcheck(ops._gaussian_field_culled_backward.default,
                          (go, x, means, cov, w, 1e-6, 3.0, structure, [True] * 4), named)


def test_double_backward_op_takes_factors_only():
    """The double backward op has no whitened flag: its cov is always a factor, which a
    covariance matrix is not (the same shape: the op's documented contract)."""
    x, means, S, w = inputs(6, 4, "cpu", F64, seed=17)
    M = factor(S)
    go = torch.randn(6, dtype=F64)
    dirs = [torch.randn_like(t) for t in (x, means, M, w)]
    a = torch.ops.gaussfield.gaussian_field_double_backward(go, x, means, M, w, 1e-6, None, *dirs,
                                                             [True] * 5)
    # its first output is the forward-mode product of the factor's field
    _, want = jvp(lambda xx, m, c, ww: gaussfield.gaussian_field(xx, m, c, ww, whitened=True),
                  (x, means, M, w), tuple(dirs))
    _close(a[0], want, 1e-11)
    with pytest.raises(RuntimeError, match=r"cov must be a whitening factor \[N, 3, 3\]"):
        torch.ops.gaussfield.gaussian_field_double_backward(go, x, means, torch.rand(4, 6, dtype=F64), w,
                                                             1e-6, None, None, None, None, None, [True] * 5)


def test_version_and_migration_note():
    """0.2.0: an unnamed [N, 3, 3] changed meaning, and docs/migration.md says how to
    keep the old one."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    assert gaussfield.__version__ == "0.2.0"
    assert '\nversion = "0.2.0"\n' in (root / "pyproject.toml").read_text()
    note = (root / "docs" / "migration.md").read_text()
    assert "whitened=True" in note and "0.1" in note
