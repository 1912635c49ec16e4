"""Gate diagnostics of the mixture-of-experts backbones (OMoE, MMoE, CGC, PLE): which experts each
task's gate uses, how sharp the gates are, and whether they collapsed.

A backbone with gates declares them in :meth:`~mtl_train.models.backbones.base.Backbone.gate_layout`
(levels, each with its experts and its gates, each gate with the experts it mixes) and, in its
forward, hands every gate's softmax probabilities to ``self.gate_recorder`` when one is set. No
recorder is set outside :func:`recording` (the default ``None``): the training forward then pays one
attribute test per gate call, nothing else.

Evaluation (:func:`mtl_train.train.evaluate.evaluate`) installs a :class:`GateRecorder` with
:func:`recording`, calls :meth:`GateRecorder.commit` with the number of real rows after each fixed
chunk (padded rows of the last chunk are dropped), and :func:`gate_statistics` turns the sums into
the per-level tables that the trainer logs (TensorBoard ``diag/gate/...``), keeps in run.json and
``mtl-report`` draws. Reading the probabilities changes no score: the scores stay batch-invariant.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

COLLAPSE_SHARE = 0.9
"""A level's gates have collapsed when one expert takes more than this share of the mean weight of
every task gate that can select it (and every task gate can)."""
ONE_HOT_SHARE = 0.99
"""A gate is one-hot on average when its mean weight on one expert reaches this."""


@dataclass
class GateSpec:
    """One gate: its name (a task's name, or ``shared`` for OMoE's single gate and PLE's shared
    gates) and the indices, in its level's expert list, of the experts it mixes, in the order of
    its softmax outputs. ``task`` is False for PLE's shared gates (they feed the next level, no
    task's tower)."""

    name: str
    experts: list[int]
    task: bool = True


@dataclass
class GateLevel:
    """One level of gates: the names of the level's experts and its gates."""

    experts: list[str]
    gates: list[GateSpec]


