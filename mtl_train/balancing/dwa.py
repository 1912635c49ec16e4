"""Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, Eq. 7)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtl_train.balancing.base import Balancer
from mtl_train.registry import param, register


def dwa_weights(prev: torch.Tensor, prev2: torch.Tensor, temperature: float) -> torch.Tensor:
    """w_k = K exp(r_k / T) / sum_i exp(r_i / T) with r_k = L_k(t-1) / L_k(t-2).

    Args:
        prev, prev2: float [K] the mean loss of each task over the last and the one-before-last
            window; NaN where a task had no valid row in that window.
        temperature: T (the paper uses 2).

    Returns:
        float [K], summing to K. A task whose ratio is undefined (a missing window mean or
        L_k(t-2) = 0) gets r_k = 1, the ratio of a task that neither improved nor worsened.
    """
    prev, prev2 = prev.double(), prev2.double()
    ok = torch.isfinite(prev) & torch.isfinite(prev2) & (prev2 > 0)
    r = torch.where(ok, prev / torch.where(ok, prev2, torch.ones_like(prev2)), torch.ones_like(prev))
    return (len(r) * torch.softmax(r / temperature, 0)).float()


@dataclass
class DWALoss:
    name: str = "dwa"
    temperature: float = param(2.0, "T of the softmax over loss-descent rates", positive=True)
    window_steps: int = param(100, "steps averaged into one L_k(t) (the paper: one epoch)", positive=True)


@register("loss", "dwa", DWALoss)
class DWA(Balancer):
    """L = sum_k w_k L_k with w recomputed from the rate of descent of each task's loss.

    Choices the paper leaves open, and the ones made here:

    - the paper averages each loss over an epoch and updates the weights once per epoch; a
      recommender run is often a single epoch over millions of rows, so here L_k(t) is the
      mean loss over a window of ``loss.window_steps`` training steps, and the weights change
      at the end of every window;
    - w_k = 1 for the first two windows (the paper: w_k(1) = w_k(2) = 1);
    - weights sum to K, the number of loss terms (the paper's scale);
    - a step's loss of a task enters its window mean only when the task has valid rows in that
      batch; such a task is also left out of that step's weighted sum; a ratio that cannot be
      computed (no valid row in a whole window) counts as 1 (see :func:`dwa_weights`).

    Under several ranks: the model trains through DistributedDataParallel (one all-reduce of
    every gradient, in buckets during the backward pass) and the T losses and T valid-row
    counts are all-reduced once per step (:func:`mtl_train.train.ddp.global_losses`); the window sums of
    the global losses, and so the weights, are the same on every rank without further
    communication.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.temperature = float(cfg.temperature)
        self.window_steps = int(cfg.window_steps)
        T = self.num_tasks
        self.w = torch.ones(T)
        self.sum = torch.zeros(T, dtype=torch.float64)
        self.n = torch.zeros(T, dtype=torch.float64)
        self.steps = 0
        self.prev = torch.full((T,), math.nan, dtype=torch.float64)
        self.prev2 = torch.full((T,), math.nan, dtype=torch.float64)
        self.windows = 0

    def to(self, device):
        self.w, self.sum, self.n = self.w.to(device), self.sum.to(device), self.n.to(device)
        return self

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()  # on the balancer's device: no host sync per step

    def observe(self, losses: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one step's losses (valid tasks only) to the current window; close the window every
        ``window_steps`` steps and recompute the weights."""
        v = valid.to(self.sum.dtype)
        self.sum += torch.where(valid, losses.detach().to(self.sum.dtype), torch.zeros_like(self.sum))
        self.n += v
        self.steps += 1
        if self.steps % self.window_steps == 0:
            mean = (self.sum / self.n.clamp_min(1)).cpu()
            mean[(self.n == 0).cpu()] = math.nan
            self.prev2, self.prev = self.prev, mean
            self.windows += 1
            self.sum.zero_()
            self.n.zero_()
            if self.windows >= 2:
                self.w = dwa_weights(self.prev, self.prev2, self.temperature).to(self.w.device)

    def backward(self, losses, counts, model, out):
        valid = counts > 0
        self.applied = self.w.detach().clone()  # this step's weights; observe() may set the next ones
        w = self.w.to(losses.device, losses.dtype)
        torch.where(valid, w * losses, torch.zeros_like(losses)).sum().backward()
        self.observe(losses, valid)
        return {}

    def state_dict(self) -> dict:
        return {"w": self.w.cpu(), "sum": self.sum.cpu(), "n": self.n.cpu(), "steps": self.steps,
                "prev": self.prev.clone(), "prev2": self.prev2.clone(), "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        dev = self.w.device
        self.w, self.sum, self.n = state["w"].to(dev), state["sum"].to(dev), state["n"].to(dev)
        self.steps, self.windows = int(state["steps"]), int(state["windows"])
        self.prev, self.prev2 = state["prev"].clone(), state["prev2"].clone()
