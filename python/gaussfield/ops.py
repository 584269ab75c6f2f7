"""Registrations of the gaussfield ops (fake tensors, autograd) and the functional API.

The ops themselves are defined and implemented in C++ (``torch_ext/``):

* ``torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps=1e-6) -> Tensor``
* ``torch.ops.gaussfield.gaussian_field_backward(grad_out, x, means, cov, weights, eps,
  output_mask) -> (grad_x, grad_means, grad_cov, grad_weights)``; a gradient whose
  ``output_mask`` entry is False is neither computed nor returned (``None``).
"""

import torch
from torch import Tensor

_FORWARD = "gaussfield::gaussian_field"
_BACKWARD = "gaussfield::gaussian_field_backward"


@torch.library.register_fake(_FORWARD)
def _gaussian_field_fake(x, means, cov, weights, eps=1e-6):
    return x.new_empty(x.shape[:-1])


@torch.library.register_fake(_BACKWARD)
def _gaussian_field_backward_fake(grad_out, x, means, cov, weights, eps, output_mask):
    return tuple(
        t.new_empty(t.shape) if wanted else None
        for t, wanted in zip((x, means, cov, weights), output_mask)
    )


class _GaussianFieldFunction(torch.autograd.Function):
    """The Autograd kernel of ``gaussian_field``: forward redispatches below Autograd,
    backward calls the backward op.  Registered for every call through the dispatcher
    (``torch.ops`` included), so that forward mode, which ``register_autograd`` lets
    through with its tangents silently dropped, reaches ``jvp`` below and raises."""

    @staticmethod
    def forward(x, means, cov, weights, eps):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, means, cov, weights, eps = inputs
        # Only the inputs are saved: the backward recomputes every pair term, so memory
        # stays O(B + N).
        ctx.save_for_backward(x, means, cov, weights)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, grad_out):
        x, means, cov, weights = ctx.saved_tensors
        # (with create_graph=True the backward op below raises: it is not differentiable)
        output_mask = list(ctx.needs_input_grad[:4])
        grads = torch.ops.gaussfield.gaussian_field_backward(
            grad_out, x, means, cov, weights, ctx.eps, output_mask
        )
        return (*grads, None)

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


def _functorch_transforms():
    """The torch.func transforms active around this call (empty outside any).  Private
    API: if it moves in a later torch, no transform is reported and autograd.Function's
    own checks apply."""
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        return {i.key() for i in retrieve_all_functorch_interpreters()}, TransformType
    except (ImportError, AttributeError):  # pragma: no cover - depends on torch's internals
        return set(), None


@torch.library.impl(_FORWARD, "Autograd")
def _gaussian_field_autograd(x, means, cov, weights, eps=1e-6):
    transforms, kind = _functorch_transforms()
    if kind is not None and kind.Jvp in transforms:
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)
    if kind is not None and kind.Grad in transforms:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)
    return _GaussianFieldFunction.apply(x, means, cov, weights, eps)


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
    def forward(grad_out, x, means, cov, weights, eps, output_mask):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field_backward(
                grad_out, x, means, cov, weights, eps, output_mask
            )

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_UNSUPPORTED)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)


@torch.library.impl(_BACKWARD, "Autograd")
def _gaussian_field_backward_autograd(grad_out, x, means, cov, weights, eps, output_mask):
    inputs = (grad_out, x, means, cov, weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise RuntimeError(DOUBLE_BACKWARD_UNSUPPORTED)
    transforms, kind = _functorch_transforms()
    if kind is not None and kind.Jvp in transforms:
        raise RuntimeError(FORWARD_MODE_UNSUPPORTED)
    if kind is not None and kind.Grad in transforms:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)
    return _BackwardFunction.apply(grad_out, x, means, cov, weights, eps, output_mask)


def gaussian_field(
    x: Tensor, means: Tensor, cov: Tensor, weights: Tensor, *, eps: float = 1e-6
) -> Tensor:
    r"""Evaluate a field of N anisotropic 3D Gaussians at the points ``x``.

    .. math::
        f(x) = \sum_n w_n \exp\left(-\tfrac12 (x - \mu_n)^T \Sigma_n^{-1} (x - \mu_n)\right)

    Args:
        x: query points ``[..., 3]``. A 1-D ``[3]`` gives a 0-d result.
        means: ``[N, 3]``.
        cov: covariance parameters, ``[N, 6]`` or ``[N, 3]``:

            * ``[N, 6]`` (full, the notebook's ``cov_tril``):
              ``L = [[e^c0, 0, 0], [c1, e^c2, 0], [c3, c4, e^c5]]``,
              ``Sigma = L L^T + eps * I``.
            * ``[N, 3]`` (diagonal, the notebook's ``log_scales``):
              ``Sigma = diag(e^{2 s})``; ``eps`` is not used.
        weights: ``[N]``, raw (no normalisation constant).
        eps: added to the diagonal of Sigma in the full parameterisation; finite, >= 0.

    Returns:
        ``f(x)`` with shape ``x.shape[:-1]``, dtype and device of ``x``.

    All inputs must share one dtype (float32 or float64) and one device (CPU or CUDA);
    they may be non-contiguous. Differentiable with respect to all four tensors (first
    order); only the gradients that autograd asks for are computed.
    """
    return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps)
