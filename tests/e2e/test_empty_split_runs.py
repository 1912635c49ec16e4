"""An empty split is a one-line error naming the split and its file, exit 2 (issue 14, item 5):
an empty val split selected no best.pt and an empty test split scored nothing, silently."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, find_run_dir, run_cli

ALIEXPRESS = SHARED / "aliexpress-sample"


def _log(n, seed):
    rng = np.random.default_rng(seed)
    return pa.table({"u": pa.array(rng.integers(0, 20, n), pa.int64()), "x": rng.normal(size=n),
                     "y": (rng.random(n) < 0.3).astype(np.float64)})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("empty")
    pq.write_table(_log(300, 0), d / "train.parquet")
    pq.write_table(_log(100, 1), d / "val.parquet")
    pq.write_table(_log(0, 2), d / "empty.parquet")  # zero rows, same schema
    (d / "schema.yaml").write_text("categorical: [u]\nnumeric: [x]\ntasks: [y]\n")
    return d


def _parquet(d, **paths):
    args = ["dataset=parquet", f"dataset.schema_file={d / 'schema.yaml'}", f"dataset.cache_dir={d / 'cache'}",
            "dataset.progress=false", "trainer.progress=false", "trainer.epochs=1", "model=shared_bottom"]
    return args + [f"dataset.{k}={v}" for k, v in paths.items()]


def _error(r) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("mtl-train: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0][len("mtl-train: error: "):]


@pytest.mark.parametrize("split", ["val", "test", "train"])
def test_an_empty_parquet_file_for_a_split_is_one_error_naming_it(logs, tmp_path, split):
    paths = {"train_path": logs / "train.parquet", "val_path": logs / "val.parquet", "test_path": logs / "val.parquet"}
    paths[f"{split}_path"] = logs / "empty.parquet"
    r = run_cli(_parquet(logs, **paths), cwd=tmp_path, check=False)
    assert _error(r) == f"{split} split: no rows in {logs / 'empty.parquet'} (dataset.{split}_path)"
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))


def test_a_split_fraction_that_carves_no_rows_is_one_error(logs, tmp_path):
    # 300 rows, a val fraction of 1e-4: the hash gives val no row
    r = run_cli(_parquet(logs, train_path=logs / "train.parquet", test_path=logs / "val.parquet")
                + ["dataset.split=[0.9999,0.0001,0]"], cwd=tmp_path, check=False)
    assert _error(r) == (f"val split: no rows carved from {logs / 'train.parquet'} (dataset.train_path) "
                         f"by dataset.split=[0.9999, 0.0001, 0.0]")


@pytest.mark.skipif(not ALIEXPRESS.exists(), reason="shared AliExpress sample not present")
def test_a_named_dataset_file_with_only_a_header_or_max_rows_too_small_is_one_error(tmp_path):
    train, test = ALIEXPRESS / "aliexpress_train_sample.csv", ALIEXPRESS / "aliexpress_test_sample.csv"
    header = tmp_path / "header_only.csv"
    header.write_text(test.read_text().splitlines()[0] + "\n")
    common = ["dataset=aliexpress", f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.progress=false",
              "trainer.epochs=1"]
    r = run_cli([*common, f"dataset.train_path={train}", f"dataset.test_path={header}"], cwd=tmp_path, check=False)
    assert _error(r) == f"test split: no rows in {header} (dataset.test_path)"
    # one row read: the 0.9 train share of it floors to no row
    r = run_cli([*common, f"dataset.train_path={train}", f"dataset.test_path={test}", "dataset.max_rows=1"],
                cwd=tmp_path, check=False)
    assert _error(r) == (f"train split: no rows carved from the first dataset.max_rows=1 rows of {train} "
                         f"(dataset.train_path) by dataset.val_fraction=0.1")


def test_eval_and_predict_of_an_empty_input_file_are_one_error(logs, tmp_path):
    run_cli(_parquet(logs, train_path=logs / "train.parquet", val_path=logs / "val.parquet",
                     test_path=logs / "val.parquet"), cwd=tmp_path)
    run = find_run_dir(tmp_path)
    for mode in ("eval", "predict"):
        r = run_cli([f"mode={mode}", f"checkpoint={run}", f"infer.input={logs / 'empty.parquet'}",
                     f"hydra.run.dir={tmp_path / mode}", "trainer.device=cpu"], cwd=tmp_path, check=False)
        assert _error(r) == f"infer.input: no rows in {logs / 'empty.parquet'} (nothing to score)", mode
