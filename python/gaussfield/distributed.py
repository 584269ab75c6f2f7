# SPDX-License-Identifier: Apache-2.0
"""Gaussian sharding on ``torch.distributed``: a field too large for one process, split
over K ranks by Gaussians.

Each rank holds a contiguous slice of the Gaussians (its *shard*: ``means``, the
covariance parameters and ``weights`` of about N / K of them) and the **same points**.
Each rank evaluates its shard's partial field at the points, the K partial fields are
summed by one all-reduce, and every rank goes on with the same whole field, so every
rank computes the same loss.  The backward then gives each shard exactly the gradient
that one process training the whole field would give those Gaussians (not K times it),
and each rank's optimiser updates only its own shard, so the parameters and the
optimiser state (Adam's two moments) are split K ways too::

    import torch
    import torch.distributed as dist
    import gaussfield
    from gaussfield.distributed import ShardedGaussianField

    dist.init_process_group("nccl")             # torchrun --nproc-per-node K script.py
    torch.manual_seed(0)                        # the same full field on every rank ...
    full = gaussfield.GaussianField(1_000_000)
    field = ShardedGaussianField.from_field(full).cuda()   # ... of which this rank keeps 1/K
    del full
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for x, target in batches:                   # the same points on every rank
        loss = torch.nn.functional.mse_loss(field(x), target)
        opt.zero_grad()
        loss.backward()                         # no gradient communication
        opt.step()
    state = field.gather_state_dict()           # the whole field, GaussianField's keys
    gaussfield.distributed.shutdown()            # every rank, last: see shutdown()

The other way to use several processes, data parallel (each rank the whole field and
its own points), needs nothing from this module: wrap a ``gaussfield.GaussianField`` in
``torch.nn.parallel.DistributedDataParallel``.  ``examples/train_distributed.py`` does
both.

Without an initialised default process group (and with ``group=None``) every function
here acts as the only rank of a world of size 1: no communication, the whole field in
one shard, so one script runs with and without ``torchrun``.

``torch.distributed`` is imported here, never by ``import gaussfield``.  On a build of
torch without it (``torch.distributed.is_available()`` is False) there can be no
process group, and these functions work as one rank of one; passing a ``group`` there
raises a clear error.
"""
import operator
import os
import sys
from typing import Dict, Mapping, NoReturn, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._common import DEFAULT_EPS, check_cutoff
from .ops import gaussian_field

__all__ = [
    "all_reduce_sum",
    "shard_bounds",
    "shard_state_dict",
    "gather_state_dict",
    "sharded_gaussian_field",
    "ShardedGaussianField",
    "shutdown",
]

# the covariance parameter's name by cov.shape[-1], as GaussianField names it
_COV_NAMES = {6: "cov_tril", 3: "log_scales"}


def _world(group) -> Tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without a process group."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("gaussfield.distributed needs torch.distributed, which this build "
                           "of torch does not have")
    return dist.get_rank(group), dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum of a tensor over the ranks, with the identity as its backward.

    Why the identity: the ranks all compute ONE loss, L(total), from the same summed
    ``total = sum_k partial_k`` (the same points, the same target, the same total, so the
    same number on every rank; it is one loss replicated, not K losses added).  Then
    ``dL/d partial_k = dL/d total * d total/d partial_k = dL/d total``, and ``dL/d total``
    is what rank k's own autograd already holds, the same on every rank and the same as
    in one process.  Summing the incoming gradients over the ranks (the backward of
    ``torch.distributed.nn.functional.all_reduce``) would differentiate the sum of the K
    replicas, K * L, and give K times the gradient: Adam hides that, SGD does not.

    The identity is right only for such a replicated loss.  A rank whose loss uses the
    total differently from the others' (its own targets, its own subset of points) needs
    the summed backward instead.
    """

    @staticmethod
    def forward(ctx, partial: Tensor, group) -> Tensor:
        # a copy: all_reduce works in place, and the partial belongs to the caller (and
        # to autograd: the op may have saved it)
        total = partial.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        return grad_total, None


class _SharedInput(torch.autograd.Function):
    """The identity, whose backward sums the gradient over the ranks: for an input that
    every rank holds alike (the points), whose gradient has one part per shard.

    The pair with :class:`_AllReduceSum` is Megatron-LM's f / g of tensor parallelism:
    ``d L / d x = sum_k (d partial_k / d x)^T dL/d total``, and rank k's op computes only
    its own term.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        # a copy: autograd may hand the same gradient tensor to several consumers
        grad_x = grad_x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad_x, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad_x, None


