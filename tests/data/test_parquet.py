"""dataset=parquet (mtl_train.data.parquet): schema errors, numeric and id columns, carved splits."""
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import parquet_cfg as cfg

from mtl_train.data import parquet as pqd
from mtl_train.errors import ConfigError, DataError


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
