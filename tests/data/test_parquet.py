"""dataset=parquet: schema, prepare cache, encoding, in-memory and streamed reading."""
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import find_run_dir, run_cli
from omegaconf import OmegaConf

from mtl_train.config import validate_group
from mtl_train.data import parquet as pqd
from mtl_train.data import prepare
from mtl_train.data.encode import Vocabulary, hash_ids
from mtl_train.data.schema import Table
from mtl_train.data.stream import StreamingLoader, StreamSplit
from mtl_train.errors import ConfigError, DataError
from mtl_train.system import memory_budget

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


def cfg(tmp_path, **over):
    d = {"name": "parquet", "train_path": str(tmp_path / "train.parquet"), "val_path": str(tmp_path / "val.parquet"),
         "test_path": str(tmp_path / "val.parquet"), "cache_dir": str(tmp_path / "cache"), "progress": False,
         "num_workers": 0, "shuffle_buffer": 100, **SCHEMA}
    d.update(over)
    return validate_group("dataset", OmegaConf.create(d))


@pytest.fixture
def data(tmp_path):
    train = write_log(tmp_path / "train.parquet", 500, 0)
    val = write_log(tmp_path / "val.parquet", 200, 1)
    return tmp_path, train, val


def test_vocabulary_keeps_integer_ids_exact_and_counts_nulls_and_oov():
    v = Vocabulary.fit(pa.array([BIG, BIG, 3, None, BIG + 2]))
    ids, nulls, oov = v.encode(pa.array([BIG + 2, BIG, 3, None, BIG + 1], pa.int64()))
    assert ids.dtype == np.int64
    assert ids.tolist() == [4, 2, 3, 0, 1]  # BIG (2 times) first, then 3 < BIG+2 by value; BIG+1 unseen
    assert (nulls, oov) == (1, 1)
    s = Vocabulary.fit(pa.array(["b", "a", "b"]))
    assert s.encode(pa.chunked_array([["a", None], ["zz", "b"]]))[0].tolist() == [3, 0, 1, 2]


def test_vocabulary_lookup_table_path_misses_values_outside_its_range_and_is_not_pickled():
    import pickle

    # a narrow id range (-3..7) takes the lookup-table path; extreme int64 values must miss,
    # not wrap into the table
    v = Vocabulary.fit(pa.array([5, 5, 7, -3, None, 7, 7], pa.int64()))
    probe = pa.array([7, 5, -3, 2**62, 8, None, -2**63, 2**63 - 1, 4, 6], pa.int64())
    ids, nulls, oov = v.encode(probe)
    assert v._index[0] == "lut"
    assert ids.tolist() == [2, 3, 4, 1, 1, 0, 1, 1, 1, 1]  # 7 (3 times), 5 (2), -3 (1)
    assert (nulls, oov) == (1, 6)
    # a wide range takes the binary search
    w = Vocabulary.fit(pa.array([5, 5, 7, -3, 2**62, 2**62, 2**62, 2**62, None, 7, 7, 7], pa.int64()))
    assert w.encode(probe)[0].tolist() == [2, 4, 5, 3, 1, 0, 1, 1, 1, 1]  # 7 and 2**62 tie (4): by value
    assert w._index[0] == "sorted"
    assert set(pickle.loads(pickle.dumps(v)).__dict__) == {"values"}


def test_hash_ids_are_deterministic_in_range_and_null_aware():
    ids, nulls = hash_ids(pa.array(["abc", "abd", None, "", "abc"]), 100)
    assert ids[0] == ids[4] and ids[2] == 0 and nulls == 1
    assert ((ids[[0, 1, 3, 4]] >= 2) & (ids[[0, 1, 3, 4]] < 102)).all()
    # the same strings in a sliced array hash alike (offsets handled)
    sliced, _ = hash_ids(pa.array(["x", "abc", "abd"]).slice(1), 100)
    assert sliced.tolist() == ids[:2].tolist()
    ints, _ = hash_ids(pa.array([BIG, BIG, 7]), 1000)
    assert ints[0] == ints[1] and 2 <= ints.min() and ints.max() < 1002
    # uint64 ids: the same bits as int64 below 2^63, and no overflow above
    u, _ = hash_ids(pa.array([BIG, 7, 2**64 - 1, 2**63], pa.uint64()), 1000)
    assert u[:2].tolist() == ints[1:].tolist() and (u >= 2).all() and (u < 1002).all()


