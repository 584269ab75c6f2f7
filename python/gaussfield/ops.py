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


def _setup_context(ctx, inputs, output):
    x, means, cov, weights, eps = inputs
    # Only the inputs are saved: the backward recomputes every pair term, so memory
    # stays O(B + N).
    ctx.save_for_backward(x, means, cov, weights)
    ctx.eps = eps


def _backward(ctx, grad_out):
    x, means, cov, weights = ctx.saved_tensors
    # (with create_graph=True the backward op below raises: it is not differentiable)
    output_mask = list(ctx.needs_input_grad[:4])
    grads = torch.ops.gaussfield.gaussian_field_backward(
        grad_out, x, means, cov, weights, ctx.eps, output_mask
    )
    return (*grads, None)


torch.library.register_autograd(_FORWARD, _backward, setup_context=_setup_context)


def _backward_is_not_differentiable(ctx, inputs, output):
    # Runs when gaussian_field_backward is called with grad mode on and an input that
    # requires grad (create_graph=True through gaussian_field, or a direct call): an
    # error now, instead of outputs whose gradient would silently be missing.
    raise RuntimeError(
        "gaussfield: double backward is not supported: gaussian_field_backward is not "
        "differentiable (create_graph=True through gaussian_field, or a call with inputs "
        "that require grad); call it on tensors that do not require grad, or under "
        "torch.no_grad()"
    )


torch.library.register_autograd(
    _BACKWARD, lambda ctx, *grads: None, setup_context=_backward_is_not_differentiable
)


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
