"""``features.json``: everything a server needs to turn raw feature values into the inputs of an
exported model, and the names of that model's inputs and outputs.

Written at export time by :func:`write_features` from what a checkpoint holds (its
:class:`~mtl_train.data.schema.FeatureSchema` with the fitted
:class:`~mtl_train.data.encode.Encoder`, and its resolved config), read by
:mod:`mtl_train.serving.rows`. This module imports neither torch nor the training code, so
that a server can read the file with numpy and pyarrow only.

Layout (``format`` 1), all names as in the training data::

    {"format": 1, "mtl_train": "<version>",
     "ids": {"null": 0, "oov": 1, "reserved": 2},
     "dataset": {<the checkpoint's dataset config>},       # how mode=predict reads a file
     "categorical": [<id column>, ...],                     # the columns of input "sparse", in order
     "sequences":   [<id column> + {"max_len", "pooling"}], # inputs "seq_<name>", "seq_<name>_len"
     "numeric":     [{"name", "norm", "fill", "stats": {"mean", "std", "min", "max"}}],  # input "dense"
     "tasks":       [{"name", "label", "type", "parent"}],   # funnel order
     "graph":       {"name", "conditional"},
     "inputs":      [{"name", "dtype", "shape", "columns"}],  # shape: "batch" is the dynamic batch
     "outputs":     [{"name", "output", "task", "kind", "type", "parent"}]}

An id column is one of

- ``{"name", "encoding": "vocabulary", "file", "value_type", "size"}``: the known values in the
  Parquet file ``file`` (beside features.json, one column ``value``), the value at position i
  has id i + 2; a null gets id 0, a value not in the file id 1. ``value_type`` is the Arrow type
  of the values (a value of another type is cast to it first, as training's encoder does).
- ``{"name", "encoding": "hash", "buckets", "salt", "id_kind", "size"}``: id = 2 +
  splitmix64(h(value) XOR salt) mod buckets, nulls 0 (see :mod:`mtl_train.data.encode`:
  ``h`` is the value's int64 bits for integers, the polynomial hash of the UTF-8 bytes for
  strings). ``id_kind`` (``integer``, ``string`` or null) is the kind of the training files'
  values, recorded at prepare time: a value of the other kind is converted to it first
  (``"7"`` and 7 hash alike; a word where the ids were integers is an error).
- ``{"name", "encoding": "offset", "size"}`` (the built-in synthetic set, whose rows are
  generated as ids): id = value + 2 for an integer value in [0, size - 2), 1 for any other
  value, 0 for null.

A numeric column: nulls and non-finite values are missing; ``norm`` ``log`` takes the signed
log1p first; missing values get ``fill`` (``"zero"``, a number, logged too under ``log``, or
``"mean"``: the training mean); then ``standard`` (x - mean) / std, ``minmax``
(x - min) / (max - min, 1 where 0) or ``none``. Computed in float64, then float32.

Inputs (the one signature of every backbone x graph): ``sparse`` int64 [B, F] (the
categorical ids), ``dense`` float32 [B, D] (the normalised numbers) and, for each sequence in
order, ``seq_<name>`` int64 [B, max_len] (its first ``max_len`` ids, padded with 0) and
``seq_<name>_len`` int64 [B] (the ids kept, at most ``max_len``; positions from it on are
padding).

Outputs, one per scored output of ``mode=predict`` and in its order, float32 [B]:
``prob_<task>`` (``pred_<task>`` for a regression task): the entire-space score,
P(task | impression) (for ESMM the product along the funnel, pCTCVR); for each binary task with
a parent, ``prob_<task>_given_<parent>``: for graphs with a conditional head (``esmm``;
``independent`` with ``graph.parent_positive_only``) P(task | parent positive, impression),
ESMM's pCVR, for the others the entire-space probability again (``kind`` says which).
"""
from __future__ import annotations

import json
import os
import zlib