def test_hashed_ids_of_a_val_file_written_as_strings_hash_like_the_training_integers(tmp_path):
    pq.write_table(pa.table({"u": pa.array([3, 7, 7, 9]), "y": [0.0, 1, 0, 1]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"u": pa.array(["7", "9", None]), "y": [0.0, 1, 0]}), tmp_path / "val.parquet")
    c = cfg(tmp_path, categorical=[{"name": "u", "hash_buckets": 50}], numeric=[], sequences=[], tasks=["y"])
    b = pqd.load(c, seed=0)
    assert b.val.sparse[:, 0].tolist() == [b.train.sparse[1, 0].item(), b.train.sparse[3, 0].item(), 0]
    enc = b.schema.encoders  # a file encoded for eval/predict hashes alike
    assert enc.transform(pq.read_table(tmp_path / "train.parquet"))[0].sparse.tolist() == b.train.sparse.tolist()
    # a val value that is no integer fails in the prepare step, naming the split and column
    pq.write_table(pa.table({"u": pa.array(["7", "abc"]), "y": [0.0, 1]}), tmp_path / "val.parquet")
    with pytest.raises(DataError, match=r"val.parquet: val split: column 'u': holds string values where the training "
                                        r"files hold integer ids"):
        pqd.load(c, seed=0)
    # integers in one training file, strings in another
    d = tmp_path / "logs"
    d.mkdir()
    pq.write_table(pa.table({"u": pa.array([3, 7]), "y": [0.0, 1]}), d / "a.parquet")
    pq.write_table(pa.table({"u": pa.array(["x", "y"]), "y": [1.0, 0]}), d / "b.parquet")
    with pytest.raises(DataError, match="b.parquet: dataset: id column 'u' holds string values in one training file and "
                                        "integer ids in another"):
        pqd.load(cfg(tmp_path, train_path=str(d), categorical=[{"name": "u", "hash_buckets": 50}], numeric=[],
                     sequences=[], tasks=["y"]), seed=0)


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
    # in memory: every rank the same number of rows and batches, all but world_size - 1 rows in all
    from mtl_train.data.loader import InMemoryLoader

    for shuffle in (True, False):
        parts = [InMemoryLoader(mem.train, 32, shuffle=shuffle, seed=3, rank=r, world_size=3) for r in range(3)]
        assert len({len(p) for p in parts}) == 1
        got = [torch.cat([b["sparse"] for b in p]) for p in parts]
        assert len({len(g) for g in got}) == 1 and sum(len(g) for g in got) == len(mem.train) // 3 * 3
    # ordered reading for evaluation
    ev = torch.cat([b["sparse"] for b in st.val.batches(64)])
    assert torch.equal(ev, mem.val.sparse)


def test_carved_splits_partition_the_train_files(data):
    tmp, _, _ = data
    b = pqd.load(cfg(tmp, val_path=None, test_path=None, split=[0.6, 0.2, 0.2], split_seed=1), seed=0)
    n = [len(b.train), len(b.val), len(b.test)]
    assert sum(n) == 500 and all(abs(x - f * 500) < 50 for x, f in zip(n, (0.6, 0.2, 0.2)))
    again = pqd.load(cfg(tmp, val_path=None, test_path=None, split=[0.6, 0.2, 0.2], split_seed=1, mode="stream"), seed=0)
    assert len(again.val) == n[1] and sum(len(x["labels"]) for x in again.test.batches(50)) == n[2]