def all_reduce_sum(partial: Tensor, group=None) -> Tensor:
    """``partial`` summed over the ranks of ``group`` (default: the world), on every
    rank; differentiable, with the identity as its backward.

    For a loss that every rank computes alike from the sum (see the module docstring):
    the gradient that reaches each rank's ``partial`` is then the gradient of that one
    loss, as in one process.  ``partial`` is not modified.  Without a process group
    (world size 1) it is returned as it is.
    """
    _, world_size = _world(group)
    if world_size == 1:
        return partial
    return _AllReduceSum.apply(partial, group)


def shard_bounds(num_gaussians: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``(start, stop)``: the Gaussians ``start:stop`` that ``rank`` holds when
    ``num_gaussians`` are split over ``world_size`` ranks in contiguous, near-equal
    slices in rank order (the first ``num_gaussians % world_size`` ranks hold one more).
    Every rank needs at least one Gaussian."""
    checked = []
    for name, value in (("num_gaussians", num_gaussians), ("world_size", world_size), ("rank", rank)):
        try:
            if isinstance(value, bool):
                raise TypeError
            checked.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    num_gaussians, world_size, rank = checked
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_gaussians < world_size:
        raise ValueError(
            f"Gaussian sharding needs at least one Gaussian per rank: {num_gaussians} "
            f"Gaussians cannot be split over {world_size} ranks")
    base, extra = divmod(num_gaussians, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _num_gaussians(state: Mapping[str, Tensor], what: str) -> int:
    if not state:
        raise ValueError(f"{what} is empty")
    sizes = {}
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor) or tensor.dim() == 0:
            raise ValueError(f"{what}[{name!r}] must be a tensor with the Gaussians along "
                             f"dimension 0, got {type(tensor).__name__}"
                             + (" of 0 dimensions" if isinstance(tensor, Tensor) else ""))
        sizes[name] = tensor.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the tensors of {what} must hold the same number of Gaussians "
                         f"along dimension 0, got {sizes}")
    return next(iter(sizes.values()))


def shard_state_dict(state_dict: Mapping[str, Tensor], *, rank: Optional[int] = None,
                     world_size: Optional[int] = None, group=None) -> Dict[str, Tensor]:
    """This rank's slice (:func:`shard_bounds`) of every tensor of a whole field's
    ``state_dict`` (e.g. ``GaussianField(...).state_dict()``: ``means``, ``cov_tril`` or
    ``log_scales``, ``weights``; any tensors with the Gaussians along dimension 0).

    ``rank`` and ``world_size`` default to this process's in ``group``; give both to
    slice for another rank, without a process group.  The slices are views of the given
    tensors (detached): clone them to own them.
    """
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither (to use the process group's)")
    if rank is None:
        rank, world_size = _world(group)
    start, stop = shard_bounds(_num_gaussians(state_dict, "state_dict"), world_size, rank)
    return {name: tensor.detach()[start:stop] for name, tensor in state_dict.items()}


def gather_state_dict(shard_state: Mapping[str, Tensor], *, num_gaussians: int,
                      group=None) -> Dict[str, Tensor]:
    """The whole field's tensors, on every rank, from each rank's shard (the inverse of
    :func:`shard_state_dict`): for checkpoints and tests.

    ``shard_state`` is this rank's slice of a field of ``num_gaussians`` Gaussians, laid
    out as :func:`shard_bounds` says; the result has the shard's devices and dtypes and
    is detached.  Every rank of ``group`` must call it with the same keys in the same
    order.  It holds the whole field on each rank: for a field too large for that, save
    each rank's shard (``module.state_dict()``) instead.
    """
    rank, world_size = _world(group)
    n_local = _num_gaussians(shard_state, "shard_state")
    bounds = [shard_bounds(num_gaussians, world_size, r) for r in range(world_size)]
    if n_local != bounds[rank][1] - bounds[rank][0]:
        raise ValueError(f"rank {rank} of {world_size} should hold {bounds[rank][1] - bounds[rank][0]} "
                         f"of the {num_gaussians} Gaussians, but its shard holds {n_local}")
    if world_size == 1:
        return {name: tensor.detach().clone() for name, tensor in shard_state.items()}
    longest = bounds[0][1] - bounds[0][0]  # rank 0 holds the longest slice
    full = {}
    for name, tensor in shard_state.items():
        tensor = tensor.detach()
        # all_gather wants equal sizes on every backend: pad each shard to the longest
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[:n_local] = tensor
        pieces = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(pieces, padded, group=group)
        full[name] = torch.cat([p[:stop - start] for p, (start, stop) in zip(pieces, bounds)])
    return full


def sharded_gaussian_field(x: Tensor, means: Tensor, cov: Tensor, weights: Tensor, *,
                           eps: float = DEFAULT_EPS, cutoff: Optional[float] = None,
                           whitened: bool = False, group=None) -> Tensor:
    """The whole field at ``x``, from this rank's shard ``(means, cov, weights)``:
    :func:`gaussfield.gaussian_field` on the shard, summed over the ranks of ``group``
    by :func:`all_reduce_sum`.  Same arguments and result as ``gaussian_field``, the same
    value on every rank.

    Every rank must pass the same ``x`` and compute the same loss from the result (see
    :func:`all_reduce_sum`); then each shard gets the gradient one process would give
    it, and where ``x`` requires grad its gradient (summed over the shards in the
    backward, one more all-reduce of ``x``'s size) is the whole field's on every rank.
    """
    _, world_size = _world(group)
    if world_size > 1 and x.requires_grad:
        x = _SharedInput.apply(x, group)
    partial = gaussian_field(x, means, cov, weights, eps=eps, cutoff=cutoff, whitened=whitened)
    return all_reduce_sum(partial, group)


class ShardedGaussianField(nn.Module):
    """This rank's shard of a field of ``num_gaussians`` Gaussians; ``forward(x)`` is
    the whole field at ``x`` (:func:`sharded_gaussian_field`), the same on every rank.

    ``shard`` holds this rank's slice (:func:`shard_bounds`) of the field's tensors, with
    :class:`gaussfield.GaussianField`'s names: ``means`` ``[n, 3]``, ``cov_tril``
    ``[n, 6]`` (full covariance) or ``log_scales`` ``[n, 3]`` (diagonal), ``weights``
    ``[n]`` or ``[n, C]``; they are copied into this module's parameters, keeping their
    dtypes (a float64 ``cov_tril`` beside float32 ``means`` is cast to ``means``' dtype in
    ``forward``, differentiably, as ``GaussianField`` does).  ``state_dict()`` is this
    rank's shard; :meth:`gather_state_dict` is the whole field, loadable into a
    ``GaussianField``.

    Every rank must call ``forward`` with the same points and compute the same loss
    from the result; the parameters' gradients then need no communication, and an
    optimiser over ``parameters()`` updates the shard exactly as one process would
    update those Gaussians.  Do not wrap this module in ``DistributedDataParallel`` over
    the ranks of ``group``: that would average the gradients of different Gaussians.
    """

    def __init__(self, shard: Mapping[str, Tensor], *, num_gaussians: int,
                 eps: float = DEFAULT_EPS, cutoff: Optional[float] = None, group=None):
        super().__init__()
        names = set(shard)
        cov_names = names & set(_COV_NAMES.values())
        if len(cov_names) != 1 or names != {"means", "weights"} | cov_names:
            raise ValueError("shard must hold 'means', 'weights' and one of 'cov_tril' (full "
                             f"covariance) or 'log_scales' (diagonal), got {sorted(names)}")
        (cov_name,) = cov_names
        n_local = _num_gaussians(shard, "shard")
        rank, world_size = _world(group)
        start, stop = shard_bounds(num_gaussians, world_size, rank)
        if n_local != stop - start:
            raise ValueError(f"rank {rank} of {world_size} should hold Gaussians {start}:{stop} of "
                             f"{num_gaussians}, {stop - start} of them, but its shard holds {n_local}")
        width = {"cov_tril": 6, "log_scales": 3}[cov_name]
        if shard["means"].dim() != 2 or shard["means"].shape[1] != 3:
            raise ValueError(f"shard['means'] must have shape [n, 3], got {list(shard['means'].shape)}")
        if shard[cov_name].dim() != 2 or shard[cov_name].shape[1] != width:
            raise ValueError(f"shard[{cov_name!r}] must have shape [n, {width}], "
                             f"got {list(shard[cov_name].shape)}")
        if shard["weights"].dim() not in (1, 2):
            raise ValueError(f"shard['weights'] must have shape [n] or [n, C], got {list(shard['weights'].shape)}")
        self.num_gaussians = num_gaussians
        self.shard_start, self.shard_stop = start, stop
        self.use_full_cov = cov_name == "cov_tril"
        self.eps = eps
        self.cutoff = None if cutoff is None else check_cutoff(cutoff)
        self.group = group
        # registered in GaussianField's order, so state_dicts list the same keys alike
        for name in ("means", cov_name, "weights"):
            self.register_parameter(name, nn.Parameter(shard[name].detach().clone()))

    @classmethod
    def from_field(cls, field: nn.Module, group=None) -> "ShardedGaussianField":
        """This rank's shard of a whole ``gaussfield.GaussianField`` (or any module with
        its parameters), with its cutoff.  Build the same field on every rank (the same
        seed) and keep only the shard."""
        cov_name = "cov_tril" if field.use_full_cov else "log_scales"
        whole = {name: getattr(field, name) for name in ("means", cov_name, "weights")}
        return cls(shard_state_dict(whole, group=group), num_gaussians=whole["means"].shape[0],
                   cutoff=getattr(field, "cutoff", None), group=group)

    @property
    def cov(self) -> Tensor:
        return self.cov_tril if self.use_full_cov else self.log_scales

    def forward(self, x: Tensor) -> Tensor:
        return sharded_gaussian_field(x, self.means, self.cov.to(self.means.dtype), self.weights,
                                      eps=self.eps, cutoff=self.cutoff, group=self.group)

    def gather_state_dict(self) -> Dict[str, Tensor]:
        """The whole field's parameters on every rank (:func:`gather_state_dict`), with
        ``GaussianField``'s keys: ``GaussianField(module.num_gaussians,
        use_full_cov=module.use_full_cov).load_state_dict(...)`` takes them.  A
        collective: every rank must call it."""
        return gather_state_dict(self.state_dict(), num_gaussians=self.num_gaussians, group=self.group)

    def extra_repr(self) -> str:
        return (f"Gaussians {self.shard_start}:{self.shard_stop} of {self.num_gaussians}, "
                f"use_full_cov={self.use_full_cov}, cutoff={self.cutoff}")


def shutdown(exit_code: int = 0) -> NoReturn:
    """Ends this process of a ``torch.distributed`` run in the way that cannot abort:
    the ranks wait for each other (a barrier), the process group is destroyed, stdout and
    stderr are flushed, and the process exits with ``exit_code`` without the
    interpreter's finalization (``os._exit``).  Call it last, on every rank, once the
    run's results are written and their files closed.

    Why: torch 2.13's gloo worker threads can outlive ``destroy_process_group``, and one
    that frees a finished collective's tensors while the interpreter finalizes aborts
    the process (``terminate called without an active exception``, exit status 134)
    after the work is done: 4 runs in 10 of a plain two-rank script on the CPU here
    (gdb on a failing rank: a gloo thread in ``take_gil`` during ``Py_FinalizeEx``).
    Leaving without finalization does not reach that code.  What that skips: ``atexit``
    handlers and the flushing of files left open, so close them first (``with open(...)``;
    ``torch.save`` closes its file).

    Without a process group (a script run without ``torchrun``) it is an ordinary
    ``sys.exit(exit_code)``, so one script runs both ways.  After a failure, do not call
    it: let the exception end the rank (torchrun then stops the others), since the
    barrier would wait for ranks that may never reach it.
    """
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise TypeError(f"exit_code must be an integer, got {type(exit_code).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(exit_code)
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
