"""GradNorm + PCGrad: GradNorm's weights set the magnitude of each task's pull on the shared
layers, PCGrad removes the conflicting directions.

Follows GradNorm (Chen et al., ICML 2018) for the weights and PCGrad (Yu et al., NeurIPS
2020) for the projection; the combination is this project's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtl_train.balancing.base import require_shared
from mtl_train.balancing.gradients import (
    combine,
    cosine_logs,
    gram,
    pcgrad_coefficients,
    set_grad,
    task_gradients,
    valid_tasks,
)
from mtl_train.balancing.gradnorm import GradNorm, GradNormLoss
from mtl_train.balancing.surgery import make_generator
from mtl_train.registry import param, register
from mtl_train.train import ddp


@dataclass
class GradNormPCGradLoss(GradNormLoss):
    name: str = "gradnorm_pcgrad"
    seed: int = param(0, "seed of PCGrad's random task order (its state is checkpointed)")


@register("loss", "gradnorm_pcgrad", GradNormPCGradLoss)
class GradNormPCGrad(GradNorm):
    """PCGrad applied to the GradNorm-weighted task gradients w_i g_i on the shared parameters.

    Each step: one backward pass per valid task gives g_i on every parameter; GradNorm's
    norms ||grad_W L_i|| come from the same gradients (W = ``loss.target``, as in
    :class:`~mtl_train.balancing.gradnorm.GradNorm`); PCGrad (random order, projections
    against the original weighted gradients, summed) runs on u_i = w_i g_i over all shared
    parameters, flattened; the weights then take their GradNorm step.

    Choices made here (neither paper covers the combination):

    - the weights of the step are the ones before this step's GradNorm update (as in GradNorm);
    - task-specific parameters get w_i times their task's gradient (the gradient of
      sum_i w_i L_i there), so GradNorm's magnitudes hold everywhere and PCGrad only changes
      the shared parameters;
    - the PCGrad order generator is seeded with ``loss.seed`` and checkpointed;
    - a task with no valid rows is left out of both the projection and the weight update.

    ``weights()`` returns GradNorm's w. Logs: as GradNorm, plus ``grad_cos/<a>/<b>`` between
    the tasks' gradients on all shared parameters.

    Under several ranks (the model is not wrapped in DDP): the T per-task gradients on the
    shared parameters (W among them) are averaged over the ranks in one all-reduce
    (T x |shared params| numbers), the gradients of the global batch; with
    ``target: shared_representation`` the T x T Gram matrix on that representation is summed
    too. Every rank then computes the same norms, projection, weight step and L_i(0); the
    task-specific parameters' gradients (local) are averaged in one more all-reduce
    (|task-specific params|), plus the T losses and counts all-reduced once per step. The
    PCGrad order generator, seeded alike on every rank, draws the same orders.

    Raises:
        ConfigError: a model without shared parameters or shared layer.
    """

    needs_task_gradients = True
    provides_shared_gram = True

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        require_shared(model, cfg.name)
        if self.experts is not None:  # GradNorm's fast path is not used here: keep the fused experts
            self.experts.record_last_layer(False)
            self.experts = None
        self.generator = make_generator(cfg.seed)

    def backward(self, losses, counts, model, out):
        valid = counts > 0
        idx = valid_tasks(counts)
        if not idx:
            return self.no_task_backward(losses)
        self._record_initial(losses, valid)
        shared_ids = {id(p) for p in model.shared_parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        is_shared = [id(p) in shared_ids for p in params]
        shared = [k for k, s in enumerate(is_shared) if s]
        pos = {id(p): k for k, p in enumerate(params)}
        if self.target == "last_shared_layer":
            extra = []
            w_sel = [pos[id(p)] for p in model.last_shared_layer()]
            w_ids = {id(p) for p in model.last_shared_layer()}
        else:
            w_ids = set()
            extra = self._target_tensors(model, out)
            w_sel = list(range(len(params), len(params) + len(extra)))
        grads = task_gradients(losses, idx, params + extra)
        if self.target == "last_shared_layer":  # under several ranks: the global batch's gradients (identity otherwise)
            ddp.mean_task_gradients(grads, sorted(set(shared) | set(w_sel)))
            KW = gram(grads, w_sel)
        else:
            ddp.mean_task_gradients(grads, shared)
            KW = ddp.reduce_gram(gram(grads, w_sel))  # gradients on the representation: their Gram matrices add up
        K = gram(grads, shared)
        self.shared_gram = (K, idx)
        norms = self._norms(KW, idx)
        w = self.w.detach()
        self.applied = w.clone()  # the weights of this step (update_weights changes self.w in place)
        wv = np.array([float(w[i]) for i in idx])
        C = pcgrad_coefficients(K * np.outer(wv, wv), self.generator)  # PCGrad on u_i = w_i g_i
        a = (C.sum(0) * wv).tolist()
        b = wv.tolist()
        for k, p in enumerate(params):
            set_grad(p, combine(grads, k, a if is_shared[k] else b))
        ddp.mean_gradients([p for p, s in zip(params, is_shared) if not s and id(p) not in w_ids])
        logs = self.update_weights(norms, losses, valid, w)
        if self.log_due:
            logs.update(cosine_logs(K, [self.loss_names[i] for i in idx]))
        return logs

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
