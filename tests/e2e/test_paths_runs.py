"""Paths the user gives mean the directory mtl-train was launched in, whatever hydra.job.chdir
says; they are stored absolute, and eval/predict can point a checkpoint's dataset elsewhere."""
import json
import shutil

import pytest
import torch
import yaml
from conftest import SHARED, run_cli

HILLSTROM = SHARED / "hillstrom-email" / "hillstrom.csv"
FAST = ["trainer.progress=false", "trainer.epochs=1", "trainer.batch_size=256", "model.expert_hidden=[8]",
        "model.num_experts=2"]


@pytest.mark.skipif(not HILLSTROM.exists(), reason="shared hillstrom data not present")
def test_relative_dataset_path_with_chdir_trains_is_stored_absolute_and_evaluates_from_elsewhere(tmp_path):
    here = tmp_path / "launch"
    (here / "data").mkdir(parents=True)
    with open(HILLSTROM) as src, open(here / "data" / "hillstrom.csv", "w") as dst:  # a slice, in tmp_path
        dst.writelines(line for _, line in zip(range(1501), src))
    csv = here / "data" / "hillstrom.csv"
    run_cli(["dataset=hillstrom", "dataset.path=data/hillstrom.csv", "hydra.job.chdir=true", "hydra.run.dir=run",
             *FAST], cwd=here)
    run = here / "run"
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["dataset"]["path"] == str(csv)
    state = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert state["config"]["dataset"]["path"] == str(csv)

    # eval from another directory, with chdir too: the checkpoint's absolute path is read
    other = tmp_path / "other"
    other.mkdir()
    run_cli(["mode=eval", "checkpoint=../launch/run", "hydra.run.dir=ev", "hydra.job.chdir=true"], cwd=other)
    assert json.loads((other / "ev" / "eval.json").read_text())["test"] == test

    # the data moved: the eval command points the checkpoint's dataset at the new place (relative, with chdir)
    (other / "moved").mkdir()
    shutil.move(str(csv), other / "moved" / "h.csv")
    proc = run_cli(["mode=eval", "checkpoint=../launch/run", "hydra.run.dir=ev2"], cwd=other, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"dataset.path: data file not found: {csv}")
    run_cli(["mode=eval", "checkpoint=../launch/run", "dataset.path=moved/h.csv", "hydra.run.dir=ev3",
             "hydra.job.chdir=true"], cwd=other)
    assert json.loads((other / "ev3" / "eval.json").read_text())["test"] == test
    # on a command line whose default dataset (synthetic) has no such key, and naming the dataset
    run_cli(["mode=predict", "checkpoint=../launch/run", "dataset=hillstrom", "dataset.path=moved/h.csv",
             "hydra.run.dir=pr", "infer.output=p.parquet"], cwd=other)
    assert (other / "p.parquet").exists()
    proc = run_cli(["mode=eval", "checkpoint=../launch/run", "dataset.split_seed=3"], cwd=other, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "mtl-train: error: dataset.split_seed: eval/predict keep the checkpoint's dataset config; only its paths may "
        "be given (dataset.path, dataset.cache_dir); score another file with infer.input=...")
