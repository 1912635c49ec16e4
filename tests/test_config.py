"""mtl_train.config: validation errors name the key; every experiment config validates."""

import os
from dataclasses import fields

import pytest
from conftest import REPO
from helpers import make_cfg
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mtl_train import config, registry
from mtl_train.config import launch_dir, path_keys, resolve_path, set_launch_dir, validate, validate_group
from mtl_train.errors import ConfigError


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_validates_and_sweeps_known_keys(name):
    """Each experiment config composes, passes the typed schemas, and sweeps only keys and options
    that exist (checked for every value of a group axis)."""
    if name.endswith("_optuna"):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    from omegaconf import OmegaConf

    from mtl_train.cli import GROUPS, group_options

    with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert params, f"{name} sweeps nothing"
        for key, spec in params.items():
            if key in GROUPS:
                for option in str(spec).split(","):
                    assert option.strip() in group_options(key), (key, option)
                    one = compose(config_name="config", overrides=[f"experiment={name}", f"{key}={option.strip()}"])
                    validate(one)
            else:
                assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key
        validate(compose(config_name="config", overrides=[f"experiment={name}"]))


@pytest.mark.parametrize("overrides, needle", [
    (["mode=serve"], "mode: 'serve' is not one of train, eval, predict"),
    (["trainer.scheduler=linear"], "trainer.scheduler: 'linear' is not one of none, cosine, step"),
    (["trainer.nonfinite=ignore"], "trainer.nonfinite"),
    (["trainer.checkpoint_every_steps=0"], "trainer.checkpoint_every_steps: must be positive"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps: must not be negative"),
    (["trainer.gamma=abc"], "trainer.gamma"),
    (["infer.split=dev"], "infer.split: 'dev'"),
    (["infer.batch_size=0"], "infer.batch_size: must be positive"),
    (["+infer.splt=val"], "infer.splt: unknown key"),
    (["+trainr={}"], "trainr: unknown top-level config key"),
    (["+trainer.lr_decay=1"], "trainer.lr_decay: unknown key"),
    (["export.formats=[pt2,tflite]"], "export.formats: unknown format 'tflite' (choose from pt2, onnx)"),
    (["export.formats=[]"], "export.formats: give at least one of pt2, onnx"),
    (["export.formats=[onnx,onnx]"], "export.formats: ['onnx', 'onnx'] names a format twice"),
    (["export.split=dev"], "export.split: 'dev'"),
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        make_cfg(*overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def launched(tmp_path):
    set_launch_dir(str(tmp_path))
    yield tmp_path
    set_launch_dir(None)


def test_resolve_path_expands_home_and_joins_the_launch_directory(launched, monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    assert launch_dir() == str(launched)
    assert resolve_path("data/x.csv") == str(launched / "data" / "x.csv")
    assert resolve_path("~/x.csv") == "/home/someone/x.csv"
    assert resolve_path("/abs/./x.csv") == "/abs/x.csv"
    assert resolve_path("logs/day=*/part-*.parquet") == str(launched / "logs" / "day=*" / "part-*.parquet")
    assert resolve_path("s3://bucket/x") == "s3://bucket/x"
    assert resolve_path(None) is None and resolve_path("") == ""


def test_without_a_recorded_launch_directory_the_current_one_is_meant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert launch_dir() == os.getcwd()


def test_validation_resolves_every_path_field_whatever_the_working_directory(launched, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # hydra.job.chdir=true: the run's directory
    ds = validate_group("dataset", OmegaConf.create({"name": "parquet", "train_path": "d/*.parquet",
                                                     "schema_file": "s.yaml", "cache_dir": "c"}))
    assert (ds.train_path, ds.schema_file, ds.cache_dir, ds.val_path) == \
        (f"{launched}/d/*.parquet", f"{launched}/s.yaml", f"{launched}/c", None)
    tr = validate_group("trainer", OmegaConf.create({"resume": "outputs/run"}))
    assert tr.resume == f"{launched}/outputs/run"
    typed = config._typed("infer", config.InferConfig, OmegaConf.create({"input": "new.csv", "output": "p.parquet"}))
    assert (typed.input, typed.output) == (f"{launched}/new.csv", f"{launched}/p.parquet")


def test_every_field_that_names_a_file_or_folder_is_declared_a_path():
    """The kind, not the example: a new dataset's ``*_path``/``*_dir``/``*_file`` field that is
    not declared ``param(..., path=True)`` would be read relative to the run directory."""
    schemas = [config.TrainerConfig, config.InferConfig, config.ExportConfig]
    schemas += [e.config for g in registry.GROUPS for e in registry.options(g).values()]
    for schema in schemas:
        named = {f.name for f in fields(schema) if f.name in ("path", "input", "output", "resume")
                 or f.name.endswith(("_path", "_dir", "_file"))}
        assert named == set(path_keys(schema)), schema.__name__
