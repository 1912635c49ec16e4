"""The task-graph interface: per-task representations -> per-task logits, losses and scores.

Interface (every graph in :mod:`mtl_train.models.graphs` implements it):

- ``forward(reps) -> out``: ``reps`` is the backbone's list of T task representations
  ([B, H_k] each, tasks in schema order); ``out["logits"]`` is [B, T] (one raw output per
  task: a logit for binary tasks, the predicted value for regression tasks). A graph may add
  other tensors to ``out`` (ESMM: ``log_prob`` [B, T], the log of each task's entire-space
  probability).
- ``losses(out, labels, weights=None) -> (losses [L], counts [L])``: one loss term per name in
  ``loss_names`` (L = T for every graph here: the term of a task is the loss that supervises
  it, e.g. ESMM's ``purchase`` term is the CTCVR loss, and a graph's regulariser is added
  to the term of the later task it constrains), each a mean over its valid rows, and the
  number of valid rows (a term with 0 rows is left out of the step by the balancer). With
  ``weights`` [B, T] (a task's weight column, see :class:`~mtl_train.data.schema.Task`) the
  mean is weighted: sum_i w_i l_i / sum_i w_i over the valid rows (0 where the weights sum to
  0); the counts stay row counts. Regression labels pass through the task's ``transform``
  first (:meth:`TaskGraph.loss_targets`); a graph implements ``task_losses`` on those.
- ``eval_outputs(out, batch) -> {name: EvalOutput}``: what is scored, on which rows.
- ``loss_names``, ``shared_parameters()``, ``shared_inputs()``, ``last_shared_layer()``.

Names of the evaluated outputs (the same scheme for every graph, so that runs of different
graphs compare in metrics.json and TensorBoard):

- ``<task>``: the task's entire-space score (P(label = 1 | impression) for a binary task, the
  predicted value for a regression task) on every row where the label is present. For ESMM
  this is the product along the funnel (``click`` = pCTR, ``purchase`` = pCTCVR), scored (as
  ``independent`` with ``parent_positive_only`` scores its product) against the entire-space
  label of :meth:`TaskGraph.entire_labels`, which is also known where the task's own label is
  missing but a label on its chain is 0 (click 0, purchase null).
- ``<task>_given_<parent>``: a binary task with a parent, scored only on rows where every
  ancestor's label is 1 (the paper's CVR protocol: ``purchase_given_click`` = CVR AUC on
  clicked impressions). Graphs with a conditional head (ESMM; ``independent`` with
  ``parent_positive_only``) score the conditional probability (pCVR); the others score their
  entire-space probability on those rows.
- ``<task>_given_<parent>_entire``: only where the data carry an evaluation-only column
  ``<task>_if_<parent>`` (the synthetic set's ``purchase_if_click``: would this impression
  convert if clicked) and the graph has a conditional head: the conditional probability
  against that column on every row (CVR on the entire impression space). These outputs are
  marked ``eval_only`` and never enter the ``<metric>/mean`` monitor (the column is ground
  truth no real log holds).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError


@dataclass
class EvalOutput:
    """One evaluated output: scores (probabilities, or values for regression), labels and the
    rows on which the pair is scored.

    Attributes:
        score: float [B]; label: float [B]; mask: bool [B]; type: ``binary`` or ``regression``;
        eval_only: left out of the ``<metric>/mean`` monitor (scored against a column that only
            exists for evaluation).
    """

    score: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    type: str = "binary"
    eval_only: bool = False
    weight: torch.Tensor | None = None
    """float [B] row weights of a task with a weight column and ``weighted_metrics`` (the
    weighted metrics are reported beside the unweighted ones), else None."""


def _weighted_mean(per_row: torch.Tensor, m: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum w l / sum w over the rows of ``m`` (per column of [B, T], or of [B]); 0 where the
    weights sum to 0 (still attached)."""
    w = weights.to(per_row.dtype) * m
    total = w.sum(0)
    return (per_row * w).sum(0) / torch.where(total > 0, total, torch.ones_like(total))


