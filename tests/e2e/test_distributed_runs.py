"""End-to-end runs under torchrun: 2 ranks, gloo on CPU, tiny synthetic data (issue 15).

Few, small launches: one reference 2-rank run (module fixture) serves the run-directory, the
exact-evaluation and the resume tests."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from helpers import SCHEMA, write_log
from omegaconf import OmegaConf

# 1001 train rows: a global batch of 2 x 16 leaves a last batch of 9 rows (5 + 4 per rank)
DATA = ["dataset.train_rows=1001", "dataset.val_rows=300", "dataset.test_rows=300", "trainer.progress=false",
        "model.expert_hidden=[16]", "model.num_experts=2", "graph.tower_hidden=[8]"]
RUN = [*DATA, "trainer.batch_size=16", "trainer.epochs=3", "trainer.checkpoint_every_steps=10", "trainer.patience=null"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}", "-m", "mtl_train", *args]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def torchrun(args, cwd, check=True, nproc=2):
    proc = subprocess.run(_cmd(args, nproc), cwd=cwd, capture_output=True, text=True, env=_env(), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _wait_for(path: Path, text: str, proc, timeout=120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, f"the run ended before '{text}'"
        time.sleep(0.02)
    raise AssertionError(f"no '{text}' in {path}")


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == parent:
            rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                out[rank] = d.name and int(d.name)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-rank run (no hydra.run.dir: rank 0 picks the directory)."""
    cwd = tmp_path_factory.mktemp("ddp")
    proc = torchrun(RUN, cwd)
    runs = list(cwd.glob("outputs/*/*"))
    return cwd, runs, proc


def test_two_ranks_write_one_run_directory_from_rank_0(reference):
    cwd, runs, proc = reference
    assert len(runs) == 1  # one directory for the job, not one per rank
    run = runs[0]
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints", "cli.log", "metrics.json", "run.json", "tb"]
    assert len(list((run / "tb").iterdir())) == 1 and sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml", "hydra.yaml", "overrides.yaml"]
    info = json.loads((run / "run.json").read_text())
    assert (info["world_size"], info["global_batch"]) == (2, 32)
    assert info["steps"] == 3 * 32 and info["train_samples"] == 3 * 1001  # ceil(1001 / 32) steps per epoch
    first, second = (run / "cli.log").read_text().splitlines()[:2]
    assert first.endswith("distributed: world size 2 (gloo), global batch 32 = 2 ranks x trainer.batch_size 16")
    assert "32 steps/epoch of 16" in second and second.endswith("world size 2 (gloo), global batch 32")
    assert proc.stdout.count("test  click") == 1  # the results printed once, by rank 0
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and [r["data"] for r in ckpt["ranks"]] == [ckpt["data"]] * 2


def test_distributed_evaluation_equals_one_process_evaluation(reference):
    cwd, runs, _ = reference
    run = runs[0]
    run_cli(["mode=eval", f"checkpoint={run}", "infer.split=test", f"infer.output={cwd / 'eval.json'}"], cwd=cwd)
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((cwd / "eval.json").read_text())["test"] == metrics["test"]  # exact, every metric


def test_sigkill_and_resume_of_two_ranks_equals_the_uninterrupted_run(reference, tmp_path):
    _, runs, _ = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd([*RUN, f"hydra.run.dir={run}"]), cwd=tmp_path, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(run / "cli.log", "last.pt at step 20", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # every process of the job at once, like a lost machine
        proc.wait()
    assert not (run / "metrics.json").exists()
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 20 <= step < 96
    torchrun([f"trainer.resume={run}"], tmp_path)
    assert (run / "metrics.json").read_bytes() == (runs[0] / "metrics.json").read_bytes()
    # another world size is refused in one line, nothing written (a copy: the run dir gets the error)
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    r = run_cli([f"trainer.resume={other}"], cwd=tmp_path, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "mtl-train: error: trainer.resume: the checkpoint was written by 2 rank(s) and this run has 1 (WORLD_SIZE); "
        "resume with 2 rank(s): the global batch and every rank's data position depend on it")


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd([*RUN, "trainer.epochs=20", f"hydra.run.dir={run}"]), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "cli.log", "last.pt at step 10", proc)
        os.kill(_workers(proc.pid)[1], signal.SIGTERM)  # rank 1 only: rank 0 must stop with it
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (run / "cli.log").read_text()
    step = int(log.split("interrupted by SIGTERM after step ")[1].split(";")[0])
    assert f"[rank 1] WARNING mtl_train: interrupted by SIGTERM after step {step};" in err
    assert f"continue with trainer.resume={run} under the same launcher with 2 ranks" in log
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]  # no evaluation before step 32
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == step > 10
    assert not (run / "metrics.json").exists()


