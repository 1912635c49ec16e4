"""Optimizers of the trainer. The row-sparse Adam of the embedding table lives with the other
hand-written kernels in :mod:`mtl_train.kernels.sparse_adam`; it is re-exported here."""
from __future__ import annotations

from mtl_train.kernels.sparse_adam import RowSparseAdam  # noqa: F401
