import importlib.util

import pytest

from mtl_train import extras
from mtl_train.errors import ConfigError


def _without_hydra_plugins(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name == "hydra_plugins" or name.startswith("hydra_plugins."):
            raise ModuleNotFoundError("No module named 'hydra_plugins'", name="hydra_plugins")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_a_missing_namespace_parent_is_a_missing_extra_not_a_crash(monkeypatch):
    _without_hydra_plugins(monkeypatch)
    assert not extras.has_module("hydra_plugins.hydra_optuna_sweeper")
    with pytest.raises(ConfigError) as e:
        extras.require_extra(*extras.OPTUNA)
    assert str(e.value) == ('hydra/sweeper=optuna: the Optuna sweeper is not installed '
                            '(in the mtl-train clone: pip install ".[optuna]")')


def test_require_extra_names_the_feature_and_the_extra():
    assert extras.has_module("json") and not extras.has_module("no_such_pkg.sub") and not extras.has_module("json.x.y")
    extras.require_extra("json", "x", "y")
    with pytest.raises(ConfigError, match=r'^mtl-train export: the export is not installed \(in the mtl-train clone: '
                                          r'pip install "\.\[export\]"\)$'):
        extras.require_extra(("json", "no_such_pkg"), "export", "mtl-train export: the export")
