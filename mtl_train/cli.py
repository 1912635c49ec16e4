"""The ``mtl-train`` entry point: a Hydra app over the config groups in ``conf/``.

    mtl-train dataset=census dataset.path=census-income.test.gz model=ple loss=gradnorm
    mtl-train -m model=mmoe,ple loss=equal,gradnorm        # a sweep, one directory per job

Bad input (an unknown option or key, a missing file or column) ends the run with one line
``mtl-train: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from importlib import resources

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtl_train.errors import ConfigError, MtlError

log = logging.getLogger("mtl_train")

GROUPS = ("dataset", "model", "graph", "loss", "trainer")
_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def _uid() -> str:
    """A token unique to this process (pid + random), fixed for its lifetime so that all jobs
    of one sweep share a sweep directory while two runs started in the same second differ."""
    return _UID


if not OmegaConf.has_resolver("mtl_uid"):
    OmegaConf.register_new_resolver("mtl_uid", _uid)


def _conf_root():
    return resources.files("mtl_train.conf")


def group_options(group: str) -> list[str]:
    """Names of the options of a config group (the YAML files in ``conf/<group>/``)."""
    d = _conf_root() / group
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml")) if d.is_dir() else []


def _default_choices() -> dict[str, str]:
    root = OmegaConf.load(str(_conf_root() / "config.yaml"))
    out = {}
    for item in root.get("defaults", []):
        if isinstance(item, DictConfig):
            for k, v in item.items():
                out[str(k)] = str(v)
    return out


def precheck_overrides(args: list[str]) -> None:
    """Catch the commonest command-line mistakes before Hydra composes the config, so that
    each gets one clear line: an unknown option of a group (``model=mmeo``) and an unknown
    key of a group (``model.num_expert=4``, ``trainr.lr=1``).

    Sweep values (``model=mmoe,ple``) are checked one by one; overrides with ``+``/``~``
    prefixes, Hydra's own (``hydra/...``, ``hydra.*``) and sweep functions are left to Hydra
    and the typed schemas.

    Raises:
        ConfigError: naming the group and option, or the key.
    """
    choices = _default_choices()
    dotted = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg or arg[0] in "+~":
            continue
        key, value = arg.split("=", 1)
        if key.startswith("hydra") or "/" in key or "(" in value:
            continue
        if key in GROUPS or key == "experiment":
            options = group_options(key)
            values = value.split(",")
            for v in values:
                if v not in options:
                    raise ConfigError(f"{key}={v}: unknown {key} '{v}' (choose from {', '.join(options)})")
            choices[key] = values[0]
        elif "." in key:
            dotted.append(key)
        elif key not in ("seed", "mode"):
            raise ConfigError(f"{key}: unknown config key (groups: {', '.join(GROUPS)}; top-level keys: seed)")
    for key in dotted:
        group, sub = key.split(".", 1)
        if group not in GROUPS:
            raise ConfigError(f"{key}: unknown config group '{group}' (choose from {', '.join(GROUPS)})")
        first = sub.split(".", 1)[0]
        option = choices.get(group)
        if option is None or option not in group_options(group):
            continue
        known = OmegaConf.load(str(_conf_root() / group / f"{option}.yaml"))
        if first not in known:
            raise ConfigError(
                f"{key}: unknown key '{first}' for {group}={option} (known keys: {', '.join(map(str, known.keys()))})"
            )


def _fail(err: Exception) -> None:
    print(f"mtl-train: error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="pkg://mtl_train.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One training run (one job of a sweep); returns the val monitor value (the sweep objective)."""
    from mtl_train.config import validate
    from mtl_train.train.trainer import monitor_value, run

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        typed = validate(cfg)
        t0 = time.perf_counter()
        results = run(typed, run_dir)
    except MtlError as e:
        _fail(e)
    log.info("run finished in %.1f s: %s", time.perf_counter() - t0, run_dir)
    for split in ("val", "test"):
        for name, m in results[split].items():
            shown = " ".join(f"{k}={v:.4f}" for k, v in m.items() if k in ("auc", "logloss", "mse", "r2") and v is not None)
            print(f"{split:5s} {name:20s} {shown}")
    return monitor_value(results["val"], typed.trainer.monitor)


def main() -> None:
    """Console-script entry point (``mtl-train``, ``python -m mtl_train``)."""
    try:
        precheck_overrides(sys.argv[1:])
    except MtlError as e:
        _fail(e)
    app()


if __name__ == "__main__":
    main()
