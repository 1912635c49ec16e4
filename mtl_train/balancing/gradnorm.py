"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mtl_train.balancing.base import Balancer, task_kinds
from mtl_train.balancing.gradients import combine, cosine_logs, gram, masked_step, set_grad, valid_tasks
from mtl_train.errors import ConfigError
from mtl_train.models.layers import BatchedExperts
from mtl_train.registry import param, register
from mtl_train.train import ddp

DERIVE_MIN_WEIGHT = 0.05  # below this largest weight, the derived task gets its own backward


@dataclass
class GradNormLoss:
    name: str = "gradnorm"
    alpha: float = param(1.5, "restoring-force strength", non_negative=True)
    lr: float = param(0.025, "learning rate of the task weights' own Adam optimizer", positive=True)
    target: str = param("last_shared_layer", "W: last_shared_layer or shared_representation",
                        choices=("last_shared_layer", "shared_representation"))
    initial_loss: str = param("first_step", "L_i(0): first_step or log2", choices=("first_step", "log2"))
    min_weight: float = param(1e-3, "weights are clamped to at least this before renormalising to T", positive=True)


@register("loss", "gradnorm", GradNormLoss)
class GradNorm(Balancer):
    """Learn task weights w_i so that the gradient norms at a shared layer W train at equal rates.

    Each step, with L_i the task losses:

    - G_i = ||grad_W (w_i L_i)||_2 = w_i ||grad_W L_i||_2;
    - L~_i = L_i / L_i(0), r_i = L~_i / mean_j L~_j (relative inverse training rate);
    - target_i = mean_j(G_j) * r_i ** alpha, held constant (no gradient through it);
    - L_grad = sum_i |G_i - target_i|, whose gradient reaches the weights only:
      dL_grad/dw_i = sign(G_i - target_i) * ||grad_W L_i||;
    - the weights take a step of their own optimizer (Adam, ``loss.lr``), are clamped to at
      least ``loss.min_weight`` (kept positive) and renormalised so that sum_i w_i = T;
    - the model's gradient is that of sum_i w_i L_i with the weights of this step (detached).

    Cost (``target: last_shared_layer``). Fast path, when W is the last layer of a
    ``BatchedExperts`` with at least two layers (MMoE/OMoE; the module keeps that layer's input
    X [E, B, in] and pre-activation Z = X W + b [E, B, H], see ``record_last_layer``):

    - the valid task d with the largest weight is the "derived" task; for every other valid
      task i, one partial backward gives D_i = dL_i/dZ (a pass through the layers above W only,
      no weight-gradient product);
    - one backward of sum_i w_i L_i that skips W's weight gradient
      (``torch.autograd.backward(inputs=...)`` leaves W out), a hook on Z keeping
      D = d(sum_i w_i L_i)/dZ;
    - batched products give grad_W = X^T D (W's gradient, as plain autograd) and every
      other task's grad_W L_i = X^T D_i; the derived task's gradient is
      grad_W L_d = (grad_W - sum_{i != d} w_i grad_W L_i) / w_d. Float cancellation: its
      absolute error is ~eps * sum_{i != d} w_i ||grad_W L_i|| / w_d, and w_d is the largest
      weight; if w_d < 0.05 (only tiny-weight tasks valid) d gets its own partial backward.
    So the extra work over ``loss=equal`` is T-1 passes through the layers above W plus T-1
    weight-gradient products of W (bmm of the kept X with each D_i).

    Other models (PLE/CGC, shared_bottom, one-layer experts, mixed dtypes): one partial
    backward per task that stops at W gives grad_W L_i; then the backward of sum_i w_i L_i
    that skips W, and W's gradient is assembled as sum_i w_i grad_W L_i (extra: T-1
    weight-gradient products of W plus T passes above W).

    Choices the paper leaves open, and the ones made here:

    - W (``loss.target``): ``last_shared_layer`` (the paper's choice: the weight of the last
      layer every task shares, e.g. MMoE's last expert layer; where the backbone shares only
      the embedding, the task graph's last layer every task's loss reaches, e.g. the pCTR
      tower's output layer under ESMM or GMSL's GRU, see
      :meth:`~mtl_train.models.builder.MultiTaskModel.last_shared_layer`) or
      ``shared_representation`` (the backbone's shared output, cheaper; the variant the paper
      mentions for speed).
    - L_i(0) (``loss.initial_loss``): ``first_step`` (the loss of the first step in which the
      task has valid rows) or ``log2`` (log 2, the loss of an uninformed binary classifier; a
      regression task falls back to its first-step loss).
    - A task with no valid rows in a batch is left out: its G_i is not computed, it does not
      enter mean(G) or mean(L~), and neither its weight nor its Adam moments change that step
      (the other weights are renormalised to sum to T minus its weight).

    Logs (on logged steps): ``grad_norm/<task>`` (G_i), ``gradnorm/loss`` (L_grad) and
    ``grad_cos/<a>/<b>``, the cosine between the tasks' gradients at W.

    Under several ranks (the model is not wrapped in DDP; W's gradient is set by hand): with
    ``target: last_shared_layer`` the per-task gradients at W are averaged over the ranks, the
    gradients of the global batch (T x |W| numbers in one all-reduce; the fast path sends W's
    total gradient and T-1 task gradients); with ``shared_representation`` the T x T Gram
    matrix of the per-task gradients on the shared representation is summed instead. Every
    rank then computes the same norms, weight step and L_i(0); the gradient of every other
    parameter is averaged in one more all-reduce (|params| numbers, a sparse embedding
    gradient on its own), plus the T losses and counts all-reduced once per step.

    Raises:
        ConfigError: the model has no shared layer (e.g. ``model=single_task``).
    """

    reduces_gradients = True

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.alpha = float(cfg.alpha)
        self.target = cfg.target
        if model is not None and self.target == "last_shared_layer" and not model.last_shared_layer():
            hint = ", or loss.target=shared_representation" if getattr(getattr(model, "backbone", None),
                                                                        "shared_output", False) else ""
            raise ConfigError(f"loss={cfg.name}: this model shares no layer between tasks "
                              f"(use a model with shared layers{hint})")
        self.min_weight = float(cfg.min_weight)
        self.w = torch.ones(self.num_tasks, requires_grad=True)
        self.initial = torch.full((self.num_tasks,), float("nan"))
        if cfg.initial_loss == "log2":
            kinds = task_kinds(model, loss_names)
            self.initial = torch.tensor([math.log(2) if k == "binary" else float("nan") for k in kinds])
        self.opt = torch.optim.Adam([self.w], lr=float(cfg.lr))
        self.experts = None  # the BatchedExperts whose last layer is W (fast path), if any
        if model is not None and self.target == "last_shared_layer":
            W = list(model.last_shared_layer())
            for m in model.modules():
                if (isinstance(m, BatchedExperts) and len(W) == 1 and len(m.weights) >= 2
                        and m.weights[-1] is W[0]):
                    m.record_last_layer(True)
                    self.experts = m
                    break

    def to(self, device):
        state = self.opt.state_dict()
        self.w = self.w.detach().to(device).requires_grad_(True)
        self.initial = self.initial.to(device)
        self.opt = torch.optim.Adam([self.w], lr=float(self.cfg.lr))
        self.opt.load_state_dict(state)
        return self

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()  # on the balancer's device: no host sync per step

    def _target_tensors(self, model, out) -> list[torch.Tensor]:
        if self.target == "last_shared_layer":
            return list(model.last_shared_layer())
        if out.get("shared") is None:
            raise ConfigError("loss.target=shared_representation: this model has no shared representation")
        return [out["shared"]]

    def _norms(self, K: np.ndarray, idx: list[int]) -> torch.Tensor:
        """Per-task gradient norms [T] from the Gram matrix K [len(idx), len(idx)] of the valid
        tasks' gradients (sqrt of its diagonal); 0 for tasks outside ``idx``."""
        norms = torch.zeros(self.num_tasks)
        norms[idx] = torch.tensor(np.sqrt(np.maximum(np.diag(K), 0.0)), dtype=norms.dtype)
        return norms

    def _record_initial(self, losses: torch.Tensor, valid: torch.Tensor) -> None:
        with torch.no_grad():
            fresh = valid & torch.isnan(self.initial)
            self.initial[fresh] = losses.detach()[fresh].to(self.initial.dtype)

    def update_weights(self, norms: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor, w: torch.Tensor) -> dict:
        """One GradNorm step of the weights.

        Args:
            norms: [T] ||grad_W L_i|| (anything where the task is not valid).
            losses: [T] this step's losses; valid: bool [T]; w: [T] the weights used this step.

        Returns:
            logs (``gradnorm/loss`` and ``grad_norm/<task>`` on logged steps).
        """
        with torch.no_grad():
            w = w.detach().clone()  # the caller's w may share storage with self.w, updated below
            norms = norms.to(self.w.device, self.w.dtype)
            G = w[valid] * norms[valid]
            ratio = losses.detach().to(self.w.dtype)[valid] / self.initial[valid]
            r = ratio / ratio.mean().clamp_min(1e-12)
            target = G.mean() * r.pow(self.alpha)
            grad = torch.zeros_like(self.w)
            grad[valid] = torch.sign(G - target) * norms[valid]
            before = self.w.detach().clone()
            self.w.grad = grad
        masked_step(self.opt, self.w, valid)
        with torch.no_grad():
            self.w.grad = None
            self.w.clamp_(min=self.min_weight)
            self.w[~valid] = before[~valid]
            budget = self.num_tasks - before[~valid].sum()
            self.w[valid] *= budget / self.w[valid].sum()
        logs = {}
        if self.log_due:
            logs["gradnorm/loss"] = float((G - target).abs().sum())
            for i, n in enumerate(self.loss_names):
                if bool(valid[i]):
                    logs[f"grad_norm/{n}"] = float(norms[i] * w[i])
        return logs

    def backward(self, losses, counts, model, out):
        valid = counts > 0
        idx = valid_tasks(counts)
        if not idx:
            return self.no_task_backward(losses)
        self._record_initial(losses, valid)
        W = self._target_tensors(model, out)
        fast = self._fast_inputs(W)
        if fast is not None:
            return self._backward_fast(losses, valid, idx, model, W[0], *fast)
        grads = [list(torch.autograd.grad(losses[i], W, retain_graph=True, allow_unused=True)) for i in idx]
        if self.target == "last_shared_layer":  # under several ranks: the global batch's gradients (identity otherwise)
            ddp.mean_task_gradients(grads, range(len(W)))
            K = gram(grads, list(range(len(W))))
        else:  # gradients on the shared representation, one row per example: their Gram matrices add up
            K = ddp.reduce_gram(gram(grads, list(range(len(W)))))
        norms = self._norms(K, idx)
        w = self.w.detach()
        self.applied = w.clone()  # w shares self.w's storage, which update_weights changes in place
        total = torch.where(valid, w.to(losses.dtype) * losses, torch.zeros_like(losses)).sum()
        if self.target == "last_shared_layer":
            # the weight gradient of W is assembled from the per-task ones: skip it in this pass
            w_ids = {id(p) for p in W}
            rest = [p for p in model.parameters() if p.requires_grad and id(p) not in w_ids]
            torch.autograd.backward(total, inputs=rest)
            ddp.mean_gradients(rest)
            coef = [float(w[i]) for i in idx]
            for k, p in enumerate(W):
                set_grad(p, combine(grads, k, coef))
        else:
            total.backward()
            ddp.mean_gradients([p for p in model.parameters() if p.requires_grad])
        logs = self.update_weights(norms, losses, valid, w)
        if self.log_due:
            logs.update(cosine_logs(K, [self.loss_names[i] for i in idx]))
        return logs

    def _fast_inputs(self, W):
        """(X, Z) kept by the experts' forward for this step, or None (generic path)."""
        m = self.experts
        if m is None:
            return None
        kept = m.take_last_layer()  # handed out once: never a stale tensor of an earlier forward
        if kept is None:
            return None
        X, Z = kept
        if Z.grad_fn is None or not (X.dtype == Z.dtype == W[0].dtype):
            return None
        return X.detach(), Z

    def _backward_fast(self, losses, valid, idx, model, W, X, Z):
        w = self.w.detach()
        self.applied = w.clone()  # w shares self.w's storage, which update_weights changes in place
        wl = w.tolist()  # one host copy of T numbers
        d = max(idx, key=lambda i: wl[i])
        if wl[d] < DERIVE_MIN_WEIGHT:
            d = None
        others = [i for i in idx if i != d]
        deltas = []
        for i in others:
            (g,) = torch.autograd.grad(losses[i], [Z], retain_graph=True, allow_unused=True)
            deltas.append(torch.zeros_like(Z) if g is None else g)
        total = torch.where(valid, w.to(losses.dtype) * losses, torch.zeros_like(losses)).sum()
        seen = {}
        hook = Z.register_hook(lambda g: seen.__setitem__("D", g))
        rest = [p for p in model.parameters() if p.requires_grad and p is not W]
        try:
            torch.autograd.backward(total, inputs=rest)
        finally:
            hook.remove()
        D = seen.get("D")
        if D is None:
            D = torch.zeros_like(Z)
        # W's gradient and each other task's: [E, in, B] @ [E, B, H] (two bmm calls cost the same
        # as one on the concatenated deltas, without copying them). X is often a strided view
        # (BatchedExperts' first layer returns [B, E, H] transposed): one contiguous copy makes
        # every product faster than on the view
        Xt = X.contiguous().transpose(1, 2)
        G_total = torch.bmm(Xt, D)
        per = {}
        for i, Di in zip(others, deltas):
            per[i] = torch.bmm(Xt, Di)
        del deltas
        if ddp.active():  # W's gradient, the other tasks' and the rest's over the global batch, in one all-reduce
            reduced = ddp.mean_over_ranks([G_total] + [per[i] for i in others] + [p.grad for p in rest])
            G_total, per = reduced[0], dict(zip(others, reduced[1:len(others) + 1]))
            for p, g in zip(rest, reduced[len(others) + 1:]):
                p.grad = g
        if d is not None:
            g_d = G_total
            for i in others:
                g_d = torch.sub(g_d, per[i], alpha=wl[i])  # a new tensor: G_total is W's gradient
            per[d] = g_d.div_(wl[d]) if others else g_d / wl[d]
        grads = [[per[i]] for i in idx]
        set_grad(W, G_total)
        K = gram(grads, [0])
        norms = self._norms(K, idx)
        logs = self.update_weights(norms, losses, valid, w)
        if self.log_due:
            logs.update(cosine_logs(K, [self.loss_names[i] for i in idx]))
        return logs

    def state_dict(self) -> dict:
        return {"w": self.w.detach().cpu(), "initial": self.initial.cpu(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
            self.initial.copy_(state["initial"])
        self.opt.load_state_dict(state["opt"])
