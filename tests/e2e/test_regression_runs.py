"""Two regression tasks end to end: dataset=mmoe_synthetic through graph=independent."""
import json

from conftest import find_run_dir, run_cli

SMALL = ["dataset=mmoe_synthetic", "dataset.train_rows=2000", "dataset.val_rows=500", "dataset.test_rows=500",
         "dataset.dim=10", "dataset.task_correlation=0.9", "model=mmoe", "model.num_experts=4",
         "model.expert_hidden=[16]", "graph=independent", "graph.tower_hidden=[8]", "trainer.epochs=4",
         "trainer.batch_size=64", "trainer.lr=0.01", "trainer.progress=false"]


def test_two_regression_tasks_train_and_report_mse_and_r2(tmp_path):
    run_cli([*SMALL, "trainer.monitor=mse/mean", "trainer.monitor_mode=min"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert sorted(metrics[split]) == ["task1", "task2"]
        for m in metrics[split].values():
            # the labels' variance is about 7 (the constant predictor's MSE)
            assert m["mse"] < 5.0 and m["r2"] > 0.3  # this run: mse 3.7-3.8, r2 0.42-0.51
    assert (run / "checkpoints" / "best.pt").exists()
    assert json.loads((run / "run.json").read_text())["best_step"] > 0


def test_a_binary_monitor_on_regression_tasks_is_one_line(tmp_path):
    proc = run_cli(SMALL, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "mtl-train: error: trainer.monitor: auc is reported for binary tasks only, and no task of this dataset is "
        "one; e.g. trainer.monitor=mse/mean trainer.monitor_mode=min")
