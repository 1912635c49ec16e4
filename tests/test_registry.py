"""The registry is the one list of options: each YAML states its dataclass's defaults, and the
constraints declared on the fields give the one-line errors of config validation."""
from dataclasses import fields

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from mtl_train import registry
from mtl_train.config import ExportConfig, InferConfig, Objective, TrainerConfig, validate_group
from mtl_train.data.spec import ParquetSchema
from mtl_train.errors import ConfigError


def _yaml(path) -> dict:
    d = OmegaConf.to_container(OmegaConf.load(path))
    d.pop("defaults", None)  # a preset's Hydra defaults list (model=esmm selects graph=esmm)
    return d


@pytest.mark.parametrize("group", sorted(registry.GROUPS))
def test_each_yaml_states_its_dataclass_defaults(group):
    """conf/<group>/<option>.yaml, where <option> is registered, lists every field of the option's
    dataclass with its default, no more, no less. Any other YAML of the group is a preset (model=omoe,
    cgc, esmm...): it selects a registered option, is named after its file, and may override only
    fields that option has. Every registered option has its YAML or is selected by a preset."""
    selector = registry.GROUPS[group][1]
    opts = registry.options(group)
    used = set()
    for path in sorted((REPO / "conf" / group).glob("*.yaml")):
        values = _yaml(path)
        assert values[selector] in opts, (path.name, values[selector])
        config = opts[values[selector]].config
        used.add(values[selector])
        if path.stem in opts:
            assert values[selector] == path.stem, path.name
            assert values == registry.defaults(config), path.name
        else:
            assert values["name"] == path.stem, path.name
            unknown = set(values) - {f.name for f in fields(config)}
            assert not unknown, (path.name, unknown)
    assert set(opts) <= used | {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}


def test_trainer_infer_objective_and_export_yaml_state_their_dataclass_defaults():
    assert _yaml(REPO / "conf" / "trainer" / "default.yaml") == registry.defaults(TrainerConfig)
    top = _yaml(REPO / "conf" / "config.yaml")
    assert top["infer"] == registry.defaults(InferConfig)
    assert top["objective"] == registry.defaults(Objective)
    assert top["export"] == registry.defaults(ExportConfig)


@pytest.mark.parametrize("group", sorted(registry.GROUPS))
def test_every_field_has_a_docstring(group):
    """Each field but the selector (``name``, ``backbone``) says what it is; the Parquet column
    schema's fields are documented in conf/dataset/parquet.yaml."""
    skip = {"name", "backbone"} | {f.name for f in fields(ParquetSchema)}
    for name, entry in registry.options(group).items():
        for f in fields(entry.config):
            if f.name not in skip:
                assert registry.field_meta(entry.config, f.name)["doc"], (group, name, f.name)


@pytest.mark.parametrize("group, cfg, message", [
    ("loss", {"name": "dwa", "temperature": 0}, "loss.temperature: must be positive, got 0"),
    ("loss", {"name": "gradnorm", "lr": -1.0}, "loss.lr: must be positive, got -1.0"),
    ("loss", {"name": "gradnorm", "target": "x"}, "loss.target: 'x' is not one of last_shared_layer, "
                                                 "shared_representation"),
    ("loss", {"name": "mgda", "normalization": "l1"}, "loss.normalization: 'l1' is not one of none, l2, loss, loss+"),
    ("loss", {"name": "nope"}, "loss.name: unknown value 'nope' (choose from ["),
    ("graph", {"name": "gmsl", "order_weight": -0.5}, "graph.order_weight: must not be negative, got -0.5"),
    ("model", {"name": "mmoe", "backbone": "mmoe", "num_experts": 0}, "model.num_experts: must be positive, got 0"),
    ("model", {"name": "x", "backbone": "mmoe", "num_expert": 2}, "model.num_expert: unknown key for model 'mmoe'"),
    ("dataset", {"name": "parquet", "mode": "disk"}, "dataset.mode: 'disk' is not one of auto, memory, stream"),
    ("dataset", {"name": "synthetic", "train_rows": 0}, "dataset.train_rows: must be positive, got 0"),
    ("trainer", {"min_lr_ratio": -1}, "trainer.min_lr_ratio: must not be negative, got -1"),
])
def test_constraints_declared_on_fields_give_one_line_errors(group, cfg, message):
    with pytest.raises(ConfigError) as e:
        validate_group(group, OmegaConf.create(cfg))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_register_refuses_a_name_twice_and_a_non_dataclass():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("loss", "equal", registry.get("loss", "dwa").config)(registry.get("loss", "dwa").target)
    with pytest.raises(ValueError, match="must be a dataclass"):
        registry.register("loss", "x", dict)
    with pytest.raises(ValueError, match="unknown group"):
        registry.register("losses", "x", TrainerConfig)


def test_precheck_leans_on_hydras_public_api(monkeypatch):
    """The command-line precheck composes with Hydra's public API (no ``hydra._internal``) and
    turns Hydra's own missing-option error into one line (here: the Optuna sweeper not installed)."""
    import hydra
    from hydra.errors import MissingConfigException

    from mtl_train import cli

    assert "hydra._internal" not in (REPO / "mtl_train" / "cli.py").read_text()

    def missing(*args, **kwargs):
        raise MissingConfigException("In 'hydra/config': Could not find 'hydra/sweeper/optuna'\n\nAvailable options...",
                                     "hydra/sweeper/optuna", ["basic"])

    monkeypatch.setattr(hydra, "compose", missing)
    with pytest.raises(ConfigError) as e:
        cli.precheck_overrides(["experiment=census_optuna"])
    assert str(e.value) == ('hydra/sweeper=optuna: the Optuna sweeper is not installed '
                            '(in the mtl-train clone: pip install ".[optuna]")')
    with pytest.raises(ConfigError, match="loss.temperature: unknown key 'temperature' for loss=rlw"):
        monkeypatch.undo()
        cli.precheck_overrides(["loss=rlw", "loss.temperature=3"])
