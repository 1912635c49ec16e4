"""mtl_train.data.stream: the Split interface shared by in-memory and streamed splits, streamed epochs."""
import os

import numpy as np
import pytest
import torch
from helpers import parquet_cfg as cfg
from helpers import write_log

from mtl_train.data import parquet as pqd
from mtl_train.data.schema import Split, Table
from mtl_train.data.stream import StreamingLoader, StreamSplit, train_loader


@pytest.fixture
def both(tmp_path):
    write_log(tmp_path / "train.parquet", 500, 0)
    write_log(tmp_path / "val.parquet", 200, 1)
    return pqd.load(cfg(tmp_path, mode="memory"), seed=0), pqd.load(cfg(tmp_path, mode="stream"), seed=0)


def test_memory_and_stream_splits_offer_one_interface(both):
    mem, st = both
    tasks = mem.schema.tasks
    for (name, m), (_, s) in zip(mem.splits(), st.splits()):
        assert isinstance(m, Table) and isinstance(s, StreamSplit)
        assert isinstance(m, Split) and isinstance(s, Split)
        assert (m.kind, s.kind) == ("memory", "stream")
        assert len(m) == len(s)
        assert m.positives(tasks) == s.positives(tasks)  # counted from labels / by the prepare step
        assert m.funnel_violations(tasks) == s.funnel_violations(tasks) == {"purchase": 0}
        mb, sb = list(m.batches(64)), list(s.batches(64))  # every row once, in order, alike
        assert [len(b["labels"]) for b in mb] == [len(b["labels"]) for b in sb]
        for k in ("sparse", "seq", "dense"):
            assert torch.equal(torch.cat([b[k] for b in mb]), torch.cat([b[k] for b in sb])), (name, k)
        assert torch.equal(torch.cat([b["labels"] for b in mb]).isnan(), torch.cat([b["labels"] for b in sb]).isnan())
    assert mem.train.positives(tasks)["click"] == int((mem.train.labels[:, 0] == 1).sum()) > 0


def test_train_loader_is_the_splits_own_loader(both):
    mem, st = both
    for split in (mem.train, st.train):
        loader = train_loader(split, 64, seed=1)
        assert loader.kind == split.kind
        loader.set_epoch(0)
        assert sum(len(b["labels"]) for b in loader) == len(split)


