"""Helpers shared by test modules in several folders (not collected: no test_ prefix).

Import them with ``from helpers import ...``: pytest puts tests/ on sys.path for conftest.py."""
import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from conftest import REPO
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mtl_train import registry
from mtl_train.balancing.base import build_balancer
from mtl_train.config import validate, validate_group
from mtl_train.data.datasets.common import open_converted as open_named
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.data.sources import permuted_sources
from mtl_train.models.builder import build_model
from mtl_train.models.layers import BatchedExperts


def loss_cfg(name, **over):
    """The typed default config of ``loss=name`` with overrides."""
    cfg = OmegaConf.structured(registry.get("loss", name).config)
    return OmegaConf.merge(cfg, over)


class Linear(nn.Module):
    """L_i = <g_i, z> + c_i h_i with z = theta (shared, also the shared representation) and h_i
    task i's own parameter: the gradient of L_i is g_i on theta and c_i on h_i."""

    def __init__(self, g, c=None):
        super().__init__()
        g = torch.as_tensor(g, dtype=torch.float32)
        self.register_buffer("g", g)
        self.register_buffer("c", torch.as_tensor(c if c is not None else [1.0] * len(g), dtype=torch.float32))
        self.theta = nn.Parameter(torch.zeros(g.shape[1]))
        self.h = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(len(g)))
        self.schema = None

    def shared_parameters(self):
        return [self.theta]

    def last_shared_layer(self):
        return [self.theta]

    def step(self):
        z = self.theta * 1.0
        losses = self.g @ z + self.c * torch.stack(list(self.h))
        return losses, {"shared": z}


def run_once(name, g, counts=None, own=None, **over):
    model = Linear(g, own)
    bal = build_balancer(loss_cfg(name, **over), [f"t{i}" for i in range(len(g))], model)
    losses, out = model.step()
    counts = torch.as_tensor(counts if counts is not None else [1] * len(g))
    logs = bal.backward(losses, counts, model, out)
    return model, bal, logs


def small_model(tasks=3, backbone="mmoe", sparse=False):
    schema = FeatureSchema([SparseFeature("u", 20), SparseFeature("i", 30)], [DenseFeature("d")],
                           [Task("a", "a"), Task("b", "b", parent="a"), Task("r", "r", "regression")][:tasks])
    mcfg = OmegaConf.create({"name": backbone, "backbone": backbone, "embedding_dim": 4, "sparse_embedding": sparse,
                             "num_experts": 3, "expert_hidden": [8, 6], "hidden": [8, 6], "activation": "relu",
                             "dropout": 0.0})
    gcfg = OmegaConf.create({"name": "independent", "tower_hidden": [5], "activation": "relu", "dropout": 0.0,
                             "parent_positive_only": False})
    return build_model(schema, mcfg, gcfg)


def batches(tasks=3, n=6, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.stack([(torch.rand(rows, generator=g) < 0.4).float(), (torch.rand(rows, generator=g) < 0.2).float(),
                              torch.randn(rows, generator=g)], 1)[:, :tasks]
        out.append({"sparse": torch.stack([torch.randint(0, 20, (rows,), generator=g),
                                           torch.randint(0, 30, (rows,), generator=g)], 1),
                    "dense": torch.randn(rows, 1, generator=g), "labels": labels})
    return out


def reference_grads(model, batch, coef):
    """Gradient of sum_i coef_i L_i on every parameter, by plain autograd."""
    out = model(batch)
    losses, _ = model.graph.losses(out, batch["labels"])
    params = list(model.parameters())
    return torch.autograd.grad((losses * coef).sum(), params, allow_unused=True)


def open_tables(tmp_path, splits: dict, spec):
    """Write each raw table to Parquet and open them as a named dataset would."""
    sources = {}
    for name, tbl in splits.items():
        f = tmp_path / f"{name}.parquet"
        pq.write_table(tbl, f)
        sources.update(permuted_sources(str(f), spec.columns(), {name: 1.0}, 0))
    return open_named("t", spec, sources, tmp_path, 1, "test tables")


def _loop_experts(ex: BatchedExperts, x: torch.Tensor) -> torch.Tensor:
    """Expert e as its own MLP, layer by layer (the definition the fused path must match)."""
    outs = []
    for e in range(ex.num_experts):
        h = x
        for w, b in zip(ex.weights, ex.biases):
            h = torch.relu(h @ w[e] + b[e])
        outs.append(h)
    return torch.stack(outs)


def dataset_cfg(name, **over):
    c = OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")
    for k, v in over.items():
        c[k] = v
    return validate_group("dataset", c)


def funnel_schema(spend=False):
    tasks = [Task("click", "click"), Task("cart", "cart", parent="click"), Task("purchase", "purchase", parent="cart")]
    if spend:
        tasks.append(Task("spend", "spend", "regression"))
    return FeatureSchema([SparseFeature("a", 7), SparseFeature("b", 5)], [DenseFeature("x")], tasks)


def group_cfg(group, name, **over):
    c = OmegaConf.load(f"conf/{group}/{name}.yaml")
    c.pop("defaults", None)
    for k, v in over.items():
        c[k] = v
    return validate_group(group, c)


def funnel_batch(n, schema, seed=0):
    g = torch.Generator().manual_seed(seed)
    click = torch.randint(0, 2, (n,), generator=g).float()
    cart = click * torch.randint(0, 2, (n,), generator=g).float()
    purchase = cart * torch.randint(0, 2, (n,), generator=g).float()
    cols = [click, cart, purchase]
    if len(schema.tasks) == 4:
        cols.append(purchase * torch.rand(n, generator=g) * 3)
    return {
        "sparse": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
        "dense": torch.randn(n, 1, generator=g),
        "labels": torch.stack(cols, 1),
    }


MODELS = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple"]


def schema(num_tasks=3):
    tasks = [Task(f"t{i}", f"y{i}") for i in range(num_tasks)]
    return FeatureSchema([SparseFeature("a", 7), SparseFeature("b", 5)], [DenseFeature("x")], tasks)


def model_cfg(name, **over):
    cfg = OmegaConf.load(f"conf/model/{name}.yaml")
    for k, v in over.items():
        cfg[k] = v
    return validate_group("model", cfg)


def graph_cfg():
    return validate_group("graph", OmegaConf.load("conf/graph/independent.yaml"))


def batch(n, s):
    g = torch.Generator().manual_seed(n)
    return {
        "sparse": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
        "dense": torch.randn(n, 1, generator=g),
        "labels": torch.randint(0, 2, (n, len(s.tasks)), generator=g).float(),
    }


BIG = 2**60 + 1  # an id that a float64 cannot hold exactly


def write_log(path, n, seed, row_group_size=64):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n).astype(np.int64)
    user[::10] = BIG
    city = np.array(["paris", "rome", "oslo", "lima"])[rng.integers(0, 4, n)].tolist()
    price = rng.normal(10, 2, n)
    hist = [list(rng.integers(0, 30, rng.integers(0, 6)).tolist()) for _ in range(n)]
    click = (rng.random(n) < 0.3).astype(float)
    buy = np.where(click == 1, (rng.random(n) < 0.5).astype(float), 0.0)
    t = pa.table({
        "user": pa.array(user, mask=np.arange(n) % 17 == 3),
        "city": pa.array(city, mask=np.arange(n) % 13 == 5),
        "price": pa.array(price, mask=np.arange(n) % 11 == 7),
        "hist": pa.array(hist, type=pa.list_(pa.int64()), mask=np.arange(n) % 19 == 2),
        "click": pa.array(click),
        "buy": pa.array(buy, mask=np.arange(n) % 23 == 1),
    })
    pq.write_table(t, path, row_group_size=row_group_size)
    return t


