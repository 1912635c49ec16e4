"""The prepare step (mtl_train.data.prepare) over several files of several row groups: the
vocabulary counts are summed across row groups and files, so ids follow the total frequency
(decreasing, ties by value, null 0, out-of-vocabulary 1) and ``min_count`` applies to totals
(issue 14, item 12: a max-instead-of-sum merge passed every other test)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import BIG, write_log
from helpers import parquet_cfg as cfg
from omegaconf import OmegaConf

from mtl_train.config import validate_group
from mtl_train.data import parquet as pqd
from mtl_train.data import prepare
from mtl_train.data.encode import Vocabulary
from mtl_train.data.schema import Table

FILES, GROUPS = 3, 8  # 24 row groups: more than the 16 parts the counter merges at a time


def group_values(f: int, g: int) -> list:
    """The string values of row group g of file f; totals over all 24 groups:
    a 24 (once in every group), b 8 (once in each group of file 0), c 5 (3 + 2 in two groups),
    d 2 (once in two groups of two files), x 2 (twice in one group), e 1, null 3."""
    v = ["a"]
    if f == 0:
        v.append("b")
    if (f, g) == (1, 0):
        v += ["c"] * 3
    if (f, g) == (2, 5):
        v += ["c"] * 2
    if (f, g) in ((0, 0), (2, 7)):
        v.append("d")
    if (f, g) == (1, 3):
        v += ["x", "x"]
    if (f, g) == (2, 2):
        v.append("e")
    if g == 4:
        v.append(None)
    return v


INT_OF = {"a": 900, "b": -5, "c": 2**60 + 1, "d": 70, "x": 12, "e": 3}


def write_files(root):
    rows = []
    for f in range(FILES):
        with pq.ParquetWriter(root / "train" / f"part-{f}.parquet", pa.schema(
                [("s", pa.string()), ("i", pa.int64()), ("click", pa.float64())])) as w:
            for g in range(GROUPS):
                vals = group_values(f, g)
                rows += vals
                w.write_table(pa.table({"s": pa.array(vals, pa.string()),
                                        "i": pa.array([None if v is None else INT_OF[v] for v in vals], pa.int64()),
                                        "click": [float(k % 2) for k in range(len(vals))]}))
        assert pq.ParquetFile(root / "train" / f"part-{f}.parquet").metadata.num_row_groups == GROUPS
    pq.write_table(pa.table({"s": ["a", "e", "zz", None], "i": pa.array([900, 3, 5, None], pa.int64()),
                             "click": [0.0, 1.0, 0.0, 1.0]}), root / "val.parquet")
    return rows


def load(root, **over):
    d = {"name": "parquet", "train_path": str(root / "train"), "val_path": str(root / "val.parquet"),
         "test_path": str(root / "val.parquet"), "cache_dir": str(root / "cache"), "progress": False,
         "num_workers": 0, "numeric": [], "sequences": [], "tasks": ["click"], "categorical": ["s", "i"], **over}
    return pqd.load(validate_group("dataset", OmegaConf.create(d)), seed=0)


def vocabulary(root, column) -> list:
    """The values of ``column``'s vocabulary file in the (single) prepare cache folder, id 2 first."""
    (folder,) = (root / "cache").glob("parquet-*")
    meta = json.loads((folder / "prepare.json").read_text())
    return pq.read_table(folder / meta["vocab"][column]).column("value").to_pylist()


@pytest.mark.parametrize("min_count, kept", [(1, ["a", "b", "c", "d", "x", "e"]), (2, ["a", "b", "c", "d", "x"]),
                                             (6, ["a", "b"])])
def test_vocabulary_sums_counts_over_row_groups_and_files(tmp_path, min_count, kept):
    (tmp_path / "train").mkdir()
    rows = write_files(tmp_path)
    bundle = load(tmp_path, min_count=min_count)
    # ids: by total count, decreasing; d and x tie at 2 and go by value; null 0, dropped values 1
    vocab_s = vocabulary(tmp_path, "s")
    assert vocab_s == kept
    expect_i = [900, -5, 2**60 + 1, 12, 70, 3][:len(kept)]  # the integer column ties by value: 12 (x) before 70 (d)
    assert vocabulary(tmp_path, "i") == expect_i
    s = bundle.schema
    assert [f.vocab_size for f in s.sparse] == [len(kept) + 2] * 2
    ids = {v: k + 2 for k, v in enumerate(kept)}
    expect = [0 if v is None else ids.get(v, 1) for v in rows]
    assert bundle.train.sparse[:, 0].tolist() == expect  # train rows in file and row-group order
    ids_i = {v: k + 2 for k, v in enumerate(expect_i)}
    assert bundle.train.sparse[:, 1].tolist() == [0 if v is None else ids_i.get(INT_OF[v], 1) for v in rows]
    rep = bundle.info["report"]
    by_count = {"a": 24, "b": 8, "c": 5, "d": 2, "x": 2, "e": 1}
    dropped = sum(by_count[k] for k in by_count if k not in kept)
    assert rep["train"]["oov_ids"] == {"s": dropped, "i": dropped}
    assert rep["train"]["null_ids"] == {"s": 3, "i": 3} and rep["train"]["rows"] == len(rows)
    # val: 'zz' and 5 are unseen; 'e' and 3 are out of vocabulary where min_count dropped them
    assert rep["val"]["oov_ids"]["s"] == 1 + ("e" not in kept)
    assert bundle.val.sparse[:, 0].tolist() == [2, ids.get("e", 1), 1, 0]


