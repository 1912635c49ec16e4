"""Feature embedding: categorical ids and pooled id lists to vectors, concatenated with the
numeric features."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_train.data.schema import NULL_ID, FeatureSchema
from mtl_train.kernels.sparse import sparse_lookup


def lookup(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` for ``ids`` (int64, any shape) -> [*ids.shape, dim].

    With ``table.sparse`` and autograd on, the gradient reaches the table as a sparse tensor
    (see :func:`mtl_train.kernels.sparse.sparse_lookup`); otherwise a plain
    ``F.embedding`` (dense gradient).
    """
    if not (table.sparse and torch.is_grad_enabled() and table.weight.requires_grad):
        return F.embedding(ids, table.weight)
    return sparse_lookup(table.weight, ids)


class FeatureEmbedding(nn.Module):
    """Embeds every categorical feature and every sequence feature in ``dim`` dimensions and
    appends the dense features.

    All features share one embedding table (feature f's rows start at ``offsets[f]``;
    categorical features first, then sequence features), so a batch costs a single lookup.
    Row 0 of a categorical feature (the null id) is a learned vector like any other. A
    sequence feature (a padded id list, see :class:`~mtl_train.data.schema.SequenceFeature`)
    is pooled over its non-null ids: ``sum`` adds their vectors, ``mean`` divides that sum by
    the number of non-null ids (a row whose list is empty or null gets the zero vector). This
    is the sum/mean bag pooling of YouTube DNN (Covington et al., RecSys 2016).

    Shapes: batch["sparse"] int64 [B, F_sparse], batch["seq"] int64 [B, sum(max_len)] (only
    when the schema has sequence features), batch["dense"] float32 [B, F_dense]
    -> [B, (F_sparse + F_seq) * dim + F_dense], in the order categorical, sequence, dense.

    Args:
        schema: the dataset's features.
        dim: embedding size per feature.
        sparse_grad: sparse gradients for the table (only the rows looked up in a batch get a
            gradient); :func:`mtl_train.train.optim.build_optimizer` pairs the table with
            :class:`~mtl_train.kernels.sparse_adam.RowSparseAdam`.
    """

    def __init__(self, schema: FeatureSchema, dim: int, sparse_grad: bool = False):
        super().__init__()
        seq = list(getattr(schema, "sequence", []))
        sizes = [f.vocab_size for f in schema.sparse] + [f.vocab_size for f in seq]
        self.num_sparse = len(schema.sparse)
        self.num_seq = len(seq)
        self.num_dense = len(schema.dense)
        self.dim = dim
        offsets = torch.tensor([0] + sizes[:-1], dtype=torch.int64).cumsum(0) if sizes else torch.zeros(0, dtype=torch.int64)
        self.register_buffer("offsets", offsets[: self.num_sparse].clone(), persistent=False)
        # per column of the seq block: the table offset of its feature
        seq_off = [int(offsets[self.num_sparse + k]) for k, f in enumerate(seq) for _ in range(f.max_len)]
        self.register_buffer("seq_offsets", torch.tensor(seq_off, dtype=torch.int64), persistent=False)
        self.seq_lens = [f.max_len for f in seq]
        self.seq_mean = [f.pooling == "mean" for f in seq]
        self.table = nn.Embedding(max(sum(sizes), 1), dim, sparse=sparse_grad)
        nn.init.normal_(self.table.weight, std=0.05)
        self.out_dim = (self.num_sparse + self.num_seq) * dim + self.num_dense

    def _pool(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, sum(max_len)] ids -> [B, F_seq * dim] pooled vectors."""
        valid = seq != NULL_ID  # [B, L]
        vec = lookup(self.table, seq + self.seq_offsets) * valid.unsqueeze(-1).to(self.table.weight.dtype)  # [B, L, dim]
        out = []
        for v, m, is_mean in zip(vec.split(self.seq_lens, 1), valid.split(self.seq_lens, 1), self.seq_mean):
            s = v.sum(1)
            if is_mean:
                s = s / m.sum(1, keepdim=True).clamp_min(1).to(s.dtype)
            out.append(s)
        return torch.cat(out, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.num_sparse:
            ids = batch["sparse"] + self.offsets
            parts.append(lookup(self.table, ids).flatten(1))
        if self.num_seq:
            parts.append(self._pool(batch["seq"]))
        if self.num_dense:
            parts.append(batch["dense"])
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]
