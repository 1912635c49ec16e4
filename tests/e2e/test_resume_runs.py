"""Exact resume across processes: a run killed with SIGKILL mid-epoch, resumed, then stopped
with SIGTERM, resumed again, ends with the metrics.json of an uninterrupted run (to 1e-6, and
in fact byte for byte: the same config and seed give identical metrics.json files in four
different processes)."""
import json
import os
import signal
import subprocess
import sys

import torch
from conftest import run_cli

ARGS = ["dataset.train_rows=3000", "dataset.val_rows=500", "dataset.test_rows=500", "dataset.vocab_sizes=[50,50,20]",
        "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=2", "trainer.device=cpu",
        "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]",
        "trainer.checkpoint_every_steps=5", "trainer.scheduler=cosine", "trainer.warmup_steps=5", "loss=gradnorm",
        "model.dropout=0.1", "trainer.log_every_steps=10"]


def _start(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "mtl_train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _signal_after(proc, needle: str, sig: int) -> str:
    """Read the child's log until a line contains ``needle``, then send ``sig``; return the output."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=300)
    return "".join(lines) + out


def _step(path):
    return torch.load(path, weights_only=False)["step"]


def test_sigkill_then_sigterm_resume_equals_uninterrupted_and_runs_are_deterministic(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_cli([*ARGS, f"hydra.run.dir={ref}"], cwd=tmp_path)
    expected = (ref / "metrics.json").read_text()
    total = json.loads((ref / "run.json").read_text())["steps"]
    assert total == 2 * 47

    # 1. SIGKILL mid-epoch, right after the checkpoint at step 10
    proc = _start([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    _signal_after(proc, "last.pt at step 10", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    killed_at = _step(run / "checkpoints" / "last.pt")
    assert 10 <= killed_at < total and killed_at % 47 != 0  # a mid-epoch checkpoint

    # 2. a new run pointed at that directory refuses to start
    proc2 = run_cli([*ARGS, f"hydra.run.dir={run}"], cwd=tmp_path, check=False)
    assert proc2.returncode == 2 and "already holds a checkpoint" in proc2.stderr
    assert "trainer.resume=" in proc2.stderr

    # 3. resume (by run directory, no other argument), then SIGTERM after a later checkpoint
    proc = _start([f"trainer.resume={run}", "trainer.progress=false"], tmp_path)
    out = _signal_after(proc, f"last.pt at step {killed_at + 10}", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted by SIGTERM" in out and f"trainer.resume={run}" in out
    termed_at = _step(run / "checkpoints" / "last.pt")
    assert killed_at + 10 <= termed_at < total
    assert not (run / "metrics.json").exists()

    # 4. resume from the checkpoint file to the end
    run_cli([f"trainer.resume={run / 'checkpoints' / 'last.pt'}", "trainer.progress=false"], cwd=tmp_path)
    got_text = (run / "metrics.json").read_text()
    assert got_text == expected  # determinism across processes, through two interruptions
    got = json.loads(got_text)
    want = json.loads(expected)
    for split in want:
        for task in want[split]:
            for k, v in want[split][task].items():
                if isinstance(v, float):
                    assert abs(got[split][task][k] - v) <= 1e-6, (split, task, k)
                else:
                    assert got[split][task][k] == v
    info = json.loads((run / "run.json").read_text())
    assert info["steps"] == total and [r["step"] for r in info["resumed_at"]] == [killed_at, termed_at]
    # the original Hydra config is kept; each resume has its own
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "resume-2" / "config.yaml").exists()

    # TensorBoard: purge_step hides the events the interrupted processes wrote past their checkpoint
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss/click")]
    # (a point every log_every_steps, and one at each evaluation: the epoch ends 47 and 94)
    assert steps == sorted(set(steps)) == sorted(set(range(10, total + 1, 10)) | {47, total})