from mtl_train.data.hashing import NULL_ID, NUM_RESERVED_IDS, OOV_ID
from mtl_train.errors import DataError

FORMAT = 1
FILE = "features.json"


def conditional_head(graph: dict) -> bool:
    """Whether the graph config ``graph`` scores a conditional probability P(task | parent
    positive) besides the entire-space one: ``esmm``, and ``independent`` with
    ``parent_positive_only``."""
    name = graph.get("name")
    return name == "esmm" or (name == "independent" and bool(graph.get("parent_positive_only")))


def output_specs(tasks: list[dict], graph: dict) -> list[dict]:
    """The exported model's outputs (see the module docstring), in ``mode=predict``'s order: per
    task its entire-space score, then for a binary task with a parent the score on the rows
    whose ancestors are positive (the conditional probability where the graph has a
    conditional head, else the entire-space one again).

    Args:
        tasks: [{"name", "type", "parent"}] in schema order. graph: the graph config.

    Returns:
        [{"name", "output", "task", "kind": "entire" | "conditional", "type": "binary" |
        "regression", "parent"}] (``output``: the name in metrics.json)."""
    cond = conditional_head(graph)
    outs = []
    for t in tasks:
        outs.append({"name": f"{'pred' if t['type'] == 'regression' else 'prob'}_{t['name']}", "output": t["name"],
                     "task": t["name"], "kind": "entire", "type": t["type"], "parent": t.get("parent")})
        if t.get("parent") and t["type"] == "binary":
            name = f"{t['name']}_given_{t['parent']}"
            outs.append({"name": f"prob_{name}", "output": name, "task": t["name"],
                         "kind": "conditional" if cond else "entire", "type": "binary", "parent": t["parent"]})
    return outs


def input_specs(categorical: list[str], numeric: list[str], sequences: list[tuple[str, int]]) -> list[dict]:
    """The exported model's inputs (see the module docstring): [{"name", "dtype", "shape",
    "columns"}], ``"batch"`` in a shape being the dynamic batch dimension."""
    ins = [{"name": "sparse", "dtype": "int64", "shape": ["batch", len(categorical)], "columns": list(categorical)},
           {"name": "dense", "dtype": "float32", "shape": ["batch", len(numeric)], "columns": list(numeric)}]
    for name, max_len in sequences:
        ins += [{"name": f"seq_{name}", "dtype": "int64", "shape": ["batch", max_len], "columns": [name]},
                {"name": f"seq_{name}_len", "dtype": "int64", "shape": ["batch"], "columns": [name]}]
    return ins


def signature(schema, config: dict) -> dict:
    """{"inputs": [...], "outputs": [...]} of the exported model of a checkpoint (its
    FeatureSchema and resolved config), as :func:`input_specs` and :func:`output_specs` give
    them: what features.json records."""
    tasks = [{"name": t.name, "type": t.type, "parent": t.parent} for t in schema.tasks]
    seqs = [(f.name, int(f.max_len)) for f in getattr(schema, "sequence", [])]
    return {"inputs": input_specs([f.name for f in schema.sparse], [f.name for f in schema.dense], seqs),
            "outputs": output_specs(tasks, dict(config.get("graph") or {}))}