def test_loss_equal_two_ranks_equal_one_process_with_the_double_batch(tmp_path):
    args = [*DATA, "trainer.max_steps=20", "trainer.epochs=1"]
    torchrun([*args, "trainer.batch_size=16", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    run_cli([*args, "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path)
    two, one = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=False) for d in ("two", "one"))
    assert two["step"] == one["step"] == 20
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=0, atol=1e-5)


def test_streamed_parquet_on_two_ranks_finishes_its_epochs_with_uneven_shards(tmp_path):
    write_log(tmp_path / "train.parquet", 999, 0, row_group_size=100)  # 10 row groups, the last of 99 rows
    write_log(tmp_path / "val.parquet", 200, 1)
    (tmp_path / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(SCHEMA)))
    common = ["dataset=parquet", f"dataset.train_path={tmp_path / 'train.parquet'}",
              f"dataset.val_path={tmp_path / 'val.parquet'}", f"dataset.schema_file={tmp_path / 'schema.yaml'}",
              "dataset.mode=stream", "dataset.shuffle_buffer=64", "trainer.progress=false", "trainer.batch_size=32",
              "trainer.epochs=2", "model.expert_hidden=[8]", "model.num_experts=2"]
    torchrun([*common, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["world_size"] == 2 and info["epochs"] == 2 and info["steps"] >= 2 * 14  # 5 row groups per rank
    # a world size above the split's row groups: one line naming it, one run directory at most
    write_log(tmp_path / "one.parquet", 300, 0, row_group_size=1000)
    r = torchrun([*common, f"dataset.train_path={tmp_path / 'one.parquet'}", f"dataset.val_path={tmp_path / 'one.parquet'}",
                  "dataset.test_path=" + str(tmp_path / "one.parquet")], tmp_path, check=False)
    assert r.returncode != 0
    assert ("mtl-train: error: dataset: the streamed train split has 1 Parquet row group(s), fewer than the 2 ranks "
            "(WORLD_SIZE=2)") in r.stderr
    assert len(list(tmp_path.glob("outputs/*/*"))) == 1


def test_a_backend_the_device_lacks_is_one_line_before_anything_is_written(tmp_path):
    # refused before the process group forms: torchrun's environment alone, one process (the other
    # refusals of cli.distributed_overrides are unit-tested in tests/test_cli.py)
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}
    r = run_cli(["trainer.dist_backend=nccl", "trainer.device=cpu"], cwd=tmp_path, check=False, env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "mtl-train: error: trainer.dist_backend: nccl needs CUDA devices; this run trains on cpu (trainer.device), "
        "where gloo works")
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_loss_on_one_rank_is_skipped_by_every_rank_at_the_same_step(tmp_path):
    # one training row with a regression label of 1e30: its squared error is inf in float32, on
    # the rank whose slice holds it; the global losses make it inf on both, so both skip that
    # step (a rank skipping alone would leave the other waiting in DDP's all-reduce)
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for name, n, bad in (("train", 200, 37), ("val", 100, None)):
        revenue = rng.normal(size=n)
        if bad is not None:
            revenue[bad] = 1e30
        pq.write_table(pa.table({"city": rng.integers(0, 5, n), "x1": rng.normal(size=n),
                                 "click": (rng.random(n) < 0.3).astype(float), "revenue": revenue}),
                       tmp_path / f"{name}.parquet")
    (tmp_path / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"categorical": ["city"], "numeric": ["x1"], "tasks": ["click", {"name": "revenue", "type": "regression"}]})))
    proc = torchrun(["dataset=parquet", "dataset.train_path=train.parquet", "dataset.val_path=val.parquet",
                     "dataset.test_path=val.parquet", "dataset.schema_file=schema.yaml", "trainer.batch_size=16",
                     "trainer.epochs=2", "trainer.progress=false", "trainer.nonfinite=skip", "model.expert_hidden=[8]",
                     "model.num_experts=2", "trainer.dist_timeout_s=60", "hydra.run.dir=run"], tmp_path)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["world_size"] == 2 and info["nonfinite_skipped"] == 2  # the row once per epoch
    assert info["steps"] == 2 * (200 // 32 + 1) - 2  # 7 global batches per epoch, two skipped
    log = (tmp_path / "run" / "cli.log").read_text()
    skipped = sorted(int(line.split("non-finite loss at step ")[1].split()[0]) for line in log.splitlines()
                     if "non-finite loss at step" in line)
    assert len(skipped) == 2
    for step in skipped:  # rank 1 skipped the very same steps
        assert f"[rank 1] WARNING mtl_train.train.nonfinite: non-finite loss at step {step} in task 'revenue' (inf)" \
            in proc.stderr
