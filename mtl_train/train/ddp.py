"""Gradient synchronisation of a training step across ranks (``torch.distributed``).

One step under N ranks must equal one step of one process on the N per-rank batches
concatenated (rank r's rows r*b .. (r+1)*b - 1 of the global batch). Two pieces make it so:

- :func:`global_losses`: each rank's per-task mean losses L_r (over its c_r valid rows) become
  the global batch's means L = sum_r c_r L_r / C with C = sum_r c_r (one all-reduce of 2T
  numbers), identical on every rank, so every balancer decides on the same losses and counts
  (a task is valid when C > 0, whatever its rows on this rank). Their gradient on rank r is
  N c_r / C times that of L_r: the mean over the ranks of the local gradients is the gradient
  of the global loss, the convention of ``DistributedDataParallel``, which averages.
- :func:`wrap_model`: a balancer that only weights the losses (``equal``, ``static``,
  ``uncertainty``, ``dwa``, ``rlw``, and ``mgda``, whose backward is a weighted sum too) trains
  through DDP, which averages every gradient during the backward pass (sparse embedding
  gradients included). A balancer that sets gradients by hand
  (``Balancer.reduces_gradients``: GradNorm and the gradient-surgery methods) reduces them
  itself with :func:`mean_over_ranks` / :func:`mean_gradients` / :func:`reduce_gram` and
  applies its method on the global per-task gradients, identically on every rank; its model
  is not wrapped.

Every helper is the identity (no communication, not a single operation changed) without an
initialised process group, or with a group of one rank (:func:`active`).
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    """True when a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """N, the number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def wrap_model(model: torch.nn.Module, balancer, device: torch.device) -> torch.nn.Module:
    """The module the training forward calls: ``model`` itself without ranks; under several
    ranks ``DistributedDataParallel(model)`` (which first broadcasts rank 0's parameters and
    buffers), or, for a balancer that reduces its gradients itself (``reduces_gradients``),
    ``model`` with rank 0's parameters and buffers broadcast once. The buffers are never
    broadcast again: every buffer of the model is a constant.

    Args:
        model: the :class:`~mtl_train.models.builder.MultiTaskModel` (already on ``device``).
        balancer: the run's balancer. device: the training device (its index is DDP's device).
    """
    if not active():
        return model
    if getattr(balancer, "reduces_gradients", False):
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t, 0)
        return model
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # no buffer sync before each forward: the model's buffers (embedding offsets, task-type
    # flags) are constants, built alike on every rank from the schema (and broadcast once at
    # construction by torch >= 2.13); re-broadcasting them before every forward (DDP's default)
    # adds a collective, and a wait for the slower rank, to every step (measured: the 2-rank
    # step 3-8 % longer with it). torch >= 2.13 names the setting forward_sync_buffers
    # (broadcast_buffers, deprecated there, would skip the broadcast at construction as well)
    ddp_cls = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp_cls).parameters
               else {"broadcast_buffers": False})
    return ddp_cls(model, device_ids=ids, **no_sync)


class _GlobalMean(torch.autograd.Function):
    """Forward: ``value`` (the global means, computed outside); backward: ``scale`` times the
    incoming gradient, to the local losses."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None


def global_losses(losses: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-task mean losses and valid-row counts of the global batch.

    Args:
        losses: [T] this rank's per-task means over its valid rows (attached to the graph).
        counts: [T] this rank's valid rows per task.

    Returns:
        (losses [T], counts [T]): the global means sum_r c_r L_r / C (0 where C = 0, as one
        process gives) and C = sum_r c_r, bit-identical on every rank; the losses are attached
        to this rank's graph with gradient N c_r / C times that of its own L_r (see the module
        docstring). Without ranks, the arguments unchanged.
    """
    losses, counts, _ = global_losses_and_sums(losses, counts, None)
    return losses, counts


def global_losses_and_sums(losses: torch.Tensor, counts: torch.Tensor,
                           extra: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`global_losses`, and the sum over the ranks of ``extra`` [E] (numbers a step must
    agree on: a stop signal, row counts) in the same all-reduce, so that a step waits for the
    other ranks once, not twice.

    Returns:
        (losses [T], counts [T], sums [E] float64 or None): see :func:`global_losses`; the sums
        are ``extra`` itself (as float64) without ranks, None when ``extra`` is None.
    """
    if not active():
        return losses, counts, (None if extra is None else extra.detach().to(torch.float64))
    T = losses.shape[0]
    with torch.no_grad():
        c = counts.detach().to(torch.float64)
        parts = [losses.detach().to(torch.float64) * c, c]
        if extra is not None:
            parts.append(extra.detach().to(device=c.device, dtype=torch.float64))
        buf = torch.cat(parts)
        dist.all_reduce(buf)
        total = buf[T:2 * T]
        value = (buf[:T] / total.clamp_min(1)).to(losses.dtype)
        scale = (world_size() * c / total.clamp_min(1)).to(losses.dtype)
    sums = None if extra is None else buf[2 * T:]
    return _GlobalMean.apply(losses, value, scale), total.to(counts.dtype), sums


