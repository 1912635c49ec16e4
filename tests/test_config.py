"""mtl_train.config: validation errors name the key; every experiment config validates."""
import pytest
from conftest import REPO
from helpers import make_cfg
from hydra import compose, initialize_config_module

from mtl_train.config import validate
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
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        make_cfg(*overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)