@pytest.mark.parametrize("over, needle", [
    ({"categorical": ["nope"]}, "column 'nope' of the schema (dataset.schema_file) not found"),
    ({"tasks": [{"name": "click", "type": "ranking"}]}, "ranking"),
    ({"numeric": [{"name": "price", "norm": "zscore"}]}, "zscore"),
    ({"categorical": [{"name": "user", "colour": 1}]}, "colour"),
    ({"train_path": "/nonexistent/*.parquet"}, "/nonexistent/*.parquet"),
    ({"sequences": [{"name": "user", "max_len": 3}], "categorical": []}, "not a list column"),
    ({"categorical": ["hist"], "sequences": []},
     "dataset: categorical column 'hist' holds list<"),
    ({"tasks": ["click", {"name": "purchase", "label": "buy", "parent": "clik"}]},
     "dataset: task 'purchase': parent 'clik' is not a task (tasks: click, purchase)"),
    ({"tasks": ["click", {"name": "click", "label": "buy"}]}, "dataset: task(s) ['click'] declared more than once"),
])
def test_bad_schema_or_data_is_one_clear_error(data, over, needle):
    tmp, _, _ = data
    with pytest.raises((ConfigError, DataError)) as e:
        pqd.load(cfg(tmp, **over), seed=0)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_schema_file_errors_name_the_file_and_the_entry(data):
    tmp, _, _ = data
    bad = tmp / "bad.yaml"
    bad.write_text("categorical: [user, {name: city, min_cnt: 2}]\ntasks: [click]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'min_cnt' in the entry of 'city'"):
        pqd.load(cfg(tmp, schema_file=str(bad), categorical=[], numeric=[], sequences=[], tasks=[]), seed=0)
    bad.write_text("numeric: [{name: price, norm: logg}]\ntasks: [click]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: numeric column 'price': norm 'logg' is not one of"):
        pqd.load(cfg(tmp, schema_file=str(bad), categorical=[], numeric=[], sequences=[], tasks=[]), seed=0)


def test_a_data_error_clears_the_progress_bar_first(data):
    # the one-line error must not share a line with the prepare bar (tqdm draws on stderr too)
    tmp, _, _ = data
    schema = tmp / "schema.yaml"
    schema.write_text(OmegaConf.to_yaml(OmegaConf.create(dict(SCHEMA, categorical=["hist"], sequences=[]))))
    r = run_cli(["dataset=parquet", f"dataset.train_path={tmp / 'train.parquet'}", f"dataset.schema_file={schema}",
                 "dataset.progress=true"], cwd=tmp, check=False)
    assert r.returncode == 2
    line = next(l for l in r.stderr.split("\n") if "error:" in l)
    assert line.split("\r")[-1].startswith(f"mtl-train: error: {tmp / 'train.parquet'}: dataset: categorical column 'hist'")
    assert "prepare" not in r.stderr.split("error:")[1]  # the bar is not drawn again after the error


def _one_file(tmp_path, table, row_group_size=None, **over):
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=row_group_size)
    f = str(tmp_path / "train.parquet")
    return cfg(tmp_path, val_path=f, test_path=f, **over)


@pytest.mark.parametrize("mode", ["memory", "stream"])
@pytest.mark.parametrize("norm, fill", [("none", "mean"), ("standard", "zero"), ("minmax", "2.5")])
def test_numeric_columns_without_nulls_encode(tmp_path, mode, norm, fill):
    # a column without nulls comes out of pyarrow as a read-only zero-copy array; filling must not write to it
    t = pa.table({"a": [1, 2, 3, 4], "v": pa.array([1.0, 2.0, 3.0, 5.0]), "n": pa.array([1, 2, 3, 5], pa.int64()),
                  "y": [0.0, 1.0, 0.0, 1.0]})
    c = _one_file(tmp_path, t, categorical=["a"], numeric=[{"name": "v", "norm": norm, "fill": fill},
                                                           {"name": "n", "norm": norm, "fill": fill}],
                  sequences=[], tasks=["y"], mode=mode)
    b = pqd.load(c, seed=0)
    dense = torch.cat([x["dense"] for x in b.val.batches(4)]) if mode == "stream" else b.val.dense
    expected = {"none": [1.0, 2.0, 3.0, 5.0], "standard": [(v - 2.75) / math.sqrt(2.1875) for v in (1, 2, 3, 5)],
                "minmax": [0.0, 0.25, 0.5, 1.0]}[norm]
    assert np.allclose(dense[:, 0].numpy(), expected, atol=1e-6) and np.allclose(dense[:, 1].numpy(), expected, atol=1e-6)


