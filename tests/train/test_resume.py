"""mtl_train.train.resume: refusal to overwrite, the resume config, resumed runs equal longer ones."""
import json

import pytest
import torch
from helpers import SCHEMA, TINY, make_cfg, write_log

from mtl_train.errors import ConfigError, DataError


def test_a_directory_with_a_checkpoint_is_refused_unless_resuming(tmp_path):
    from mtl_train.cli import resume_overrides
    from mtl_train.train.trainer import run

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        run(make_cfg(*TINY), str(tmp_path))
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        resume_overrides([f"hydra.run.dir={tmp_path}"])
    (tmp_path / ".hydra").mkdir()
    assert resume_overrides([f"trainer.resume={tmp_path}"]) == [f"hydra.run.dir='{tmp_path}'",
                                                                 "hydra.output_subdir=.hydra/resume-1"]
    assert resume_overrides([f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}"])[0] == \
        f"hydra.run.dir='{tmp_path}'"
    with pytest.raises(DataError, match="not a readable checkpoint"):
        run(make_cfg(*TINY, f"trainer.resume={tmp_path}"), str(tmp_path))
    with pytest.raises(ConfigError, match="trainer.resume: no such file or run directory: .*/nope"):
        run(make_cfg(*TINY, f"trainer.resume={tmp_path / 'nope'}"), str(tmp_path / "new"))


def test_resume_config_keeps_the_run_config_and_refuses_changes():
    from omegaconf import OmegaConf

    from mtl_train.train.resume import resume_config

    stored = OmegaConf.to_container(make_cfg("model=ple", "trainer.lr=0.01"))
    current = make_cfg("trainer.resume=/x", "trainer.epochs=4")
    cfg = resume_config(stored, current, ["trainer.resume", "trainer.epochs"])
    assert cfg.model.name == "ple" and cfg.trainer.lr == 0.01 and cfg.trainer.epochs == 4
    assert cfg.trainer.resume == "/x"
    with pytest.raises(ConfigError, match="trainer.lr: differs from the run being resumed"):
        resume_config(stored, make_cfg("trainer.lr=0.1"), ["trainer.lr"])
    with pytest.raises(ConfigError, match="model: differs"):
        resume_config(stored, make_cfg("model=mmoe"), ["model"])


def test_a_finished_run_resumed_with_more_epochs_equals_a_longer_run(tmp_path):
    from mtl_train.train.trainer import run

    run(make_cfg(*TINY, "trainer.epochs=2", "trainer.patience=null"), str(tmp_path / "long"))
    short = tmp_path / "short"
    run(make_cfg(*TINY, "trainer.patience=null"), str(short))
    assert json.loads((short / "run.json").read_text())["steps"] == 32
    run(make_cfg(f"trainer.resume={short}", "trainer.epochs=2"), str(short), ["trainer.resume", "trainer.epochs"])
    assert json.loads((short / "run.json").read_text())["steps"] == 64
    assert (short / "metrics.json").read_bytes() == (tmp_path / "long" / "metrics.json").read_bytes()


def test_a_parquet_run_resumed_where_mode_auto_would_stream_reads_as_the_interrupted_run(tmp_path, monkeypatch):
    # the data position {epoch, batch} depends on how the train split is read; a machine with less
    # memory would make dataset.mode=auto stream it, repeating some rows and skipping others
    from omegaconf import OmegaConf

    from mtl_train.data import parquet as pqd
    from mtl_train.train.trainer import run

    write_log(tmp_path / "train.parquet", 600, 0)
    write_log(tmp_path / "val.parquet", 200, 1)
    (tmp_path / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(SCHEMA)))
    common = ["dataset=parquet", f"dataset.train_path={tmp_path / 'train.parquet'}",
              f"dataset.val_path={tmp_path / 'val.parquet'}", f"dataset.schema_file={tmp_path / 'schema.yaml'}",
              f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.progress=false", "trainer.progress=false",
              "trainer.batch_size=64", "trainer.epochs=1", "trainer.patience=null", "trainer.device=cpu",
              "model.expert_hidden=[8]", "model.num_experts=2"]
    run(make_cfg(*common), str(tmp_path / "whole"))
    part = tmp_path / "part"
    run(make_cfg(*common, "trainer.max_steps=3"), str(part))
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=False)["data"]["kind"] == "memory"
    monkeypatch.setattr(pqd, "memory_budget", lambda mb: 1)  # now mode=auto would stream every split
    run(make_cfg(f"trainer.resume={part}", "trainer.max_steps=null"), str(part), ["trainer.resume", "trainer.max_steps"])
    # the same rows in the same order: the final weights equal the uninterrupted run's (the labels of
    # write_log are random, so best.pt, which the extra evaluation at step 3 may pick, is not compared)
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=False) for d in (tmp_path / "whole", part))
    assert a["step"] == b["step"] == 9 and a["data"] == b["data"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.cuda
def test_a_cuda_run_resumed_with_its_cuda_rng_equals_a_longer_run(tmp_path):
    from mtl_train.train.trainer import run

    # dropout draws from the CUDA generator: the checkpoint must restore it for the second epoch to match
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        over = [*TINY, "trainer.device=cuda", "model.dropout=0.2", "trainer.patience=null"]
        run(make_cfg(*over, "trainer.epochs=2"), str(tmp_path / "long"))
        short = tmp_path / "short"
        run(make_cfg(*over), str(short))
        assert "cuda" in torch.load(short / "checkpoints" / "last.pt", weights_only=False)["rng"]
        run(make_cfg(f"trainer.resume={short}", "trainer.epochs=2"), str(short), ["trainer.resume", "trainer.epochs"])
        assert (short / "metrics.json").read_bytes() == (tmp_path / "long" / "metrics.json").read_bytes()
    finally:
        torch.use_deterministic_algorithms(False)
