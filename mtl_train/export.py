"""``mode=export``: a checkpoint as files a server loads without mtl-train's model code.

    mtl-train mode=export checkpoint=<run dir | file.pt> export.output=<dir>
    mtl-train mode=export checkpoint=<run dir | file.pt> export.output=<dir> 'export.formats=[onnx]'

writes, in ``export.output`` (default ``<this run's dir>/export``):

- ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension, saved with
  ``torch.export.save`` (``torch.export.load(path).module()(*inputs)``);
- ``model.onnx`` and its external weights ``model.onnx.data``: the same program through the
  dynamo-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``, opset :data:`OPSET`);
- ``features.json`` and its vocabulary files ``vocab-NNN.parquet``: how raw feature values
  become the inputs (written by :mod:`mtl_train.serving.features`, read by
  :mod:`mtl_train.serving`, which scores raw rows with ONNX Runtime and no torch);
- ``manifest.json``: versions (mtl-train, torch, onnx, onnxruntime, opset), the source
  checkpoint and its step, the files, the inputs and outputs (names, dtypes, shapes) and the
  parity figures.

Both formats are traced in eval mode, under ``torch.no_grad()``, in float32 (a bf16-trained
checkpoint keeps float32 master weights: autocast is not part of the program) and with the
plain-torch references of :mod:`mtl_train.kernels` (the hand-written experts' custom autograd
function is what the old TorchScript-based ONNX exporter traced into a constant).

The signature is the same for every backbone and graph (:class:`ServingModule`):

- inputs ``sparse`` int64 [B, F] (vocabulary ids, 0 null, 1 unseen, columns in the schema's
  order), ``dense`` float32 [B, D] (normalised numeric features), then for each sequence
  feature ``seq_<name>`` int64 [B, max_len] (its id list, padded) and ``seq_<name>_len`` int64
  [B] (entries kept, <= max_len; positions from it on are ignored as padding);
- outputs, one per scored output of ``mode=predict`` and in its order: ``prob_<output>``
  float32 [B], a probability in [0, 1] (``prob_click``, ``prob_purchase``; ESMM adds
  ``prob_purchase_given_click``, its pCVR; a regression task gives ``pred_<task>``, its value).

The export checks itself before anything is published: the model in eager mode (as
``mode=predict`` runs it), the reloaded ``.pt2`` program and ONNX Runtime score the first
:data:`PARITY_ROWS` rows of ``export.split`` at once and the first :data:`PARITY_SINGLE_ROWS`
rows one at a time (batch 1); an output off by more than :data:`TOLERANCE` refuses the export
(:class:`ParityError`). Files are written into a temporary directory beside the target and
renamed into place at the end, so a refused or interrupted export leaves no directory.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from mtl_train import extras
from mtl_train.data.schema import NULL_ID, FeatureSchema, Split
from mtl_train.errors import ConfigError, DataError, MtlError
from mtl_train.io import ensure_writable_dir

log = logging.getLogger(__name__)

OPSET = 20
"""ONNX opset of ``model.onnx``: the dynamo exporter's default in torch 2.13; its models (IR
version 10) run in onnxruntime >= 1.18 (the extra asks 1.19, the first built for NumPy 2)."""
TOLERANCE = 1e-5
"""Largest absolute difference from eager allowed for any output of any format."""
PARITY_ROWS = 3000
"""Rows scored at once by the parity check (fewer where the split has fewer): a few thousand
and not a power of two, so a kernel specialised to aligned batch sizes is not all it sees."""
PARITY_SINGLE_ROWS = 8
"""Rows scored one at a time (batch 1) by the parity check."""
MANIFEST = "manifest.json"
FILES = {"pt2": ["model.pt2"], "onnx": ["model.onnx", "model.onnx.data"]}


class ParityError(MtlError):
    """An exported format scores the held-out rows differently from the eager model (one line
    naming the format, the output and the difference; the export is not written)."""


def output_names(model: nn.Module) -> list[tuple[str, str, str]]:
    """The scored outputs of ``model`` as ``mode=predict`` writes them, in its order:
    [(export name ``prob_<output>`` or ``pred_<output>`` for regression, output name, type)];
    evaluation-only outputs (scored against a column no real log holds) are left out."""
    schema: FeatureSchema = model.schema
    n = 2
    batch = {"sparse": torch.zeros(n, len(schema.sparse), dtype=torch.int64),
             "dense": torch.zeros(n, len(schema.dense)),
             "labels": torch.zeros(n, len(schema.tasks))}
    if schema.sequence:
        batch["seq"] = torch.zeros(n, schema.seq_width, dtype=torch.int64)
    with torch.no_grad():
        outs = model.graph.eval_outputs(model(batch), batch)
    return [(f"{'pred' if eo.type == 'regression' else 'prob'}_{name}", name, eo.type)
            for name, eo in outs.items() if not eo.eval_only]


class ServingModule(nn.Module):
    """The exported program: ``forward(sparse, dense, *sequences) -> tuple of [B] scores``.

    Args of ``forward``: ``sparse`` int64 [B, F_sparse], ``dense`` float32 [B, F_dense], then
    for each sequence feature of the schema, in its order, its ids int64 [B, max_len] and its
    length int64 [B] (ids at positions >= length are replaced by the null id 0, which pooling
    skips, so whatever pads a list is ignored).

    Returns:
        one float32 [B] tensor per entry of :attr:`outputs`: the score ``mode=predict`` writes
        (the graph's ``eval_outputs``, computed on placeholder labels that no score depends on).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        schema: FeatureSchema = model.schema
        self.num_tasks = len(schema.tasks)
        self.seq_lens = [f.max_len for f in schema.sequence]
        self.input_names = ["sparse", "dense"] + [n for f in schema.sequence for n in (f"seq_{f.name}", f"seq_{f.name}_len")]
        self.outputs = output_names(model)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, *sequences: torch.Tensor) -> tuple[torch.Tensor, ...]:
        labels = torch.zeros(sparse.shape[0], self.num_tasks, dtype=torch.float32, device=sparse.device)
        batch = {"sparse": sparse, "dense": dense, "labels": labels}
        if self.seq_lens:
            blocks = []
            for k, max_len in enumerate(self.seq_lens):
                ids, length = sequences[2 * k], sequences[2 * k + 1]
                pos = torch.arange(max_len, device=ids.device)
                blocks.append(torch.where(pos.unsqueeze(0) < length.unsqueeze(1), ids, torch.full_like(ids, NULL_ID)))
            batch["seq"] = torch.cat(blocks, 1)
        outs = self.model.graph.eval_outputs(self.model(batch), batch)
        return tuple(outs[name].score for _, name, _ in self.outputs)


