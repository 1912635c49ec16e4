import numpy as np
import pyarrow as pa
import pytest
from helpers import BIG, parquet_cfg

from mtl_train.data import encode as training
from mtl_train.data.datasets import load_dataset
from mtl_train.data.hashing import splitmix64
from mtl_train.errors import DataError
from mtl_train.serving.features import read_features, write_features
from mtl_train.serving.rows import FeatureEncoder, VocabLookup, hash_ids

STRINGS = ["", "a", "oslo", "ÅÄÖ ünïcode", "x" * 300, None, "7", "paris", "a\x00b"]


@pytest.mark.parametrize("column", [
    pa.array([0, 1, -1, 2**63 - 1, -2**63, BIG, None, 7], pa.int64()),
    pa.array([0, 2**64 - 1, 2**63, None, 5], pa.uint64()),
    pa.array([3, None, -4], pa.int32()),
    pa.array([True, False, None]),
    pa.array(STRINGS, pa.string()),
    pa.array(STRINGS, pa.large_string()),
    pa.array([b"\xff\x00", b"", None, b"abc"], pa.binary()),
    pa.array(STRINGS, pa.string()).dictionary_encode(),
    pa.array(STRINGS, pa.string()).slice(2, 5),  # an offset into the buffers
])
def test_hashing_gives_the_training_ids_bit_for_bit(column):
    for buckets, salt in ((7, 0), (1_000_003, 123456789), (2**40, 0xFFFFFFFF)):
        want, _ = training.hash_ids(column, buckets, salt)
        np.testing.assert_array_equal(hash_ids(column, buckets, salt, None, "c"), want)


def test_splitmix64_of_known_values():
    # SplitMix64's first outputs from state 0 (the reference generator adds the constant first)
    out = splitmix64(np.array([0, 0x9E3779B97F4A7C15], dtype=np.uint64))
    assert [hex(int(v)) for v in out] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]


@pytest.mark.parametrize("values", [pa.array([5, BIG, -3, 0], pa.int64()), pa.array(["b", "", "a", "ÅÄÖ"]),
                                    pa.array([1.5, 2.0]), pa.array([], pa.int64())])
def test_vocabulary_lookup_is_the_training_one(values):
    probe = pa.concat_arrays([values, values.slice(0, 2)]) if len(values) else values
    extra = {pa.int64(): [None, 9, BIG + 1], pa.string(): [None, "zz", "a "], pa.float64(): [None, 3.0]}
    probe = pa.concat_arrays([probe, pa.array(extra.get(values.type, [None]), values.type)])
    want, _, _ = training.Vocabulary(values).encode(probe)
    np.testing.assert_array_equal(VocabLookup(values).encode(probe, "c"), want)
    no_nulls = probe.drop_null()  # integers: the fast path of columns without nulls
    want, _, _ = training.Vocabulary(values).encode(no_nulls)
    np.testing.assert_array_equal(VocabLookup(values).encode(no_nulls, "c"), want)
    if values.type == pa.int64() and len(values):
        assert VocabLookup(values).encode(pa.array([BIG, -3, 77, -2**63]), "c").tolist() == [3, 4, 1, 1]


def _mixed(tbl: pa.Table) -> pa.Table:
    """The rows of ``tbl`` plus rows with unseen ids, nulls everywhere, ids given as strings and
    as int32, lists longer than max_len and non-finite numbers."""
    n = 6
    more = pa.table({
        "user": pa.array(["3", None, "123456789", str(BIG), "4", "5"]).cast(pa.int64()).cast(pa.int32(), safe=False),
        "city": pa.array(["never-seen", None, "oslo", "", "paris", "rome"]),
        "price": pa.array([float("inf"), None, -5.0, 1e6, float("nan"), 10.0]),
        "hist": pa.array([[1, 2, 3, 4, 5, 6, 7], None, [], [None, 9999], [2], [3, 3]], pa.list_(pa.int64())),
        "click": pa.array([1.0] * n), "buy": pa.array([None] * n, pa.float64()),
    })
    return pa.concat_tables([tbl, more.cast(tbl.schema, safe=False)], promote_options="permissive")


def _both(tmp, spec_over=None):
    bundle = load_dataset(parquet_cfg(tmp, **(spec_over or {})), 0)
    out = tmp / "export"
    out.mkdir()
    write_features(str(out), bundle.schema, {"dataset": {"name": "parquet"}, "graph": {"name": "independent"}})
    return bundle.schema.encoders, FeatureEncoder(read_features(str(out)), str(out))


