"""Registrations of the gaussfield ops (fake tensors, autograd) and the functional API.

The ops themselves are defined and implemented in C++ (``torch_ext/``):

* ``torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps=1e-6, cutoff=None)
  -> Tensor``
* ``torch.ops.gaussfield.gaussian_field_backward(grad_out, x, means, cov, weights, eps,
  cutoff, output_mask) -> (grad_x, grad_means, grad_cov, grad_weights)``; a gradient
  whose ``output_mask`` entry is False is neither computed nor returned (``None``).
"""

import math
from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

_FORWARD = "gaussfield::gaussian_field"
_BACKWARD = "gaussfield::gaussian_field_backward"


def _result_shape(x, weights):
    return (*x.shape[:-1], *weights.shape[1:])


@torch.library.register_fake(_FORWARD)
def _gaussian_field_fake(x, means, cov, weights, eps=1e-6, cutoff=None):
    torch._check(weights.dim() in (1, 2), lambda: "weights must have shape [N] or [N, C]")
    torch._check(weights.shape[0] == means.shape[0], lambda: "weights and means disagree on N")
    torch._check(weights.dim() == 1 or weights.shape[1] >= 1,
                 lambda: "weights must have at least one channel ([N, C] with C >= 1)")
    torch._check(cutoff is None or (math.isfinite(cutoff) and cutoff > 0),
                 lambda: "cutoff must be None or a finite number > 0")
    return x.new_empty(_result_shape(x, weights))


@torch.library.register_fake(_BACKWARD)
def _gaussian_field_backward_fake(grad_out, x, means, cov, weights, eps, cutoff, output_mask):
    torch._check(tuple(grad_out.shape) == _result_shape(x, weights),
                 lambda: "grad_out must have the shape of the result")
    return tuple(
        t.new_empty(t.shape) if wanted else None
        for t, wanted in zip((x, means, cov, weights), output_mask)
    )


class _GaussianFieldFunction(torch.autograd.Function):
    """The Autograd kernel of ``gaussian_field``: forward redispatches below Autograd,
    backward calls the backward op.  Registered for every call through the dispatcher
    (``torch.ops`` included), so that forward mode, which ``register_autograd`` lets
    through with its tangents silently dropped, reaches ``jvp`` below and raises."""

    # forward(ctx, ...) without setup_context: Function.apply then skips binding the
    # arguments through inspect.signature (about 40 us a call); torch.func transforms,
    # which would need setup_context, are refused before apply is reached.
    @staticmethod
    def forward(ctx, x, means, cov, weights, eps, cutoff):
        # Only the inputs are saved: the backward recomputes every pair term, so memory
        # stays O(B + N).
        ctx.save_for_backward(x, means, cov, weights)
        ctx.eps = eps
        ctx.cutoff = cutoff
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff)

    @staticmethod
    def backward(ctx, grad_out):
        x, means, cov, weights = ctx.saved_tensors
        # (with create_graph=True the backward op below raises: it is not differentiable)
        output_mask = list(ctx.needs_input_grad[:4])
        grads = torch.ops.gaussfield.gaussian_field_backward(
            grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, output_mask
        )
        return (*grads, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)


FORWARD_MODE_UNSUPPORTED = (
    "gaussfield: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, jacfwd, "
    "hessian) is not supported by gaussian_field yet; use reverse mode (.backward(), "
    "torch.autograd.grad, torch.func.grad / jacrev)"
)


FUNCTORCH_UNSUPPORTED = (
    "gaussfield: torch.func.grad / jacrev / vjp through gaussian_field are not supported "
    "yet; use torch.autograd.grad or .backward() (torch.func.vmap of the forward works)"
)


try:  # private API: guarded, see _functorch_transforms
    from torch._C._functorch import TransformType as _TransformType
    from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack
    from torch._functorch.pyfunctorch import (
        retrieve_all_functorch_interpreters as _all_interpreters,
    )
except ImportError:  # pragma: no cover - depends on torch's internals
    _TransformType = _peek_interpreter_stack = _all_interpreters = None


def _functorch_transforms():
    """The kinds of the torch.func transforms active around this call (empty outside
    any).  Private API: if it moves in a later torch, no transform is reported and
    autograd.Function's own checks apply."""
    if _peek_interpreter_stack is None or _peek_interpreter_stack() is None:
        return set()
    return {i.key() for i in _all_interpreters()}


def _refuse_unsupported_transforms():
    transforms = _functorch_transforms()
    if _TransformType is None or not transforms:
        return
    if _TransformType.Jvp in transforms:
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)
    if _TransformType.Grad in transforms:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)


