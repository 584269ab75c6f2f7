# SPDX-License-Identifier: Apache-2.0
"""Every registration of the gaussfield ops in Python: fake tensors, the Autograd
kernels, and the vmap batching rules.  The ops themselves are defined and implemented in
C++ (``torch_ext/``); the Autocast kernels are there too.

* ``gaussian_field(x, means, cov, weights, eps=1e-6, cutoff=None, *, whitened=False)
  -> Tensor``
* ``gaussian_field_backward(grad_out, x, means, cov, weights, eps, cutoff, output_mask, *,
  whitened=False) -> (grad_x, grad_means, grad_cov, grad_weights)``; a gradient whose
  ``output_mask`` entry is False is neither computed nor returned (``None``).
* ``gaussian_field_double_backward(grad_out, x, means, cov, weights, eps, cutoff, dir_x,
  dir_means, dir_cov, dir_weights, output_mask) -> (grad_grad_out, grad_x, grad_means,
  grad_cov, grad_weights)``: the derivative of the backward op along a direction of its
  outputs.  It takes factors only: ``cov`` is always a whitening factor ``[N, 3, 3]``
  (what the other ops take with ``whitened=True``; csrc/gaussfield.h, "Second order").
  Its first output alone is the forward-mode product (JVP) of ``gaussian_field``.

What ``cov`` means is said by ``whitened``, never by its shape alone: every rule below
that hands the ops a whitening factor says ``whitened=True``.

How derivatives compose.  The pair kernels see a whitening factor ``M`` per Gaussian;
the covariance parameterisations (``cov_tril``, ``log_scales``, the 3DGS quaternion
form, a covariance matrix) are front-ends that map ``cov`` to ``M``.  First-order
reverse mode runs fused: the ops apply the front-end and its derivative inside the
kernels.  Everything of higher order (``create_graph=True``, forward mode,
``torch.func.grad`` / ``jacrev`` / ``jacfwd`` / ``hessian``) takes the front-end in plain
PyTorch (:func:`gaussfield.frontends.whitening_factor`, differentiable to any order by
PyTorch itself; it checks a covariance matrix as the forward op does) and the ops in the
whitened form (``whitened=True``), whose derivatives are the three ops above: forward
-> backward -> double backward.  Third derivatives raise.

The Autograd kernels are single-level autograd functions (PyTorch's own mechanism for
functorch-aware functions, private API, guarded below): registered for every call
through the dispatcher, they record a graph node at whatever functorch level calls them,
which ``torch.func`` needs.  Where that API is missing the kernels fall back to a plain
``autograd.Function`` and ``torch.func``'s reverse and forward transforms raise a clear
error instead.
"""
import math
import os
import threading

import torch
import torch.autograd.forward_ad as _forward_ad

from .frontends import _factor_dtype, whitening_factor
from ._common import DEFAULT_EPS, POINTS_PER_CELL, centres_of, points_per_cell

_FORWARD = "gaussfield::gaussian_field"
_BACKWARD = "gaussfield::gaussian_field_backward"
_SECOND = "gaussfield::gaussian_field_double_backward"
_CULLED = "gaussfield::_gaussian_field_culled"
_CULLED_BACKWARD = "gaussfield::_gaussian_field_culled_backward"

try:  # private API: guarded (see the module's docstring)
    from torch._C._functorch import TransformType as _TransformType
    from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack
    from torch._functorch.pyfunctorch import (
        retrieve_all_functorch_interpreters as _all_interpreters,
    )
    from torch._functorch.utils import (
        enable_single_level_autograd_function as _single_level_allowed,
    )
    from torch.autograd.function import _SingleLevelFunction as _FunctionBase

    _HAVE_SINGLE_LEVEL = True
except ImportError:  # pragma: no cover - depends on torch's internals
    _TransformType = _peek_interpreter_stack = _all_interpreters = None
    _single_level_allowed = None
    _FunctionBase = torch.autograd.Function
    _HAVE_SINGLE_LEVEL = False


FUNCTORCH_UNSUPPORTED = (
    "gaussfield: torch.func.grad / jacrev / jacfwd / jvp / hessian through gaussian_field "
    "need PyTorch's single-level autograd functions, which this torch does not have; use "
    "torch.autograd.grad (create_graph=True for second order) or torch.autograd.forward_ad"
)

THIRD_ORDER_UNSUPPORTED = (
    "gaussfield: third derivatives are not supported: gaussian_field is differentiable "
    "twice (gaussian_field_double_backward, the derivative of the backward, is not "
    "differentiable itself)"
)


# ---- fakes ------------------------------------------------------------------------


def _result_shape(x, weights):
    return (*x.shape[:-1], *weights.shape[1:])


def _is_matrix_shape(cov):
    return cov.dim() == 3 and cov.shape[1] == 3 and cov.shape[2] == 3


