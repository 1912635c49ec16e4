"""Feature embedding: categorical ids to vectors, concatenated with the numeric features."""
from __future__ import annotations

import torch
import torch.nn as nn

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError


class FeatureEmbedding(nn.Module):
    """Embeds every categorical feature in ``dim`` dimensions and appends the dense features.

    All features share one embedding table (feature f's rows start at ``offsets[f]``), so a
    batch costs a single lookup. Row 0 of each feature (the null id) is a learned vector
    like any other.

    Shapes: batch["sparse"] int64 [B, F_sparse], batch["dense"] float32 [B, F_dense]
    -> [B, F_sparse * dim + F_dense].

    Args:
        schema: the dataset's features.
        dim: embedding size per feature.
        sparse_grad: use sparse gradients for the table (pair with a sparse-capable optimizer).
    """

    def __init__(self, schema: FeatureSchema, dim: int, sparse_grad: bool = False):
        super().__init__()
        if dim <= 0:
            raise ConfigError(f"model.embedding_dim: must be positive, got {dim}")
        sizes = [f.vocab_size for f in schema.sparse]
        self.num_sparse = len(sizes)
        self.num_dense = len(schema.dense)
        self.dim = dim
        offsets = torch.tensor([0] + sizes[:-1], dtype=torch.int64).cumsum(0) if sizes else torch.zeros(0, dtype=torch.int64)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(max(sum(sizes), 1), dim, sparse=sparse_grad)
        nn.init.normal_(self.table.weight, std=0.05)
        self.out_dim = self.num_sparse * dim + self.num_dense

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.num_sparse:
            ids = batch["sparse"] + self.offsets
            parts.append(self.table(ids).flatten(1))
        if self.num_dense:
            parts.append(batch["dense"])
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]