@pytest.mark.parametrize("norm,fill", [("standard", "mean"), ("log", "zero"), ("minmax", "mean"), ("none", "2.5"),
                                       ("log", "-3"), ("none", "mean")])
def test_raw_rows_encode_as_training_encoded_them(data, norm, fill):
    tmp, _, val = data
    over = {"numeric": [{"name": "price", "norm": norm, "fill": fill}]}
    enc, served = _both(tmp, over)
    rows = _mixed(val)
    want = enc.encode(rows)
    got = served.encode(rows)
    np.testing.assert_array_equal(got["sparse"], want["sparse"])
    assert list(got) == ["sparse", "dense", "seq_hist", "seq_hist_len"]
    np.testing.assert_array_equal(got["seq_hist"], want["seq"])
    np.testing.assert_array_equal(got["dense"].view(np.int32), want["dense"].view(np.int32))  # bits
    lengths = [0 if v is None else min(len(v), 4) for v in rows.column("hist").to_pylist()]
    assert got["seq_hist_len"].tolist() == lengths
    assert (got["sparse"][-6:, 0] == 1).sum() >= 1 and got["sparse"][-5, 0] == 0  # unseen and null ids


def test_a_dict_of_lists_with_ids_as_strings_encodes_as_the_integers_do(data):
    tmp, _, val = data
    _, served = _both(tmp)
    rows = val.slice(0, 5).to_pydict()
    as_text = dict(rows, user=[None if v is None else str(v) for v in rows["user"]])
    np.testing.assert_array_equal(served.encode(as_text)["sparse"], served.encode(rows)["sparse"])
    np.testing.assert_array_equal(served.encode(rows)["sparse"], served.encode(val.slice(0, 5))["sparse"])


def test_an_integer_given_for_a_hashed_string_id_hashes_as_its_text(data):
    tmp, _, _ = data
    enc, served = _both(tmp, {"categorical": [{"name": "user", "hash_buckets": 50}, "city"]})
    rows = {"user": ["7", "12", None], "city": ["oslo", None, "rome"], "price": [1.0, 2.0, None],
            "hist": [[1], [], None]}
    as_int = dict(rows, user=[7, 12, None])
    want = enc.encode(pa.table({**rows, "click": [1.0] * 3, "buy": [0.0] * 3}))["sparse"]
    np.testing.assert_array_equal(served.encode(as_int)["sparse"], want)


@pytest.mark.parametrize("change,message", [
    ({"user": ["seven", "1"]}, "raw rows: column 'user': cannot map values of type string to a vocabulary of int64"),
    ({"price": ["cheap", "1"]}, "raw rows: numeric column 'price' is not numeric (string)"),
    ({"user": [[1], [2]]}, "raw rows: categorical column 'user' holds list<item: int64> values"),
    ({"hist": [1, 2]}, "raw rows: sequence column 'hist' is not a list column (int64)"),
])
def test_a_value_of_another_type_fails_in_one_line_naming_the_column(data, change, message):
    tmp, _, _ = data
    _, served = _both(tmp)
    rows = {"user": [1, 2], "city": ["oslo", "rome"], "price": [1.0, 2.0], "hist": [[1], []], **change}
    with pytest.raises(DataError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as e:
        served.encode(rows)
    assert "\n" not in str(e.value)


def test_a_missing_feature_column_is_named(data):
    tmp, _, _ = data
    _, served = _both(tmp)
    with pytest.raises(DataError, match=r"^raw rows: missing feature column 'hist'; have \['user', 'city', 'price'\]$"):
        served.encode({"user": [1], "city": ["oslo"], "price": [1.0]})
    with pytest.raises(DataError, match="^raw rows: a pyarrow Table or a dict of column lists is needed, not list$"):
        served.encode([1, 2])


def test_a_hashed_value_of_the_other_kind_that_does_not_convert_is_named(data):
    tmp, _, _ = data
    _, served = _both(tmp, {"categorical": [{"name": "user", "hash_buckets": 50}, "city"]})
    with pytest.raises(DataError, match="^raw rows: column 'user' holds string values where the training files hold "
                                        "integer ids: "):
        served.encode({"user": ["seven"], "city": ["oslo"], "price": [1.0], "hist": [[1]]})