def test_numeric_statistics_of_a_large_mean_column_and_infinite_values(tmp_path):
    # millisecond timestamps: sum(x^2)/n - mean^2 cancels in float64 (std came out 23x too large)
    rng = np.random.default_rng(0)
    ts = 1.7e12 + rng.normal(0, 1000, 4000)
    v = rng.normal(0, 1, 4000)
    v[[5, 17]] = [np.inf, -np.inf]  # infinite values are missing values: counted, filled, kept out of the statistics
    t = pa.table({"a": np.arange(4000) % 7, "ts": ts, "v": v, "y": (np.arange(4000) % 2).astype(float)})
    c = _one_file(tmp_path, t, categorical=["a"], numeric=[{"name": "ts", "norm": "standard"},
                                                           {"name": "v", "norm": "standard", "fill": "mean"}],
                  sequences=[], tasks=["y"], row_group_size=500)
    b = pqd.load(c, seed=0)
    x = b.train.dense.numpy().astype(np.float64)
    assert abs(x[:, 0].mean()) < 1e-3 and abs(x[:, 0].std() - 1) < 1e-3
    finite = np.isfinite(v)
    assert np.isfinite(x).all() and x[5, 1] == 0.0 and x[17, 1] == 0.0
    assert np.allclose(x[finite, 1], (v[finite] - v[finite].mean()) / v[finite].std(), atol=1e-5)
    assert b.info["report"]["train"]["null_numeric"]["v"] == 2


def test_an_infinite_regression_label_is_one_clear_error(tmp_path):
    c = _one_file(tmp_path, pa.table({"a": [1, 2, 3], "s": [0.5, np.inf, 1.0]}), categorical=["a"], numeric=[],
                  sequences=[], tasks=[{"name": "s", "type": "regression"}])
    with pytest.raises(DataError, match="label column 's' of regression task 's' holds 1 infinite values"):
        pqd.load(c, seed=0)


def test_id_columns_of_other_arrow_types_count_and_encode_alike(tmp_path):
    # a pandas category column (dictionary type), and int32 in one training file next to int64 in another
    d = tmp_path / "logs"
    d.mkdir()
    city = pa.array(["paris", "rome", "paris", None]).dictionary_encode()
    pq.write_table(pa.table({"city": city, "u": pa.array([5, 6, 5, 7], pa.int32()), "y": [0.0, 1, 0, 1]}), d / "a.parquet")
    pq.write_table(pa.table({"city": pa.array(["rome", "oslo", "paris", "rome"]), "u": pa.array([6, 6, 8, 5], pa.int64()),
                             "y": [1.0, 0, 1, 0]}), d / "b.parquet")
    val = pa.table({"city": pa.array(["rome", "lima", None]).dictionary_encode(), "u": pa.array([6, 9, 5], pa.int16()),
                    "y": [0.0, 1, 0]})
    pq.write_table(val, tmp_path / "val.parquet")
    b = pqd.load(cfg(tmp_path, train_path=str(d), categorical=["city", "u"], numeric=[], sequences=[], tasks=["y"]), seed=0)
    # vocabularies by count (ties by value): city paris 3, rome 3, oslo 1; u 5: 3, 6: 3, 7: 1, 8: 1
    assert b.val.sparse.tolist() == [[3, 3], [1, 1], [0, 2]]
    assert b.train.sparse[:, 1].tolist() == [2, 3, 2, 4, 3, 3, 5, 2]
    pq.write_table(pa.table({"city": ["x"], "u": ["6"], "y": [1.0]}), d / "c.parquet")
    with pytest.raises(DataError, match="id column 'u' holds (int64|string) values in one training file and (string|int64)"):
        pqd.load(cfg(tmp_path, train_path=str(d), categorical=["city", "u"], numeric=[], sequences=[], tasks=["y"],
                     cache_dir=str(tmp_path / "cache2")), seed=0)


def test_non_binary_label_is_rejected(tmp_path):
    pq.write_table(pa.table({"a": [1, 2, 3], "y": [0.0, 2.0, 1.0]}), tmp_path / "train.parquet")
    c = cfg(tmp_path, val_path=str(tmp_path / "train.parquet"), test_path=str(tmp_path / "train.parquet"),
            categorical=["a"], numeric=[], sequences=[], tasks=["y"])
    with pytest.raises(DataError, match="label column 'y'.*2"):
        pqd.load(c, seed=0)


