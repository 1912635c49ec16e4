"""mtl_train.train.placement: which splits live on the GPU, the copy-ahead loader, same batches as on the CPU."""
import pytest
import torch
from helpers import TINY, make_cfg

from mtl_train.data.loader import InMemoryLoader
from mtl_train.data.schema import DatasetBundle, Table
from mtl_train.train.placement import DEVICE_DATA_FRACTION, DeviceLoader, place_data, plan, table_bytes


def _table(rows, sparse_cols=3, dense_cols=2, tasks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Table(torch.randint(0, 50, (rows, sparse_cols), generator=g), torch.randn(rows, dense_cols, generator=g),
                 torch.randint(0, 2, (rows, tasks), generator=g).float())


def _bundle(train=100, val=40, test=40):
    return DatasetBundle(schema=None, train=_table(train), val=_table(val, seed=1), test=_table(test, seed=2))


def test_table_bytes_counts_every_block():
    # 100 rows: 3 int64 ids (24 B), 2 float32 dense (8 B), 2 float32 labels (8 B), no sequence column
    assert table_bytes(_table(100)) == 100 * (24 + 8 + 8)


def test_plan_puts_splits_on_the_gpu_while_they_fit_half_the_free_memory():
    data, cpu, gpu = _bundle(), torch.device("cpu"), torch.device("cuda")
    train, val = table_bytes(data.train), table_bytes(data.val)  # 4000 and 1600 bytes
    assert plan(data, cpu) == {"train": "host", "val": "host", "test": "host"}
    assert DEVICE_DATA_FRACTION == 0.5
    assert plan(data, gpu, free_bytes=2 * (train + 2 * val)) == {"train": "device", "val": "device", "test": "device"}
    # train and val fit, test does not: it stays in page-locked host memory
    assert plan(data, gpu, free_bytes=2 * (train + val)) == {"train": "device", "val": "device", "test": "pinned"}
    assert plan(data, gpu, free_bytes=2 * train - 1) == {"train": "pinned", "val": "device", "test": "device"}
    streamed = DatasetBundle(None, object(), data.val, data.test)
    assert plan(streamed, gpu, free_bytes=0)["train"] == "stream"


def test_on_the_cpu_nothing_moves():
    data = _bundle()
    placed, where = place_data(data, torch.device("cpu"))
    assert placed is data and set(where.values()) == {"host"}


def test_table_to_keeps_every_value():
    t = _table(10)
    moved = t.to(torch.device("cpu"))
    assert torch.equal(moved.sparse, t.sparse) and torch.equal(moved.dense, t.dense)
    assert torch.equal(moved.labels, t.labels) and moved.seq.shape == (10, 0)


cuda = pytest.mark.cuda


@cuda
def test_device_resident_loader_gives_the_cpu_loaders_batches():
    t, dev = _table(1000), torch.device("cuda")
    for shuffle in (True, False):
        cpu = InMemoryLoader(t, 64, shuffle=shuffle, seed=3)
        gpu = InMemoryLoader(t.to(dev), 64, shuffle=shuffle, seed=3)
        for epoch in (0, 1):
            cpu.set_epoch(epoch)
            gpu.set_epoch(epoch)
            pairs = list(zip(cpu, gpu, strict=True))
            assert len(pairs) == 16
            for a, b in pairs:
                assert b["sparse"].device.type == "cuda"
                assert all(torch.equal(a[k], b[k].cpu()) for k in a)


@cuda
def test_copy_ahead_loader_gives_the_same_batches_and_positions():
    t, dev = _table(1000), torch.device("cuda")
    cpu = InMemoryLoader(t, 64, seed=3)
    ahead = DeviceLoader(InMemoryLoader(t.to(torch.device("cpu"), pin=True), 64, seed=3), dev)
    cpu.set_epoch(0)
    ahead.set_epoch(0)
    for i, (a, b) in enumerate(zip(cpu, ahead, strict=True)):
        assert b["labels"].device.type == "cuda" and all(torch.equal(a[k], b[k].cpu()) for k in a)
        assert ahead.state_dict()["batch"] == cpu.state_dict()["batch"] == i + 1
    # stopped early: the batch fetched ahead is not lost
    ahead.set_epoch(1)
    for i, _ in enumerate(ahead):
        if i == 4:
            break
    assert ahead.state_dict() == {"epoch": 1, "batch": 5, "kind": "memory"}
    rest = list(ahead)
    cpu.set_epoch(1)
    expected = list(cpu)[5:]
    assert len(rest) == len(expected) and all(torch.equal(a["sparse"], b["sparse"].cpu()) for a, b in zip(expected, rest))


@cuda
def test_a_cuda_trainer_keeps_its_in_memory_splits_on_the_gpu(tmp_path):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "trainer.device=cuda")
    trainer = Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(tmp_path))
    assert trainer.placement == {"train": "device", "val": "device", "test": "device"}
    assert trainer.data.train.sparse.device.type == "cuda"
    trainer.logger.close()
