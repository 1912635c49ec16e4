"""Paths in the config: declared once on their fields, resolved against the launch directory."""
import os
from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from mtl_train import config, registry
from mtl_train.config import launch_dir, path_keys, resolve_path, set_launch_dir, validate_group


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
    schemas = [config.TrainerConfig, config.InferConfig]
    schemas += [e.config for g in registry.GROUPS for e in registry.options(g).values()]
    for schema in schemas:
        named = {f.name for f in fields(schema) if f.name in ("path", "input", "output", "resume")
                 or f.name.endswith(("_path", "_dir", "_file"))}
        assert named == set(path_keys(schema)), schema.__name__
