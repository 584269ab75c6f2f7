# SPDX-License-Identifier: Apache-2.0
"""gaussfield.gaussian_field_reference and inverse_covariance (the closed form "for
checking") are exact for every parameterisation the op takes, or refuse: held against
the op (float64, channels, cutoff; values and all four gradients), inverse_covariance
against an independent Sigma per mode, the op's refusals, torch.compile."""
import math

import pytest
import torch

import gaussfield
import field_reference as fr
from conftest import make_inputs
from test_quaternion import sigma_3dgs as quaternion_sigma  # 3DGS's own construction

F64 = torch.float64
MODES = ["full", "diag", "quat", "sigma", "factor"]


def case(mode, B=30, N=9, seed=0, channels=None):
    """(x, means, cov, weights, whitened, Sigma): the op's inputs of one mode, float64,
    and the covariance they mean, built independently of the op's front-ends."""
    g = torch.Generator().manual_seed(seed)
    x, means, c, w = make_inputs(B, N, "diag" if mode == "diag" else "full", F64, "cpu", seed)
    sigma = fr.sigma_of(c, 1e-6)
    cov, whitened = c, False
    if mode == "quat":
        quat = torch.randn(N, 4, generator=g, dtype=F64) * 3.0
        cov = torch.cat([quat, c[:, [0, 2, 5]]], 1)
        sigma = quaternion_sigma(cov)
    elif mode == "sigma":
        K = 0.2 * torch.randn(N, 3, 3, generator=g, dtype=F64)
        cov = sigma + (K - K.mT)  # the antisymmetric part is not read
    elif mode == "factor":
        M = torch.linalg.inv(torch.linalg.cholesky(sigma))
        cov, whitened = M + torch.triu(torch.full_like(M, 0.4), diagonal=1), True
    if channels:
        w = torch.randn(N, channels, generator=g, dtype=F64)
    return x, means, cov, w, whitened, sigma


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cutoff, channels", [(None, None), (2.5, None), (None, 3), (3.0, 2)])
def test_reference_equals_the_op(mode, cutoff, channels):
    """For every mode, with channels and with a cutoff: value and all four gradients."""
    x, means, cov, w, whitened, sigma = case(mode, seed=1, channels=channels)
    go = torch.randn(x.shape[0], *([channels] if channels else []), dtype=F64)
    kw = dict(eps=1e-6, cutoff=cutoff, whitened=whitened)
    ours = fr.value_and_grads(gaussfield.gaussian_field, x, means, cov, w, go, **kw)
    theirs = fr.value_and_grads(gaussfield.gaussian_field_reference, x, means, cov, w, go, **kw)
    fr.assert_all_close(ours, theirs, 1e-10, mode)
    # and the tests' own reference, on the covariance the mode means (built apart)
    want = fr.field(x, means, fr.cov_tril_of(sigma, 0.0), w, 0.0, cutoff)
    assert fr.norm_rel(theirs[0], want) < 1e-10


@pytest.mark.parametrize("mode", MODES)
def test_inverse_covariance_is_that_of_the_mode(mode):
    x, means, cov, w, whitened, sigma = case(mode, seed=2)
    P = gaussfield.inverse_covariance(cov, 1e-6, whitened=whitened)
    torch.testing.assert_close(P, torch.linalg.inv(sigma), rtol=1e-10, atol=1e-12)


def test_the_cases_of_issue_20():
    """[N, 7] was read as cov_tril (79 % off), [N, 3, 3] crashed with a broadcasting
    error: both are now the op's field."""
    for mode in ("quat", "sigma"):
        x, means, cov, w, whitened, sigma = case(mode, seed=3)
        ref = gaussfield.gaussian_field_reference(x, means, cov, w)
        assert fr.norm_rel(ref, gaussfield.gaussian_field(x, means, cov, w)) < 1e-12
        assert fr.norm_rel(ref, fr.field(x, means, fr.cov_tril_of(sigma, 0.0), w, 0.0)) < 1e-10


def test_refuses_what_the_op_refuses():
    x, means, cov, w, _, _ = case("full", seed=4)
    ref = gaussfield.gaussian_field_reference
    cases = [
        ((x, means, cov, w), dict(whitened=True), r"with whitened=True, cov must be the whitening factor"),
        ((x, means, torch.rand(9, 5, dtype=F64), w), {}, r"cov must have shape \[N, 6\]"),
        ((x, means, torch.rand(9, 3, 2, dtype=F64), w), {}, r"cov must have shape"),
        ((x, means, cov[:4], w), {}, r"cov must have N = 9 rows"),
        ((x[:, :2], means, cov, w), {}, r"x must have shape \[\.\.\., 3\]"),
        ((x, means[:, :2], cov, w), {}, r"means must have shape \[N, 3\]"),
        ((x, means, cov, w[:5]), {}, r"weights must have shape \[N\] or \[N, C\]"),
        ((x, means, cov, w), dict(cutoff=-1.0), r"cutoff must be None or a finite number > 0"),
        ((x, means, cov, w), dict(cutoff=float("inf")), r"cutoff must be None or a finite number > 0"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            ref(*args, **kw)
    with pytest.raises(ValueError, match=r"with whitened=True"):
        gaussfield.inverse_covariance(cov, whitened=True)
    with pytest.raises(ValueError, match=r"cov must have shape"):
        gaussfield.inverse_covariance(torch.rand(9, 4, dtype=F64))
    # a covariance matrix that is not positive definite, as the op refuses it
    _, _, S, _, _, _ = case("sigma", seed=4)
    S = S.clone()
    S[3] = -torch.eye(3, dtype=F64)
    for call in (lambda: ref(x, means, S, w), lambda: gaussfield.inverse_covariance(S)):
        with pytest.raises(ValueError, match=r"Sigma of Gaussian 3 is not positive definite"):
            call()


def test_nan_entries_as_the_op():
    """A NaN entry of a covariance matrix: NaN at every point, with a cutoff too (the op
    keeps a NaN pair, and so does the reference)."""
    x, means, S, w, _, _ = case("sigma", seed=5)
    S = S.clone()
    S[2, 0, 1] = float("nan")
    for cutoff in (None, 2.0):
        assert gaussfield.gaussian_field_reference(x, means, S, w, cutoff=cutoff).isnan().all()
        assert gaussfield.gaussian_field(x, means, S, w, cutoff=cutoff).isnan().all()


@pytest.mark.parametrize("mode", ["quat", "sigma", "factor"])
def test_compiled_reference(mode):
    """torch.compile of the reference (the benchmark's peer) traces every mode without a
    graph break; a covariance matrix that is not positive definite is not checked there
    and is NaN, as the op's is where its check is skipped."""
    x, means, cov, w, whitened, _ = case(mode, seed=6)
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: gaussfield.gaussian_field_reference(*a, cutoff=3.0, whitened=whitened),
                       fullgraph=True)
    torch.testing.assert_close(fn(x, means, cov, w),
                               gaussfield.gaussian_field(x, means, cov, w, cutoff=3.0, whitened=whitened),
                               rtol=1e-10, atol=1e-12)
    if mode == "sigma":
        bad = cov.clone()
        bad[1] = -torch.eye(3, dtype=F64)
        out = fn(x, means, bad, w)
        assert out.isnan().all()
        assert math.isfinite(float(fn(x, means, cov, w).sum()))
