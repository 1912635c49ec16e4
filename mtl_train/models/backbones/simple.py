"""Backbones without experts: one network per task, and hard parameter sharing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from mtl_train.errors import ConfigError
from mtl_train.models.backbones.base import Backbone, BackboneOutput, ModelConfig
from mtl_train.models.layers import MLP, check_dims
from mtl_train.registry import param, register


@dataclass
class SingleTaskModel(ModelConfig):
    name: str = "single_task"
    backbone: str = "single_task"
    hidden: List[int] = param(doc="hidden layer sizes of each task's network", factory=lambda: [128, 64])


@dataclass
class SharedBottomModel(ModelConfig):
    name: str = "shared_bottom"
    backbone: str = "shared_bottom"
    hidden: List[int] = param(doc="hidden layer sizes of the shared bottom MLP", factory=lambda: [128, 64])


@dataclass
class SharedEmbeddingModel(ModelConfig):
    """Shared embeddings only (the ESMM/AITM/DBMTL/GMSL presets): no backbone layer to size."""

    name: str = "shared_embedding"
    backbone: str = "shared_embedding"


@register("model", "single_task", SingleTaskModel)
class SingleTask(Backbone):
    """A separate network per task, embeddings included: the baseline every MTL paper reports.

    Nothing is shared, so gradient-balancing methods that need a shared layer refuse it, unless
    the task graph shares layers (ESMM's pCTR tower, AITM's and GMSL's earlier tasks...).

    Shapes: list of T inputs [B, D] -> T outputs [B, hidden[-1]].
    """

    separate_inputs = True
    shared_output = False

    def __init__(self, in_dim: int, num_tasks: int, hidden, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        hidden = check_dims("model.hidden", hidden)
        self.nets = nn.ModuleList(MLP(in_dim, hidden, activation, dropout) for _ in range(num_tasks))
        self.out_dims = [n.out_dim for n in self.nets]

    def forward(self, x: list[torch.Tensor]) -> BackboneOutput:
        return BackboneOutput([net(xi) for net, xi in zip(self.nets, x)], None)

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.nets[k].parameters())


@register("model", "shared_bottom", SharedBottomModel)
class SharedBottom(Backbone):
    """Hard parameter sharing (Caruana, 1997): one bottom MLP whose output feeds every tower.

    Shapes: [B, D] -> T outputs [B, hidden[-1]] (the same tensor for every task).
    """

    def __init__(self, in_dim: int, num_tasks: int, hidden, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        hidden = check_dims("model.hidden", hidden)
        if not hidden:
            raise ConfigError("model.hidden: shared_bottom needs at least one shared layer")
        self.bottom = MLP(in_dim, hidden, activation, dropout)
        self.num_tasks = num_tasks
        self.out_dims = [self.bottom.out_dim] * num_tasks

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        h = self.bottom(x)
        return BackboneOutput([h] * self.num_tasks, h)

    def last_shared_layer(self) -> list[nn.Parameter]:
        return [self.bottom.last_linear().weight]

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.bottom.parameters())


@register("model", "shared_embedding", SharedEmbeddingModel)
class SharedEmbedding(Backbone):
    """Shared embeddings only: every task's representation is the embedded input itself, with
    no shared hidden layer. This is the sharing of the ESMM (Ma et al., SIGIR 2018) and AITM
    (Xi et al., KDD 2021) papers, where all layers after the embedding belong to the task
    graph's towers.

    Shapes: [B, D] -> T outputs [B, D] (the same tensor); shared representation = the input.
    ``last_shared_layer`` is empty (the only shared layer is the embedding table, which the
    model reports in ``shared_parameters``). ``activation`` and ``dropout`` (the keys every
    model option has) are accepted and unused: there is no layer to apply them to.
    """

    def __init__(self, in_dim: int, num_tasks: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.num_tasks = num_tasks
        self.out_dims = [in_dim] * num_tasks

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput([x] * self.num_tasks, x)
