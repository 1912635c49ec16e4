"""Dense building blocks: MLP, batched experts and softmax gates."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from mtl_train.errors import ConfigError
from mtl_train.kernels.experts import mix, relu_experts

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    """The activation module called ``name``; raises ConfigError for an unknown one."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation: unknown activation '{name}' (choose from {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


def check_dims(key: str, dims: Sequence[int]) -> list[int]:
    dims = [int(d) for d in dims]
    if any(d <= 0 for d in dims):
        raise ConfigError(f"{key}: layer sizes must be positive, got {dims}")
    return dims


class MLP(nn.Sequential):
    """Linear -> activation (-> dropout) for each hidden size.

    Shapes: [B, in_dim] -> [B, hidden[-1]] (or [B, in_dim] when ``hidden`` is empty).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], act: str = "relu", dropout: float = 0.0):
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        super().__init__(*layers)
        self.out_dim = d

    def last_linear(self) -> nn.Linear | None:
        linears = [m for m in self if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None


def mix_experts(gates: torch.Tensor, experts: torch.Tensor) -> list[torch.Tensor]:
    """Mixtures of the same experts under T gates (MMoE, Ma et al. KDD 2018).

    Shapes: gates [B, T, E] softmax probabilities, experts [E, B, H] -> T tensors [B, H]
    (strided views of one [B, T, H] result), by :func:`mtl_train.kernels.experts.mix`.
    """
    return list(mix(gates, experts).unbind(1))


def gate_probabilities(gates: Sequence["Gate"], x: torch.Tensor) -> torch.Tensor:
    """All gates of the same input at once: one GEMM on their stacked weights, then a softmax
    per gate. Shapes: x [B, D] -> [B, T, E] for T gates over E experts."""
    w = torch.cat([g.linear.weight for g in gates])  # [T*E, D]
    b = torch.cat([g.linear.bias for g in gates])
    logits = torch.addmm(b, x, w.t())  # [B, T*E]
    return torch.softmax(logits.view(x.shape[0], len(gates), -1), dim=-1)


class BatchedExperts(nn.Module):
    """``num_experts`` MLPs of identical shape, evaluated together as batched matrix products.

    Expert e's layer l is y = act(x W[l][e] + b[l][e]); all experts of a layer are one
    [E, in, out] parameter, so a layer costs one GEMM (shared input) or one ``baddbmm``
    instead of a Python loop over experts. Each expert is initialised independently like
    ``nn.Linear`` (uniform in +-1/sqrt(fan_in)), so experts start different.

    Shapes:
        input: [B, in_dim] (the same input for every expert) or [E, B, in_dim] (one per expert).
        output: [E, B, hidden[-1]].

    With ReLU, no dropout and a shared 2-D input, a forward with gradients enabled runs
    :func:`mtl_train.kernels.experts.relu_experts` (the hand-written passes, or their reference
    under ``trainer.fused_kernels=false``).

    GradNorm's fast path (:meth:`record_last_layer`, :meth:`take_last_layer`): while recording,
    with at least two layers, a forward with gradients enabled keeps the last layer's input
    X [E, B, in] and its pre-activation output Z = X W[-1] + b[-1] [E, B, hidden[-1]]
    (activation applied out of place, so Z stays a valid target of ``torch.autograd.grad``).
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if num_experts <= 0:
            raise ConfigError(f"model: the number of experts must be positive, got {num_experts}")
        if not hidden:
            raise ConfigError("model.expert_hidden: experts need at least one layer")
        self.num_experts = num_experts
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        d = in_dim
        for h in hidden:
            bound = 1 / math.sqrt(d)
            self.weights.append(nn.Parameter(torch.empty(num_experts, d, h).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, h).uniform_(-bound, bound)))
            d = h
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = d
        self.record_last = False  # read-only outside: set by record_last_layer
        self.last_input: torch.Tensor | None = None
        self.last_pre: torch.Tensor | None = None

    def record_last_layer(self, enabled: bool) -> None:
        """Keep (``enabled=True``) or stop keeping the last layer's input X and pre-activation Z
        in every forward with gradients enabled (GradNorm's fast path; see
        :meth:`take_last_layer`). While recording, the forward runs the plain autograd path (the
        fused one keeps no Z). Raises ConfigError with fewer than two layers (X would be the
        module's input, which the caller already has)."""
        if enabled and len(self.weights) < 2:
            raise ConfigError("model.expert_hidden: recording the experts' last layer needs at least two layers")
        self.record_last = bool(enabled)
        self.last_input = self.last_pre = None

    def take_last_layer(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(X [E, B, in], Z [E, B, hidden[-1]]) kept by the latest recording forward, or None
        when none was kept; handed out once (a second call returns None), so a caller never
        sees a stale tensor of an earlier forward."""
        kept = None if self.last_input is None or self.last_pre is None else (self.last_input, self.last_pre)
        self.last_input = self.last_pre = None
        return kept

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        # in place where safe: the GEMM outputs are fresh tensors their backward does not need
        y = y.relu_() if isinstance(self.act, nn.ReLU) else self.act(y)
        return self.dropout(y)

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether :func:`~mtl_train.kernels.experts.relu_experts` computes this forward: ReLU, no
        dropout, a shared 2-D input, autograd on and not recording the last layer."""
        return (x.dim() == 2 and isinstance(self.act, nn.ReLU) and isinstance(self.dropout, nn.Identity)
                and not self.record_last and torch.is_grad_enabled())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            return relu_experts(x, [p for pair in zip(self.weights, self.biases) for p in pair])
        w0, b0 = self.weights[0], self.biases[0]
        e, d_in, h = w0.shape
        if x.dim() == 2:
            # one GEMM for all experts, bias fused: [B, D] @ [D, E*H] + [E*H] -> [B, E, H]
            y = torch.addmm(b0.reshape(e * h), x, w0.permute(1, 0, 2).reshape(d_in, e * h))
            y = self._act(y).view(-1, e, h).transpose(0, 1)  # [E, B, H], a strided view (no copy)
        else:
            y = self._act(torch.baddbmm(b0.unsqueeze(1), x, w0))
        rest = list(zip(self.weights[1:], self.biases[1:]))
        record = self.record_last and rest and torch.is_grad_enabled()
        if record:
            rest, (w_last, b_last) = rest[:-1], rest[-1]
        for w, b in rest:
            y = self._act(torch.baddbmm(b.unsqueeze(1), y, w))
        if record:
            z = torch.baddbmm(b_last.unsqueeze(1), y, w_last)
            self.last_input, self.last_pre = y, z
            y = self.dropout(self.act(z))  # out of place: z must stay the pre-activation
        return y


class Gate(nn.Module):
    """Softmax gate over ``num_experts`` experts (Ma et al., KDD 2018: g(x) = softmax(W_g x)).

    Shapes: input [B, in_dim]; ``mix(x, experts)`` with experts [E, B, H] returns [B, H].
    """

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)

    def mix(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        return self.combine(self.forward(x), experts)

    @staticmethod
    def combine(g: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """sum_e g[b, e] * experts[e, b, :]: g [B, E] gate probabilities, experts [E, B, H] -> [B, H]."""
        # elementwise on the [E, B, H] layout the experts produce (a [B, 1, E] x [B, E, H] bmm
        # would run B tiny GEMMs on a transposed copy)
        return (g.t().unsqueeze(-1) * experts).sum(0)
