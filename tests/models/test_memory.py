"""The training-memory estimate (mtl_train.models.memory) against real allocations, and the
refusal of a model that cannot fit (issue 14, item 4)."""
import logging

import pytest
import torch
from hydra import compose, initialize_config_module

from mtl_train import system
from mtl_train.config import validate
from mtl_train.errors import ConfigError
from mtl_train.models import memory
from mtl_train.models.memory import check_memory, estimate_memory

TINY = ["dataset.train_rows=600", "dataset.val_rows=200", "dataset.test_rows=200", "trainer.progress=false",
        "trainer.batch_size=64", "trainer.epochs=1", "trainer.device=cpu"]
MMOE = ["model.expert_hidden=[16]", "model.num_experts=2", "graph.tower_hidden=[8]"]


def config(*overrides):
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return validate(compose("config", overrides=[*TINY, *overrides]))


def _bytes(t):
    if t is None:
        return 0
    if t.is_sparse:
        return t._values().nbytes + t._indices().nbytes
    return t.nbytes


def allocated(trainer) -> int:
    """Bytes of parameters, their gradients and the optimizers' state after one step."""
    params = list(trainer.model.parameters())
    n = sum(p.nbytes + _bytes(p.grad) for p in params)
    for o in trainer.optimizers:
        n += sum(_bytes(v) for st in o.state.values() for v in st.values() if torch.is_tensor(v))
    return n


@pytest.mark.parametrize("overrides", [
    [*MMOE, "model.sparse_embedding=false"],  # dense table gradient, fused Adam
    [*MMOE, "model.sparse_embedding=true"],  # row-sparse gradient, row-sparse Adam
    [*MMOE, "model.sparse_embedding=false", "trainer.optimizer=sgd"],  # one momentum buffer
    ["model=single_task", "model.sparse_embedding=false"],  # one table per task
])
def test_estimate_equals_the_bytes_of_parameters_gradients_and_optimizer_state_after_one_step(tmp_path, overrides):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer

    cfg = config("dataset.vocab_sizes=[40000,300,20]", "model.embedding_dim=16", *overrides)
    data = load_dataset(cfg.dataset, cfg.seed)
    trainer = Trainer(cfg, data, str(tmp_path))
    trainer.train_step(next(iter(trainer.loader)))
    sparse = trainer.sparse_embedding
    est = estimate_memory(data.schema, cfg.model, cfg.graph, optimizer=cfg.trainer.optimizer, sparse=sparse,
                          batch_size=cfg.trainer.batch_size)
    real = allocated(trainer)
    dense = sum(p.numel() for p in trainer.model.parameters()) - sum(
        p.numel() for e in trainer.model.embeddings for p in e.parameters())
    assert est.dense_params == dense  # exact, from the meta-device build
    assert est.weights == sum(p.nbytes for p in trainer.model.parameters())
    assert est.total == pytest.approx(real, rel=0.03)  # the sparse gradient's batch rows are an upper bound


def test_no_parameter_is_allocated_by_the_estimate(monkeypatch):
    cfg = config("dataset.vocab_sizes=[50,50,20]")
    from mtl_train.data.datasets import load_dataset

    schema = load_dataset(cfg.dataset, cfg.seed).schema
    import dataclasses

    huge = dataclasses.replace(schema, sparse=[dataclasses.replace(schema.sparse[0], vocab_size=10**12)] + schema.sparse[1:])
    est = estimate_memory(huge, cfg.model, cfg.graph)  # 10^12 rows: any real allocation would fail
    assert est.rows > 10**12 and est.weights > 10**12 * cfg.model.embedding_dim * 4