SCHEMA = {
    "categorical": ["user", {"name": "city", "hash_buckets": 8}],
    "numeric": [{"name": "price", "norm": "standard", "fill": "mean"}],
    "sequences": [{"name": "hist", "max_len": 4, "pooling": "mean"}],
    "tasks": ["click", {"name": "purchase", "label": "buy", "parent": "click"}],
}


def parquet_cfg(tmp_path, **over):
    d = {"name": "parquet", "train_path": str(tmp_path / "train.parquet"), "val_path": str(tmp_path / "val.parquet"),
         "test_path": str(tmp_path / "val.parquet"), "cache_dir": str(tmp_path / "cache"), "progress": False,
         "num_workers": 0, "shuffle_buffer": 100, **SCHEMA}
    d.update(over)
    return validate_group("dataset", OmegaConf.create(d))


def _report(folder: Path, out: Path, *extra) -> list[dict]:
    from mtl_train import report

    report.main([str(folder), "--out", str(out / "rep"), *extra])
    with open(out / "rep.csv") as f:
        return list(csv.DictReader(f))


TINY = ["dataset.train_rows=2000", "dataset.val_rows=400", "dataset.test_rows=400", "dataset.vocab_sizes=[50,50,20]",
        "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1", "trainer.device=cpu",
        "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]"]


def make_cfg(*overrides):
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


def write_scaled_log(path, n, seed, scale=1e8):
    """A Parquet log with a regression target on the scale ``scale`` (``revenue`` = scale *
    (1 + 0.5 x1 - 0.3 x2 + 0.2 [city = a]) + noise, reaching about 2 * scale), a binary ``click``
    and a row weight ``w`` in [0.5, 2) (row 3 of every 50 null)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    city = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    revenue = scale * (1 + 0.5 * x1 - 0.3 * x2 + 0.2 * (city == "a") + 0.05 * rng.normal(0, 1, n))
    click = (rng.random(n) < 1 / (1 + np.exp(-(x1 - x2)))).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    t = pa.table({"x1": x1, "x2": x2, "city": city.tolist(), "revenue": revenue, "click": click,
                  "w": pa.array(w, mask=np.arange(n) % 50 == 3)})
    pq.write_table(t, path, row_group_size=256)
    return t


SCALED_SCHEMA = {"categorical": ["city"], "numeric": ["x1", "x2"],
                 "tasks": ["click", {"name": "revenue", "type": "regression"}]}


def export_for_tests(checkpoint, out):
    """``mode=export`` of ``checkpoint`` (run dir or file) into ``out`` (model.pt2, model.onnx,
    features.json with its vocabulary files, manifest.json)."""
    from mtl_train.export import run_export

    run_export(make_cfg("mode=export", f"checkpoint={checkpoint}", f"export.output={out}"), str(Path(out).parent))
    return Path(out)


def export_model(model, split, config, out):
    """The exporter's export of ``model`` (checked on the rows of ``split``; ``config``: the
    resolved config of its run, a dict) into ``out``."""
    from mtl_train.export import export_model as export
    from mtl_train.export import held_out_rows

    export(model, held_out_rows(split), str(out), trained=OmegaConf.create(config))
    return Path(out)
