"""DBMTL: Deep Bayesian Multi-Target Learning (Wang, Ji, Liu and Zhao, "Deep Bayesian
Multi-Target Learning for Recommender Systems", arXiv:1902.09154, 2019; Taobao Live)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.base import EvalOutput, TaskGraph, masked_task_losses, topological_order
from mtl_train.models.layers import MLP, check_dims
from mtl_train.registry import param, register


def resolve_parents(schema: FeatureSchema, override: dict | None) -> dict[str, list[str]]:
    """Task -> list of parent tasks: the dataset's declared ``parent`` of each task, replaced
    task by task by ``override`` (``graph.parents``; ``[]`` removes a task's parents).

    Raises:
        ConfigError: an unknown task name, a task that is its own parent, or a cycle.
    """
    names = schema.task_names
    parents = {t.name: ([t.parent] if t.parent else []) for t in schema.tasks}
    for task, ps in (override or {}).items():
        if task not in names:
            raise ConfigError(f"graph.parents.{task}: unknown task '{task}' (tasks: {', '.join(names)})")
        ps = [ps] if isinstance(ps, str) else list(ps or [])
        for p in ps:
            if p not in names:
                raise ConfigError(f"graph.parents.{task}: unknown parent task '{p}' (tasks: {', '.join(names)})")
            if p == task:
                raise ConfigError(f"graph.parents.{task}: a task cannot be its own parent")
        parents[task] = ps
    topological_order(names, parents)  # raises on a cycle
    return parents


@dataclass
class DBMTLGraph:
    name: str = "dbmtl"
    tower_hidden: List[int] = param(doc="hidden layer sizes of each task's tower", factory=lambda: [64])
    head_hidden: List[int] = param(doc="hidden layer sizes of each task's head (what children read)",
                                   factory=lambda: [32])
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)
    parents: Optional[Dict[str, List[str]]] = param(
        None, "null: the dataset's declared parents; e.g. {purchase: [click, cart]} overrides per task (a DAG)")


@register("graph", "dbmtl", DBMTLGraph)
class DBMTL(TaskGraph):
    """The Bayesian multi-target network: P(t1, t2, t3 | x) = P(t3 | t1, t2, x) P(t2 | t1, x) P(t1 | x),
    each directed link parameterised by hidden layers.

    Each task k has a tower h_k = MLP_k(rep_k) (``tower_hidden``) and a head
    z_k = MLP(concat(h_k, z_p for each parent p)) (``head_hidden``), whose output layer gives
    task k's logit (or value, for a regression task). A task's head thus reads its parents'
    last hidden layers, and through them its ancestors'. Parents form any DAG over the declared
    tasks: by default each task's declared ``parent``; ``graph.parents`` overrides them
    (``{purchase: [click, cart]}``). Every task is trained on all its labelled rows with its own
    loss (BCE, or MSE for regression); the total sum_k w_k * loss_k takes its weights w_k from
    the ``loss`` group (``equal``: all 1). Choices the paper leaves open: the parent's
    hidden layer passed on is the last layer of its head, not detached (the child's loss
    trains it too); sizes are ours (the paper gives none we could verify).

    Shapes: T inputs [B, H_k] -> {"logits": [B, T]}.

    Raises:
        ConfigError: a cycle among the parents, an unknown task, or an empty ``head_hidden``.
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, head_hidden, activation: str = "relu",
                 dropout: float = 0.0, parents: dict | None = None):
        super().__init__(schema)
        tower = check_dims("graph.tower_hidden", tower_hidden)
        head = check_dims("graph.head_hidden", head_hidden)
        if not head:
            raise ConfigError("graph.head_hidden: dbmtl needs at least one head layer (it is what children read)")
        names = schema.task_names
        self.parents_by_name = resolve_parents(schema, parents)
        self.parents = [[names.index(p) for p in self.parents_by_name[n]] for n in names]
        self.order = [names.index(n) for n in topological_order(names, self.parents_by_name)]
        self.towers = nn.ModuleList(MLP(d, tower, activation, dropout) for d in in_dims)
        tower_out = [t.out_dim for t in self.towers]
        self.heads = nn.ModuleList(
            MLP(tower_out[k] + head[-1] * len(self.parents[k]), head, activation, dropout) for k in range(len(names))
        )
        self.outputs = nn.ModuleList(nn.Linear(head[-1], 1) for _ in names)

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        z: list[torch.Tensor | None] = [None] * len(reps)
        for k in self.order:
            h = self.towers[k](reps[k])
            z[k] = self.heads[k](torch.cat([h] + [z[p] for p in self.parents[k]], 1) if self.parents[k] else h)
        return {"logits": torch.cat([o(zk) for o, zk in zip(self.outputs, z)], 1)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The tower and head of every task that is some task's parent (its loss and its
        children's losses both reach them)."""
        return [q for k in self.shared_inputs() for m in (self.towers[k], self.heads[k]) for q in m.parameters()]

    def shared_inputs(self) -> list[int]:
        """Every task that is some task's parent."""
        return sorted({p for ps in self.parents for p in ps})

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The last head layer of the root task when every task descends from it (its head
        feeds every child's head)."""
        anc: list[set[int]] = [set() for _ in self.parents]
        for k in self.order:  # parents first
            for p in self.parents[k]:
                anc[k] |= anc[p] | {p}
        j = self.common_root(anc)
        return [] if j is None else [self.heads[j].last_linear().weight]

    def task_losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_task_losses(out["logits"], labels, self.label_mask(labels), self.is_regression, weights)

    def eval_outputs(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, EvalOutput]:
        logits = out["logits"]
        return self.standard_eval(torch.where(self.is_regression, logits, torch.sigmoid(logits)), batch["labels"], batch)
