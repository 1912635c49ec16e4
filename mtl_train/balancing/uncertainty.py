"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mtl_train.balancing.base import Balancer, task_kinds
from mtl_train.balancing.gradients import masked_step
from mtl_train.registry import param, register


@dataclass
class UncertaintyLoss:
    name: str = "uncertainty"
    form: str = param("auto", "auto (binary -> classification, regression -> regression), classification, regression",
                      choices=("auto", "classification", "regression"))
    lr: float = param(1e-3, "learning rate of log sigma^2's own Adam optimizer", positive=True)
    init_log_var: float = param(0.0, "initial log sigma^2 of every task")


@register("loss", "uncertainty", UncertaintyLoss)
class Uncertainty(Balancer):
    """Learn s_i = log sigma_i^2 per task and minimise sum_i (c_i exp(-s_i) L_i + s_i / 2).

    - Regression form (the paper's Eq. 5 with L_i the mean squared error):
      1 / (2 sigma^2) L_i + log sigma = exp(-s_i) L_i / 2 + s_i / 2, so c_i = 1/2.
    - Classification form (Eq. 10, with the paper's approximation
      (1/sigma^2) sum exp(...) ~ (sum exp(...))^(1/sigma^2) for L_i the cross-entropy):
      1 / sigma^2 L_i + log sigma = exp(-s_i) L_i + s_i / 2, so c_i = 1.

    The effective weight of L_i (``weights()``, logged as ``weight/<task>``) is c_i exp(-s_i);
    ``log_var/<task>`` logs s_i.

    Choices the paper leaves open, and the ones made here:

    - the form per task (``loss.form``): ``auto`` = classification for binary tasks and
      regression for regression tasks; or ``classification`` / ``regression`` for all;
    - s is learned as log sigma^2 (not sigma) for stability, starting at ``loss.init_log_var``;
    - s has its own Adam optimizer (``loss.lr``), stepped inside :meth:`backward` right after
      the model's gradients are computed (the paper optimises it jointly with the network);
    - a task with no valid row in a batch is left out of the sum, and its s_i and its Adam
      moments are left untouched that step.

    Under several ranks: the model trains through DistributedDataParallel (one all-reduce of
    every gradient, in buckets during the backward pass) and the T losses and T valid-row
    counts are all-reduced once per step (:func:`mtl_train.train.ddp.global_losses`). s lives outside the
    model: its gradient, 1/2 - c_i exp(-s_i) L_i per task, depends only on the global losses,
    so every rank takes the same Adam step on s without communicating it.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        form = cfg.form
        if form == "auto":
            kinds = ["regression" if k == "regression" else "classification" for k in task_kinds(model, loss_names)]
        else:
            kinds = [form] * self.num_tasks
        self.kinds = kinds
        self.c = torch.tensor([0.5 if k == "regression" else 1.0 for k in kinds])
        self.lr = float(cfg.lr)
        self.log_var = torch.full((self.num_tasks,), float(cfg.init_log_var), requires_grad=True)
        self.opt = torch.optim.Adam([self.log_var], lr=self.lr)

    def to(self, device):
        state = self.opt.state_dict()
        self.log_var = self.log_var.detach().to(device).requires_grad_(True)
        self.c = self.c.to(device)
        self.opt = torch.optim.Adam([self.log_var], lr=self.lr)
        self.opt.load_state_dict(state)
        return self

    def weights(self) -> torch.Tensor:
        return self.c * torch.exp(-self.log_var.detach())

    def objective(self, losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """sum over valid tasks of c_i exp(-s_i) L_i + s_i / 2 (scalar, differentiable in the
        model and in s)."""
        s = self.log_var
        terms = self.c * torch.exp(-s) * losses + 0.5 * s
        return torch.where(valid, terms, torch.zeros_like(terms)).sum()

    def backward(self, losses, counts, model, out):
        valid = counts > 0
        self.log_var.grad = None
        self.applied = self.weights()  # c exp(-s) before this step's update of s
        self.objective(losses, valid).backward()
        masked_step(self.opt, self.log_var, valid)
        logs = {}
        if self.log_due:
            for n, s in zip(self.loss_names, self.log_var.detach().tolist()):
                logs[f"log_var/{n}"] = s
        return logs

    def state_dict(self) -> dict:
        return {"log_var": self.log_var.detach().cpu(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])
        self.opt.load_state_dict(state["opt"])