def _below_autograd(op, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _needs_autograd(tensors):
    """Whether a call must go through the autograd.Function: an input requires grad
    under grad mode, or forward-mode AD is active (dual tensors do not require grad,
    which is how register_autograd lost their tangents)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return _forward_ad._current_level >= 0


@torch.library.impl(_FORWARD, "Autograd")
def _gaussian_field_autograd(x, means, cov, weights, eps=1e-6, cutoff=None):
    _refuse_unsupported_transforms()
    if not _needs_autograd((x, means, cov, weights)):
        # no graph to record: skip the autograd.Function's cost (about 0.1 ms on the
        # GPU machine's host, measured at B = 500, N = 1000)
        return _below_autograd(torch.ops.gaussfield.gaussian_field.default, x, means, cov,
                               weights, eps, cutoff)
    return _GaussianFieldFunction.apply(x, means, cov, weights, eps, cutoff)


DOUBLE_BACKWARD_UNSUPPORTED = (
    "gaussfield: double backward is not supported: gaussian_field_backward is not "
    "differentiable (create_graph=True through gaussian_field, or a call with inputs "
    "that require grad); call it on tensors that do not require grad, or under "
    "torch.no_grad()"
)


class _BackwardFunction(torch.autograd.Function):
    """The Autograd kernel of ``gaussian_field_backward``: not differentiable in either
    mode, and saying so, instead of outputs whose derivative would silently be missing."""

    @staticmethod
    def forward(ctx, grad_out, x, means, cov, weights, eps, cutoff, output_mask):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field_backward(
                grad_out, x, means, cov, weights, eps, cutoff, output_mask
            )

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_UNSUPPORTED)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)


@torch.library.impl(_BACKWARD, "Autograd")
def _gaussian_field_backward_autograd(grad_out, x, means, cov, weights, eps, cutoff, output_mask):
    inputs = (grad_out, x, means, cov, weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise RuntimeError(DOUBLE_BACKWARD_UNSUPPORTED)
    _refuse_unsupported_transforms()
    if _forward_ad._current_level < 0:
        return _below_autograd(torch.ops.gaussfield.gaussian_field_backward.default, grad_out,
                               x, means, cov, weights, eps, cutoff, output_mask)
    return _BackwardFunction.apply(grad_out, x, means, cov, weights, eps, cutoff, output_mask)


def gaussian_field(
    x: Tensor,
    means: Tensor,
    cov: Tensor,
    weights: Tensor,
    *,
    eps: float = 1e-6,
    cutoff: Optional[float] = None,
) -> Tensor:
    r"""Evaluate a field of N anisotropic 3D Gaussians at the points ``x``.

    .. math::
        f(x) = \sum_n w_n \exp\left(-\tfrac12 q_n(x)\right),\qquad
        q_n(x) = (x - \mu_n)^T \Sigma_n^{-1} (x - \mu_n)

    and with a cutoff :math:`k`, exactly
    :math:`f_k(x) = \sum_n w_n \exp(-q_n(x)/2)\,[q_n(x) \le k^2]`.

    Args:
        x: query points ``[..., 3]``. A 1-D ``[3]`` gives a 0-d result.
        means: ``[N, 3]``.
        cov: covariance parameters, ``[N, 6]`` or ``[N, 3]``:

            * ``[N, 6]`` (full, the notebook's ``cov_tril``):
              ``L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]]``,
              ``Sigma = L L^T + eps * I``.
            * ``[N, 3]`` (diagonal, the notebook's ``log_scales``):
              ``Sigma = diag(e^{2 s})``; ``eps`` is not used.
        weights: ``[N]``, or ``[N, C]`` for C feature channels (one exponential shared
            by the channels); raw (no normalisation constant).
        eps: added to the diagonal of Sigma in the full parameterisation; finite, >= 0.
        cutoff: ``None`` (every pair counts), or a Mahalanobis radius ``k``, a finite
            number > 0: a pair with ``q_n(x) > k^2`` contributes nothing to the value or
            to any gradient.  Per point and channel,
            ``|f_k(x) - f(x)| <= exp(-k^2/2) * sum_n |w_n|``; to keep the error below an
            absolute ``tol``, take ``k = sqrt(2 ln(sum_n |w_n| / tol))``.  The gradients'
            errors are bounded in the README ("The cutoff").  Which pairs count is decided
            by one test, the same in the forward and the backward on one device; pairs
            within float rounding of the boundary may be decided differently on the CPU
            and on CUDA.

    Returns:
        ``f(x)`` with shape ``x.shape[:-1]`` (``x.shape[:-1] + (C,)`` for weights
        ``[N, C]``), dtype and device of ``x``.

    The exponent is computed as ``|M_n (x - mu_n)|^2``, ``M_n`` the inverse Cholesky
    factor of ``Sigma_n`` computed once per Gaussian in float64: accurate in float32 on
    elongated, strongly correlated Gaussians, and never negative.

    Inputs share one device (CPU or CUDA) and may be non-contiguous.  dtypes: float32 or
    float64, all alike; where an input is float16 or bfloat16 the op computes in float32
    (float64 if another input is float64) and returns ``x``'s dtype, each gradient in its
    input's dtype.  Under ``torch.autocast`` the result is float32 (float64 where an
    input is float64). Differentiable with respect to all four tensors (first
    order); only the gradients that autograd asks for are computed.
    """
    if cutoff is not None:
        cutoff = _check_cutoff(cutoff)
    return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff)


def _check_cutoff(cutoff) -> float:
    """``cutoff`` as a float, or a ValueError naming it."""
    if isinstance(cutoff, (bool, str, bytes)):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}")
    try:
        k = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}") from None
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"cutoff must be None or a finite number > 0 (a Mahalanobis radius), got {cutoff!r}")
    return k
