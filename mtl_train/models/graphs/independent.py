"""Independent towers: each task's logit from its own tower, no cross-task structure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.base import EvalOutput, TaskGraph, masked_task_losses
from mtl_train.models.layers import MLP, check_dims
from mtl_train.registry import param, register


def make_tower(in_dim: int, hidden: list[int], activation: str, dropout: float) -> nn.Sequential:
    """MLP(hidden) then a linear layer to one output: [B, in_dim] -> [B, 1]."""
    return nn.Sequential(MLP(in_dim, hidden, activation, dropout), nn.Linear(hidden[-1] if hidden else in_dim, 1))


@dataclass
class IndependentGraph:
    name: str = "independent"
    tower_hidden: List[int] = param(doc="hidden layer sizes of each task's tower", factory=lambda: [32])
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)
    parent_positive_only: bool = param(False, "true: train a child task (cvr) only where its parent (click) is 1")


@register("graph", "independent", IndependentGraph)
class Independent(TaskGraph):
    """One tower per task: MLP(tower_hidden) then a linear layer to one logit.

    With ``parent_positive_only`` a task with a parent (e.g. purchase under click) is trained
    only on rows whose ancestors are all positive: the naive CVR model that ESMM
    (Ma et al., SIGIR 2018) corrects. Its head then predicts the conditional probability
    (pCVR), scored as ``<task>_given_<parent>`` on parent-positive rows (and, where the data
    have the ``<task>_if_<parent>`` column, on the entire space); its entire-space score
    ``<task>`` is the product of the probabilities along the funnel (pCTR * pCVR), as the ESMM
    paper scores its baselines' CTCVR.

    Shapes: T inputs [B, H_k] -> {"logits": [B, T]}.

    Raises:
        ConfigError: ``parent_positive_only`` where no task has a parent, or on a funnel
            holding a regression task (a probability is needed).
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, activation: str = "relu",
                 dropout: float = 0.0, parent_positive_only: bool = False):
        super().__init__(schema)
        hidden = check_dims("graph.tower_hidden", tower_hidden)
        self.towers = nn.ModuleList(make_tower(d, hidden, activation, dropout) for d in in_dims)
        self.parent_positive_only = parent_positive_only
        if parent_positive_only:
            if all(p is None for p in self.parent_index):
                raise ConfigError("graph.parent_positive_only: no task of this dataset has a parent")
            for k, chain in enumerate(self.ancestors):
                if chain:
                    self.require_binary(chain + [k], "graph.parent_positive_only")

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": torch.cat([t(r) for t, r in zip(self.towers, reps)], 1)}

    def _mask(self, labels: torch.Tensor) -> torch.Tensor:
        mask = self.label_mask(labels)
        if self.parent_positive_only:
            cols = [mask[:, k] & self.ancestors_positive(labels, k) for k in range(labels.shape[1])]
            mask = torch.stack(cols, 1)
        return mask

    def task_losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_task_losses(out["logits"], labels, self._mask(labels), self.is_regression, weights)

    def eval_outputs(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, EvalOutput]:
        logits = out["logits"]
        own = torch.where(self.is_regression, logits, torch.sigmoid(logits))
        if not self.parent_positive_only:
            return self.standard_eval(own, batch["labels"], batch)
        logp = F.logsigmoid(logits)
        entire = torch.stack(
            [own[:, k] if not chain else torch.exp(logp[:, chain + [k]].sum(1)) for k, chain in enumerate(self.ancestors)],
            1,
        )
        labels = batch["labels"]
        return self.standard_eval(entire, labels, batch, conditional=own, entire_labels=self.entire_labels(labels))
