"""mode=eval and mode=predict (mtl_train.train.infer) reproduce the training metrics."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CENSUS
from helpers import TINY, make_cfg
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mtl_train.config import set_launch_dir, validate
from mtl_train.errors import ConfigError
from mtl_train.train.infer import checkpoint_config


def test_eval_reproduces_metrics_and_scored_predictions_give_the_same_auc(tmp_path):
    from mtl_train.metrics import binary_metrics
    from mtl_train.train.infer import run_eval, run_predict
    from mtl_train.train.trainer import run

    train_dir = tmp_path / "train"
    results = run(make_cfg(*TINY), str(train_dir))
    ev = run_eval(make_cfg("mode=eval", f"checkpoint={train_dir}", "trainer.device=cpu"), str(tmp_path / "ev"))
    assert ev["test"] == results["test"]  # exactly the run's metrics.json entry
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["test"] == json.loads(
        (train_dir / "metrics.json").read_text())["test"]
    out = run_predict(make_cfg("mode=predict", f"checkpoint={train_dir}", "trainer.device=cpu",
                               "infer.id_columns=[c0,c2]"), str(tmp_path / "pr"))
    tbl = pq.read_table(out)
    # one prob/label pair per evaluated output (purchase_given_click: labels only on clicked rows)
    assert tbl.column_names == ["row", "c0", "c2", "prob_click", "label_click", "prob_purchase", "label_purchase",
                                "prob_purchase_given_click", "label_purchase_given_click"]
    assert tbl.num_rows == 400 and tbl.column("row").to_pylist() == list(range(400))
    for task in ("click", "purchase", "purchase_given_click"):
        p = tbl.column(f"prob_{task}").to_numpy()
        y = tbl.column(f"label_{task}").to_numpy(zero_copy_only=False)
        keep = ~np.isnan(y)
        assert binary_metrics(p[keep], y[keep])["auc"] == ev["test"][task]["auc"]
    with pytest.raises(ConfigError, match="infer.input: dataset 'synthetic'"):
        run_eval(make_cfg("mode=eval", f"checkpoint={train_dir}", f"infer.input={out}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="checkpoint: eval and predict need"):
        run_eval(make_cfg("mode=eval"), str(tmp_path / "x"))


@pytest.mark.skipif(not CENSUS.exists(), reason="shared census data not present")
def test_census_eval_and_predict_on_a_file_agree(tmp_path, monkeypatch):
    import gzip

    from mtl_train import io
    from mtl_train.metrics import binary_metrics
    from mtl_train.train.infer import run_eval, run_predict
    from mtl_train.train.trainer import run

    lines = gzip.open(CENSUS, "rt").readlines()
    small, new = tmp_path / "census.csv", tmp_path / "new.csv"  # rows 0..3999 to train on, 4000..7999 as a new file
    small.write_text("".join(lines[:4000]))
    new.write_text("".join(lines[4000:8000]))
    monkeypatch.setattr(io, "_UMASK", 0o022)  # whatever the machine's umask, files must come out 0644
    train_dir = tmp_path / "train"
    run(make_cfg("dataset=census", f"dataset.path={small}", *TINY[4:]), str(train_dir))
    common = [f"checkpoint={train_dir / 'checkpoints' / 'best.pt'}", f"infer.input={new}", "trainer.device=cpu"]
    ev = run_eval(make_cfg("mode=eval", *common), str(tmp_path / "ev"))["input"]
    assert ev["income"]["rows"] == 4000 and ev["marital"]["auc"] > 0.7
    out = run_predict(make_cfg("mode=predict", *common, "infer.id_columns=[age,sex]",
                               f"infer.output={tmp_path / 'p.parquet'}"), str(tmp_path / "pr"))
    tbl = pq.read_table(out)
    assert tbl.column_names[:2] == ["age", "sex"] and tbl.column("sex").to_pylist()[:1][0] in ("Male", "Female")
    for task in ("income", "marital"):
        p = tbl.column(f"prob_{task}").to_numpy()
        y = tbl.column(f"label_{task}").to_numpy(zero_copy_only=False)
        assert binary_metrics(p, y)["auc"] == ev[task]["auc"]
    # files are written with the umask's mode (read at import), not mkstemp's 0600
    for f in (out, train_dir / "checkpoints" / "best.pt", tmp_path / "ev" / "eval.json"):
        assert os.stat(f).st_mode & 0o777 == 0o644, f
    # an existing output is refused before any scoring (the input file always), unless infer.overwrite
    before = new.read_bytes()
    with pytest.raises(ConfigError, match=r"infer.output: .*new.csv is the input file \(infer.input\)"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={new}", "infer.overwrite=true"), str(tmp_path / "x"))
    monkeypatch.setenv("HOME", str(tmp_path))  # the same file named through ~ and through a relative path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"is the input file"):
        run_predict(make_cfg("mode=predict", *common[:1], "infer.input='~/new.csv'", "trainer.device=cpu",
                             "infer.output=new.csv", "infer.overwrite=true"), str(tmp_path / "x"))
    assert new.read_bytes() == before
    with pytest.raises(ConfigError, match=r"p.parquet exists; choose another path or set infer.overwrite=true"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={out}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"metrics.json exists"):
        run_eval(make_cfg("mode=eval", *common, f"infer.output={train_dir / 'metrics.json'}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"unknown extension '.txt' \(this mode writes .csv, .parquet, .pq\)"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={tmp_path / 'p.txt'}"), str(tmp_path / "x"))
    run_predict(make_cfg("mode=predict", *common, f"infer.output={out}", "infer.overwrite=true"), str(tmp_path / "x"))
    # *.csv writes CSV, with the same columns and values
    csv_out = run_predict(make_cfg("mode=predict", *common, "infer.id_columns=[age,sex]",
                                   f"infer.output={tmp_path / 'p.csv'}"), str(tmp_path / "x"))
    import pyarrow.csv as pcsv

    csv = pcsv.read_csv(csv_out)
    assert csv.column_names == tbl.column_names and csv.num_rows == 4000
    assert np.allclose(csv.column("prob_income").to_numpy(), tbl.column("prob_income").to_numpy(), atol=1e-6)


def _stored(*overrides) -> dict:
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return OmegaConf.to_container(validate(compose("config", overrides=list(overrides))), resolve=True)


def test_a_dataset_path_change_applies_to_the_checkpoints_dataset(tmp_path):
    stored = _stored("dataset=hillstrom", "dataset.path=/old/hillstrom.csv", "dataset.max_rows=10")
    assert checkpoint_config(stored).dataset.path == "/old/hillstrom.csv"
    set_launch_dir(str(tmp_path))
    try:
        cfg = checkpoint_config(stored, {"name": "hillstrom", "path": "new/h.csv", "cache_dir": "~/c"})
    finally:
        set_launch_dir(None)
    assert cfg.dataset.path == str(tmp_path / "new" / "h.csv") and cfg.dataset.max_rows == 10
    assert not cfg.dataset.cache_dir.startswith("~")


@pytest.mark.parametrize("change, message", [
    ({"name": "census"}, "dataset=census: this checkpoint was trained on dataset=hillstrom, which eval/predict score; "
                         "point it at other files with dataset.<path key>=..., or score a file with infer.input=..."),
    ({"split_seed": 3}, "dataset.split_seed: eval/predict keep the checkpoint's dataset config; only its paths may be "
                        "given (dataset.path, dataset.cache_dir); score another file with infer.input=..."),
    ({"nope": 1}, "dataset.nope: eval/predict keep the checkpoint's dataset config; only its paths may be given "
                  "(dataset.path, dataset.cache_dir); score another file with infer.input=..."),
])
def test_any_other_dataset_change_is_refused_in_one_line(change, message):
    stored = _stored("dataset=hillstrom", "dataset.path=/old/hillstrom.csv")
    with pytest.raises(ConfigError) as e:
        checkpoint_config(stored, change)
    assert str(e.value) == message


def test_a_dataset_without_paths_says_so():
    with pytest.raises(ConfigError, match=r"^dataset.train_rows: .* \(none for dataset=synthetic\); "):
        checkpoint_config(_stored(), {"train_rows": 5})