def _check_cov_fake(cov, whitened):
    """torch_ext's cov_mode_of: the shape that ``whitened`` names (without it, [N, 3, 3]
    is a covariance matrix)."""
    if whitened:
        torch._check(_is_matrix_shape(cov), lambda: (
            f"with whitened=True, cov must be the whitening factor M [N, 3, 3], got {tuple(cov.shape)}"))
        return
    torch._check(_is_matrix_shape(cov) or (cov.dim() == 2 and cov.shape[1] in (3, 6, 7)), lambda: (
        f"cov must have shape [N, 6], [N, 3], [N, 7], [N, 3, 3] (a covariance matrix), or "
        f"[N, 3, 3] with whitened=True (the whitening factor M), got {tuple(cov.shape)}"))


def _check_inputs_fake(x, means, cov, weights, cutoff, whitened):
    """The shape checks of torch_ext's make_problem, for compile and meta tensors."""
    torch._check(x.dim() >= 1 and x.shape[-1] == 3, lambda: f"x must have shape [..., 3], got {tuple(x.shape)}")
    torch._check(means.dim() == 2 and means.shape[1] == 3,
                 lambda: f"means must have shape [N, 3], got {tuple(means.shape)}")
    _check_cov_fake(cov, whitened)
    torch._check(cov.shape[0] == means.shape[0], lambda: "cov and means disagree on N")
    torch._check(weights.dim() in (1, 2), lambda: "weights must have shape [N] or [N, C]")
    torch._check(weights.shape[0] == means.shape[0], lambda: "weights and means disagree on N")
    torch._check(weights.dim() == 1 or weights.shape[1] >= 1,
                 lambda: "weights must have at least one channel ([N, C] with C >= 1)")
    torch._check(cutoff is None or (math.isfinite(cutoff) and cutoff > 0),
                 lambda: "cutoff must be None or a finite number > 0")


@torch.library.register_fake(_FORWARD)
def _gaussian_field_fake(x, means, cov, weights, eps=DEFAULT_EPS, cutoff=None, *,
                         whitened=False):
    _check_inputs_fake(x, means, cov, weights, cutoff, whitened)
    return x.new_empty(_result_shape(x, weights))


@torch.library.register_fake(_BACKWARD)
def _gaussian_field_backward_fake(grad_out, x, means, cov, weights, eps, cutoff, output_mask, *,
                                  whitened=False):
    _check_inputs_fake(x, means, cov, weights, cutoff, whitened)
    torch._check(tuple(grad_out.shape) == _result_shape(x, weights),
                 lambda: "grad_out must have the shape of the result")
    return tuple(
        t.new_empty(t.shape) if wanted else None
        for t, wanted in zip((x, means, cov, weights), output_mask)
    )


@torch.library.register_fake(_SECOND)
def _gaussian_field_double_backward_fake(grad_out, x, means, cov, weights, eps, cutoff, dir_x,
                                         dir_means, dir_cov, dir_weights, output_mask):
    # factors only: cov is always a whitening factor
    _check_inputs_fake(x, means, cov, weights, cutoff, True)
    torch._check(grad_out is not None or not any(output_mask[1:]),
                 lambda: "gaussian_field_double_backward: grad_out is needed")
    for d, like in ((dir_x, x), (dir_means, means), (dir_cov, cov), (dir_weights, weights)):
        torch._check(d is None or tuple(d.shape) == tuple(like.shape),
                     lambda: "each direction must have the shape of its input")
    shapes = (_result_shape(x, weights), x.shape, means.shape, cov.shape, weights.shape)
    return tuple(x.new_empty(s) if wanted else None for s, wanted in zip(shapes, output_mask))


# The culling structure's bytes, as torch_ext computes them (cpu.cpp's
# structure_bytes_cpu and cuda.cpp's, through gf_*_cull_structure_bytes): a function of
# the shapes, the dtype and the points per cell alone, so that the fake knows it.
_HEADER_BYTES = 128  # sizeof(gf_cull_header) = 104, aligned to 64
_MAX_CELLS = 1 << 22
_MIN_PAIRS = {"cpu": 1 << 22, "cuda": 1 << 26}    # ... and their sizes to plan from


def _max_cells(B, per_cell):
    """gf_grid_max_cells: floor(B / per_cell) within [1, 2^22]."""
    cells = torch.sym_int(B / per_cell) if isinstance(B, torch.SymInt) else int(B / per_cell)
    return torch.sym_max(1, torch.sym_min(_MAX_CELLS, cells))


def _align(v, a):
    return (v + a - 1) // a * a


