"""mtl_train.cli in process: error routing, override prechecks, presets."""

import pytest
from hydra import compose, initialize_config_module

from mtl_train.errors import ConfigError


def test_an_error_is_not_written_into_another_runs_directory(tmp_path):
    import logging

    from mtl_train import cli
    from mtl_train.errors import ConfigError

    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("{}")
    assert cli._holds_a_run(str(done)) and not cli._holds_a_run(str(tmp_path / "fresh"))
    cli._record_error(str(done), ConfigError("refused"), foreign=True)
    assert sorted(p.name for p in done.iterdir()) == ["metrics.json"]
    fresh = tmp_path / "fresh"
    handler = logging.FileHandler(tmp_path / "x.log")
    logging.getLogger().addHandler(handler)
    try:
        cli._record_error(str(fresh), ConfigError("bad value"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (fresh / "error.txt").read_text() == "bad value\n"
    assert "error: bad value" in (tmp_path / "x.log").read_text()


def test_eval_and_predict_move_dataset_overrides_to_the_checkpoints_dataset():
    from mtl_train.cli import eval_dataset_overrides

    args = ["mode=eval", "checkpoint=r", "dataset=hillstrom", "dataset.path=d/h.csv", "--config-dir", "dataset.x=1"]
    assert eval_dataset_overrides(args) == ["mode=eval", "checkpoint=r", "+infer.dataset.name=hillstrom",
                                            "+infer.dataset.path=d/h.csv", "--config-dir", "dataset.x=1"]
    train = ["dataset=hillstrom", "dataset.path=d/h.csv"]
    assert eval_dataset_overrides(train) == train
    # mode=export checks itself on rows of the checkpoint's dataset, which these point at too
    assert eval_dataset_overrides(["mode=export", *train]) == ["mode=export", "+infer.dataset.name=hillstrom",
                                                               "+infer.dataset.path=d/h.csv"]


def test_path_overrides_are_made_absolute_before_hydra_records_them(tmp_path):
    from mtl_train.cli import absolute_path_overrides
    from mtl_train.config import set_launch_dir

    set_launch_dir(str(tmp_path))
    try:
        out = absolute_path_overrides(["dataset.path=d/h.csv", "+infer.dataset.path=x.csv", "checkpoint=run",
                                       "infer.output=null", "dataset.train_path=a.csv,b.csv", "model.num_experts=4",
                                       "hydra.run.dir=rel", "dataset.cache_dir=${oc.env:HOME}/c", "export.output=e"])
    finally:
        set_launch_dir(None)
    assert out == [f"dataset.path='{tmp_path}/d/h.csv'", f"+infer.dataset.path='{tmp_path}/x.csv'",
                   f"checkpoint='{tmp_path}/run'", "infer.output=null", "dataset.train_path=a.csv,b.csv",
                   "model.num_experts=4", "hydra.run.dir=rel", "dataset.cache_dir=${oc.env:HOME}/c",
                   f"export.output='{tmp_path}/e'"]


def test_presets_select_their_graph_and_precheck_accepts_combinations():

    from mtl_train.cli import precheck_overrides

    with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
        for preset in ("esmm", "dbmtl", "gmsl", "aitm"):
            c = compose("config", overrides=[f"model={preset}"])
            assert c.graph.name == preset and c.model.backbone == "shared_embedding"
        c = compose("config", overrides=["model=esmm", "graph=independent"])
        assert c.graph.name == "independent"  # the command line wins over the preset
        c = compose("config", overrides=["model=ple", "graph=esmm", "loss=gradnorm"])
        assert (c.model.backbone, c.graph.name, c.loss.name) == ("ple", "esmm", "gradnorm")
    precheck_overrides(["model=ple", "graph=esmm", "loss=gradnorm"])
    precheck_overrides(["model=aitm", "graph.calibrator_weight=0.3"])
    precheck_overrides(["model=esmm", "graph=dbmtl", "graph.head_hidden=[8]"])
    with pytest.raises(ConfigError, match="graph.calibrator_weight"):
        precheck_overrides(["model=aitm", "graph=esmm", "graph.calibrator_weight=0.3"])


def test_precheck_knows_top_level_keys_and_infer():
    from mtl_train.cli import precheck_overrides

    precheck_overrides(["mode=eval", "checkpoint=/x", "infer.split=val", "trainer.resume=/y"])
    with pytest.raises(ConfigError, match="infer.splt"):
        precheck_overrides(["infer.splt=val"])
    with pytest.raises(ConfigError, match="modee"):
        precheck_overrides(["modee=eval"])
    # Hydra's flags and their values are not overrides: a config dir with '=' in its name,
    # shell completion's install=bash; valid override forms pass the grammar check
    precheck_overrides(["--config-dir", "/tmp/cd=1", "--cfg", "job", "model=ple"])
    precheck_overrides(["-sc", "install=bash"])
    precheck_overrides(["-m", "model=mmoe,ple", "seed=range(3)", "trainer.lr=choice(0.1,0.01)", "+x=1", "~seed",
                        "hydra/sweeper=basic", "dataset=parquet", "dataset.train_path='logs/day=*/p.parquet'",
                        "graph.tower_hidden=[8,4]"])
    with pytest.raises(ConfigError, match="Hydra cannot parse"):
        precheck_overrides(["--config-dir", "/tmp", "dataset.train_path=logs/day=*/p.parquet"])


TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}


@pytest.mark.parametrize("args, message", [
    (["-m", "seed=0,1"], "-m/--multirun: a sweep does not run under torchrun or srun (WORLD_SIZE=2); launch one "
                         "distributed job per configuration (e.g. a shell loop over torchrun)"),
    (["mode=predict", "checkpoint=x"], "mode=predict: scores a checkpoint in one process; run it without torchrun or srun"),
    (["trainer.dist_timeout_s=-1"], "trainer.dist_timeout_s: must be a positive number of seconds, got '-1'"),
    (["trainer.dist_backend=mpi"], "trainer.dist_backend: 'mpi' is not one of gloo, nccl"),
])
def test_distributed_overrides_refuse_before_joining_the_process_group(monkeypatch, args, message):
    from mtl_train import distributed
    from mtl_train.cli import distributed_overrides, precheck_overrides

    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        distributed_overrides(args, precheck_overrides(args))
    assert str(e.value) == message and not distributed.is_distributed()


def test_a_refusal_before_the_process_group_names_the_rank_that_prints_it(monkeypatch, capsys):
    from mtl_train import cli

    for rank, who in (("1", "[rank 1] "), ("0", "")):
        monkeypatch.setattr("sys.argv", ["mtl-train", "-m", "seed=0,1"])
        for k, v in {**TORCHRUN_ENV, "RANK": rank}.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == 2
        assert capsys.readouterr().err == (f"mtl-train: error: {who}-m/--multirun: a sweep does not run under torchrun "
                                           "or srun (WORLD_SIZE=2); launch one distributed job per configuration (e.g. a "
                                           "shell loop over torchrun)\n")


def test_distributed_overrides_change_nothing_for_one_process(monkeypatch):
    from mtl_train.cli import distributed_overrides, precheck_overrides

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    args = ["-m", "seed=0,1", "hydra.output_subdir=x"]
    assert distributed_overrides(args, precheck_overrides(args)) == args
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node=1: one process, nothing changes
    assert distributed_overrides(args, precheck_overrides(args)) == args


def test_help_imports_no_torch_and_lists_every_group():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mtl_train", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "torch" not in imported and "hydra" in imported
    assert "dataset: aliccp, aliexpress, census, hillstrom, mmoe_synthetic, parquet, synthetic\n" in out.stdout
    assert "loss: cagrad, dwa, equal, gradnorm, gradnorm_pcgrad, mgda, pcgrad, rlw, static, uncertainty\n" in out.stdout
