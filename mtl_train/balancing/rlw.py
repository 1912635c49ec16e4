"""Random loss weighting (Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mtl_train.balancing.base import Balancer
from mtl_train.registry import param, register


@dataclass
class RLWLoss:
    name: str = "rlw"
    seed: int = param(0, "seed of the generator of the random weights (its state is checkpointed)")


@register("loss", "rlw", RLWLoss)
class RLW(Balancer):
    """L = sum_i w_i L_i with random weights w = T softmax(z), z ~ N(0, I_T) drawn afresh at
    every step (the paper's Eq. 4 with its default distribution, the standard normal).

    Shapes: losses and counts [T]; ``weights()`` float [T], summing to T.

    Choices the paper leaves open, and the ones made here:

    - scale: the paper's weights are softmax(z), summing to 1; here they are multiplied by T so
      that they sum to T, as the weights of this project's other balancers do (``equal``,
      ``dwa``, ``gradnorm``): the gradient of ``loss=rlw`` then has the scale of
      ``loss=equal``'s, and one ``trainer.lr`` serves both (with the paper's scale the
      effective learning rate would be divided by T);
    - z is drawn on the CPU from a ``torch.Generator`` seeded with ``loss.seed`` (T float32
      samples of ``torch.randn`` per step, every step, whichever tasks have rows, so the draws
      depend on the step count only); the generator's state and the current weights are
      checkpointed, so a resumed run draws the same weights as an uninterrupted one;
    - a task with no valid row in a batch is left out of the step and keeps its weight; the
      valid tasks V share the rest: w_V = (T - sum_{i not in V} w_i) softmax(z_V), so the
      weights still sum to T (the rule of GradNorm here);
    - before the first step every weight is 1.

    Under several ranks: the model trains through DistributedDataParallel (one all-reduce of
    every gradient, in buckets during the backward pass) and the T losses and T valid-row
    counts are all-reduced once per step (:func:`mtl_train.train.ddp.global_losses`). Every rank draws z
    from its own generator, seeded alike and drawn once per step whatever the batch: the same
    weights everywhere, nothing communicated for them.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(cfg.seed))
        self.w = torch.ones(self.num_tasks)

    def to(self, device):
        self.w = self.w.to(device)
        return self

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()  # on the balancer's device: no host sync per step

    def draw(self, valid: torch.Tensor) -> torch.Tensor:
        """The weights of one step: float [T] from T fresh standard normal samples; ``valid``
        (bool [T]) marks the tasks with rows (the others keep their weight)."""
        z = torch.randn(self.num_tasks, generator=self.generator).to(self.w.device)
        rest = self.num_tasks - torch.where(valid, torch.zeros_like(self.w), self.w).sum()
        p = torch.softmax(torch.where(valid, z, torch.full_like(z, float("-inf"))), 0)
        return torch.where(valid, rest * p, self.w)  # no valid task: all keep theirs (p is NaN, unused)

    def backward(self, losses, counts, model, out):
        valid = (counts > 0).to(self.w.device)
        self.w = self.draw(valid)
        self.applied = self.w.detach().clone()
        w = self.w.to(losses.device, losses.dtype)
        torch.where(valid.to(losses.device), w * losses, torch.zeros_like(losses)).sum().backward()
        return {}

    def state_dict(self) -> dict:
        return {"w": self.w.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].to(self.w.device)
        self.generator.set_state(state["generator"])