def masked_task_losses(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                       is_regression: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean loss over the valid rows of each task.

    Binary tasks use binary cross-entropy on logits (log-space, stable at any logit);
    regression tasks use squared error. Rows where ``mask`` is False contribute nothing.

    With ``weights`` the mean is the self-normalised weighted mean sum_i w_i l_i / sum_i w_i
    over the valid rows i of the batch (0 where the weights sum to 0). Normalising by the
    weights' sum rather than the row count keeps the loss on the scale of an unweighted one
    whatever the weights' unit (Census's survey weights are in the thousands; dividing by the
    row count would multiply the learning rate by the mean weight) and makes it the ratio
    estimate of the weighted population's mean loss.

    Args:
        logits: [B, T] raw outputs; labels: [B, T] (NaN allowed where masked);
        mask: bool [B, T]; is_regression: bool [T] or None (all binary);
        weights: float [B, T] row weights >= 0, or None (every row weighs 1).

    Returns:
        (losses [T], counts [T]) where counts is the number of valid rows per task (with
        weights too); a task with no valid row gets loss 0 (still attached to the graph) and
        count 0.
    """
    y = torch.where(mask, labels, torch.zeros_like(labels))
    per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if is_regression is not None and bool(is_regression.any()):
        per_row = torch.where(is_regression, (logits - y) ** 2, per_row)
    m = mask.to(per_row.dtype)
    counts = m.sum(0)
    if weights is not None:
        return _weighted_mean(per_row, m, weights), counts
    return (per_row * m).sum(0) / counts.clamp_min(1), counts


def masked_mean(values: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of ``values`` [B] over ``mask`` [B] (0 when empty, still attached), count); with
    ``weight`` [B] the weighted mean sum w v / sum w over the mask (see :func:`masked_task_losses`)."""
    m = mask.to(values.dtype)
    n = m.sum()
    v = torch.where(mask, values, torch.zeros_like(values))
    if weight is not None:
        return _weighted_mean(v, m, weight), n
    return (v * m).sum() / n.clamp_min(1), n


def topological_order(names: list[str], parents: dict[str, list[str]]) -> list[str]:
    """Tasks ordered so that every task comes after its parents (Kahn's algorithm; ties keep
    the declared order).

    Raises:
        ConfigError: the parent relation has a cycle (naming the tasks on it).
    """
    order: list[str] = []
    done: set[str] = set()
    pending = list(names)
    while pending:
        ready = [n for n in pending if all(p in done for p in parents.get(n, []))]
        if not ready:
            cycle = _find_cycle(pending, parents)
            raise ConfigError(f"graph.parents: the task parents form a cycle ({' -> '.join(cycle)}); they must be a DAG")
        for n in ready:
            order.append(n)
            done.add(n)
        pending = [n for n in pending if n not in done]
    return order


def _find_cycle(pending: list[str], parents: dict[str, list[str]]) -> list[str]:
    node, seen = pending[0], []
    while node not in seen:
        seen.append(node)
        node = next(p for p in parents.get(node, []) if p in pending)
    return seen[seen.index(node):] + [node]


