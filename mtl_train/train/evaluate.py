"""Evaluation: batch-invariant scoring of a split (:func:`score_chunks`, shared by training-time
evaluation, ``mode=eval`` and ``mode=predict``), exact metrics of every evaluated output over a
whole split, GAUC grouping, and the monitored value that drives best.pt and early stopping."""
from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Iterable, Iterator

import numpy as np
import torch

from mtl_train import distributed
from mtl_train.data.schema import OOV_ID, Split
from mtl_train.errors import ConfigError, NonFiniteScores
from mtl_train.metrics import binary_metrics, degenerate_scores, group_auc, regression_metrics
from mtl_train.models.builder import MultiTaskModel
from mtl_train.models.gates import GateRecorder, recording
from mtl_train.models.graphs.base import EvalOutput
from mtl_train.train.device import to_device

log = logging.getLogger(__name__)

EVAL_CHUNK = 4096
"""Rows of every model call when a split is scored (see :func:`score_chunks`). The float results
of a GEMM depend on its row count (BLAS libraries pick kernels and blockings by shape), so a
model called on batches of varying size gives scores that differ in the last bit with
the size of its batch; called always on this many rows, a row's score depends only on the row.
Measured on the default synthetic test split (20,000 rows, MMoE, 2-core CPU, forward passes only,
median rows/s): 1 thread: 244k (2048: 273k, 16384: 108k; before, batches of 16384 + the rest:
152k); 2 threads on the loaded machine: 71k (2048: 49k, 16384: 47k; before: 75k). 4096 is near
the best in both and wastes at most 4095 padded rows per split."""


def _rows(batch: dict[str, torch.Tensor]) -> int:
    return batch["labels"].shape[0]


