"""End-to-end runs: an ESMM run reports CTR, CVR, CTCVR and entire-space CVR."""
import json

from conftest import find_run_dir, run_cli


def test_esmm_run_reports_ctr_cvr_ctcvr_and_entire_space_cvr(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["model=esmm", "model.embedding_dim=4", "graph.tower_hidden=[8]", "dataset.train_rows=3000",
             "dataset.val_rows=1000", "dataset.test_rows=1000", "dataset.click_bias=1.0", "trainer.progress=false",
             "trainer.batch_size=256", "trainer.epochs=1", "trainer.log_every_steps=5"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert set(m) == {"click", "purchase", "purchase_given_click", "purchase_given_click_entire"}
    assert m["click"]["rows"] == m["purchase"]["rows"] == m["purchase_given_click_entire"]["rows"] == 1000
    assert m["purchase_given_click"]["rows"] == m["click"]["positives"]  # CVR on clicked rows only
    assert m["purchase_given_click_entire"]["eval_only"] is True
    info = json.loads((run / "run.json").read_text())
    assert info["funnel_violations"]["train"] == {"purchase": 0}
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/auc/click", "val/auc/purchase", "val/auc/purchase_given_click", "test/auc/purchase_given_click_entire",
            "train/loss/purchase"} <= tags
    assert not any("eval_only" in t for t in tags)
