"""CLI runs whose model breaks (issue 14, item 6): with ``trainer.nonfinite=skip`` a model whose
weights diverged stops the run as a non-finite loss does (one line, exit 2, the last good
checkpoint kept, run.json written), and a sweep records it as a failed job."""
import json

import torch
from conftest import run_cli

TINY = ["dataset.train_rows=2000", "dataset.val_rows=400", "dataset.test_rows=400", "dataset.vocab_sizes=[50,50,20]",
        "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1", "trainer.device=cpu",
        "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]",
        "trainer.optimizer=sgd", "trainer.nonfinite=skip"]


def test_skip_with_diverged_weights_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_cli([*TINY, "trainer.lr=1e8", "trainer.checkpoint_every_steps=1", "hydra.run.dir=run"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("mtl-train: error: non-finite loss at step 3 (epoch 1) in task 'click' (nan)")
    assert "checkpoints/last.pt (step 2)" in line and "trainer.nonfinite=skip" in line
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    assert not (run / "metrics.json").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["steps"] == 2 and info["nonfinite_skipped"] == 0
    assert line == f"mtl-train: error: {info['error']}"
    assert (run / "error.txt").read_text().strip() == info["error"]


def test_a_sweep_records_the_diverged_job_as_failed(tmp_path):
    proc = run_cli(["-m", "trainer.lr=0.01,1e8", *TINY, "hydra.sweep.dir=sw"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mtl-train: error: 1 job(s) of the sweep failed"), proc.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sw").iterdir() if p.is_dir() and (p / "run.json").exists())
    assert len(jobs) == 2
    ok, failed = jobs
    assert (ok / "metrics.json").exists() and not (ok / "error.txt").exists()
    assert "error" not in json.loads((ok / "run.json").read_text())
    assert not (failed / "metrics.json").exists()
    error = (failed / "error.txt").read_text()
    assert error.startswith("non-finite loss at step 3") and failed.name in last
    assert json.loads((failed / "run.json").read_text())["error"] == error.strip()
