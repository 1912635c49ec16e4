"""End-to-end runs of dataset=parquet: streamed training, eval and predict, data errors."""
import json

import pytest
from conftest import find_run_dir, run_cli
from helpers import SCHEMA
from omegaconf import OmegaConf


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