def test_streamed_epoch_covers_every_row_once_matches_memory_and_resumes(data):
    tmp, _, _ = data
    mem = pqd.load(cfg(tmp, mode="memory"), seed=0)
    st = pqd.load(cfg(tmp, mode="stream"), seed=0)
    assert isinstance(st.train, StreamSplit) and len(st.train) == 500

    def rows(batches):
        b = list(batches)
        return torch.cat([x["sparse"] for x in b]), torch.cat([x["seq"] for x in b]), torch.cat([x["dense"] for x in b])

    # every row exactly once, in shuffled order, and the same rows as the in-memory table
    loader = st.train.loader(64, seed=3)
    loader.set_epoch(1)
    assert len(loader) == 8
    sp, sq, dn = rows(loader)
    def key(s, q, d):
        return sorted(map(tuple, torch.cat([s.double(), q.double(), d.double()], 1).tolist()))
    assert key(sp, sq, dn) == key(mem.train.sparse, mem.train.seq, mem.train.dense)
    assert not torch.equal(sp, mem.train.sparse)  # shuffled
    # deterministic, independent of reader threads
    threaded = StreamingLoader(st.train, 64, seed=3, shuffle_buffer=100, num_workers=2)
    threaded.set_epoch(1)
    assert torch.equal(rows(threaded)[0], sp)
    # exact resume after 3 batches of epoch 1
    first = StreamingLoader(st.train, 64, seed=3, shuffle_buffer=100)
    first.set_epoch(1)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 3, "kind": "stream"}
    again = StreamingLoader(st.train, 64, seed=3, shuffle_buffer=100)
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert torch.equal(rows(again)[0], sp[3 * 64:])
    # shards: disjoint row groups, together the whole split, the same number of batches
    shards = [StreamingLoader(st.train, 32, seed=3, rank=r, world_size=2, shuffle_buffer=100) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    n = sum(len(rows(s)[0]) for s in shards)
    assert n <= 500 and n > 500 - 2 * 32
    with pytest.raises(ValueError, match="world size 9 exceeds the 8 row groups"):
        StreamingLoader(st.train, 32, rank=0, world_size=9)
    # in memory: every rank the same number of batches, each rank its slice of the global batch
    # that one process with batch 3 * 32 draws (the last one, 500 % 96 = 20 rows, cut 6/7/7)
    from mtl_train.data.loader import InMemoryLoader

    for shuffle in (True, False):
        parts = [InMemoryLoader(mem.train, 32, shuffle=shuffle, seed=3, rank=r, world_size=3) for r in range(3)]
        one = InMemoryLoader(mem.train, 96, shuffle=shuffle, seed=3)
        assert {len(p) for p in parts} == {len(one)} == {6}
        for batches in zip(one, *parts):
            assert torch.equal(batches[0]["sparse"], torch.cat([b["sparse"] for b in batches[1:]]))
        assert [len(b["labels"]) for b in batches[1:]] == [6, 7, 7]
    # ordered reading for evaluation
    ev = torch.cat([b["sparse"] for b in st.val.batches(64)])
    assert torch.equal(ev, mem.val.sparse)


def test_reader_threads_auto_reads_inline_when_torch_uses_every_core(monkeypatch):

    import torch

    from mtl_train.data import stream

    assert stream.reader_threads(0) == 0 and stream.reader_threads(3) == 3  # explicit settings kept
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert stream.reader_threads(None) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert stream.reader_threads(None) == 1


def test_weights_travel_alike_in_memory_and_streamed(tmp_path):
    from helpers import SCALED_SCHEMA, write_scaled_log

    t = write_scaled_log(tmp_path / "train.parquet", 300, 0)
    write_scaled_log(tmp_path / "val.parquet", 100, 1)
    tasks = [{"name": "click", "weight": "w"}, {"name": "revenue", "type": "regression"}]
    over = dict(SCALED_SCHEMA, sequences=[], tasks=tasks, test_path=str(tmp_path / "train.parquet"))
    mem = pqd.load(cfg(tmp_path, mode="memory", **over), seed=0)
    st = pqd.load(cfg(tmp_path, mode="stream", **over), seed=0)
    w = t.column("w").to_numpy(zero_copy_only=False)
    # click's weights as in the file (a null weight: 0, and the row's click label masked); revenue's 1
    assert mem.test.weights[:, 0].tolist() == pytest.approx(np.nan_to_num(w, nan=0.0).tolist(), rel=1e-6)
    assert mem.test.weights[:, 1].tolist() == [1.0] * 300
    assert torch.isnan(mem.test.labels[:, 0]).tolist() == np.isnan(w).tolist() and np.isnan(w).sum() == 6
    assert mem.info["report"]["train"]["null_weights"] == {"click": 6}
    sb = list(st.test.batches(64))
    assert torch.equal(torch.cat([b["weights"] for b in sb]), mem.test.weights)
    loader = st.train.loader(64, seed=3)
    loader.set_epoch(0)
    got = torch.cat([torch.cat([b["dense"], b["weights"]], 1) for b in loader])
    want = torch.cat([mem.train.dense, mem.train.weights], 1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))  # every row once, weights with it
    assert "weights" in mem.train.take(torch.tensor([0, 1])) and mem.train.subset(torch.tensor([2])).weights.shape == (1, 2)
    # without a weight column no batch carries weights
    plain = pqd.load(cfg(tmp_path, mode="memory", **dict(over, tasks=SCALED_SCHEMA["tasks"])), seed=0)
    assert plain.train.weights is None and "weights" not in next(iter(plain.val.batches(8)))