class GateRecorder:
    """Sums of gate probabilities over the real rows of a split.

    A backbone calls :meth:`add` with each gate's probabilities during a forward; the caller of the
    forward calls :meth:`commit` with the number ``n`` of real rows of that forward's batch (the
    rest is padding): the first ``n`` rows of everything added since are summed (float64) into,
    per (level, gate), the sum of the weights [E_g], the sum of the per-row entropies
    -sum_e g_e ln g_e (nats) and the row count.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, torch.Tensor]] = []
        self.weight_sum: dict[tuple[int, int], torch.Tensor] = {}
        self.entropy_sum: dict[tuple[int, int], float] = {}
        self.rows: dict[tuple[int, int], int] = {}

    def add(self, level: int, gate: int, probs: torch.Tensor) -> None:
        """Gate probabilities of one forward: ``probs`` [B, E] for gate ``gate``, or [B, G, E] for
        the gates ``gate``, ..., ``gate + G - 1`` of ``level`` at once (MMoE's stacked gates)."""
        if probs.dim() == 2:
            self._pending.append((level, gate, probs.detach()))
        else:
            for j in range(probs.shape[1]):
                self._pending.append((level, gate + j, probs[:, j].detach()))

    def commit(self, n: int) -> None:
        """Add the first ``n`` rows of every probability added since the last commit to the sums."""
        for level, gate, p in self._pending:
            p = p[:n].double()
            key = (level, gate)
            ent = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
            self.weight_sum[key] = self.weight_sum.get(key, 0) + p.sum(0).cpu()
            self.entropy_sum[key] = self.entropy_sum.get(key, 0.0) + ent
            self.rows[key] = self.rows.get(key, 0) + int(p.shape[0])
        self._pending.clear()

    def merge(self, other: "GateRecorder | None") -> None:
        """Add the sums of ``other`` (another rank's rows of the same split) to these."""
        if other is None:
            return
        for key, w in other.weight_sum.items():
            self.weight_sum[key] = self.weight_sum.get(key, 0) + w
            self.entropy_sum[key] = self.entropy_sum.get(key, 0.0) + other.entropy_sum[key]
            self.rows[key] = self.rows.get(key, 0) + other.rows[key]


@contextlib.contextmanager
def recording(backbone, recorder: GateRecorder | None):
    """Set ``backbone.gate_recorder`` to ``recorder`` for the block (nothing when ``recorder`` is
    None or the backbone has no gates), and back to None after it."""
    if recorder is None or not backbone.gate_layout():
        yield
        return
    backbone.gate_recorder = recorder
    try:
        yield
    finally:
        backbone.gate_recorder = None


def gate_statistics(layout: list[GateLevel], recorder: GateRecorder) -> list[dict]:
    """Per level: the mean gate weight of each gate on each expert over the recorded rows, the
    gates' mean entropy, the unused experts and the collapse warnings.

    For a gate g mixing E_g experts, over the N rows of the split:

    - ``weight[g][e]`` = (1/N) sum_rows g(x)_e (None where g cannot select expert e: PLE's task
      gates see only their own task's experts and the shared ones);
    - ``entropy[g]`` = (1/N) sum_rows -sum_e g(x)_e ln g(x)_e, in nats (0: one-hot rows;
      ``max_entropy[g]`` = ln E_g: uniform rows);
    - an expert is unused when every gate that can select it gives it a mean weight below
      1 / (2 E_g) (half the uniform share); ``unused_share`` = unused experts / the level's experts.
      PLE's shared gates count as users (they feed the next level's experts);
    - ``one_hot``: the task gates (E_g >= 2) whose mean weight on one expert is at least
      :data:`ONE_HOT_SHARE`; ``collapsed``: one expert that every task gate can select takes more
      than :data:`COLLAPSE_SHARE` of every task gate's mean weight (task gates with E_g >= 2; a
      gate over one expert is one-hot by construction and is left out of both tests).

    Returns:
        [{"level", "experts" [names], "gates" [names], "weight" [[float | None]], "entropy",
          "max_entropy", "unused" [expert names], "unused_share", "one_hot" [gate names],
          "collapsed": expert name | None}], one per level with recorded rows.
    """
    out = []
    for li, lev in enumerate(layout):
        if not any(recorder.rows.get((li, gi)) for gi in range(len(lev.gates))):
            continue
        weights, entropy, max_ent = [], [], []
        for gi, g in enumerate(lev.gates):
            rows = recorder.rows.get((li, gi), 0)
            row: list[float | None] = [None] * len(lev.experts)
            if rows:
                mean = (recorder.weight_sum[(li, gi)] / rows).tolist()
                for k, e in enumerate(g.experts):
                    row[e] = float(mean[k])
            weights.append(row)
            entropy.append(recorder.entropy_sum.get((li, gi), 0.0) / rows if rows else None)
            max_ent.append(math.log(len(g.experts)))
        unused = []
        for e, name in enumerate(lev.experts):
            users = [(gi, g) for gi, g in enumerate(lev.gates) if e in g.experts and weights[gi][e] is not None]
            if users and all(weights[gi][e] < 1.0 / (2 * len(g.experts)) for gi, g in users):
                unused.append(name)
        tasks = [(gi, g) for gi, g in enumerate(lev.gates)
                 if g.task and len(g.experts) >= 2 and weights[gi][g.experts[0]] is not None]
        one_hot = [g.name for gi, g in tasks if max(weights[gi][e] for e in g.experts) >= ONE_HOT_SHARE]
        collapsed = None
        for e, name in enumerate(lev.experts):
            if tasks and all(e in g.experts and weights[gi][e] > COLLAPSE_SHARE for gi, g in tasks):
                collapsed = name
        out.append({"level": li, "experts": list(lev.experts), "gates": [g.name for g in lev.gates],
                    "weight": weights, "entropy": entropy, "max_entropy": max_ent, "unused": unused,
                    "unused_share": len(unused) / len(lev.experts), "one_hot": one_hot, "collapsed": collapsed})
    return out


def gate_warnings(stats: list[dict]) -> list[str]:
    """One line per collapse found by :func:`gate_statistics` (empty when the gates are healthy)."""
    lines = []
    multi = len(stats) > 1
    for s in stats:
        where = f" at level {s['level']}" if multi else ""
        if s["collapsed"] is not None:
            lines.append(f"gates collapsed{where}: expert {s['collapsed']} takes more than "
                         f"{COLLAPSE_SHARE:.0%} of every task's gate weight")
        for g in s["one_hot"]:
            lines.append(f"gate of {g}{where} is one-hot on average (one expert has >= {ONE_HOT_SHARE:.0%} of its weight)")
    return lines


def gate_scalars(stats: list[dict]) -> dict[str, float]:
    """TensorBoard scalars of :func:`gate_statistics`: ``diag/gate/<gate>/<expert>`` (mean weight),
    ``diag/gate_entropy/<gate>`` (nats) and ``diag/gate_unused_share``; with several levels (PLE)
    every tag gets ``level<l>/`` after ``diag/gate.../``."""
    out = {}
    multi = len(stats) > 1
    for s in stats:
        lv = f"level{s['level']}/" if multi else ""
        for g, row, ent in zip(s["gates"], s["weight"], s["entropy"]):
            for e, w in zip(s["experts"], row):
                if w is not None:
                    out[f"diag/gate/{lv}{g}/{e}"] = w
            if ent is not None:
                out[f"diag/gate_entropy/{lv}{g}"] = ent
        out[f"diag/gate_unused_share{'/' + lv.rstrip('/') if multi else ''}"] = s["unused_share"]
    return out