@pytest.mark.parametrize("backbone", ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple"])
@pytest.mark.parametrize("graph", ["independent", "esmm", "dbmtl", "gmsl", "aitm"])
def test_every_backbone_and_graph_is_counted_on_the_meta_device(backbone, graph):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.models.builder import build_model

    cfg = config(f"model={backbone}", f"graph={graph}", "dataset.vocab_sizes=[50,50,20]")
    schema = load_dataset(cfg.dataset, cfg.seed).schema
    model = build_model(schema, cfg.model, cfg.graph)
    est = estimate_memory(schema, cfg.model, cfg.graph)
    assert est.weights == sum(p.nbytes for p in model.parameters())


def _refuse_setup(monkeypatch, limit_mb, held_mb=100):
    monkeypatch.setenv(system.LIMIT_ENV, str(limit_mb))
    monkeypatch.setattr(system, "memory_held", lambda: held_mb << 20)


def test_a_model_that_cannot_fit_is_refused_in_one_line_and_a_close_one_warned(monkeypatch, caplog):
    from mtl_train.data.datasets import load_dataset

    cfg = config("dataset.vocab_sizes=[50,50,20]", "model.embedding_dim=8", "model.sparse_embedding=false")
    schema = load_dataset(cfg.dataset, cfg.seed).schema
    est = check_memory(schema, cfg, torch.device("cpu"))
    import dataclasses

    big = dataclasses.replace(schema, sparse=[dataclasses.replace(schema.sparse[0], vocab_size=40_000_000)]
                              + schema.sparse[1:])
    need = estimate_memory(big, cfg.model, cfg.graph, sparse=False, batch_size=64).total
    assert need == pytest.approx(40_000_000 * 8 * 4 * 4, rel=0.001)  # weights, gradient, 2 Adam moments
    _refuse_setup(monkeypatch, 2048)
    with pytest.raises(ConfigError) as e:
        check_memory(big, cfg, torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("model: the embeddings and optimizer state need ~5.1 GB (table 'c0': 40,000,000 x 8), more than "
                   "the 2.0 GB this process may use (MTL_TRAIN_MEMORY_LIMIT_MB 2.1 GB, 0.1 GB already held); "
                   "lower hash_buckets or model.embedding_dim, or set model.sparse_embedding=true")
    # close to the limit: a warning, and the run goes on
    _refuse_setup(monkeypatch, int((need / 0.8) / (1 << 20)) + 100)
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        check_memory(big, cfg, torch.device("cpu"))
    assert "may run out of memory" in caplog.text
    caplog.clear()
    _refuse_setup(monkeypatch, 100_000)
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        check_memory(big, cfg, torch.device("cpu"))
    assert caplog.text == "" and est.total < need


def test_on_a_gpu_the_device_memory_bounds_the_model_and_the_cpu_its_weights(monkeypatch):
    from mtl_train.data.datasets import load_dataset

    cfg = config("dataset.vocab_sizes=[50,50,20]", "model.embedding_dim=8", "model.sparse_embedding=false")
    schema = load_dataset(cfg.dataset, cfg.seed).schema
    import dataclasses

    big = dataclasses.replace(schema, sparse=[dataclasses.replace(schema.sparse[0], vocab_size=40_000_000)]
                              + schema.sparse[1:])
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (int(3e9), int(8e9)))  # 5 GB in use
    _refuse_setup(monkeypatch, 100_000)
    with pytest.raises(ConfigError, match=r"need ~5\.1 GB .* more than the 3\.0 GB this process may use "
                                          r"\(cuda:0 memory 8\.0 GB, 5\.0 GB already held\)"):
        check_memory(big, cfg, gpu)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (int(80e9), int(80e9)))
    check_memory(big, cfg, gpu)
    _refuse_setup(monkeypatch, 1000)  # the 1.3 GB of weights are built on the CPU first
    with pytest.raises(ConfigError, match=r"model: the weights \(built on the CPU\) need ~1\.3 GB"):
        check_memory(big, cfg, gpu)


def test_auto_precision_counts_the_bf16_weight_copies_only_where_bf16_is_chosen(monkeypatch):
    from mtl_train.data.datasets import load_dataset

    cfg = {p: config(*MMOE, f"trainer.precision={p}") for p in ("fp32", "bf16", "auto")}
    schema = load_dataset(cfg["fp32"].dataset, cfg["fp32"].seed).schema
    cpu = torch.device("cpu")
    fp32, bf16 = (check_memory(schema, cfg[p], cpu).total for p in ("fp32", "bf16"))
    assert bf16 > fp32  # autocast's bfloat16 copy of the dense weights
    for native, expect in ((True, bf16), (False, fp32)):
        monkeypatch.setattr(memory, "native_bf16", lambda device, v=native: v)
        assert check_memory(schema, cfg["auto"], cpu).total == expect