def _id_column(c, size: int, enc, folder: str, files: list[str]) -> dict:
    """The features.json entry of id column ``c`` (a spec column) of encoder ``enc``; writes
    its vocabulary file into ``folder`` (named into ``files``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if c.hash_buckets is not None:
        return {"name": c.name, "encoding": "hash", "buckets": int(c.hash_buckets),
                "salt": int(getattr(enc, "salts", {}).get(c.name, zlib.crc32(c.name.encode()))),
                "id_kind": (getattr(enc, "id_kinds", None) or {}).get(c.name), "size": int(size)}
    values = enc.vocabs[c.name].values
    fname = f"vocab-{len(files):03d}.parquet"
    pq.write_table(pa.table({"value": values}), os.path.join(folder, fname))
    files.append(fname)
    return {"name": c.name, "encoding": "vocabulary", "file": fname, "value_type": str(values.type),
            "size": int(size)}


def features_dict(schema, config: dict, folder: str) -> dict:
    """The content of features.json for a checkpoint's ``schema`` (FeatureSchema) and resolved
    ``config`` (a plain dict); the vocabulary files are written into ``folder``.

    Raises:
        DataError: a dataset whose rows are not encoded from files (no fitted encoder) other
            than the built-in synthetic set, which has no raw form to describe."""
    enc = schema.encoders
    dataset = dict(config.get("dataset") or {})
    sizes = {f.name: f.vocab_size for f in [*schema.sparse, *getattr(schema, "sequence", [])]}
    files: list[str] = []
    if enc is None:
        if dataset.get("name") != "synthetic":
            raise DataError(f"export: dataset '{dataset.get('name')}' has no fitted encoders, so features.json cannot "
                            f"describe its raw values")
        categorical = [{"name": f.name, "encoding": "offset", "size": int(f.vocab_size)} for f in schema.sparse]
        sequences: list[dict] = []
        numeric = [{"name": f.name, "norm": "none", "fill": "zero", "stats": {"mean": 0.0, "std": 1.0, "min": 0.0,
                                                                             "max": 1.0}} for f in schema.dense]
    else:
        spec = enc.spec
        categorical = [_id_column(c, sizes[c.name], enc, folder, files) for c in spec.categorical]
        sequences = [{**_id_column(c, sizes[c.name], enc, folder, files), "max_len": int(c.max_len),
                      "pooling": c.pooling} for c in spec.sequences]
        numeric = [{"name": c.name, "norm": c.norm, "fill": _fill(c.fill), "stats": dict(enc.stats[c.name])}
                   for c in spec.numeric]
    tasks = [{"name": t.name, "label": t.label, "type": t.type, "parent": t.parent} for t in schema.tasks]
    graph = dict(config.get("graph") or {})
    from mtl_train import __version__

    return {"format": FORMAT, "mtl_train": __version__,
            "ids": {"null": NULL_ID, "oov": OOV_ID, "reserved": NUM_RESERVED_IDS},
            "dataset": dataset, "categorical": categorical, "sequences": sequences, "numeric": numeric,
            "tasks": tasks, "graph": {"name": graph.get("name"), "conditional": conditional_head(graph)},
            **signature(schema, config)}


def _fill(fill) -> str | float:
    f = str(fill)
    return f if f in ("mean", "zero") else float(f)


def write_features(folder: str, schema, config) -> list[str]:
    """Write ``features.json`` and the vocabulary files beside it (``vocab-NNN.parquet``) into
    ``folder`` (which must exist; an exporter writes into its staging folder and renames it
    into place, so nothing is half written).

    Args:
        folder: the export folder. schema: the checkpoint's
            :class:`~mtl_train.data.schema.FeatureSchema` (``state["schema"]``), with its fitted
            encoders. config: the checkpoint's resolved config (``state["config"]``: a plain
            dict or a DictConfig with ``dataset`` and ``graph``).

    Returns:
        The names of the files written, features.json first.

    Raises:
        DataError: see :func:`features_dict`.
    """
    if config is not None and not isinstance(config, dict):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    doc = features_dict(schema, config or {}, folder)
    with open(os.path.join(folder, FILE), "w") as f:
        json.dump(doc, f, indent=1)
    return [FILE, *[c["file"] for c in [*doc["categorical"], *doc["sequences"]] if c.get("file")]]


def read_features(folder: str) -> dict:
    """The content of ``<folder>/features.json``.

    Raises:
        FileNotFoundError: no features.json there. ValueError: not JSON, or another format."""
    path = os.path.join(folder, FILE)
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a features file ({e})") from None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: features format {doc.get('format')!r}, this mtl-train reads {FORMAT}")
    return doc