class TaskGraph(nn.Module):
    """Base class: owns the towers and any cross-task structure.

    Subclasses implement ``forward(reps) -> {"logits": [B, T], ...}``, ``losses`` and
    ``eval_outputs`` (see the module docstring for the contract and the output names).
    ``loss_names`` names the loss terms the balancer weighs (one per task for every graph
    here).

    Attributes:
        parent_index: per task, the schema index of its parent or None.
        ancestors: per task, the indices of its ancestors from the root down (parent last).
    """

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self.schema = schema
        self.task_names = schema.task_names
        self.register_buffer(
            "is_regression", torch.tensor([t.type == "regression" for t in schema.tasks]), persistent=False
        )
        # (task index, transform, mean, std) of each regression task with a label transform
        self.transforms = [(k, t.transform, float(t.target_mean), float(t.target_std))
                           for k, t in enumerate(schema.tasks) if t.type == "regression" and t.transform != "none"]
        # tasks whose weights the metrics use (see EvalOutput.weight)
        self.weighted_metrics = [bool(t.weight) and t.weighted_metrics for t in schema.tasks]
        self.parent_index = [schema.task_index(t.parent) if t.parent else None for t in schema.tasks]
        self.ancestors: list[list[int]] = []
        for k in range(len(schema.tasks)):
            chain, p, seen = [], self.parent_index[k], {k}
            while p is not None:
                if p in seen:
                    raise ConfigError(f"dataset.tasks.{schema.tasks[k].name}.parent: the parents form a cycle")
                seen.add(p)
                chain.insert(0, p)
                p = self.parent_index[p]
            self.ancestors.append(chain)

    @property
    def loss_names(self) -> list[str]:
        return list(self.task_names)

    def losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses [L], counts [L]) of a batch (see the module docstring): the graph's
        :meth:`task_losses` on the labels as the loss sees them (:meth:`loss_targets`).

        Args:
            out: the forward's outputs; labels: [B, T] as in the data (NaN = missing);
            weights: [B, T] row weights or None."""
        return self.task_losses(out, self.loss_targets(labels), weights)

    def task_losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's losses on ``labels`` [B, T] already transformed (see :meth:`losses`)."""
        raise NotImplementedError

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, T] labels as the loss sees them: each regression task's ``transform`` applied
        (``standard``: (y - mean) / std with the training statistics; ``log1p``: log(1 + y));
        ``labels`` itself when no task has one. NaN stays NaN."""
        if not self.transforms:
            return labels
        cols = list(labels.unbind(1))
        for k, kind, mean, std in self.transforms:
            cols[k] = (cols[k] - mean) / std if kind == "standard" else torch.log1p(cols[k])
        return torch.stack(cols, 1)

    def predictions(self, values: torch.Tensor) -> torch.Tensor:
        """[B, T] outputs with each regression task's raw output mapped back to the label's
        scale (the inverse of :meth:`loss_targets`: z * std + mean, or exp(z) - 1); other
        columns unchanged; ``values`` itself when no task has a transform."""
        if not self.transforms:
            return values
        cols = list(values.unbind(1))
        for k, kind, mean, std in self.transforms:
            cols[k] = cols[k] * std + mean if kind == "standard" else torch.expm1(cols[k])
        return torch.stack(cols, 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Graph parameters shared by several tasks' losses (none for independent towers)."""
        return []

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The weight(s) of the graph's last layer that every task's loss reaches ([] if none):
        GradNorm's W where the backbone shares no layer (see
        :meth:`~mtl_train.models.builder.MultiTaskModel.last_shared_layer`)."""
        return []

    @staticmethod
    def common_root(ancestors: list[set[int]]) -> int | None:
        """The task every other task descends from (the click of a click -> cart -> purchase
        funnel), given each task's ancestor set; None for a single task or several roots. (It is
        the only task whose layers every task's loss reaches: a root has no ancestor.)"""
        T = len(ancestors)
        roots = [j for j in range(T) if not ancestors[j]]
        if T > 1 and len(roots) == 1 and all(roots[0] in ancestors[k] for k in range(T) if k != roots[0]):
            return roots[0]
        return None

    def shared_inputs(self) -> list[int]:
        """Indices k of the task representations that several tasks' losses read (none for
        independent towers): whatever the backbone computes for task k alone is then shared."""
        return []

    def label_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """bool [B, T]: the label is present."""
        return ~torch.isnan(labels)

    def require_binary(self, task_indices, why: str) -> None:
        """Raise ConfigError naming the first regression task among ``task_indices``."""
        for k in task_indices:
            t = self.schema.tasks[k]
            if t.type != "binary":
                raise ConfigError(
                    f"graph: task '{t.name}' is a {t.type} task but {why} needs its probability (binary tasks only)"
                )

    def ancestors_positive(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        """bool [B]: every ancestor of task k has label 1 (True for a root task)."""
        ok = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        for a in self.ancestors[k]:
            ok = ok & (labels[:, a] == 1)
        return ok

    def entire_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, T]: each task's label AND its ancestors' labels. A 0 anywhere on the chain makes
        it 0 even where another label of the chain is missing (click 0 with purchase null is a
        known CTCVR negative: logs often leave purchase empty on unclicked impressions, and
        dropping those rows would bring back the sample-selection bias ESMM removes); NaN where
        no label of the chain is 0 and one is missing; else the product (1 for 0/1 labels)."""
        cols = []
        for k in range(labels.shape[1]):
            y = labels[:, k]
            if self.ancestors[k]:
                chain = labels[:, self.ancestors[k] + [k]]  # [B, len(chain)]
                y = torch.where((chain == 0).any(1), torch.zeros_like(y), chain.prod(1))  # NaN propagates
            cols.append(y)
        return torch.stack(cols, 1)

    def standard_eval(self, entire: torch.Tensor, labels: torch.Tensor, batch: dict[str, torch.Tensor],
                      conditional: torch.Tensor | None = None,
                      entire_labels: torch.Tensor | None = None) -> dict[str, EvalOutput]:
        """The outputs of the module docstring from scores [B, T].

        Regression scores are mapped back to the label's scale (:meth:`predictions`), and a
        task with weighted metrics carries its weights (``batch["weights"]``).

        Args:
            entire: [B, T] entire-space scores (probabilities; values for regression tasks, as
                the model outputs them, on the scale of the transformed label).
            labels: [B, T] labels as in the data.
            conditional: [B, T] conditional probabilities P(task | parent positive, x) where
                the graph has a conditional head, else None.
            entire_labels: [B, T] labels the entire-space scores are checked against, where
                they differ from ``labels`` (ESMM: label AND every ancestor's label).
        """
        present = self.label_mask(labels)
        target = labels if entire_labels is None else entire_labels
        entire = self.predictions(entire)
        weights = batch.get("weights")
        res: dict[str, EvalOutput] = {}
        for k, task in enumerate(self.schema.tasks):
            p = self.parent_index[k]
            w = weights[:, k] if weights is not None and self.weighted_metrics[k] else None
            res[task.name] = EvalOutput(entire[:, k], target[:, k], ~torch.isnan(target[:, k]), task.type, weight=w)
            if p is None or task.type != "binary":
                continue
            parent = self.schema.tasks[p].name
            cond = entire[:, k] if conditional is None else conditional[:, k]
            res[f"{task.name}_given_{parent}"] = EvalOutput(
                cond, labels[:, k], present[:, k] & self.ancestors_positive(labels, k), "binary", weight=w
            )
            column = f"{task.name}_if_{parent}"
            if conditional is not None and column in batch:
                y = batch[column]
                res[f"{task.name}_given_{parent}_entire"] = EvalOutput(
                    conditional[:, k], y, ~torch.isnan(y), "binary", eval_only=True, weight=w
                )
        return res
