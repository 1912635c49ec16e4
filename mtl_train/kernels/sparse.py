"""The embedding lookup with a row-sparse gradient, beside the plain-autograd reference it is
tested against. Which one runs is :func:`mtl_train.kernels.fused` (``trainer.fused_kernels``).
Timings: docs/RESULTS.md, "Kernels"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mtl_train.kernels import fused


class _SparseLookup(torch.autograd.Function):
    """``weight[ids]`` whose gradient is a coalesced sparse COO tensor over the distinct ids
    of the batch: the per-id gradients are summed into [U, dim] rows with ``index_add_``
    (U = distinct ids), so neither a dense [rows, dim] gradient nor a sort-based coalesce
    over the whole table is ever made. The distinct ids are found by sorting the ids as int32
    when the table has fewer than 2^31 rows (the same ids, cheaper to sort than int64).
    Reference: :func:`sparse_lookup_reference`."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        key = flat.to(torch.int32) if weight.shape[0] < 2**31 else flat
        uniq, inv = torch.unique(key, sorted=True, return_inverse=True)  # inv is int64 either way
        ctx.save_for_backward(uniq.long(), inv)
        ctx.num_rows = weight.shape[0]
        return weight.index_select(0, flat).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        uniq, inv = ctx.saved_tensors
        dim = grad.shape[-1]
        rows = torch.zeros(len(uniq), dim, dtype=grad.dtype, device=grad.device)
        rows.index_add_(0, inv, grad.reshape(-1, dim))
        g = torch.sparse_coo_tensor(uniq.unsqueeze(0), rows, (ctx.num_rows, dim), is_coalesced=True,
                                    check_invariants=False)
        return g, None


def sparse_lookup(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` [rows, dim] for ``ids`` (int64, any shape) -> [*ids.shape, dim], with a
    sparse COO gradient for ``weight``: coalesced, over the batch's distinct ids
    (:class:`_SparseLookup`) when the kernels are on, else :func:`sparse_lookup_reference`'s."""
    if fused():
        return _SparseLookup.apply(weight, ids)
    return sparse_lookup_reference(weight, ids)


def sparse_lookup_reference(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """:func:`sparse_lookup` as ``F.embedding(ids, weight, sparse=True)``: the same values; the
    gradient is an uncoalesced sparse COO tensor with one row per id of the batch (duplicates
    included), equal to the fused one once coalesced."""
    return F.embedding(ids, weight, sparse=True)