def _structure_bytes(x, means, weights, device_type):
    """Bytes of the culling structure of these inputs (csrc/gf_cpu_cull.c's layout_of,
    cuda/cull_plan.cu's structure_layout); 0 where the problem is not culled at all
    (torch_ext's should_plan: the switch, empty inputs, a problem too small to plan)."""
    B = math.prod(x.shape[:-1]) if x.dim() > 1 else 1
    N = means.shape[0]
    mode = os.environ.get("GAUSSFIELD_CULLING", "") or "auto"
    if mode == "never" or B == 0 or N == 0 or N > 0x7FFFFFFF:
        return 0
    if mode != "always" and B * N < _MIN_PAIRS[device_type]:
        return 0
    es = x.element_size()
    cells = _max_cells(B, points_per_cell(device_type))
    if device_type == "cpu":
        at = _align(_HEADER_BYTES + (cells + 2) * 8, 64)   # cell_start
        at = _align(at + (cells + 1) * 8, 64)              # list_start
        at = _align(at + B * 8, 64)                        # point_order
        at = _align(at + B * 8, 64)                        # point_cell
        return _align(at + 3 * B * es, 64)                 # sorted x, y, z
    return _cuda_structure_bytes(B, N, es, cells)


def _cuda_structure_bytes(B, N, es, cells):
    """cuda/cull.cuh's StructureLayout: every array 256-byte aligned."""
    at = 256                                     # the header
    at += _align(N * 16 * es, 256)               # records
    at += _align((N + 1) * 8, 256)               # offsets
    at += 2 * _align((cells + 2) * 8, 256)       # cell_start, chunk_start
    at += _align(B * 8, 256)                     # point_order
    at += _align(B * 4 * es, 256)                # points (x, y, z, spare)
    at += _align(N * 4, 256)                     # gauss_order
    return at


@torch.library.register_fake(_CULLED)
def _gaussian_field_culled_fake(x, means, cov, weights, eps, cutoff, *, whitened=False):
    _check_inputs_fake(x, means, cov, weights, cutoff, whitened)
    device_type = x.device.type if x.device.type in POINTS_PER_CELL else "cpu"
    return (x.new_empty(_result_shape(x, weights)),
            x.new_empty((_structure_bytes(x, means, weights, device_type),), dtype=torch.uint8))


@torch.library.register_fake(_CULLED_BACKWARD)
def _gaussian_field_culled_backward_fake(grad_out, x, means, cov, weights, eps, cutoff,
                                         structure, output_mask, *, whitened=False):
    _check_inputs_fake(x, means, cov, weights, cutoff, whitened)
    torch._check(structure.dim() == 1, lambda: "structure must be 1-D")
    return tuple(
        t.new_empty(t.shape) if wanted else None
        for t, wanted in zip((x, means, cov, weights), output_mask)
    )


# ---- the front-end in PyTorch -------------------------------------------------------


def _whitened(x, means, cov, weights, eps, check=True):
    """cov parameters (not a factor) as a whitening factor in the dtype the ops take (the
    front-end's graph kept), for the ops with ``whitened=True``.  ``check``: a covariance
    matrix that is not positive definite raises in eager use, as the forward op does
    (False where the forward op has already checked these inputs)."""
    return whitening_factor(cov, eps, check=check).to(_factor_dtype(cov, x, means, weights))


# ---- when a call needs a graph --------------------------------------------------------


def _functorch_transforms():
    """The kinds of the torch.func transforms active around this call (empty outside
    any)."""
    if _peek_interpreter_stack is None or _peek_interpreter_stack() is None:
        return set()
    return {i.key() for i in _all_interpreters()}


def _differentiating(transforms):
    """Whether torch.func.grad / vjp / jacrev (Grad) or jvp / jacfwd (Jvp) is active."""
    return _TransformType is not None and bool(
        transforms & {_TransformType.Grad, _TransformType.Jvp})


def _functorch_order():
    """How many torch.func transforms that differentiate (Grad, Jvp) are nested around
    this call: the derivative order they ask of it."""
    if _peek_interpreter_stack is None or _peek_interpreter_stack() is None:
        return 0
    return sum(i.key() in (_TransformType.Grad, _TransformType.Jvp) for i in _all_interpreters())


# Calls of the backward and double backward ops made by this module's own derivative
# rules (their order is bounded where gaussian_field was called), told apart from a
# user's direct calls.
_rules = threading.local()


class _InRule:
    """``with _IN_RULE:`` around such a call (a class, not a generator: it runs on every
    backward, where microseconds count)."""

    def __enter__(self):
        _rules.depth = getattr(_rules, "depth", 0) + 1

    def __exit__(self, *exc):
        _rules.depth -= 1


_IN_RULE = _InRule()


def _check_order(order_of_op):
    """Raise where torch.func asks for more than second derivatives of f: its nesting is
    counted where the op is called (under torch.func, a third derivative of these ops
    is not otherwise seen, and would come back as zeros)."""
    if getattr(_rules, "depth", 0) > 0:
        return
    if _functorch_order() + order_of_op > 2:
        raise RuntimeError(THIRD_ORDER_UNSUPPORTED)


