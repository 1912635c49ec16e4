"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018)."""
from __future__ import annotations

import math

import torch

from mtl_train.balancing.base import Balancer
from mtl_train.errors import ConfigError


class GradNorm(Balancer):
    """Learn task weights w_i so that the gradient norms at a shared layer W train at equal rates.

    Each step, with L_i the task losses:

    - G_i = ||grad_W (w_i L_i)||_2 = w_i ||grad_W L_i||_2, computed by one partial backward per
      task that stops at W (no extra full backward pass);
    - L~_i = L_i / L_i(0), r_i = L~_i / mean_j L~_j (relative inverse training rate);
    - target_i = mean_j(G_j) * r_i ** alpha, held constant (no gradient through it);
    - L_grad = sum_i |G_i - target_i|, whose gradient reaches the weights only:
      dL_grad/dw_i = sign(G_i - target_i) * ||grad_W L_i||;
    - the weights take a step of their own optimizer (Adam, ``loss.lr``), are clamped to at
      least ``loss.min_weight`` (kept positive) and renormalised so that sum_i w_i = T;
    - the model's gradient is that of sum_i w_i L_i with the weights of this step (detached).

    Choices the paper leaves open, and the ones made here:

    - W (``loss.target``): ``last_shared_layer`` (the paper's choice: the weight of the last
      layer every task shares, e.g. MMoE's last expert layer) or ``shared_representation``
      (the backbone's shared output, cheaper; the variant the paper mentions for speed).
    - L_i(0) (``loss.initial_loss``): ``first_step`` (the loss of the first step in which the
      task has valid rows) or ``log2`` (log 2, the loss of an uninformed binary classifier; a
      regression task falls back to its first-step loss).
    - A task with no valid rows in a batch is left out: its G_i is not computed, it does not
      enter mean(G) or mean(L~), and its weight does not change that step (the other weights
      are renormalised to sum to T minus its weight).

    Raises:
        ConfigError: the model has no shared layer (e.g. ``model=single_task``), or a bad option.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.alpha = float(cfg.alpha)
        self.target = cfg.target
        if self.target not in ("last_shared_layer", "shared_representation"):
            raise ConfigError(f"loss.target: '{self.target}' is not one of last_shared_layer, shared_representation")
        if cfg.initial_loss not in ("first_step", "log2"):
            raise ConfigError(f"loss.initial_loss: '{cfg.initial_loss}' is not one of first_step, log2")
        if cfg.lr <= 0:
            raise ConfigError(f"loss.lr: must be positive, got {cfg.lr}")
        if model is not None and self.target == "last_shared_layer" and not model.last_shared_layer():
            raise ConfigError("loss=gradnorm: this model shares no layer between tasks (use a model with shared layers)")
        self.min_weight = float(cfg.min_weight)
        self.w = torch.ones(self.num_tasks, requires_grad=True)
        self.initial = torch.full((self.num_tasks,), float("nan"))
        is_binary = [True] * self.num_tasks
        if model is not None:
            types = {t.name: t.type for t in model.schema.tasks}
            is_binary = [types.get(n, "binary") == "binary" for n in self.loss_names]
        if cfg.initial_loss == "log2":
            self.initial = torch.tensor([math.log(2) if b else float("nan") for b in is_binary])
        self.opt = torch.optim.Adam([self.w], lr=float(cfg.lr))

    def to(self, device):
        state = self.opt.state_dict()
        self.w = self.w.detach().to(device).requires_grad_(True)
        self.initial = self.initial.to(device)
        self.opt = torch.optim.Adam([self.w], lr=float(self.cfg.lr))
        self.opt.load_state_dict(state)
        return self

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()

    def _target_tensors(self, model, out) -> list[torch.Tensor]:
        if self.target == "last_shared_layer":
            return list(model.last_shared_layer())
        if out.get("shared") is None:
            raise ConfigError("loss.target=shared_representation: this model has no shared representation")
        return [out["shared"]]

    def backward(self, losses: torch.Tensor, counts: torch.Tensor, model, out: dict) -> dict[str, float]:
        valid = counts > 0
        idx = valid.nonzero().flatten().tolist()
        with torch.no_grad():
            fresh = valid & torch.isnan(self.initial)
            self.initial[fresh] = losses.detach()[fresh]
        W = self._target_tensors(model, out)
        norms = torch.zeros(self.num_tasks, device=losses.device)
        for i in idx:
            grads = torch.autograd.grad(losses[i], W, retain_graph=True, allow_unused=True)
            sq = sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros((), device=losses.device))
            norms[i] = sq.sqrt()
        w = self.w.detach()
        (w[valid] * losses[valid]).sum().backward()

        logs = {}
        if len(idx) >= 1:
            with torch.no_grad():
                G = w[valid] * norms[valid]
                ratio = losses.detach()[valid] / self.initial[valid]
                r = ratio / ratio.mean().clamp_min(1e-12)
                target = G.mean() * r.pow(self.alpha)
                grad = torch.zeros_like(self.w)
                grad[valid] = torch.sign(G - target) * norms[valid]
                before = self.w.detach().clone()
                self.w.grad = grad
                self.opt.step()
                self.w.grad = None
                self.w[~valid] = before[~valid]
                self.w.clamp_(min=self.min_weight)
                budget = self.num_tasks - before[~valid].sum()
                self.w[valid] *= budget / self.w[valid].sum()
                logs["gradnorm/loss"] = float((G - target).abs().sum())
        for i, n in enumerate(self.loss_names):
            logs[f"grad_norm/{n}"] = float(norms[i] * w[i])
        return logs

    def state_dict(self) -> dict:
        return {"w": self.w.detach().cpu(), "initial": self.initial.cpu(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
            self.initial.copy_(state["initial"])
        self.opt.load_state_dict(state["opt"])
