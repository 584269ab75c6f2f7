"""Every registration of the gaussfield ops in Python: fake tensors, the Autograd
kernels, and the vmap batching rules.  The ops themselves are defined and implemented in
C++ (``torch_ext/``); the Autocast kernels are there too.

* ``torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps=1e-6, cutoff=None)
  -> Tensor``
* ``torch.ops.gaussfield.gaussian_field_backward(grad_out, x, means, cov, weights, eps,
  cutoff, output_mask) -> (grad_x, grad_means, grad_cov, grad_weights)``; a gradient
  whose ``output_mask`` entry is False is neither computed nor returned (``None``).
"""
import math

import torch
import torch.autograd.forward_ad as _forward_ad

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


# ---- vmap ------------------------------------------------------------------------
# Batching rules, so that torch.func.vmap runs without torch's per-sample fallback (and
# its warning).  A batch of point sets folds into the points of one call; a batch of
# fields (means, cov or weights batched) runs one call per field.


def _per_sample(op, info, in_dims, args):
    """op on each sample of the batch (a Python loop), outputs stacked on dim 0."""
    outs = []
    for k in range(info.batch_size):
        outs.append(op(*(a.select(d, k) if d is not None else a for a, d in zip(args, in_dims))))
    if isinstance(outs[0], tuple):
        stacked = tuple(None if o[0] is None else torch.stack(o) for o in zip(*outs))
        return stacked, tuple(None if t is None else 0 for t in stacked)
    return torch.stack(outs), 0


@torch.library.register_vmap(_FORWARD)
def _gaussian_field_vmap(info, in_dims, x, means, cov, weights, eps=1e-6, cutoff=None):
    x_dim, means_dim, cov_dim, weights_dim = in_dims[:4]
    op = torch.ops.gaussfield.gaussian_field.default
    if means_dim is None and cov_dim is None and weights_dim is None:
        # x [..., 3] takes any leading dims: the batch is one more
        return op(x.movedim(x_dim, 0), means, cov, weights, eps, cutoff), 0
    return _per_sample(lambda *a: op(*a, eps, cutoff), info, in_dims[:4],
                       (x, means, cov, weights))


@torch.library.register_vmap(_BACKWARD)
def _gaussian_field_backward_vmap(info, in_dims, grad_out, x, means, cov, weights, eps, cutoff,
                                  output_mask):
    g_dim, x_dim, means_dim, cov_dim, weights_dim = in_dims[:5]
    op = torch.ops.gaussfield.gaussian_field_backward.default
    fields_batched = not (means_dim is None and cov_dim is None and weights_dim is None)
    if not fields_batched and not any(output_mask[1:]):
        # only grad_x, which is per point: fold the batch into the points
        B = info.batch_size
        xb = x.movedim(x_dim, 0) if x_dim is not None else x.expand(B, *x.shape)
        gb = grad_out.movedim(g_dim, 0) if g_dim is not None else grad_out.expand(B, *grad_out.shape)
        grads = op(gb, xb, means, cov, weights, eps, cutoff, output_mask)
        return grads, (0, None, None, None)
    return _per_sample(lambda *a: op(*a, eps, cutoff, output_mask), info, in_dims[:5],
                       (grad_out, x, means, cov, weights))
