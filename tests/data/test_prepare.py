"""mtl_train.data.prepare: vocabulary, statistics and report, and the prepare cache."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from helpers import BIG, write_log
from helpers import parquet_cfg as cfg

from mtl_train.data import parquet as pqd
from mtl_train.data import prepare
from mtl_train.data.encode import Vocabulary
from mtl_train.data.schema import Table


def test_prepare_vocab_stats_report_and_encoding(data):
    tmp, train, val = data
    bundle = pqd.load(cfg(tmp), seed=0)
    s = bundle.schema
    users = train.column("user").drop_null().to_numpy()
    assert s.sparse[0].vocab_size == len(np.unique(users)) + 2
    assert s.sparse[1].vocab_size == 8 + 2 and s.sequence[0].vocab_size == 30 + 2
    assert [t.parent for t in s.tasks] == [None, "click"]
    rep = bundle.info["report"]
    assert rep["train"]["null_ids"]["user"] == train.column("user").null_count
    assert rep["train"]["null_labels"]["purchase"] == train.column("buy").null_count
    assert rep["train"]["oov_ids"]["user"] == 0
    val_users = val.column("user").to_numpy(zero_copy_only=False)
    unseen = [u for u in val.column("user").drop_null().to_pylist() if u not in set(users.tolist())]
    assert rep["val"]["oov_ids"]["user"] == len(unseen)
    t = bundle.train
    assert isinstance(t, Table) and len(t) == 500
    # nulls -> 0, the frequent BIG id exact, unseen -> 1 in val
    assert (t.sparse[train.column("user").is_null().to_numpy(zero_copy_only=False), 0] == 0).all()
    assert len(np.unique(t.sparse[np.asarray(train.column("user").to_pylist(), dtype=object) == BIG, 0])) == 1
    assert int((bundle.val.sparse[:, 0] == 1).sum()) == len(unseen)
    del val_users
    # numeric: standardised with train statistics, null -> 0 (the mean)
    price = train.column("price").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(price)
    expect = (price[ok] - price[ok].mean()) / price[ok].std()
    np.testing.assert_allclose(t.dense[ok, 0].numpy(), expect, rtol=1e-4, atol=1e-5)
    assert (t.dense[~ok, 0] == 0).all()
    # labels: null -> NaN, never 0
    buy = train.column("buy")
    assert torch.isnan(t.labels[torch.from_numpy(buy.is_null().to_numpy(zero_copy_only=False)), 1]).all()
    # sequences: the first max_len ids, padded with 0; null lists all padding
    hist = train.column("hist").to_pylist()
    prep_dir = next((tmp / "cache").glob("parquet-*"))
    vfile = json.loads((prep_dir / "prepare.json").read_text())["vocab"]["hist"]
    vocab = Vocabulary(pq.read_table(prep_dir / vfile).column("value").combine_chunks())
    for i in (0, 1, 2, 3, 4, 40):
        expect = [] if hist[i] is None else vocab.encode(pa.array(hist[i][:4], pa.int64()))[0].tolist()
        assert t.seq[i].tolist() == expect + [0] * (4 - len(expect))


def test_prepare_is_cached_and_rebuilt_when_data_or_schema_change(data, monkeypatch):
    tmp, _, _ = data
    pqd.load(cfg(tmp), seed=0)
    dirs = sorted((tmp / "cache").glob("parquet-*"))
    assert len(dirs) == 1
    calls = []
    real = prepare._Counter.add
    monkeypatch.setattr(prepare._Counter, "add", lambda self, col: (calls.append(1), real(self, col)))
    pqd.load(cfg(tmp), seed=0)
    assert calls == []  # reused
    pqd.load(cfg(tmp, min_count=2), seed=0)
    assert calls and len(sorted((tmp / "cache").glob("parquet-*"))) == 2
    write_log(tmp / "train.parquet", 300, 5)
    os.utime(tmp / "train.parquet", ns=(1, 1))
    b = pqd.load(cfg(tmp), seed=0)
    assert len(b.train) == 300 and len(sorted((tmp / "cache").glob("parquet-*"))) == 3
    # rewritten with another value but the same size and modification time (cp -p, rsync -a): rebuilt too
    f = tmp / "other.parquet"

    def write(prices):
        pq.write_table(pa.table({"user": [1, 2, 3, 4], "price": prices, "click": [0.0, 1, 0, 1]}), f,
                       compression="none", use_dictionary=False)

    write([1.0, 2.0, 3.0, 4.0])
    st = os.stat(f)
    c = cfg(tmp, train_path=str(f), val_path=str(f), test_path=str(f), categorical=["user"],
            numeric=[{"name": "price", "norm": "standard"}], sequences=[], tasks=["click"])
    first = pqd.load(c, seed=0).schema.encoders.stats["price"]["mean"]
    write([1.0, 2.0, 3.0, 8.0])
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert (first, pqd.load(c, seed=0).schema.encoders.stats["price"]["mean"]) == (2.5, 3.5)