def serving_inputs(schema: FeatureSchema, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A batch of a split (``sparse``, ``dense``, ``seq``) as :class:`ServingModule`'s inputs:
    the ``seq`` block cut per feature, each with its length (the position after its last
    non-null id; the null ids after it are padding)."""
    out = [batch["sparse"].to(torch.int64), batch["dense"].to(torch.float32)]
    at = 0
    for f in schema.sequence:
        ids = batch["seq"][:, at:at + f.max_len].to(torch.int64)
        at += f.max_len
        position = torch.arange(1, f.max_len + 1, dtype=torch.int64)
        out += [ids.contiguous(), ((ids != NULL_ID) * position).amax(1)]
    return tuple(out)


def signature(module: ServingModule) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the exported program for the manifest: name, dtype, shape (``batch``
    for the dynamic dimension) and, for outputs, the scored output and its type."""
    schema: FeatureSchema = module.model.schema
    inputs = [{"name": "sparse", "dtype": "int64", "shape": ["batch", len(schema.sparse)],
               "columns": [f.name for f in schema.sparse]},
              {"name": "dense", "dtype": "float32", "shape": ["batch", len(schema.dense)],
               "columns": [f.name for f in schema.dense]}]
    for f in schema.sequence:
        inputs += [{"name": f"seq_{f.name}", "dtype": "int64", "shape": ["batch", f.max_len], "columns": [f.name]},
                   {"name": f"seq_{f.name}_len", "dtype": "int64", "shape": ["batch"], "columns": [f.name]}]
    outputs = [{"name": name, "dtype": "float32", "shape": ["batch"], "output": source, "type": typ}
               for name, source, typ in module.outputs]
    return inputs, outputs


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines and warnings (torchvision missing, deprecations):
    a run's console shows mtl-train's own lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Three rows to trace with (a batch of 1 would be specialised as a constant size)."""
    return tuple(t[torch.arange(3) % t.shape[0]] for t in inputs)


def _dynamic_shapes(module: ServingModule):
    """Dimension 0 of every input is the batch (``forward``'s ``*sequences`` are one entry)."""
    batch = torch.export.Dim("batch", min=1)
    sequences = tuple({0: batch} for _ in module.input_names[2:])
    return ({0: batch}, {0: batch}, sequences) if sequences else ({0: batch}, {0: batch})


def trace(module: ServingModule, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` the module with a dynamic batch dimension, in eval mode, without autograd
    and with the plain-torch kernels (the program both formats are written from), its dead
    operators removed."""
    from mtl_train import kernels

    with torch.no_grad(), kernels.use_fused(False), _quiet():
        program = torch.export.export(module.eval(), example, dynamic_shapes=_dynamic_shapes(module))
    # the placeholder labels' masks (eval_outputs computes them beside the scores) reach no output
    program.graph_module.graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def save_onnx(program: torch.export.ExportedProgram, module: ServingModule, example: tuple[torch.Tensor, ...],
              path: str) -> None:
    """``program`` through the dynamo ONNX exporter (opset :data:`OPSET`, the inputs and outputs
    named as :class:`ServingModule` names them, the dynamic dimension named ``batch``); the
    weights go to ``<path>.data`` beside it."""
    import onnx_ir as ir

    with torch.no_grad(), _quiet():
        onnx_program = torch.onnx.export(program, example, dynamo=True, opset_version=OPSET, verbose=False,
                                         input_names=module.input_names,
                                         output_names=[name for name, _, _ in module.outputs])
        graph = onnx_program.model.graph
        for value in [*graph.inputs, *graph.outputs]:
            value.shape = ir.Shape(["batch" if isinstance(d, ir.SymbolicDim) else d for d in value.shape])
        onnx_program.save(path, external_data=True)


def _runners(folder: str, formats: Sequence[str], input_names: Sequence[str]) -> dict[str, Callable]:
    """Each written format reloaded from ``folder``: {format: inputs (in the order of
    ``input_names``) -> list of numpy [B]}."""
    out: dict[str, Callable] = {}
    if "pt2" in formats:
        loaded = torch.export.load(os.path.join(folder, "model.pt2")).module()

        def run_pt2(inputs):
            with torch.no_grad():
                return [t.numpy() for t in loaded(*inputs)]

        out["pt2"] = run_pt2
    if "onnx" in formats:
        import onnxruntime as ort

        session = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}  # an input no output depends on may be dropped

        def run_onnx(inputs):
            return session.run(None, {n: t.numpy() for n, t in zip(input_names, inputs) if n in wanted})

        out["onnx"] = run_onnx
    return out


def parity(module: ServingModule, inputs: tuple[torch.Tensor, ...], folder: str, formats: Sequence[str]) -> dict:
    """Score ``inputs`` (every row at once, then the first :data:`PARITY_SINGLE_ROWS` rows one
    at a time) with the eager module and each format reloaded from ``folder``.

    Returns:
        the manifest's ``parity`` entry: tolerance, the batch sizes, and per format and output
        the largest absolute difference from eager.

    Raises:
        ParityError: a difference above :data:`TOLERANCE` (or a non-finite one), naming the
            format, output and batch size.
    """
    rows = inputs[0].shape[0]
    singles = min(rows, PARITY_SINGLE_ROWS)
    batches = [inputs] + [tuple(t[i:i + 1] for t in inputs) for i in range(singles)]
    module.eval()
    with torch.no_grad():
        eager = [[t.numpy() for t in module(*b)] for b in batches]
    names = [name for name, _, _ in module.outputs]
    figures: dict[str, dict[str, float]] = {}
    for fmt, run in _runners(folder, formats, module.input_names).items():
        worst = dict.fromkeys(names, 0.0)
        for b, ref in zip(batches, eager):
            got = run(b)
            for name, r, g in zip(names, ref, got):
                diff = float(np.max(np.abs(r.astype(np.float64) - np.asarray(g, dtype=np.float64)))) if r.size else 0.0
                if not diff <= TOLERANCE:
                    raise ParityError(f"export: {fmt} output '{name}' differs from the eager model by {diff:.3g} "
                                      f"(> {TOLERANCE:g}) at batch size {b[0].shape[0]}; nothing written")
                worst[name] = max(worst[name], diff)
        figures[fmt] = worst
    return {"tolerance": TOLERANCE, "rows": rows, "batch_sizes": [rows, 1], "single_rows": singles,
            "max_abs_diff": figures}


def _versions(formats: Sequence[str]) -> dict:
    import mtl_train

    v = {"mtl_train": mtl_train.__version__, "torch": torch.__version__, "onnx": None, "onnxscript": None,
         "onnxruntime": None, "opset": OPSET if "onnx" in formats else None}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        if extras.has_module(name):
            try:
                v[name] = __import__(name).__version__
            except Exception:  # noqa: BLE001 - a broken optional package: no version to record
                pass
    return v


MIN_TORCH = (2, 6)
"""torch.export with ``Dim`` batch sizes and ``torch.onnx.export`` of an ExportedProgram."""


def require_torch(version: str | None = None) -> None:
    """Raises ConfigError (one line) where torch (``version``, default the running one) is
    older than :data:`MIN_TORCH`."""
    version = version or torch.__version__
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    if parts < MIN_TORCH:
        raise ConfigError(f"mode=export needs torch >= {'.'.join(map(str, MIN_TORCH))} (torch.export and the dynamo "
                          f"ONNX exporter); this is torch {version}")


def check_output(path: str, overwrite: bool) -> str:
    """Check, before any work, that the export directory ``path`` (``export.output``) may be
    written: absent, or (with ``overwrite``) an earlier export or an empty directory, in a
    folder that can be written.

    Returns:
        ``path``, absolute.

    Raises:
        ConfigError: one line naming ``export.output``: the directory exists and ``overwrite`` is
            false; it is a file; it holds something other than an export (a run, data), which
            is never replaced; its folder cannot be created.
    """
    out = os.path.abspath(os.path.expanduser(path))
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise ConfigError(f"export.output: {out} exists and is not a directory; name a directory")
        if not overwrite:
            raise ConfigError(f"export.output: {out} exists; choose another directory or set export.overwrite=true")
        if os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)):
            raise ConfigError(f"export.output: {out} holds files that are not an export (no {MANIFEST}); "
                              f"export.overwrite replaces only an earlier export; choose another directory")
    ensure_writable_dir("export.output", os.path.dirname(out))
    return out


def _publish(tmp: str, out: str, overwrite: bool) -> None:
    """Move the finished directory ``tmp`` to ``out``; an earlier export there (``overwrite``) is
    moved aside first and removed after the rename."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    check_output(out, overwrite)  # unchanged since the start?
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_features(schema: FeatureSchema, trained: DictConfig | None, folder: str) -> list[str]:
    """``features.json`` and its vocabulary files in ``folder``: how raw values become the
    inputs (:func:`mtl_train.serving.features.write_features`); nothing where ``trained`` (the
    checkpoint's config) is None.

    Returns:
        the names of the files written.

    Raises:
        DataError: a dataset with no raw form to describe (no fitted encoders, not the
            synthetic set)."""
    if trained is None:
        return []
    from mtl_train.serving.features import write_features as write

    return write(folder, schema, trained)


def _check_features(folder: str, inputs: list[dict], outputs: list[dict]) -> None:
    """features.json (where written) names the program's inputs and outputs, in its order: the
    serving side derives them from the config, the program from the model."""
    path = os.path.join(folder, "features.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        doc = json.load(f)
    for key, ours in (("inputs", inputs), ("outputs", outputs)):
        theirs = [x["name"] for x in doc.get(key, [])]
        if theirs != [x["name"] for x in ours]:
            raise RuntimeError(f"features.json {key} {theirs} differ from the exported program's "
                               f"{[x['name'] for x in ours]}")


def export_model(model: nn.Module, rows: dict[str, torch.Tensor], output: str, formats: Sequence[str] = ("pt2", "onnx"),
                 overwrite: bool = False, source: dict | None = None, trained: DictConfig | None = None) -> dict:
    """Export ``model`` (a :class:`~mtl_train.models.builder.MultiTaskModel`) to ``output``,
    checked on ``rows``: the exporter of ``mode=export``.

    Args:
        rows: held-out rows as a batch (``sparse``, ``dense`` and ``seq`` where the schema has
            sequences), at least one; the parity check scores them (see :func:`parity`).
        formats: ``pt2`` and/or ``onnx``.
        source: what the manifest records about the model's origin (checkpoint path, step, ...).
        trained: the checkpoint's config, for ``features.json``.

    Returns:
        the manifest (also written as ``manifest.json``).

    Raises:
        ConfigError: see :func:`check_output`; ``onnx`` without the ``export`` extra; torch
            older than :data:`MIN_TORCH`.
        DataError: see :func:`write_features`.
        ParityError: a format disagrees with the eager model (nothing is written).
    """
    require_torch()
    if "onnx" in formats:
        extras.require_extra(*extras.EXPORT)
    out = check_output(output, overwrite)
    model = model.float().eval()
    module = ServingModule(model).eval()
    inputs = serving_inputs(model.schema, rows)
    if inputs[0].shape[0] == 0:
        raise DataError("export: no held-out rows to check the export on")
    example = _example(inputs)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    try:
        t0 = time.perf_counter()
        program = trace(module, example)
        if "pt2" in formats:
            torch.export.save(program, os.path.join(tmp, "model.pt2"))
        if "onnx" in formats:
            save_onnx(program, module, example, os.path.join(tmp, "model.onnx"))
        seconds = time.perf_counter() - t0
        figures = parity(module, inputs, tmp, formats)
        files = [f for fmt in formats for f in FILES[fmt]]
        files += write_features(model.schema, trained, tmp)
        ins, outs = signature(module)
        _check_features(tmp, ins, outs)
        manifest = {"versions": _versions(formats), "source": source or {}, "formats": list(formats),
                    "files": files + [MANIFEST], "dtype": "float32", "inputs": ins, "outputs": outs,
                    "parity": figures, "export_seconds": round(seconds, 3)}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
        os.chmod(tmp, 0o777 & ~_umask())
        _publish(tmp, out, overwrite)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    worst = max((d for per in figures["max_abs_diff"].values() for d in per.values()), default=0.0)
    log.info("exported %s to %s (%.1f s; parity on %d rows: max abs diff %.3g)", ", ".join(formats), out, seconds,
             figures["rows"], worst)
    return manifest


def _umask() -> int:
    from mtl_train import io

    return io._UMASK


def held_out_rows(split: Split, rows: int = PARITY_ROWS) -> dict[str, torch.Tensor]:
    """The first ``rows`` rows of ``split`` (all of a smaller one) as one batch."""
    for batch in split.batches(rows):
        return batch
    raise DataError("export: the split to check the export on is empty")


def run_export(cfg: DictConfig, run_dir: str) -> str:
    """``mode=export``: the checkpoint ``checkpoint`` exported to ``export.output`` (default
    ``<run_dir>/export``), checked on the first rows of split ``export.split`` of its dataset
    (``dataset.<path key>=...`` on the command line points it at other files, as for eval).

    Returns:
        the export directory.

    Raises:
        ConfigError: no checkpoint; see :func:`check_output` (checked before the model is loaded);
            ``onnx`` without the ``export`` extra; torch older than :data:`MIN_TORCH`.
        DataError: an unreadable checkpoint, or one written before checkpoints held the feature
            schema.
        ParityError: see :func:`parity`.
    """
    from mtl_train.models.builder import build_model
    from mtl_train.train import checkpoint as ckpt
    from mtl_train.train.infer import checkpoint_config, load_input

    formats = list(cfg.export.formats)
    require_torch()
    if "onnx" in formats:
        extras.require_extra(*extras.EXPORT)
    out = check_output(cfg.export.output or os.path.join(run_dir, "export"), cfg.export.overwrite)
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: export needs checkpoint=<checkpoint file or run directory>")
    path = ckpt.find_checkpoint(cfg.checkpoint, "checkpoint", prefer=("best.pt", "last.pt"))
    state = ckpt.load(path, "cpu")
    schema = state.get("schema")
    if schema is None:
        raise DataError(f"{path}: the checkpoint holds no feature schema (written by an older mtl-train)")
    trained = checkpoint_config(state["config"], cfg.infer.get("dataset"))
    model = build_model(schema, trained.model, trained.graph)
    model.load_state_dict(state["model"])
    log.info("checkpoint %s (step %d)", path, state["step"])
    split_cfg = cfg.copy()
    split_cfg.infer.input = None
    split_cfg.infer.split = cfg.export.split
    table, name, _ = load_input(split_cfg, trained, schema, labels_required=False)
    source = {"checkpoint": path, "step": int(state["step"]), "model": trained.model.name,
              "backbone": trained.model.backbone, "graph": trained.graph.name, "dataset": trained.dataset.name,
              "precision": trained.trainer.precision, "parity_split": name}
    export_model(model, held_out_rows(table), out, formats, cfg.export.overwrite, source, trained)
    return out
