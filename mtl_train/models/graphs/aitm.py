"""AITM: the Adaptive Information Transfer Multi-task framework (Xi, Chen, Zhang, Lin, Zhang and
Wang, "Modeling the Sequential Dependence among Audience Multi-step Conversions with Multi-task
Learning in Targeted Display Advertising", KDD 2021)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.sequential import SequentialGraph
from mtl_train.models.layers import MLP, check_dims
from mtl_train.registry import param, register


class AIT(nn.Module):
    """The Adaptive Information Transfer module: attention over the transferred vector p and the
    task's own tower output q.

    For u in {p, q}: w_u = softmax_u(<h1(u), h2(u)> / sqrt(k)), z = sum_u w_u h3(u), with
    h1, h2, h3 linear maps to ``k = attention_dim`` (no bias, as in the authors' code).

    Shapes: p [B, D], q [B, D] -> z [B, k]; ``last_weights`` keeps w [B, 2] of the last call.
    """

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.h1 = nn.Linear(dim, attention_dim, bias=False)
        self.h2 = nn.Linear(dim, attention_dim, bias=False)
        self.h3 = nn.Linear(dim, attention_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attention_dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        u = torch.stack([p, q], 1)  # [B, 2, D]
        w = torch.softmax((self.h1(u) * self.h2(u)).sum(-1) * self.scale, dim=1)  # [B, 2]
        self.last_weights = w.detach()
        return (w.unsqueeze(-1) * self.h3(u)).sum(1)


@dataclass
class AITMGraph:
    name: str = "aitm"
    tower_hidden: List[int] = param(doc="hidden layer sizes of each task's tower", factory=lambda: [128, 64, 32])
    attention_dim: int = param(32, "width of the attention over transferred and own vectors", positive=True)
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)
    calibrator_weight: float = param(0.6, "behavioural expectation calibrator weight", non_negative=True)


@register("graph", "aitm", AITMGraph)
class AITM(SequentialGraph):
    """AITM on any backbone, over the dataset's tasks in funnel (declared) order.

    Task k's tower q_k = MLP_k(rep_k) (``tower_hidden``, the paper's 128-64-32). Task 1's
    representation is z_1 = q_1; for k >= 2 the information transferred from task k-1,
    p_{k-1} = ReLU(W z_{k-1} + b) (one layer, the paper's transfer function), and q_k go through
    :class:`AIT` to z_k. Task k's logit is a linear layer on z_k. The behavioural expectation
    calibrator adds ``calibrator_weight`` (the paper's alpha = 0.6) times
    mean(max(p_k - p_{k-1}, 0)) to task k's loss. Choices the paper leaves open: the
    attention width ``attention_dim`` is the tower output width (32) in the authors' code and
    the default here; the transfer is not detached (as in the authors' code).

    Shapes: T inputs [B, H_k] -> {"logits": [B, T]}.

    Raises:
        ConfigError: an empty ``tower_hidden``, or a regression task while
            ``calibrator_weight`` > 0.
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, attention_dim: int = 32,
                 activation: str = "relu", dropout: float = 0.0, calibrator_weight: float = 0.6):
        super().__init__(schema)
        hidden = check_dims("graph.tower_hidden", tower_hidden)
        check_dims("graph.attention_dim", [attention_dim])
        if not hidden:
            raise ConfigError("graph.tower_hidden: aitm needs at least one tower layer")
        self.penalty_weight = float(calibrator_weight)
        self.check_penalty_tasks("graph.calibrator_weight")
        T = len(in_dims)
        d = hidden[-1]
        self.towers = nn.ModuleList(MLP(di, hidden, activation, dropout) for di in in_dims)
        self.transfer = nn.ModuleList(
            nn.Sequential(nn.Linear(d if k == 1 else attention_dim, d), nn.ReLU()) for k in range(1, T)
        )
        self.ait = nn.ModuleList(AIT(d, attention_dim) for _ in range(1, T))
        self.outputs = nn.ModuleList(nn.Linear(d if k == 0 else attention_dim, 1) for k in range(T))

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        q = [t(r) for t, r in zip(self.towers, reps)]
        z = [q[0]]
        for k in range(1, len(q)):
            z.append(self.ait[k - 1](self.transfer[k - 1](z[k - 1]), q[k]))
        return {"logits": torch.cat([o(zk) for o, zk in zip(self.outputs, z)], 1)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every part that a later task's loss also reaches: the towers of all tasks but the
        last, the transfer and AIT modules that produce z_k for k < T - 1, and with the
        calibrator on (``calibrator_weight`` > 0: task k's loss holds p_(k-1)) the output
        layers of all tasks but the last."""
        T = len(self.towers)
        params = [p for k in range(T - 1) for p in self.towers[k].parameters()]
        params += [p for k in range(T - 2) for m in (self.transfer[k], self.ait[k]) for p in m.parameters()]
        if self.penalty_weight > 0:
            params += [p for k in range(T - 1) for p in self.outputs[k].parameters()]
        return params

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The last layer of the first task's tower (q_0 = z_0 feeds every later task through the
        transfer modules)."""
        return [self.towers[0].last_linear().weight] if len(self.towers) > 1 else []

    def shared_inputs(self) -> list[int]:
        """All tasks but the last (their towers feed the later tasks)."""
        return list(range(len(self.towers) - 1))