def _take(pending: deque, k: int) -> dict[str, torch.Tensor]:
    """The first ``k`` rows of the batches queued in ``pending`` (which must hold that many), as
    one batch; removes them from the queue. A chunk inside one batch is a view (no copy)."""
    parts, got = [], 0
    while got < k:
        b = pending[0]
        n = _rows(b)
        if got + n <= k:
            parts.append(pending.popleft())
            got += n
        else:
            need = k - got
            parts.append({key: v[:need] for key, v in b.items()})
            pending[0] = {key: v[need:] for key, v in b.items()}
            got = k
    if len(parts) == 1:
        return parts[0]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def fixed_chunks(batches: Iterable[dict[str, torch.Tensor]], size: int) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Re-cut a stream of batches (any sizes, rows in order) into batches of exactly ``size`` rows.

    Yields:
        (batch of ``size`` rows, the number n of real rows in it): n = ``size`` except in the
        last chunk, whose rows after the n-th are copies of its last real row (padding that the
        caller drops: scores of padded rows never reach a metric or a prediction file).
    """
    pending: deque = deque()
    have = 0
    for b in batches:
        if _rows(b) == 0:
            continue
        pending.append(b)
        have += _rows(b)
        while have >= size:
            yield _take(pending, size), size
            have -= size
    if have:
        last = _take(pending, have)
        yield {k: torch.cat([v, v[-1:].expand(size - have, *v.shape[1:])]) for k, v in last.items()}, have


@torch.no_grad()
def score_chunks(model: MultiTaskModel, table: Split, device: torch.device, batch_size: int,
                 shard: tuple[int, int] | None = None) -> Iterator[tuple[dict[str, EvalOutput], dict[str, torch.Tensor]]]:
    """Every evaluated output on every row of ``table``, in row order, computed batch-invariantly:
    the one scoring path of training-time evaluation (:func:`evaluate`), ``mode=eval`` and
    ``mode=predict`` (:func:`mtl_train.train.infer.predict_table`).

    The split is read ``batch_size`` rows at a time (``trainer.eval_batch_size``,
    ``infer.batch_size``: memory and I/O only) and the model always runs, in eval mode and
    without autograd, on chunks of exactly :data:`EVAL_CHUNK` rows (the last padded, see
    :func:`fixed_chunks`), so a row gets the same bits whatever the batch size, the split's
    length or the row's neighbours (rows are independent in every backbone and graph, and the
    kernels' results for a fixed shape do not depend on a row's position).

    ``shard=(r, N)`` scores only the chunks k with k % N == r (rank r of N; the chunks are the
    same on every rank, so the ranks' scores together are the one-process scores, bit for bit).

    Yields:
        ({output: EvalOutput with score, label, mask (and weight) [n]}, the chunk's real rows as a batch on
        ``device``, each block [n, ...]), n <= :data:`EVAL_CHUNK`.
    """
    was_training = model.training
    model.eval()
    try:
        for k, (chunk, n) in enumerate(fixed_chunks(table.batches(batch_size), EVAL_CHUNK)):
            if shard is not None and k % shard[1] != shard[0]:
                continue
            batch = to_device(chunk, device)
            outputs = model.graph.eval_outputs(model(batch), batch)
            yield ({name: dataclasses.replace(eo, score=eo.score[:n], label=eo.label[:n], mask=eo.mask[:n],
                                              weight=None if eo.weight is None else eo.weight[:n])
                    for name, eo in outputs.items()}, {k: v[:n] for k, v in batch.items()})
    finally:
        model.train(was_training)


def gauc_column(schema, name: str | None) -> int | None:
    """Index in ``batch["sparse"]`` of the categorical feature ``name`` (``trainer.gauc_by``).

    Raises:
        ConfigError: ``name`` is not a categorical feature of the dataset."""
    if name is None:
        return None
    names = [f.name for f in schema.sparse]
    if name not in names:
        raise ConfigError(f"trainer.gauc_by: no categorical feature '{name}' in this dataset (have {names})")
    return names.index(name)


def check_gauc_by(cfg) -> None:
    """Raises ConfigError when ``trainer.monitor`` or ``objective.metric`` (where
    ``objective.tasks`` is set) asks for GAUC without ``trainer.gauc_by``."""
    if cfg.trainer.gauc_by is not None:
        return
    objective = cfg.get("objective") or {}
    for key, metric in (("trainer.monitor", cfg.trainer.monitor.partition("/")[0]),
                        # objective.tasks null means the monitor, whatever objective.metric says
                        ("objective.metric", objective.get("metric") if objective.get("tasks") else None)):
        if metric == "gauc":
            raise ConfigError(f"{key}: gauc needs trainer.gauc_by, the categorical feature that groups "
                              f"rows (e.g. trainer.gauc_by=user_id)")


def check_monitor(schema, monitor: str) -> None:
    """Raises ConfigError when ``trainer.monitor`` (``<metric>/mean`` or ``<metric>/<task>``) asks
    for a metric that no task it names reports: auc, gauc and logloss exist for binary tasks only,
    mse and r2 for regression tasks only. Such a monitor is None at every evaluation, so no
    best.pt would be kept and early stopping would end the run after ``trainer.patience``
    evaluations, without a word (e.g. the default ``auc/mean`` on ``dataset=mmoe_synthetic``)."""
    metric, _, what = monitor.partition("/")
    needs = "regression" if metric in ("mse", "r2") else "binary"
    types = {t.name: t.type for t in schema.tasks}
    named = list(types.values()) if what == "mean" else [types[what]] if what in types else None
    if named is None or needs in named:  # an output that is not a task: monitor_value checks it
        return
    fix = "mse/mean trainer.monitor_mode=min" if needs == "binary" else "auc/mean trainer.monitor_mode=max"
    whose = "no task of this dataset is one" if what == "mean" else f"task '{what}' is not one"
    raise ConfigError(f"trainer.monitor: {metric} is reported for {needs} tasks only, and {whose}; "
                      f"e.g. trainer.monitor={fix}")


def evaluate(model: MultiTaskModel, table: Split, device: torch.device, batch_size: int, split: str,
             group_index: int | None = None, gates: GateRecorder | None = None) -> dict:
    """Exact metrics of every evaluated output over the whole split ``table`` (a
    :class:`~mtl_train.data.schema.Split`, in memory or streamed), scored by
    :func:`score_chunks` (read ``batch_size`` rows at a time; the scores do not depend on it).

    ``group_index`` (see :func:`gauc_column`) adds GAUC to binary outputs, grouping rows by
    that categorical column's ids; rows whose id is null or out of vocabulary (ids 0 and 1:
    users unseen in training share id 1) are left out of GAUC only.

    An output with row weights (:attr:`~mtl_train.models.graphs.base.EvalOutput.weight`) gets
    the weighted metrics too (``auc_weighted``, ``logloss_weighted``; ``mse_weighted``,
    ``r2_weighted``), beside the unweighted ones.

    ``gates``: a :class:`~mtl_train.models.gates.GateRecorder` that receives the gate probabilities
    of the backbone (MMoE, OMoE, CGC, PLE) on every real row of the split (no effect on the scores;
    nothing is recorded for a backbone without gates).

    An output whose scores are degenerate (:func:`~mtl_train.metrics.degenerate_scores`: constant,
    or a binary AUC significantly below 0.5) gets ``"degenerate": "constant" | "below_chance"`` in
    its metrics and a warning; other outputs' metrics have no such key.

    With several ranks (:mod:`mtl_train.distributed`) each rank scores every N-th chunk, rank 0
    gathers the scores in row order and computes the metrics, and every rank gets them: the
    same numbers as one process scoring the whole split (the scores are batch-invariant).

    Returns {output name: metrics dict} (see :mod:`mtl_train.metrics`).

    Raises:
        NonFiniteScores: an output scored a row NaN or inf (a broken model), on every rank.
    """
    if distributed.world_size() > 1:
        return _evaluate_distributed(model, table, device, batch_size, split, group_index, gates)
    return _metrics(*_score(model, table, device, batch_size, group_index, gates=gates), split, group_index)


def _score(model, table, device, batch_size, group_index, shard=None, gates=None) -> tuple[dict, dict, set]:
    """({output: [(score, label, group, weight) per chunk]}, {output: type}, eval-only outputs)."""
    scores: dict[str, list] = {}
    types: dict[str, str] = {}
    eval_only: set[str] = set()
    with recording(model.backbone, gates):
        for outputs, batch in score_chunks(model, table, device, batch_size, shard):
            if gates is not None:
                gates.commit(_rows(batch))  # the chunk's real rows (the padding of the last one dropped)
            _collect(outputs, batch, group_index, scores, types, eval_only)
    return scores, types, eval_only


def _evaluate_distributed(model, table, device, batch_size, split, group_index, gates=None) -> dict:
    """:func:`evaluate` over ranks: chunk k scored by rank k % N, gathered to rank 0 in chunk
    order, metrics computed there and sent to every rank (an error too: every rank raises it).
    ``gates`` receives the sums of every rank's rows (float64 sums, added rank by rank)."""
    r, ws = distributed.rank(), distributed.world_size()
    mine = GateRecorder() if gates is not None else None
    scored = _score(model, table, device, batch_size, group_index, shard=(r, ws), gates=mine)
    parts = distributed.gather_objects((*scored, mine))
    outcome = None
    if parts is not None:
        scores: dict[str, list] = {}
        types, eval_only = {}, set()
        names = list(dict.fromkeys(n for p in parts for n in p[0]))  # rank 0's order first (it holds chunk 0)
        for name in names:  # rank q holds chunks q, q + N, ...: interleave them back
            per_rank = [p[0].get(name, []) for p in parts]
            scores[name] = [per_rank[k % ws][k // ws] for k in range(sum(map(len, per_rank)))]
        for p in parts:
            types.update(p[1])
            eval_only |= p[2]
        try:
            outcome = ("ok", _metrics(scores, types, eval_only, split, group_index), [p[3] for p in parts])
        except NonFiniteScores as e:
            outcome = ("nonfinite", (e.split, e.output, e.bad, e.rows), None)
    kind, value, recorders = distributed.broadcast_object(outcome)
    if kind == "nonfinite":
        raise NonFiniteScores(*value)
    if gates is not None:
        for rec in recorders:
            gates.merge(rec)
    return value


def _metrics(scores: dict, types: dict, eval_only: set, split: str, group_index) -> dict:
    result, left_out = {}, []
    for name, parts in scores.items():
        score = torch.cat([p[0] for p in parts]).numpy()
        label = torch.cat([p[1] for p in parts]).numpy()
        bad = int((~np.isfinite(score)).sum())
        if bad:
            raise NonFiniteScores(split, name, bad, score.size)
        weight = torch.cat([p[3] for p in parts]).numpy() if parts[0][3] is not None else None
        if types[name] == "regression":
            result[name] = regression_metrics(score, label, name=name, split=split, weight=weight)
        else:
            result[name] = binary_metrics(score, label, name=name, split=split, weight=weight)
            if group_index is not None:
                group = torch.cat([p[2] for p in parts]).numpy()
                known = group > OOV_ID
                result[name].update(group_auc(score[known], label[known], group[known]))
                if not known.all():
                    left_out.append(f"{name} {int((~known).sum())}/{known.size}")
        flag = degenerate_scores(score, label, types[name], result[name].get("auc"))
        if flag is not None:
            result[name]["degenerate"] = flag[0]
            log.warning("%s %s: degenerate scores: %s", split, name, flag[1])
        if name in eval_only:  # scored against an evaluation-only column: never part of the monitor
            result[name]["eval_only"] = True
    if left_out:
        log.info("%s: GAUC leaves out the rows whose group id is null or unseen in training: %s", split,
                 ", ".join(left_out))
    return result


def _collect(outputs: dict[str, EvalOutput], batch: dict[str, torch.Tensor], group_index: int | None,
             scores: dict[str, list], types: dict[str, str], eval_only: set[str]) -> None:
    """Add one chunk's valid (score, label, group, weight) of every output to ``scores``."""
    for name, eo in outputs.items():
        m = eo.mask
        group = batch["sparse"][:, group_index][m].cpu() if group_index is not None else None
        weight = eo.weight[m].float().cpu() if eo.weight is not None else None
        scores.setdefault(name, []).append((eo.score[m].float().cpu(), eo.label[m].float().cpu(), group, weight))
        types[name] = eo.type
        if eo.eval_only:
            eval_only.add(name)


def monitor_value(metrics: dict, monitor: str) -> float | None:
    """Value of ``<metric>/<output>`` (e.g. ``auc/income``) or ``<metric>/mean`` (mean over the
    outputs where the metric is defined, ``eval_only`` outputs left out) in a split's metrics.

    Raises:
        ConfigError: ``<output>`` is not an evaluated output."""
    metric, _, what = monitor.partition("/")
    if what == "mean":
        vals = [m[metric] for m in metrics.values() if m.get(metric) is not None and not m.get("eval_only")]
        return float(np.mean(vals)) if vals else None
    if what not in metrics:
        raise ConfigError(f"trainer.monitor: no evaluated output '{what}' (have {sorted(metrics)})")
    return metrics[what].get(metric)
