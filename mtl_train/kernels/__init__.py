"""Hand-written training kernels behind one switch.

Each module holds a fast path and, beside it, the plain reference it is tested against (the
same maths in ordinary torch operators, differentiated by autograd):

- :mod:`~mtl_train.kernels.experts`: the ReLU experts' forward/backward and the gate mix of
  MMoE/OMoE (:func:`~mtl_train.kernels.experts.relu_experts`, :func:`~mtl_train.kernels.experts.mix`);
- :mod:`~mtl_train.kernels.sparse`: the embedding lookup whose gradient is a coalesced sparse
  tensor over the batch's distinct ids (:func:`~mtl_train.kernels.sparse.sparse_lookup`);
- :mod:`~mtl_train.kernels.sparse_adam`: the row-sparse (lazy) Adam of the embedding table
  (:class:`~mtl_train.kernels.sparse_adam.RowSparseAdam`).

The switch is process-wide, like ``torch.backends.mha.set_fastpath_enabled`` for
``nn.MultiheadAttention``: ``trainer.fused_kernels`` (default true) sets it when a run starts;
false runs every reference path instead (no custom autograd function and no private torch
kernel, so a model traces and exports as plain operators). Each kernel reads the switch when it
runs, so it may be changed between steps; a model needs no rebuilding. The optimizer state is
the same on both paths (a checkpoint resumes on either). Timings: docs/RESULTS.md.

They are CPU kernels: a trainer on a GPU turns the switch off (the references' cuBLAS GEMMs
and autograd are what is fast there; see :mod:`mtl_train.train.placement`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_fused = True


def fused() -> bool:
    """Whether the hand-written kernels run (True, the default) or their references."""
    return _fused


def set_fused(enabled: bool) -> None:
    """Run the hand-written kernels (``enabled=True``) or their plain-torch references everywhere
    in this process (``trainer.fused_kernels``)."""
    global _fused
    _fused = bool(enabled)


@contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """:func:`set_fused` for the duration of a ``with`` block; the previous setting comes back
    on exit (e.g. ``with use_fused(False): torch.onnx.export(...)``)."""
    before = _fused
    set_fused(enabled)
    try:
        yield
    finally:
        set_fused(before)
