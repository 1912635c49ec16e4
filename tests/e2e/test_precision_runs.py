"""End-to-end runs: trainer.precision=bf16."""
import pytest


def test_bf16_cli_run_records_precision_logs_steps_and_evaluates_in_float32(tmp_path):
    import json

    from conftest import CENSUS, find_run_dir, run_cli

    if not CENSUS.exists():
        pytest.skip("shared census data not present")
    args = ["dataset=census", f"dataset.path={CENSUS}", "dataset.max_rows=600", "trainer.progress=false",
            "trainer.batch_size=64", "trainer.epochs=2", "model.expert_hidden=[16,8]", "model.num_experts=2"]
    proc = run_cli([*args, "trainer.precision=bf16", "trainer.log_every_steps=5"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert (info["precision"], info["sparse_embedding"]) == ("bf16", True)
    out = proc.stderr + proc.stdout
    assert "precision bf16, sparse embedding on" in out
    # without a progress bar the training figures are log lines every log_every_steps
    assert "train @ step 5: loss income=" in out and "train @ step 10: loss income=" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["marital"]["auc"] > 0.8
    # eval of best.pt (float32) reproduces the run's own test metrics exactly
    run_cli(["mode=eval", f"checkpoint={run}", "hydra.run.dir=ev"], cwd=tmp_path)
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["test"] == metrics["test"]


def test_auto_precision_resolves_to_this_machines_choice_and_records_it(tmp_path):
    import json

    import torch
    from conftest import run_cli

    from mtl_train.train.device import native_bf16

    proc = run_cli(["dataset.train_rows=600", "dataset.val_rows=200", "dataset.test_rows=200", "trainer.progress=false",
                    "trainer.epochs=1", "trainer.batch_size=64", "trainer.precision=auto", "hydra.run.dir=run"],
                   cwd=tmp_path)
    expect = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == expect
    assert f"precision {expect} (trainer.precision=auto)" in proc.stderr + proc.stdout
