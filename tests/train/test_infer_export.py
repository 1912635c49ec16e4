"""mode=predict on an export folder (mtl_train.train.infer with mtl_train.serving) gives the
probabilities of mode=predict on the training checkpoint."""
import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CENSUS, REPO
from helpers import TINY, export_for_tests, make_cfg

from mtl_train.errors import ConfigError, DataError

SMALL = [*TINY[4:]]  # trainer and model sizes of TINY, not the synthetic set's


def _reference_log(folder):
    """scripts/make_reference_log.py's log (hashed ids, a sequence, nulls), smaller: users seen
    in test but not in train are the unseen ids."""
    spec = importlib.util.spec_from_file_location("make_reference_log", REPO / "scripts" / "make_reference_log.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, n, seed in (("train", 1500, 0), ("val", 300, 1), ("test", 400, 2)):
        mod.write(str(folder / f"{name}.parquet"), n, seed)
    (folder / "schema.yaml").write_text(mod.SCHEMA)


def _predict(tmp_path, name, checkpoint, *over):
    from mtl_train.train.infer import run_predict

    out = tmp_path / f"{name}.parquet"
    run_predict(make_cfg("mode=predict", f"checkpoint={checkpoint}", "trainer.device=cpu", f"infer.output={out}",
                         *over), str(tmp_path / name))
    return pq.read_table(out)


def _same(eager: pa.Table, served: pa.Table, outputs: list[str]) -> None:
    for o in outputs:
        p, q = eager.column(f"prob_{o}").to_numpy(), served.column(f"prob_{o}").to_numpy()
        assert np.abs(p - q).max() <= 1e-5, o
        np.testing.assert_array_equal(served.column(f"label_{o}").to_numpy(zero_copy_only=False),
                                      eager.column(f"label_{o}").to_numpy(zero_copy_only=False))


def test_a_parquet_log_with_hashed_ids_sequences_nulls_and_unseen_ids(tmp_path):
    from mtl_train.train.trainer import run

    _reference_log(tmp_path)
    data = [f"dataset.train_path={tmp_path / 'train.parquet'}", f"dataset.val_path={tmp_path / 'val.parquet'}",
            f"dataset.test_path={tmp_path / 'test.parquet'}", f"dataset.schema_file={tmp_path / 'schema.yaml'}",
            "dataset.progress=false"]
    run(make_cfg("dataset=parquet", *data, "model=mmoe", "graph=esmm", *SMALL), str(tmp_path / "train"))
    export = export_for_tests(tmp_path / "train", tmp_path / "export")
    common = [f"infer.input={tmp_path / 'test.parquet'}", "infer.id_columns=[user,item,city]"]
    eager = _predict(tmp_path, "eager", tmp_path / "train", *common)
    served = _predict(tmp_path, "served", export, *common)
    assert served.column_names == eager.column_names
    assert served.select(["user", "item", "city"]).equals(eager.select(["user", "item", "city"]))
    outputs = ["click", "purchase", "purchase_given_click"]
    assert [c for c in served.column_names if c.startswith("prob_")] == [f"prob_{o}" for o in outputs]
    _same(eager, served, outputs)
    raw = pq.read_table(tmp_path / "test.parquet")
    assert raw.column("user").null_count and raw.column("hist").null_count and raw.column("buy").null_count
    train_users = set(pq.read_table(tmp_path / "train.parquet").column("user").drop_null().to_pylist())
    assert set(raw.column("user").drop_null().to_pylist()) - train_users  # unseen ids
    # the same scores for rows given as a dict of lists, ids as strings where training had integers
    from mtl_train.serving.scorer import Scorer

    scorer = Scorer(str(export))
    rows = raw.slice(0, 7).to_pydict()
    rows["user"] = [None if u is None else str(u) for u in rows["user"]]
    assert scorer.inputs == ["sparse", "dense", "seq_hist", "seq_hist_len"]
    probs = scorer.score(rows)
    assert np.abs(probs["prob_click"] - eager.column("prob_click").to_numpy()[:7]).max() <= 1e-5


@pytest.mark.skipif(not CENSUS.exists(), reason="shared census data not present")
def test_census(tmp_path):
    import gzip

    from mtl_train.train.trainer import run

    lines = gzip.open(CENSUS, "rt").readlines()
    small, new = tmp_path / "census.csv", tmp_path / "new.csv"
    small.write_text("".join(lines[:3000]))
    new.write_text("".join(lines[3000:5000]))
    run(make_cfg("dataset=census", f"dataset.path={small}", "model=ple", *SMALL[:-3], "model.embedding_dim=4"),
        str(tmp_path / "train"))
    export = export_for_tests(tmp_path / "train", tmp_path / "export")
    eager = _predict(tmp_path, "eager", tmp_path / "train", f"infer.input={new}")
    served = _predict(tmp_path, "served", export, f"infer.input={new}")
    assert served.column_names == eager.column_names and served.num_rows == 2000
    assert served.column("sex").equals(eager.column("sex"))
    _same(eager, served, ["income", "marital"])


def test_synthetic_set(tmp_path):
    """The synthetic set has no files: its test split's generated ids and numbers, written to
    Parquet, are the raw rows of the export; the training checkpoint scores the split."""
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import run

    cfg = make_cfg(*TINY, "graph=independent", "graph.parent_positive_only=true")
    run(cfg, str(tmp_path / "train"))
    test = load_dataset(cfg.dataset, cfg.seed).test
    cols = {f"c{j}": test.sparse[:, j].numpy() - 2 for j in range(test.sparse.shape[1])}
    cols.update({f"d{j}": test.dense[:, j].numpy() for j in range(test.dense.shape[1])})
    cols.update({"click": test.labels[:, 0].numpy(), "purchase": test.labels[:, 1].numpy()})
    pq.write_table(pa.table(cols), tmp_path / "test.parquet")
    export = export_for_tests(tmp_path / "train", tmp_path / "export")
    eager = _predict(tmp_path, "eager", tmp_path / "train", "infer.split=test")
    served = _predict(tmp_path, "served", export, f"infer.input={tmp_path / 'test.parquet'}")
    _same(eager, served, ["click", "purchase", "purchase_given_click"])
    np.testing.assert_array_equal(served.column("c0").to_numpy() + 2, eager.column("c0").to_numpy())
    # an export scores files only; eval needs the training checkpoint
    with pytest.raises(ConfigError, match="^infer.input: .* is an exported model, which scores files"):
        _predict(tmp_path, "x", export)
    from mtl_train.train.infer import run_eval

    with pytest.raises(ConfigError, match="^checkpoint: .* is an exported model; mode=eval scores a training"):
        run_eval(make_cfg("mode=eval", f"checkpoint={export}", f"infer.input={tmp_path / 'test.parquet'}"),
                 str(tmp_path / "ev"))
    # raw rows without a feature column, or with words where the ids are integers: one line naming the column
    pq.write_table(pa.table({k: v for k, v in cols.items() if k != "d1"}), tmp_path / "no_d1.parquet")
    with pytest.raises(DataError, match=r"no_d1.parquet: missing feature column 'd1'; have \["):
        _predict(tmp_path, "x", export, f"infer.input={tmp_path / 'no_d1.parquet'}")
    words = dict(cols, c2=pa.array(["seven"] * len(cols["c2"])))
    pq.write_table(pa.table(words), tmp_path / "words.parquet")
    with pytest.raises(DataError, match=r"words.parquet: column 'c2' holds string values where the training ids are "
                                        r"integers"):
        _predict(tmp_path, "x", export, f"infer.input={tmp_path / 'words.parquet'}")
    assert not (tmp_path / "x.parquet").exists()
