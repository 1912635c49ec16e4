"""``mode=eval`` and ``mode=predict``: score a trained checkpoint without its training run.

The model is rebuilt from what the checkpoint stores: its config (model, graph, dataset) and
its :class:`~mtl_train.data.schema.FeatureSchema` with the fitted encoders
(vocabularies, standardisers), so new files are encoded exactly as the training data were.

    mtl-train mode=eval checkpoint=<run dir | file.pt> infer.split=test
    mtl-train mode=eval checkpoint=<run dir | file.pt> infer.input=new.parquet
    mtl-train mode=predict checkpoint=<run dir | file.pt> infer.input=new.parquet infer.output=p.parquet
    mtl-train mode=eval checkpoint=<run dir | file.pt> dataset.path=moved/data.csv   # its dataset, elsewhere

A run directory means its ``checkpoints/best.pt`` (else ``last.pt``). Scoring is the training
run's evaluation (:func:`mtl_train.train.evaluate.score_chunks`, batch-invariant: a row's
score does not depend on ``infer.batch_size``), so ``mode=eval`` on a split reproduces that
split's entry of the run's metrics.json, and the AUC of a prediction
file scored afterwards (rows with a non-null ``label_<task>``) equals ``mode=eval``'s.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig, OmegaConf

from mtl_train.data.datasets import load_dataset, read_file
from mtl_train.data.files import check_readable, require_columns
from mtl_train.data.schema import Table
from mtl_train.errors import ConfigError, DataError
from mtl_train.io import ensure_writable_dir, write_atomic
from mtl_train.models.builder import build_model
from mtl_train.train import checkpoint as ckpt
from mtl_train.train.device import resolve_device
from mtl_train.train.evaluate import evaluate, gauc_column, score_chunks
from mtl_train.train.resume import same_schema

log = logging.getLogger(__name__)


def checkpoint_config(stored: dict, dataset: dict | None = None) -> DictConfig:
    """The validated config of a checkpoint, with the changes ``dataset`` (``infer.dataset``:
    the ``dataset=<name>`` / ``dataset.<key>=<value>`` of an eval/predict command line) applied
    to its dataset. Only the dataset's path keys may change (another copy of its files, a cache
    elsewhere); a relative path is resolved against the launch directory, as in training.

    Raises:
        ConfigError: another dataset than the checkpoint's, or a key that is not one of its paths
            (any other key would change the rows or their encoding the model was trained on).
    """
    from mtl_train import registry
    from mtl_train.config import path_keys, validate

    stored = dict(stored)
    changes = dict(dataset or {})
    name = stored["dataset"]["name"]
    asked = changes.pop("name", None)
    if asked is not None and asked != name:
        raise ConfigError(f"dataset={asked}: this checkpoint was trained on dataset={name}, which eval/predict score; "
                          f"point it at other files with dataset.<path key>=..., or score a file with infer.input=...")
    allowed = path_keys(registry.get("dataset", name).config)
    for key in changes:
        if key not in allowed:
            keys = ", ".join(f"dataset.{k}" for k in allowed) or f"none for dataset={name}"
            raise ConfigError(f"dataset.{key}: eval/predict keep the checkpoint's dataset config; only its paths may be "
                              f"given ({keys}); score another file with infer.input=...")
    if changes:
        stored["dataset"] = {**stored["dataset"], **changes}
        log.info("checkpoint's dataset with %s", ", ".join(f"dataset.{k}={v}" for k, v in changes.items()))
    return validate(OmegaConf.create(stored))


def load_model(checkpoint: str | None, device: torch.device, dataset: dict | None = None):
    """Rebuild the model of a checkpoint.

    Args:
        dataset: changes to the checkpoint's dataset config (``infer.dataset``, see
            :func:`checkpoint_config`).

    Returns:
        (model in eval mode, the checkpoint's validated config, its FeatureSchema, the file path).

    Raises:
        ConfigError: no ``checkpoint`` given, or nothing at that path; a refused dataset change.
        DataError: an unreadable checkpoint or one without a stored schema.
    """
    if not checkpoint:
        raise ConfigError("checkpoint: eval and predict need checkpoint=<checkpoint file or run directory>")
    path = ckpt.find_checkpoint(checkpoint, "checkpoint", prefer=("best.pt", "last.pt"))
    state = ckpt.load(path, device)
    schema = state.get("schema")
    if schema is None:
        raise DataError(f"{path}: the checkpoint holds no feature schema (written by an older mtl-train)")
    cfg = checkpoint_config(state["config"], dataset)
    model = build_model(schema, cfg.model, cfg.graph).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    log.info("checkpoint %s (step %d)", path, state["step"])
    return model, cfg, schema, path


def load_input(cfg: DictConfig, trained: DictConfig, schema, labels_required: bool):
    """The rows to score: ``infer.input`` (a file in the dataset's format, encoded with the
    checkpoint's encoders) or the split ``infer.split`` of the checkpoint's dataset.

    Returns:
        (Table, name used in metrics and messages, the raw pyarrow table of a file or None).
    """
    if cfg.infer.input:
        if schema.encoders is None:
            raise ConfigError(f"infer.input: dataset '{trained.dataset.name}' of this checkpoint has no fitted "
                              f"encoders for files (its rows are generated); use infer.split=train|val|test")
        path = check_readable(cfg.infer.input, "infer.input")
        raw = read_file(trained.dataset, path)
        table, _ = schema.encoders.transform(raw, path, labels_required=labels_required)
        return table, "input", raw
    np.random.seed(trained.seed)
    torch.manual_seed(trained.seed)
    data = load_dataset(trained.dataset, trained.seed)
    if not same_schema(data.schema, schema):
        raise DataError(f"dataset: the {trained.dataset.name} data now differ from the checkpoint's features "
                        f"(did its files change?)")
    return getattr(data, cfg.infer.split), cfg.infer.split, None


PREDICT_FORMATS = {".parquet": "parquet", ".pq": "parquet", "": "parquet", ".csv": "csv"}


def output_path(cfg: DictConfig, run_dir: str, default: str, formats: dict[str, str]) -> tuple[str, str]:
    """Where ``mode=eval``/``predict`` writes, checked before any scoring: ``infer.output``
    (else ``<run_dir>/<default>``) and its format, chosen by the file extension from ``formats``.

    Raises:
        ConfigError: an extension not in ``formats``; a folder that cannot be created
            (:func:`~mtl_train.io.ensure_writable_dir`); the path is the input file
            (``infer.input``); or the file exists and ``infer.overwrite`` is false (so neither
            a data file nor a training run's metrics.json is replaced by mistake).
    """
    out = os.path.abspath(os.path.expanduser(cfg.infer.output or os.path.join(run_dir, default)))
    ext = os.path.splitext(out)[1].lower()
    if ext not in formats:
        names = ", ".join(sorted(e for e in formats if e))
        raise ConfigError(f"infer.output: {out}: unknown extension '{ext}' (this mode writes {names})")
    if os.path.isdir(out):
        raise ConfigError(f"infer.output: {out} is a directory; name a file")
    ensure_writable_dir("infer.output", os.path.dirname(out))
    if os.path.exists(out):
        given = os.path.expanduser(cfg.infer.input) if cfg.infer.input else None
        if given and os.path.exists(given) and os.path.samefile(out, given):
            raise ConfigError(f"infer.output: {out} is the input file (infer.input); write elsewhere")
        if not cfg.infer.overwrite:
            raise ConfigError(f"infer.output: {out} exists; choose another path or set infer.overwrite=true")
    return out, formats[ext]


def run_eval(cfg: DictConfig, run_dir: str) -> dict:
    """``mode=eval``: exact metrics of the checkpoint on a split or a file.

    Writes ``infer.output`` or ``<run_dir>/eval.json``, laid out like metrics.json:
    ``{"<split>" or "input": {"<task>": {"auc", "logloss", ...}}}``. Returns that dict.

    Raises:
        ConfigError: see :func:`output_path` (checked before the model is loaded)."""
    from mtl_train.serving.scorer import is_export_dir

    if is_export_dir(cfg.checkpoint):
        raise ConfigError(f"checkpoint: {cfg.checkpoint} is an exported model; mode=eval scores a training checkpoint "
                          f"(run dir or .pt), mode=predict scores files with either")
    out, _ = output_path(cfg, run_dir, "eval.json", {".json": "json", "": "json"})
    device = resolve_device(cfg.trainer.device)
    model, trained, schema, _ = load_model(cfg.checkpoint, device, cfg.infer.get("dataset"))
    table, name, _ = load_input(cfg, trained, schema, labels_required=True)
    bs = cfg.infer.batch_size or trained.trainer.eval_batch_size
    gauc_by = cfg.trainer.gauc_by or trained.trainer.get("gauc_by")  # the command line's, else the run's
    results = {name: evaluate(model, table, device, bs, name, gauc_column(schema, gauc_by))}

    def write(p):
        with open(p, "w") as f:
            json.dump(results, f, indent=2)

    write_atomic(write, out)
    log.info("eval metrics written to %s", out)
    return results


def predict_table(model, table: Table, device: torch.device,
                  batch_size: int) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Scores of every evaluated output on every row of ``table``, in row order.

    Returns:
        {output: (score float32 [N], label float32 [N] with NaN where the row is not scored
        for that output, type)}. Scored by :func:`mtl_train.train.evaluate.score_chunks`, as
        :func:`mtl_train.train.evaluate.evaluate` scores: a row's bits depend neither on
        ``batch_size`` nor on the other rows.
    """
    parts: dict[str, list] = {}
    types: dict[str, str] = {}
    for outputs, _ in score_chunks(model, table, device, batch_size):
        for name, eo in outputs.items():
            label = torch.where(eo.mask, eo.label.float(), torch.full_like(eo.label.float(), float("nan")))
            parts.setdefault(name, []).append((eo.score.float().cpu(), label.cpu()))
            types[name] = eo.type
    return {n: (torch.cat([a for a, _ in p]).numpy(), torch.cat([b for _, b in p]).numpy(), types[n])
            for n, p in parts.items()}


def run_predict(cfg: DictConfig, run_dir: str) -> str:
    """``mode=predict``: write per-task probabilities to Parquet (CSV where ``infer.output``
    ends in ``.csv``); returns the file's path.

    Columns: the id columns first (``infer.id_columns``, default every sparse feature column:
    raw values of a file input; for a split, ``row`` (position in the split) then the
    vocabulary ids), then for each output ``prob_<task>`` (``pred_<task>`` for regression;
    float32) and ``label_<task>`` (float32, null where the label is missing or the row is not
    scored for that task, e.g. ``graph.parent_positive_only``).

    Raises:
        DataError: an id column not in the input.
        ConfigError: see :func:`output_path` (checked before the model is loaded); a list id
            column for a CSV output (checked before scoring).
    """
    from mtl_train.serving.scorer import is_export_dir

    out, fmt = output_path(cfg, run_dir, "predictions.parquet", PREDICT_FORMATS)
    if is_export_dir(cfg.checkpoint):
        return _predict_export(cfg, out, fmt)
    device = resolve_device(cfg.trainer.device)
    model, trained, schema, _ = load_model(cfg.checkpoint, device, cfg.infer.get("dataset"))
    table, name, raw = load_input(cfg, trained, schema, labels_required=False)
    bs = cfg.infer.batch_size or trained.trainer.eval_batch_size
    scores = predict_table(model, table, device, bs)
    sparse_names = [f.name for f in schema.sparse]
    ids = list(cfg.infer.id_columns) if cfg.infer.id_columns is not None else sparse_names
    cols: dict[str, pa.Array] = {}
    if raw is not None:
        cols.update(_id_columns(cfg, raw, ids, out, fmt))
    else:
        require_columns(sparse_names, ids, f"{name} split", "id column (infer.id_columns; a split has its sparse features)")
        cols["row"] = pa.array(np.arange(len(table), dtype=np.int64))
        for c in ids:
            cols[c] = pa.array(table.sparse[:, sparse_names.index(c)].numpy())
    _write_predictions(cols, scores, out, fmt)
    log.info("%d predictions written to %s", len(table), out)
    return out


def _id_columns(cfg: DictConfig, raw: pa.Table, ids: list[str], out: str, fmt: str) -> dict[str, pa.Array]:
    """The id columns ``ids`` of the raw input, checked (see :func:`run_predict`)."""
    require_columns(raw.column_names, ids, cfg.infer.input, "id column (infer.id_columns)")
    nested = [c for c in ids if pa.types.is_nested(raw.schema.field(c).type)]
    if fmt == "csv" and nested:
        raise ConfigError(f"infer.output: {out}: CSV cannot hold the list column(s) {nested}; write Parquet "
                          f"or leave them out of infer.id_columns")
    return {c: raw.column(c) for c in ids}


def _write_predictions(cols: dict[str, pa.Array], scores: dict[str, tuple[np.ndarray, np.ndarray, str]], out: str,
                       fmt: str) -> None:
    """Write the id columns ``cols`` and, per output, its score and label column to ``out``."""
    for out_name, (score, label, typ) in scores.items():
        cols[f"{'pred' if typ == 'regression' else 'prob'}_{out_name}"] = pa.array(score)
        cols[f"label_{out_name}"] = pa.array(label, from_pandas=True)
    tbl = pa.table(cols)

    def write(p):
        if fmt == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(tbl, p)
        else:
            import pyarrow.parquet as pq

            pq.write_table(tbl, p)

    write_atomic(write, out)


def export_scores(features: dict, probs: dict[str, np.ndarray],
                  labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """The outputs :func:`predict_table` gives, from an exported model's outputs: {output:
    (score float32 [N], label float32 [N], NaN where not scored, type)}, in the same order and
    with the same labels and masks as the graphs' ``standard_eval``
    (:class:`~mtl_train.models.graphs.base.TaskGraph`): ``<task>`` against the label (for a
    graph with a conditional head, the label AND its ancestors' labels), then for a binary
    task with a parent ``<task>_given_<parent>`` on the rows where every ancestor's label is 1.

    Args:
        features: features.json (its ``tasks``, ``graph`` and ``outputs``). probs: {export
            output name (``prob_<output>``): [N]} of the exported model.
        labels: float32 [N, T] raw labels in task order, NaN where missing.

    Raises:
        DataError: an output of features.json that the model does not give.
    """
    tasks = features["tasks"]
    names = [t["name"] for t in tasks]
    chains = []
    for t in tasks:
        chain, p = [], t["parent"]
        while p is not None:
            chain.insert(0, names.index(p))
            p = tasks[names.index(p)]["parent"]
        chains.append(chain)
    res: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for o in features["outputs"]:
        if o["name"] not in probs:
            raise DataError(f"the exported model gives no output '{o['name']}' (it gives {sorted(probs)})")
        k = names.index(o["task"])
        y = labels[:, k]
        if o["output"] == o["task"]:  # entire space
            if features["graph"]["conditional"] and chains[k]:
                chain = labels[:, chains[k] + [k]]
                y = np.where((chain == 0).any(1), np.float32(0), chain.prod(1)).astype(np.float32)
        else:  # on the rows whose ancestors are all positive
            scored = ~np.isnan(y)
            for a in chains[k]:
                scored &= labels[:, a] == 1
            y = np.where(scored, y, np.float32(np.nan))
        res[o["output"]] = (probs[o["name"]], y, o["type"])
    return res


def _predict_export(cfg: DictConfig, out: str, fmt: str) -> str:
    """``mode=predict`` with ``checkpoint=<export dir>``: score ``infer.input`` with the exported
    model (:class:`mtl_train.serving.scorer.Scorer`: features.json and ONNX Runtime, no model
    code) and write the file :func:`run_predict` writes for the training checkpoint.

    Raises:
        ConfigError: no ``infer.input`` (an export holds no dataset to take a split of).
        DataError: see :meth:`mtl_train.serving.scorer.Scorer.score`; a bad label value."""
    from types import SimpleNamespace

    from mtl_train.data.columns import label_array
    from mtl_train.data.files import read_parquet
    from mtl_train.serving.scorer import Scorer

    if not cfg.infer.input:
        raise ConfigError(f"infer.input: {cfg.checkpoint} is an exported model, which scores files: give "
                          f"infer.input=<file> (infer.split needs the training checkpoint)")
    scorer = Scorer(cfg.checkpoint, threads=cfg.trainer.get("num_threads"))
    features = scorer.features
    path = check_readable(cfg.infer.input, "infer.input")
    dataset = features.get("dataset") or {}
    raw = read_file(OmegaConf.create(dataset), path) if dataset.get("name") else read_parquet(path)
    ids = list(cfg.infer.id_columns) if cfg.infer.id_columns is not None else [c["name"] for c in features["categorical"]]
    cols = _id_columns(cfg, raw, ids, out, fmt)
    inputs = scorer.encode(raw, path)
    probs = scorer.run(inputs, cfg.infer.batch_size or 4096)
    labels = np.full((raw.num_rows, len(features["tasks"])), np.nan, dtype=np.float32)
    for k, t in enumerate(features["tasks"]):
        if t["label"] in raw.column_names:
            labels[:, k] = label_array(raw.column(t["label"]), SimpleNamespace(**t), path)
    _write_predictions(cols, export_scores(features, probs, labels), out, fmt)
    log.info("%d predictions of the exported model %s written to %s", raw.num_rows, cfg.checkpoint, out)
    return out