def mean_over_ranks(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The mean over the ranks of each tensor (a None stays None: where a gradient is None, it
    is None on every rank, the model and the valid tasks being the same on all).

    Dense tensors travel in one flat buffer per dtype and device (one all-reduce each); a
    sparse COO tensor (a sparse embedding gradient) is all-reduced on its own (gloo reduces
    sparse tensors natively; other backends gather every rank's rows). Each tensor is divided
    by N before the sum, as DDP does. Without ranks, the tensors themselves.
    """
    if not active():
        return list(tensors)
    n = world_size()
    result = list(tensors)
    groups: dict[tuple, list[int]] = {}
    for k, t in enumerate(tensors):
        if t is None:
            continue
        if t.is_sparse:
            result[k] = _sparse_sum(t.coalesce() / n)
        else:
            groups.setdefault((t.dtype, t.device), []).append(k)
    for ks in groups.values():
        flat = torch.cat([tensors[k].reshape(-1) for k in ks]).div_(n)
        dist.all_reduce(flat)
        for k, part in zip(ks, flat.split([tensors[k].numel() for k in ks])):
            result[k] = part.view_as(tensors[k])
    return result


def _sparse_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of a coalesced sparse COO tensor (same shape on every rank)."""
    if dist.get_backend() == "gloo":
        dist.all_reduce(t)
        return t
    nnz = torch.tensor([t._nnz()], device=t.device)
    sizes = [torch.zeros_like(nnz) for _ in range(world_size())]
    dist.all_gather(sizes, nnz)
    most = int(max(int(s) for s in sizes))
    idx, val = t._indices(), t._values()
    pad_i = idx.new_zeros(idx.shape[0], most - idx.shape[1])
    pad_v = val.new_zeros((most - val.shape[0],) + tuple(val.shape[1:]))
    idx_all = [idx.new_empty(idx.shape[0], most) for _ in sizes]
    val_all = [val.new_empty((most,) + tuple(val.shape[1:])) for _ in sizes]
    dist.all_gather(idx_all, torch.cat([idx, pad_i], 1))
    dist.all_gather(val_all, torch.cat([val, pad_v]))
    keep = [int(s) for s in sizes]
    return torch.sparse_coo_tensor(torch.cat([i[:, :m] for i, m in zip(idx_all, keep)], 1),
                                   torch.cat([v[:m] for v, m in zip(val_all, keep)]), t.shape).coalesce()


def mean_gradients(params: list[torch.Tensor]) -> None:
    """Replace each ``p.grad`` by its mean over the ranks (one buffer, see
    :func:`mean_over_ranks`); a no-op without ranks."""
    if not active():
        return
    reduced = mean_over_ranks([p.grad for p in params])
    for p, g in zip(params, reduced):
        p.grad = g


def reduce_gram(K: np.ndarray) -> np.ndarray:
    """The Gram matrix [m, m] of per-task gradients with respect to an activation (rows of the
    batch) over the global batch: sum_r K_r / N^2, K_r computed by each rank from the
    gradients of :func:`global_losses` (N times the global ones on its rows). The identity
    without ranks."""
    if not active():
        return K
    t = torch.from_numpy(np.ascontiguousarray(K, dtype=np.float64))
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    n = world_size()
    return (t / (n * n)).cpu().numpy()


def mean_task_gradients(grads: list[list[torch.Tensor | None]], select) -> None:
    """In place: every per-task gradient ``grads[n][k]`` (task n, input k in ``select``)
    becomes its mean over the ranks, the gradient of the global batch's loss (all of them in
    one buffer, see :func:`mean_over_ranks`). A no-op without ranks."""
    if not active():
        return
    slots = [(n, k) for n in range(len(grads)) for k in select]
    for (n, k), g in zip(slots, mean_over_ranks([grads[n][k] for n, k in slots])):
        grads[n][k] = g
