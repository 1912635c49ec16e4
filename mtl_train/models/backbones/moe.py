"""Mixture-of-experts backbones: OMoE, MMoE, CGC and PLE."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from mtl_train.errors import ConfigError
from mtl_train.models.backbones.base import Backbone, BackboneOutput, ModelConfig
from mtl_train.models.gates import GateLevel, GateSpec
from mtl_train.models.layers import BatchedExperts, Gate, check_dims, gate_probabilities, mix_experts
from mtl_train.registry import param, register


@dataclass
class MMoEModel(ModelConfig):
    name: str = "mmoe"
    backbone: str = "mmoe"
    num_experts: int = param(8, "expert MLPs shared by all tasks", positive=True)
    expert_hidden: List[int] = param(doc="hidden layer sizes of each expert", factory=lambda: [64, 32])
    num_gates: Optional[int] = param(None, "null: one gate per task (MMoE); 1: OMoE", positive=True)


@dataclass
class PLEModel(ModelConfig):
    name: str = "ple"
    backbone: str = "ple"
    num_levels: int = param(2, "extraction levels (1: CGC)", positive=True)
    num_task_experts: int = param(2, "experts per task at each level", non_negative=True)
    num_shared_experts: int = param(2, "shared experts at each level", non_negative=True)
    expert_hidden: List[int] = param(doc="hidden layer sizes of each expert", factory=lambda: [64, 32])


@register("model", "mmoe", MMoEModel)
class MMoE(Backbone):
    """Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018).

    ``num_experts`` expert MLPs share the input; task k's representation is
    sum_e g_k(x)_e f_e(x) with g_k(x) = softmax(W_k x), one linear gate per task.
    With ``num_gates=1`` it is the paper's OMoE baseline (one gate for all tasks).

    Shapes: [B, D] -> T outputs [B, expert_hidden[-1]]; shared representation = the expert
    outputs [E, B, H].
    """

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int, expert_hidden, activation: str = "relu",
                 dropout: float = 0.0, num_gates: int | None = None):
        super().__init__()
        hidden = check_dims("model.expert_hidden", expert_hidden)
        self.experts = BatchedExperts(num_experts, in_dim, hidden, activation, dropout)
        num_gates = num_tasks if num_gates is None else num_gates
        if num_gates not in (1, num_tasks):
            raise ConfigError(f"model.num_gates: must be 1 (OMoE) or the number of tasks ({num_tasks}), got {num_gates}")
        self.gates = nn.ModuleList(Gate(in_dim, num_experts) for _ in range(num_gates))
        self.num_tasks = num_tasks
        self.out_dims = [self.experts.out_dim] * num_tasks

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        ex = self.experts(x)  # [E, B, H]
        g = gate_probabilities(self.gates, x)  # [B, G, E]
        if self.gate_recorder is not None:  # evaluation with gate diagnostics (mtl_train.models.gates)
            self.gate_recorder.add(0, 0, g)
        reps = mix_experts(g, ex)  # T x [B, H]
        if len(reps) == 1:
            reps = reps * self.num_tasks
        return BackboneOutput(reps, ex)

    def gate_layout(self, task_names: list[str] | None = None) -> list[GateLevel]:
        """One level: experts ``e0``, ``e1``, ...; one gate per task over all of them (OMoE: one
        gate, named ``shared``)."""
        names = list(task_names) if task_names is not None else [f"task{k}" for k in range(self.num_tasks)]
        experts = list(range(self.experts.num_experts))
        gates = names if len(self.gates) == self.num_tasks else ["shared"]
        return [GateLevel([f"e{e}" for e in experts], [GateSpec(n, experts) for n in gates])]

    def last_shared_layer(self) -> list[nn.Parameter]:
        return [self.experts.weights[-1]]

    def shared_parameters(self) -> list[nn.Parameter]:
        params = list(self.experts.parameters())
        if len(self.gates) == 1:
            params += list(self.gates.parameters())
        return params

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.gates[k].parameters()) if len(self.gates) > 1 else []


@register("model", "ple", PLEModel)
class PLE(Backbone):
    """Progressive Layered Extraction (Tang et al., "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020).

    Each of ``num_levels`` extraction levels holds ``num_task_experts`` experts per task and
    ``num_shared_experts`` shared experts. At every level, task k's gate mixes task k's experts
    and the shared experts; at every level but the last, a shared gate mixes all experts of
    the level and feeds the shared experts of the next level. ``num_levels=1`` is CGC
    (Customized Gate Control). Choices the paper leaves open: all experts of a level have the
    same ``expert_hidden`` layers; gates are linear + softmax on the level's input, as in MMoE.

    Shapes: [B, D] -> T outputs [B, expert_hidden[-1]]; shared representation = the last
    level's shared-expert outputs [E_s, B, H].
    """

    def __init__(self, in_dim: int, num_tasks: int, num_levels: int, num_task_experts: int, num_shared_experts: int,
                 expert_hidden, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        hidden = check_dims("model.expert_hidden", expert_hidden)
        if num_task_experts + num_shared_experts == 0:  # each >= 0 and num_levels >= 1: checked by config validation
            raise ConfigError(
                f"model: need experts, got num_task_experts={num_task_experts}, num_shared_experts={num_shared_experts}"
            )
        self.num_tasks, self.num_levels = num_tasks, num_levels
        self.mt, self.ms = num_task_experts, num_shared_experts
        self.shared_output = self.ms > 0
        self.task_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        d = in_dim
        for level in range(num_levels):
            self.task_experts.append(
                BatchedExperts(num_tasks * self.mt, d, hidden, activation, dropout) if self.mt else nn.Identity()
            )
            self.shared_experts.append(BatchedExperts(self.ms, d, hidden, activation, dropout) if self.ms else nn.Identity())
            self.task_gates.append(nn.ModuleList(Gate(d, self.mt + self.ms) for _ in range(num_tasks)))
            if level < num_levels - 1:
                self.shared_gates.append(Gate(d, num_tasks * self.mt + self.ms))
            d = hidden[-1]
        self.out_dims = [d] * num_tasks

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        task_in = [x] * self.num_tasks
        shared_in = x
        shared_out = None
        for level in range(self.num_levels):
            if self.mt:
                if level == 0:
                    te = self.task_experts[level](x)  # [T*mt, B, H]
                else:  # each task's experts read that task's input
                    xin = torch.stack(task_in).repeat_interleave(self.mt, dim=0)
                    te = self.task_experts[level](xin)
            shared_out = self.shared_experts[level](shared_in) if self.ms else None
            outs = []
            rec = self.gate_recorder  # evaluation with gate diagnostics (mtl_train.models.gates)
            for k in range(self.num_tasks):
                parts = []
                if self.mt:
                    parts.append(te[k * self.mt:(k + 1) * self.mt])
                if self.ms:
                    parts.append(shared_out)
                ex = torch.cat(parts) if len(parts) > 1 else parts[0]
                gate = self.task_gates[level][k]
                if rec is None:
                    outs.append(gate.mix(task_in[k], ex))
                else:
                    g = gate(task_in[k])
                    rec.add(level, k, g)
                    outs.append(gate.combine(g, ex))
            if level < self.num_levels - 1:
                parts = ([te] if self.mt else []) + ([shared_out] if self.ms else [])
                ex = torch.cat(parts) if len(parts) > 1 else parts[0]
                gate = self.shared_gates[level]
                if rec is None:
                    shared_in = gate.mix(shared_in, ex)
                else:
                    g = gate(shared_in)
                    rec.add(level, self.num_tasks, g)
                    shared_in = gate.combine(g, ex)
            task_in = outs
        return BackboneOutput(task_in, shared_out)

    def gate_layout(self, task_names: list[str] | None = None) -> list[GateLevel]:
        """One level per extraction level. Experts, in the order the gates mix them: each task's
        ``<task>_e<j>`` (j < num_task_experts), then ``shared_e<j>``. Gates: one per task over its
        own experts and the shared ones, then (every level but the last) ``shared``, over all."""
        names = list(task_names) if task_names is not None else [f"task{k}" for k in range(self.num_tasks)]
        experts = [f"{t}_e{j}" for t in names for j in range(self.mt)] + [f"shared_e{j}" for j in range(self.ms)]
        own_shared = list(range(self.num_tasks * self.mt, self.num_tasks * self.mt + self.ms))
        levels = []
        for level in range(self.num_levels):
            gates = [GateSpec(t, list(range(k * self.mt, (k + 1) * self.mt)) + own_shared) for k, t in enumerate(names)]
            if level < self.num_levels - 1:
                gates.append(GateSpec("shared", list(range(len(experts))), task=False))
            levels.append(GateLevel(list(experts), gates))
        return levels

    def last_shared_layer(self) -> list[nn.Parameter]:
        if not self.ms:
            return []
        return [self.shared_experts[-1].weights[-1]]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Shared experts and shared gates of every level; task experts of every level but the
        last (they feed that level's shared gate); task gates of every level below the last
        two (they feed task experts that are themselves shared)."""
        params = [p for m in self.shared_experts for p in m.parameters()]
        params += [p for g in self.shared_gates for p in g.parameters()]
        for level in range(self.num_levels - 1):
            params += list(self.task_experts[level].parameters())
        for level in range(self.num_levels - 2):
            params += list(self.task_gates[level].parameters())
        return params

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        """Task k's gates of the last two levels and the last level's task experts. Choice: the
        task experts of all tasks are one [T * num_task_experts, ...] parameter, so the whole
        of it is returned (sharing is decided per parameter, not per slice)."""
        last = self.num_levels - 1
        params = list(self.task_gates[last][k].parameters()) + list(self.task_experts[last].parameters())
        if last >= 1:
            params += list(self.task_gates[last - 1][k].parameters())
        return params
