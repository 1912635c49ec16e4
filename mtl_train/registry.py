"""One registration per method: datasets, backbones, task graphs and balancers.

A method declares its typed config (a dataclass whose fields carry their defaults, their
constraints and a docstring, see :func:`param`) beside its class, and registers with one line::

    @dataclass
    class RLWConfig:
        name: str = "rlw"
        seed: int = param(0, "seed of the weights' generator", non_negative=True)

    @register("loss", "rlw", RLWConfig)
    class RLW(Balancer):
        ...

Every table that needs the list of options (the config schemas, the model builder, the
balancer factory, the dataset loader) reads it from here; the modules of each group's package
are imported on first use (:func:`options`), so adding a method touches its module and its
YAML under ``conf/<group>/``, nothing else.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Optional

from mtl_train.errors import ConfigError

# group -> (package whose modules register its options, the config key that selects one)
GROUPS: dict[str, tuple[str, str]] = {
    "dataset": ("mtl_train.data.datasets", "name"),
    "model": ("mtl_train.models.backbones", "backbone"),
    "graph": ("mtl_train.models.graphs", "name"),
    "loss": ("mtl_train.balancing", "name"),
}


@dataclass(frozen=True)
class Entry:
    """One registered option: ``target`` is the class (or loader function) and ``config`` the
    dataclass of its config group."""

    group: str
    name: str
    target: Any
    config: type


_REGISTRY: dict[str, dict[str, Entry]] = {g: {} for g in GROUPS}
_DISCOVERED: set[str] = set()


def register(group: str, name: str, config: type) -> Callable[[Any], Any]:
    """Class (or function) decorator: register ``target`` as option ``name`` of ``group``.

    Raises:
        ValueError: unknown group, a name registered twice, or a config that is not a dataclass.
    """
    if group not in GROUPS:
        raise ValueError(f"register: unknown group '{group}' (one of {sorted(GROUPS)})")
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"register({group!r}, {name!r}): config must be a dataclass, got {config!r}")

    def deco(target):
        old = _REGISTRY[group].get(name)
        if old is not None and old.target is not target:
            raise ValueError(f"register: {group} option '{name}' is registered twice "
                             f"({old.target.__module__} and {target.__module__})")
        _REGISTRY[group][name] = Entry(group, name, target, config)
        return target

    return deco


def _discover(group: str) -> None:
    if group in _DISCOVERED:
        return
    package = importlib.import_module(GROUPS[group][0])
    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{mod.name}")
    _DISCOVERED.add(group)


def options(group: str) -> dict[str, Entry]:
    """Every registered option of ``group`` (its package's modules imported on first call)."""
    _discover(group)
    return dict(_REGISTRY[group])


def get(group: str, name: Optional[str]) -> Entry:
    """The entry of option ``name`` of ``group``.

    Raises:
        ConfigError: ``<group>.<selector>: unknown value ...`` naming the choices.
    """
    opts = options(group)
    if name not in opts:
        raise ConfigError(f"{group}.{GROUPS[group][1]}: unknown value '{name}' (choose from {sorted(opts)})")
    return opts[name]


def param(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Optional[Callable[[], Any]] = None,
          positive: bool = False, non_negative: bool = False, choices: Optional[tuple] = None,
          path: bool = False) -> Any:
    """A config field with its default, docstring and constraints (checked by
    :func:`mtl_train.config.validate`): ``positive`` (> 0 where set), ``non_negative`` (>= 0),
    ``choices`` (a closed set of values). ``factory`` gives a mutable default (a list, a dict).
    ``path``: a file system path given by the user (a file, directory or glob); validation
    resolves it, ``~`` expanded, against the directory mtl-train was launched in (whatever
    ``hydra.job.chdir`` says), so the stored config holds it absolute.
    """
    meta = {"doc": doc, "positive": positive, "non_negative": non_negative,
            "choices": tuple(choices) if choices is not None else None, "path": path}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_meta(config: type, name: str) -> dict:
    """What :func:`param` declared for field ``name`` of the dataclass ``config``: ``doc``,
    ``positive``, ``non_negative``, ``choices`` and ``path`` (empty values for a plain field).

    Raises:
        KeyError: ``config`` has no field ``name``.
    """
    for f in dataclasses.fields(config):
        if f.name == name:
            return {"doc": "", "positive": False, "non_negative": False, "choices": None, "path": False, **f.metadata}
    raise KeyError(f"{config.__name__} has no field '{name}'")


def defaults(config: type) -> dict[str, Any]:
    """The default of every field of the dataclass ``config`` ({name: value}; a required field,
    one without default, is left out)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