def _forward_mode(tensors):
    """Whether an input is a dual tensor of forward-mode AD (one carries no
    requires_grad, which is how register_autograd lost its tangent)."""
    if _forward_ad._current_level < 0:
        return False
    return any(t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _needs_graph(tensors):
    """Whether a call must record a node: an input requires grad under grad mode, or is
    a dual tensor."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    return _forward_mode(tensors)


def _apply(fn, functorch, *args):
    """fn.apply; under torch.func transforms (functorch true), allowed at their level."""
    if functorch:
        with _single_level_allowed():
            return fn.apply(*args)
    return fn.apply(*args)


def _below_autograd(op, *args, **kwargs):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args, **kwargs)


# ---- gaussian_field -------------------------------------------------------------------


class _FieldFunction(_FunctionBase):
    """The graph node of ``gaussian_field``: forward redispatches below Autograd; the
    backward is the backward op (fused, first order), or with ``create_graph=True`` the
    same through the whitened form (``_backward_differentiable``); forward mode (cov a
    whitening factor here, ``whitened`` true, see ``_field_autograd``) is the double
    backward op's first output.  Only the inputs are saved: every pair term is
    recomputed, so memory stays O(B + N) to every order."""

    @staticmethod
    def forward(x, means, cov, weights, eps, cutoff, whitened):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff,
                                                       whitened=whitened)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, means, cov, weights, eps, cutoff, whitened = inputs
        ctx.save_for_backward(x, means, cov, weights)
        if _forward_ad._current_level >= 0:  # forward mode (torch.func.jvp's too)
            ctx.save_for_forward(x, means, cov, weights)
        ctx.eps, ctx.cutoff, ctx.whitened = eps, cutoff, whitened

    @staticmethod
    def backward(ctx, grad_out):
        x, means, cov, weights = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:4])
        with _IN_RULE:
            if torch.is_grad_enabled() and not ctx.whitened:
                grads = _backward_differentiable(grad_out, x, means, cov, weights, ctx.eps,
                                                 ctx.cutoff, mask)
            else:
                # whitened, or first order: the op (differentiable itself when whitened)
                grads = torch.ops.gaussfield.gaussian_field_backward(
                    grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, mask,
                    whitened=ctx.whitened)
        return (*grads, None, None, None)

    @staticmethod
    def jvp(ctx, t_x, t_means, t_cov, t_weights, _t_eps, _t_cutoff, _t_whitened):
        x, means, cov, weights = ctx.saved_tensors
        if not ctx.whitened:  # _field_autograd routes forward mode through the factor
            raise RuntimeError("gaussfield: internal error: forward mode on cov parameters")
        with _IN_RULE:
            return torch.ops.gaussfield.gaussian_field_double_backward(
                None, x, means, cov, weights, ctx.eps, ctx.cutoff, t_x, t_means, t_cov,
                t_weights, [True, False, False, False, False])[0]


class _CulledFieldFunction(_FunctionBase):
    """The graph node of ``gaussian_field`` with a cutoff on the first-order path: the
    forward is the culled pair's, which returns beside the result the culling structure
    it built (the grid, the points sorted by cell, the path it chose; O(B + N) bytes, a
    number that the shapes alone decide), saved with the inputs, so that the backward
    neither plans nor sorts again.  A second ``.backward()`` (retain_graph) reads the same
    structure and gives the same bits; with ``create_graph=True`` the backward takes the
    differentiable path of ``_FieldFunction`` (which plans again)."""

    @staticmethod
    def forward(x, means, cov, weights, eps, cutoff, whitened):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield._gaussian_field_culled(x, means, cov, weights, eps, cutoff,
                                                               whitened=whitened)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, means, cov, weights, eps, cutoff, whitened = inputs
        structure = output[1]
        ctx.mark_non_differentiable(structure)
        ctx.save_for_backward(x, means, cov, weights, structure)
        ctx.eps, ctx.cutoff, ctx.whitened = eps, cutoff, whitened

    @staticmethod
    def backward(ctx, grad_out, _grad_structure):
        x, means, cov, weights, structure = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:4])
        with _IN_RULE:
            if torch.is_grad_enabled() and not ctx.whitened:
                grads = _backward_differentiable(grad_out, x, means, cov, weights, ctx.eps,
                                                 ctx.cutoff, mask)
            elif torch.is_grad_enabled():
                grads = torch.ops.gaussfield.gaussian_field_backward(
                    grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, mask, whitened=True)
            else:
                grads = torch.ops.gaussfield._gaussian_field_culled_backward(
                    grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, structure, mask,
                    whitened=ctx.whitened)
        return (*grads, None, None, None)


_CULLED_DTYPES = (torch.float32, torch.float64)


def _takes_culled_pair(x, means, cov, weights, cutoff):
    """Whether gaussian_field's first-order node is the culled pair's: a cutoff, and the
    inputs of one of the dtypes the ops compute in (low-precision inputs take the
    promoting public ops)."""
    return cutoff is not None and x.dtype in _CULLED_DTYPES and all(
        t.dtype == x.dtype for t in (means, cov, weights))


def _backward_differentiable(grad_out, x, means, cov, weights, eps, cutoff, mask):
    """The backward op's result for cov parameters (not a factor), as a differentiable
    function of all five tensors: the backward op at the whitening factor
    (``whitened=True``; its derivative is the double backward op), then the front-end's
    vector-Jacobian product in PyTorch."""
    if not mask[2]:
        # (M keeps its graph: the other gradients depend on cov through it)
        gx, gm, _, gw = torch.ops.gaussfield.gaussian_field_backward(
            grad_out, x, means, _whitened(x, means, cov, weights, eps, False), weights, eps,
            cutoff, mask, whitened=True)
        return gx, gm, None, gw
    if not _differentiating(_functorch_transforms()) and cov.requires_grad:
        # plain autograd (create_graph=True): the front-end's VJP by autograd.grad, which
        # costs less host time than torch.func.vjp's level
        with torch.enable_grad():
            M = _whitened(x, means, cov, weights, eps, False)
        gx, gm, gM, gw = torch.ops.gaussfield.gaussian_field_backward(
            grad_out, x, means, M, weights, eps, cutoff, mask, whitened=True)
        (gc,) = torch.autograd.grad(M, cov, gM, create_graph=True)
        return gx, gm, gc, gw
    with torch.enable_grad():
        M, front_vjp = torch.func.vjp(lambda c: _whitened(x, means, c, weights, eps, False), cov)
    gx, gm, gM, gw = torch.ops.gaussfield.gaussian_field_backward(
        grad_out, x, means, M, weights, eps, cutoff, mask, whitened=True)
    (gc,) = front_vjp(gM)
    return gx, gm, gc, gw


@torch.library.impl(_FORWARD, "Autograd")
def _field_autograd(x, means, cov, weights, eps=DEFAULT_EPS, cutoff=None, *, whitened=False):
    transforms = _functorch_transforms()
    functorch = _differentiating(transforms)
    if functorch and not _HAVE_SINGLE_LEVEL:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)
    if functorch:
        _check_order(0)
    if not functorch and not _needs_graph((x, means, cov, weights)):
        # no graph to record: skip the node's cost (about 0.1 ms on the GPU machine's
        # host, measured at B = 500, N = 1000)
        return _below_autograd(torch.ops.gaussfield.gaussian_field.default, x, means, cov,
                               weights, eps, cutoff, whitened=whitened)
    forward_mode = _forward_mode((x, means, cov, weights))
    if (functorch or forward_mode) and not whitened:
        # forward mode and torch.func: the front-end in PyTorch, the op on the factor
        return torch.ops.gaussfield.gaussian_field(
            x, means, _whitened(x, means, cov, weights, eps), weights, eps, cutoff,
            whitened=True)
    if not functorch and not forward_mode and _takes_culled_pair(x, means, cov, weights, cutoff):
        return _CulledFieldFunction.apply(x, means, cov, weights, eps, cutoff, whitened)[0]
    return _apply(_FieldFunction, functorch, x, means, cov, weights, eps, cutoff, whitened)


# ---- gaussian_field_backward -----------------------------------------------------------


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


class _BackwardFunction(_FunctionBase):
    """The graph node of ``gaussian_field_backward`` at a whitening factor: its VJP is
    the double backward op along the cotangents, its JVP the backward op along grad_out's
    tangent (the backward is linear in grad_out) plus the double backward op's last four
    outputs along the other tangents (the Hessian of <grad_out, f> is symmetric)."""

    @staticmethod
    def forward(grad_out, x, means, cov, weights, eps, cutoff, output_mask):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field_backward(
                grad_out, x, means, cov, weights, eps, cutoff, output_mask, whitened=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, means, cov, weights, eps, cutoff, output_mask = inputs
        ctx.save_for_backward(grad_out, x, means, cov, weights)
        if _forward_ad._current_level >= 0:
            ctx.save_for_forward(grad_out, x, means, cov, weights)
        ctx.eps, ctx.cutoff, ctx.output_mask = eps, cutoff, list(output_mask)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_x, g_means, g_cov, g_weights):
        grad_out, x, means, cov, weights = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:5])
        with _IN_RULE:
            outs = torch.ops.gaussfield.gaussian_field_double_backward(
                grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, g_x, g_means, g_cov,
                g_weights, mask)
        return (*outs, None, None, None)

    @staticmethod
    def jvp(ctx, t_grad_out, t_x, t_means, t_cov, t_weights, *_):
        grad_out, x, means, cov, weights = ctx.saved_tensors
        mask = ctx.output_mask
        linear = second = (None,) * 4
        with _IN_RULE:
            if t_grad_out is not None:
                linear = torch.ops.gaussfield.gaussian_field_backward(
                    t_grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, mask, whitened=True)
            if any(t is not None for t in (t_x, t_means, t_cov, t_weights)):
                second = torch.ops.gaussfield.gaussian_field_double_backward(
                    grad_out, x, means, cov, weights, ctx.eps, ctx.cutoff, t_x, t_means,
                    t_cov, t_weights, [False, *mask])[1:]
        out = []
        for want, a, b, like in zip(mask, linear, second, (x, means, cov, weights)):
            t = _add(a, b)
            out.append(None if not want else (t if t is not None else torch.zeros_like(like)))
        return tuple(out)


@torch.library.impl(_BACKWARD, "Autograd")
def _backward_autograd(grad_out, x, means, cov, weights, eps, cutoff, output_mask, *,
                       whitened=False):
    inputs = (grad_out, x, means, cov, weights)
    functorch = _differentiating(_functorch_transforms())
    if functorch and not _HAVE_SINGLE_LEVEL:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)
    if functorch:
        _check_order(1)
    if not functorch and not _needs_graph(inputs):
        return _below_autograd(torch.ops.gaussfield.gaussian_field_backward.default, grad_out,
                               x, means, cov, weights, eps, cutoff, output_mask,
                               whitened=whitened)
    if not whitened:
        return _backward_differentiable(grad_out, x, means, cov, weights, eps, cutoff,
                                        list(output_mask))
    return _apply(_BackwardFunction, functorch, grad_out, x, means, cov, weights, eps, cutoff,
                  output_mask)


# ---- gaussian_field_double_backward ----------------------------------------------------


class _DoubleBackwardFunction(_FunctionBase):
    """The graph node of ``gaussian_field_double_backward``: recorded, so that a second
    derivative taken with ``create_graph=True`` works, and raising when a third
    derivative actually reaches it, in either mode."""

    @staticmethod
    def forward(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.gaussian_field_double_backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(THIRD_ORDER_UNSUPPORTED)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(THIRD_ORDER_UNSUPPORTED)


@torch.library.impl(_SECOND, "Autograd")
def _double_backward_autograd(grad_out, x, means, cov, weights, eps, cutoff, dir_x, dir_means,
                              dir_cov, dir_weights, output_mask):
    tensors = (grad_out, x, means, cov, weights, dir_x, dir_means, dir_cov, dir_weights)
    args = (*tensors[:5], eps, cutoff, *tensors[5:], output_mask)
    functorch = _differentiating(_functorch_transforms())
    if functorch and not _HAVE_SINGLE_LEVEL:
        raise RuntimeError(FUNCTORCH_UNSUPPORTED)
    if functorch:
        _check_order(2)
    if not functorch and not _needs_graph(tensors):
        return _below_autograd(torch.ops.gaussfield.gaussian_field_double_backward.default, *args)
    return _apply(_DoubleBackwardFunction, functorch, *args)


# ---- vmap ------------------------------------------------------------------------
# Batching rules, so that torch.func.vmap (and jacrev, jacfwd, hessian, which vmap the
# ops) runs without torch's per-sample fallback and its warning.  A batch of point sets
# folds into the points of one call; a batch of fields (means, cov or weights batched)
# runs one call per field.


def _per_sample(op, info, in_dims, args):
    """op on each sample of the batch (a Python loop), outputs stacked on dim 0."""
    outs = []
    for k in range(info.batch_size):
        outs.append(op(*(a.select(d, k) if d is not None and a is not None else a
                         for a, d in zip(args, in_dims))))
    if isinstance(outs[0], tuple):
        stacked = tuple(None if o[0] is None else torch.stack(o) for o in zip(*outs))
        return stacked, tuple(None if t is None else 0 for t in stacked)
    return torch.stack(outs), 0


def _front(t, dim, batch):
    """t with its batch dimension first (expanded where it has none)."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(batch, *t.shape)


@torch.library.register_vmap(_FORWARD)
def _gaussian_field_vmap(info, in_dims, x, means, cov, weights, eps=DEFAULT_EPS, cutoff=None, *,
                         whitened=False):
    x_dim, means_dim, cov_dim, weights_dim = in_dims[:4]
    op = torch.ops.gaussfield.gaussian_field.default
    if means_dim is None and cov_dim is None and weights_dim is None:
        # x [..., 3] takes any leading dims: the batch is one more
        return op(x.movedim(x_dim, 0), means, cov, weights, eps, cutoff, whitened=whitened), 0
    return _per_sample(lambda *a: op(*a, eps, cutoff, whitened=whitened), info, in_dims[:4],
                       (x, means, cov, weights))


@torch.library.register_vmap(_BACKWARD)
def _gaussian_field_backward_vmap(info, in_dims, grad_out, x, means, cov, weights, eps, cutoff,
                                  output_mask, *, whitened=False):
    g_dim, x_dim, means_dim, cov_dim, weights_dim = in_dims[:5]
    op = torch.ops.gaussfield.gaussian_field_backward.default
    fields_batched = not (means_dim is None and cov_dim is None and weights_dim is None)
    if not fields_batched and not any(output_mask[1:]):
        # only grad_x, which is per point: fold the batch into the points
        B = info.batch_size
        grads = op(_front(grad_out, g_dim, B), _front(x, x_dim, B), means, cov, weights, eps,
                   cutoff, output_mask, whitened=whitened)
        return grads, (0, None, None, None)
    return _per_sample(lambda *a: op(*a, eps, cutoff, output_mask, whitened=whitened), info,
                       in_dims[:5], (grad_out, x, means, cov, weights))


@torch.library.register_vmap(_SECOND)
def _gaussian_field_double_backward_vmap(info, in_dims, grad_out, x, means, cov, weights, eps,
                                         cutoff, dir_x, dir_means, dir_cov, dir_weights,
                                         output_mask):
    g_dim, x_dim, means_dim, cov_dim, weights_dim, dx_dim, dm_dim, dc_dim, dw_dim = in_dims[:5] + in_dims[7:11]
    op = torch.ops.gaussfield.gaussian_field_double_backward.default
    fields_batched = any(d is not None for d in (means_dim, cov_dim, weights_dim, dm_dim,
                                                  dc_dim, dw_dim))
    if not fields_batched and not any(output_mask[2:]):
        # only the per-point outputs: fold the batch into the points
        B = info.batch_size
        outs = op(_front(grad_out, g_dim, B), _front(x, x_dim, B), means, cov, weights, eps,
                  cutoff, _front(dir_x, dx_dim, B), dir_means, dir_cov, dir_weights,
                  output_mask)
        return outs, (0, 0, None, None, None)
    args = (grad_out, x, means, cov, weights, dir_x, dir_means, dir_cov, dir_weights)
    dims = (g_dim, x_dim, means_dim, cov_dim, weights_dim, dx_dim, dm_dim, dc_dim, dw_dim)
    return _per_sample(lambda g, xx, m, c, w, a, b, d, e: op(g, xx, m, c, w, eps, cutoff, a, b, d, e,
                                                             output_mask),
                       info, dims, args)


# ---- voxelize ---------------------------------------------------------------------------
# voxelize(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff, *,
# whitened) -> [S0, S1, S2] (+ [C]) and voxelize_backward(grad_out, ..., output_mask) ->
# (grad_means, grad_cov, grad_weights): gaussian_field at the voxel centres of a grid
# (csrc/gaussfield.h, "Regular grids").  First-order reverse mode is fused (the backward
# op walks each Gaussian's tiles).  What is of higher order (create_graph=True, forward
# mode, torch.func's transforms) evaluates through gaussian_field at the centres
# (_common.centres_of, the C core's formula and order, hence the same points bit for
# bit), whose own registrations above give it every capability of the point op, at the
# price of the [S0 S1 S2, 3] points.

_VOXELIZE = "gaussfield::voxelize"
_VOXELIZE_BACKWARD = "gaussfield::voxelize_backward"


def _voxel_shape(size, weights):
    return (*size, *weights.shape[1:])


def _check_voxel_fake(means, cov, weights, shape, origin, edges, offset, size, cutoff,
                      whitened):
    """make_voxel_problem's shape checks, for compile and meta tensors."""
    torch._check(means.dim() == 2 and means.shape[1] == 3,
                 lambda: f"means must have shape [N, 3], got {tuple(means.shape)}")
    _check_cov_fake(cov, whitened)
    torch._check(cov.shape[0] == means.shape[0], lambda: "cov and means disagree on N")
    torch._check(weights.dim() in (1, 2), lambda: "weights must have shape [N] or [N, C]")
    torch._check(weights.shape[0] == means.shape[0], lambda: "weights and means disagree on N")
    torch._check(len(origin) == 3 and len(edges) == 9,
                 lambda: "origin must have 3 values and edges 9")
    torch._check(cutoff is None or (math.isfinite(cutoff) and cutoff > 0),
                 lambda: "cutoff must be None or a finite number > 0")
    for c in range(3):
        torch._check(shape[c] >= 1, lambda: "shape must have entries >= 1")
        torch._check(offset[c] >= 0, lambda: "offset must have entries >= 0")
        torch._check(size[c] >= 0, lambda: "size must have entries >= 0")
        torch._check(offset[c] + size[c] <= shape[c], lambda: "offset + size must be <= shape")


@torch.library.register_fake(_VOXELIZE)
def _voxelize_fake(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff, *,
                   whitened=False):
    _check_voxel_fake(means, cov, weights, shape, origin, edges, offset, size, cutoff, whitened)
    return means.new_empty(_voxel_shape(size, weights))


@torch.library.register_fake(_VOXELIZE_BACKWARD)
def _voxelize_backward_fake(grad_out, means, cov, weights, shape, origin, edges, offset, size,
                            eps, cutoff, output_mask, *, whitened=False):
    _check_voxel_fake(means, cov, weights, shape, origin, edges, offset, size, cutoff, whitened)
    torch._check(tuple(grad_out.shape) == _voxel_shape(size, weights),
                 lambda: "grad_out must have the shape of the result")
    return tuple(t.new_empty(t.shape) if wanted else None
                 for t, wanted in zip((means, cov, weights), output_mask))


def _voxel_points(means, shape, origin, edges, offset, size):
    """The subvolume's voxel centres as points [S0 S1 S2, 3] in means' dtype."""
    return centres_of(shape, origin, edges, offset, size, means.dtype, means.device).reshape(-1, 3)


class _VoxelFunction(_FunctionBase):
    """The graph node of ``voxelize``: the backward is the fused backward op at first
    order; with ``create_graph=True`` it is the point op's backward at the voxel
    centres, differentiable by the point op's own rules."""

    @staticmethod
    def forward(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff, whitened):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.gaussfield.voxelize(means, cov, weights, shape, origin, edges,
                                                 offset, size, eps, cutoff, whitened=whitened)

    @staticmethod
    def setup_context(ctx, inputs, output):
        means, cov, weights, shape, origin, edges, offset, size, eps, cutoff, whitened = inputs
        ctx.save_for_backward(means, cov, weights)
        ctx.grid = (list(shape), list(origin), list(edges), list(offset), list(size))
        ctx.eps, ctx.cutoff, ctx.whitened = eps, cutoff, whitened

    @staticmethod
    def backward(ctx, grad_out):
        means, cov, weights = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        shape, origin, edges, offset, size = ctx.grid
        with _IN_RULE:
            if torch.is_grad_enabled():
                x = _voxel_points(means, shape, origin, edges, offset, size)
                g = grad_out.reshape(x.shape[0], *weights.shape[1:])
                _, gm, gc, gw = torch.ops.gaussfield.gaussian_field_backward(
                    g, x, means, cov, weights, ctx.eps, ctx.cutoff, [False, *mask],
                    whitened=ctx.whitened)
            else:
                gm, gc, gw = torch.ops.gaussfield.voxelize_backward(
                    grad_out, means, cov, weights, shape, origin, edges, offset, size, ctx.eps,
                    ctx.cutoff, mask, whitened=ctx.whitened)
        return gm, gc, gw, None, None, None, None, None, None, None, None


def _voxelize_through_points(means, cov, weights, shape, origin, edges, offset, size, eps,
                             cutoff, whitened):
    x = _voxel_points(means, shape, origin, edges, offset, size)
    out = torch.ops.gaussfield.gaussian_field(x, means, cov, weights, eps, cutoff,
                                              whitened=whitened)
    return out.reshape(_voxel_shape(size, weights))


@torch.library.impl(_VOXELIZE, "Autograd")
def _voxelize_autograd(means, cov, weights, shape, origin, edges, offset, size, eps, cutoff, *,
                       whitened=False):
    args = (means, cov, weights, shape, origin, edges, offset, size, eps, cutoff)
    functorch = _differentiating(_functorch_transforms())
    if not functorch and not _needs_graph((means, cov, weights)):
        return _below_autograd(torch.ops.gaussfield.voxelize.default, *args, whitened=whitened)
    if functorch or _forward_mode((means, cov, weights)):
        # torch.func and forward mode: the point op's rules at the centres
        return _voxelize_through_points(*args, whitened)
    return _VoxelFunction.apply(*args, whitened)


@torch.library.impl(_VOXELIZE_BACKWARD, "Autograd")
def _voxelize_backward_autograd(grad_out, means, cov, weights, shape, origin, edges, offset, size,
                                eps, cutoff, output_mask, *, whitened=False):
    tensors = (grad_out, means, cov, weights)
    functorch = _differentiating(_functorch_transforms())
    if not functorch and not _needs_graph(tensors):
        return _below_autograd(torch.ops.gaussfield.voxelize_backward.default, grad_out, means,
                               cov, weights, shape, origin, edges, offset, size, eps, cutoff,
                               output_mask, whitened=whitened)
    # differentiated itself: the point op's backward at the centres, with its rules
    x = _voxel_points(means, shape, origin, edges, offset, size)
    g = grad_out.reshape(x.shape[0], *weights.shape[1:])
    _, gm, gc, gw = torch.ops.gaussfield.gaussian_field_backward(
        g, x, means, cov, weights, eps, cutoff, [False, *output_mask], whitened=whitened)
    return gm, gc, gw


@torch.library.register_vmap(_VOXELIZE)
def _voxelize_vmap(info, in_dims, means, cov, weights, shape, origin, edges, offset, size, eps,
                   cutoff, *, whitened=False):
    # a batch of fields: one call per field (the grid is not a tensor, never batched)
    op = torch.ops.gaussfield.voxelize.default
    return _per_sample(lambda m, c, w: op(m, c, w, shape, origin, edges, offset, size, eps,
                                          cutoff, whitened=whitened),
                       info, in_dims[:3], (means, cov, weights))


@torch.library.register_vmap(_VOXELIZE_BACKWARD)
def _voxelize_backward_vmap(info, in_dims, grad_out, means, cov, weights, shape, origin, edges,
                            offset, size, eps, cutoff, output_mask, *, whitened=False):
    op = torch.ops.gaussfield.voxelize_backward.default
    return _per_sample(lambda g, m, c, w: op(g, m, c, w, shape, origin, edges, offset, size, eps,
                                             cutoff, output_mask, whitened=whitened),
                       info, in_dims[:4], (grad_out, means, cov, weights))
