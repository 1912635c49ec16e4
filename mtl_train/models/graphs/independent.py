"""Independent towers: each task's logit from its own tower, no cross-task structure."""
from __future__ import annotations

import torch
import torch.nn as nn

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.base import EvalOutput, TaskGraph, masked_task_losses
from mtl_train.models.layers import MLP, check_dims


class Independent(TaskGraph):
    """One tower per task: MLP(tower_hidden) then a linear layer to one logit.

    With ``parent_positive_only`` a task with a parent (e.g. purchase under click) is trained
    and scored only on rows whose parent label is 1: the naive CVR model that ESMM
    (Ma et al., SIGIR 2018) corrects.

    Shapes: T inputs [B, H_k] -> {"logits": [B, T]}.
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, activation: str = "relu",
                 dropout: float = 0.0, parent_positive_only: bool = False):
        super().__init__(schema)
        hidden = check_dims("graph.tower_hidden", tower_hidden)
        self.towers = nn.ModuleList(
            nn.Sequential(MLP(d, hidden, activation, dropout), nn.Linear(hidden[-1] if hidden else d, 1)) for d in in_dims
        )
        self.parent_index = [schema.task_index(t.parent) if t.parent else None for t in schema.tasks]
        self.parent_positive_only = parent_positive_only
        if parent_positive_only and all(p is None for p in self.parent_index):
            raise ConfigError("graph.parent_positive_only: no task of this dataset has a parent")

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": torch.cat([t(r) for t, r in zip(self.towers, reps)], 1)}

    def _mask(self, labels: torch.Tensor) -> torch.Tensor:
        mask = self.label_mask(labels)
        if self.parent_positive_only:
            cols = [mask[:, k] & (labels[:, p] == 1) if p is not None else mask[:, k] for k, p in enumerate(self.parent_index)]
            mask = torch.stack(cols, 1)
        return mask

    def losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_task_losses(out["logits"], labels, self._mask(labels), self.is_regression)

    def eval_outputs(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, EvalOutput]:
        labels, logits = batch["labels"], out["logits"]
        mask = self._mask(labels)
        res = {}
        for k, task in enumerate(self.schema.tasks):
            score = logits[:, k] if task.type == "regression" else torch.sigmoid(logits[:, k])
            res[task.name] = EvalOutput(score, labels[:, k], mask[:, k], task.type)
        return res