def test_cli_trains_streamed_parquet_with_schema_file(data):
    tmp, _, _ = data
    schema = tmp / "schema.yaml"
    schema.write_text(OmegaConf.to_yaml(OmegaConf.create(SCHEMA)))
    run_cli(["dataset=parquet", f"dataset.train_path={tmp / 'train.parquet'}", f"dataset.val_path={tmp / 'val.parquet'}",
             f"dataset.schema_file={schema}", "dataset.mode=stream", "dataset.shuffle_buffer=128",
             "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=2", "model.expert_hidden=[8]",
             "model.num_experts=2"], cwd=tmp)
    run = find_run_dir(tmp)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["click"]["rows"] == 200
    assert metrics["val"]["purchase"]["rows"] == 200 - 9  # 9 null labels masked (rows 1, 24, ... of 200)
    info = json.loads((run / "run.json").read_text())
    # test carved from the train file (10% of its rows by hash), val from its own file
    assert 2 * 400 < info["train_samples"] < 2 * 500 and info["steps"] == 2 * -(-info["train_samples"] // 128)
    assert info["data_report"]["val"]["null_labels"]["purchase"] == 9  # the counts reach run.json
    # the checkpoint carries the encoder: mode=eval on the val file reproduces the val metrics
    run_cli(["mode=eval", f"checkpoint={run}", f"infer.input={tmp / 'val.parquet'}",
             f"infer.output={tmp / 'eval.json'}", "trainer.device=cpu"], cwd=tmp)
    ev = json.loads((tmp / "eval.json").read_text())["input"]
    for task in ("click", "purchase"):
        assert ev[task]["rows"] == metrics["val"][task]["rows"]
        assert ev[task]["auc"] == pytest.approx(metrics["val"][task]["auc"], abs=1e-9)
    # CSV predictions cannot hold a list column: refused before scoring, one line
    r = run_cli(["mode=predict", f"checkpoint={run}", f"infer.input={tmp / 'val.parquet'}", "infer.id_columns=[user,hist]",
                 f"infer.output={tmp / 'p.csv'}", "trainer.device=cpu"], cwd=tmp, check=False)
    assert r.returncode == 2 and not (tmp / "p.csv").exists()
    assert "CSV cannot hold the list column(s) ['hist']" in r.stderr.strip().splitlines()[-1]


def test_reader_threads_auto_reads_inline_when_torch_uses_every_core(monkeypatch):
    import os

    import torch

    from mtl_train.data import stream

    assert stream.reader_threads(0) == 0 and stream.reader_threads(3) == 3  # explicit settings kept
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert stream.reader_threads(None) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert stream.reader_threads(None) == 1


@pytest.mark.parametrize("proc, files", [
    ("0::/\n", {"/sys/fs/cgroup/memory.max": "2147483648\n"}),  # the container's own cgroup view
    ("0::/system.slice/job_7/step_0\n", {"/sys/fs/cgroup/memory.max": "max\n",  # Slurm-like nesting, v2
                                          "/sys/fs/cgroup/system.slice/job_7/memory.max": "2147483648\n"}),
    ("4:memory:/slurm/uid_0/job_7\n1:cpu:/\n", {"/sys/fs/cgroup/memory/slurm/uid_0/job_7/memory.limit_in_bytes":
                                                 "2147483648\n"}),  # v1
])
def test_memory_budget_is_a_quarter_of_the_lower_of_ram_and_the_cgroup_limits(monkeypatch, proc, files):
    import builtins
    import io

    real_open = builtins.open

    def fake_open(path, *a, **k):
        if str(path) == "/proc/self/cgroup":
            return io.StringIO(proc)
        if str(path) in files:
            return io.StringIO(files[str(path)])
        if str(path).startswith("/sys/fs/cgroup/"):
            raise OSError("no such file")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert memory_budget(None) == min(
        2 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    assert memory_budget(100) == 100 << 20