def test_a_column_min_count_overrides_the_dataset_one(tmp_path):
    (tmp_path / "train").mkdir()
    write_files(tmp_path)
    bundle = load(tmp_path, min_count=1, categorical=[{"name": "s", "min_count": 3}, "i"])
    assert vocabulary(tmp_path, "s") == ["a", "b", "c"]
    assert len(vocabulary(tmp_path, "i")) == 6
    v = Vocabulary(pa.array(vocabulary(tmp_path, "s")))
    assert v.encode(pa.array(["c", "d", None]))[0].tolist() == [4, 1, 0]
    assert np.array_equal(bundle.train.sparse[:, 0].unique(sorted=True).numpy(), np.arange(5))


@pytest.mark.parametrize("exact", [True, False])
def test_numeric_statistics_of_empty_constant_and_small_spread_columns(exact):
    from mtl_train.data.prepare import _Moments

    def stats(*batches):
        m = _Moments(exact)
        for b in batches:
            m.add(np.asarray(b, dtype=np.float64))
        return m.result()

    assert stats() == stats([]) == {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0}  # no value: identity scaling
    assert stats([3.0, 3.0], [3.0]) == {"mean": 3.0, "std": 1.0, "min": 3.0, "max": 3.0}  # constant: std 1, not 0
    s = stats([0.1, 0.2], [], [0.3, 0.4])  # a spread below 1 is kept
    assert s == {"mean": pytest.approx(0.25), "std": pytest.approx(np.std([0.1, 0.2, 0.3, 0.4])),
                 "min": 0.1, "max": 0.4}
    assert stats([-2.0], [5.0, 1.0]) == {"mean": pytest.approx(4 / 3), "std": pytest.approx(np.std([-2, 5, 1])),
                                         "min": -2.0, "max": 5.0}


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


def _scaled(tmp_path, tasks, **over):
    from helpers import SCALED_SCHEMA, write_scaled_log

    write_scaled_log(tmp_path / "train.parquet", 300, 0)
    write_scaled_log(tmp_path / "val.parquet", 100, 1)
    return pqd.load(cfg(tmp_path, mode="memory", **dict(SCALED_SCHEMA, sequences=[], tasks=tasks), **over), seed=0)


def test_label_transform_is_fitted_on_train_and_a_far_scale_warns_without_one(tmp_path, caplog):
    b = _scaled(tmp_path, ["click", {"name": "revenue", "type": "regression", "transform": "standard"}])
    rev = b.schema.tasks[1]
    y = b.train.labels[:, 1].double()
    assert (rev.transform, rev.target_mean, rev.target_std) == ("standard", pytest.approx(y.mean().item(), rel=1e-6),
                                                               pytest.approx(y.std(unbiased=False).item(), rel=1e-5))
    assert rev.target_mean > 1e8 and "far from 1" not in caplog.text
    assert b.schema.tasks[0].transform == "none" and (b.schema.tasks[0].target_mean, b.schema.tasks[0].target_std) == (0, 1)
    assert b.train.labels[:, 1].max() > 2e8  # the data keep the label's own scale; the loss transforms it
    plain = _scaled(tmp_path, ["click", {"name": "revenue", "type": "regression"}])
    assert plain.schema.tasks[1].target_std == 1.0
    line = next(r.getMessage() for r in caplog.records if "far from 1" in r.getMessage())
    assert line.startswith("dataset: regression task 'revenue' (label column 'revenue') has a training mean of "
                           "1.041e+08 and a std of 5.824e+07, far from 1")
    assert "set transform: standard" in line and caplog.records[-1].levelname == "WARNING"


def test_bad_weights_and_log1p_on_negative_labels_fail_in_one_line_naming_the_column(tmp_path):
    from mtl_train.errors import ConfigError, DataError

    # the scaled log's revenue goes below 0 (scale * (1 + 0.5 x1 - ...)): log1p refuses it
    with pytest.raises(DataError, match=r"train\.parquet: train split: label column 'revenue' of task 'revenue' "
                                        r"holds \d+ negative values \(first: -[\d.e+]+\); "
                                        r"transform log1p needs labels >= 0$"):
        _scaled(tmp_path, [{"name": "revenue", "type": "regression", "transform": "log1p"}])
    with pytest.raises(ConfigError, match="task 'click': transform 'log1p' applies to regression tasks only"):
        _scaled(tmp_path, [{"name": "click", "transform": "log1p"}])
    with pytest.raises(ConfigError, match="transform 'cube' is not one of"):
        _scaled(tmp_path, [{"name": "revenue", "type": "regression", "transform": "cube"}])
    with pytest.raises(ConfigError, match="task 'click': weight column 'x1' is also a feature"):
        _scaled(tmp_path, [{"name": "click", "weight": "x1"}])
    t = pq.read_table(tmp_path / "train.parquet")
    w = t.column("w").to_numpy(zero_copy_only=False).copy()
    w[7] = -2.0
    pq.write_table(t.set_column(t.column_names.index("w"), "w", pa.array(w)), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"train\.parquet: train split: weight column 'w' of task 'click' holds 1 "
                                        r"negative or infinite values \(first: -2\); weights must be >= 0$"):
        pqd.load(cfg(tmp_path, mode="memory", categorical=["city"], numeric=["x1"], sequences=[],
                     tasks=[{"name": "click", "weight": "w"}]), seed=0)
