"""The config eval/predict score with: the checkpoint's, its dataset's paths changeable."""
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mtl_train.config import set_launch_dir, validate
from mtl_train.errors import ConfigError
from mtl_train.train.infer import checkpoint_config


def _stored(*overrides) -> dict:
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return OmegaConf.to_container(validate(compose("config", overrides=list(overrides))), resolve=True)


def test_a_dataset_path_change_applies_to_the_checkpoints_dataset(tmp_path):
    stored = _stored("dataset=hillstrom", "dataset.path=/old/hillstrom.csv", "dataset.max_rows=10")
    assert checkpoint_config(stored).dataset.path == "/old/hillstrom.csv"
    set_launch_dir(str(tmp_path))
    try:
        cfg = checkpoint_config(stored, {"name": "hillstrom", "path": "new/h.csv", "cache_dir": "~/c"})
    finally:
        set_launch_dir(None)
    assert cfg.dataset.path == str(tmp_path / "new" / "h.csv") and cfg.dataset.max_rows == 10
    assert not cfg.dataset.cache_dir.startswith("~")


@pytest.mark.parametrize("change, message", [
    ({"name": "census"}, "dataset=census: this checkpoint was trained on dataset=hillstrom, which eval/predict score; "
                         "point it at other files with dataset.<path key>=..., or score a file with infer.input=..."),
    ({"split_seed": 3}, "dataset.split_seed: eval/predict keep the checkpoint's dataset config; only its paths may be "
                        "given (dataset.path, dataset.cache_dir); score another file with infer.input=..."),
    ({"nope": 1}, "dataset.nope: eval/predict keep the checkpoint's dataset config; only its paths may be given "
                  "(dataset.path, dataset.cache_dir); score another file with infer.input=..."),
])
def test_any_other_dataset_change_is_refused_in_one_line(change, message):
    stored = _stored("dataset=hillstrom", "dataset.path=/old/hillstrom.csv")
    with pytest.raises(ConfigError) as e:
        checkpoint_config(stored, change)
    assert str(e.value) == message


def test_a_dataset_without_paths_says_so():
    with pytest.raises(ConfigError, match=r"^dataset.train_rows: .* \(none for dataset=synthetic\); "):
        checkpoint_config(_stored(), {"train_rows": 5})
