"""End-to-end runs: trainer.fused_kernels=false trains close to the fused kernels."""
import json

import pytest


def test_fused_kernels_false_trains_end_to_end_close_to_fused(tmp_path):
    from conftest import find_run_dir, run_cli

    args = ["dataset.train_rows=6000", "dataset.val_rows=1000", "dataset.test_rows=1000", "trainer.batch_size=128",
            "trainer.epochs=2", "trainer.lr=0.01", "trainer.progress=false", "model.expert_hidden=[16,8]",
            "model.num_experts=3", "model.sparse_embedding=true"]
    metrics = {}
    for flag in ("true", "false"):
        (tmp_path / flag).mkdir()
        run_cli([*args, f"trainer.fused_kernels={flag}"], cwd=tmp_path / flag)
        metrics[flag] = json.loads((find_run_dir(tmp_path / flag) / "metrics.json").read_text())
    for task, m in metrics["true"]["test"].items():
        ref = metrics["false"]["test"][task]
        assert ref["auc"] > 0.55  # it learned
        assert ref["auc"] == pytest.approx(m["auc"], abs=0.01), task
        assert ref["logloss"] == pytest.approx(m["logloss"], rel=0.02), task
