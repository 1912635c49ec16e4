"""mtl-train: a training CLI for multi-task ranking models in recommender systems."""

__version__ = "0.1.0"


def _register_source_conf() -> None:
    """Make ``mtl_train.conf`` importable when this package is a source checkout.

    The installed package ships the repository's top-level ``conf/`` as ``mtl_train/conf``
    (pyproject.toml's ``package-dir``), and Hydra finds it as ``pkg://mtl_train.conf``. A
    checkout's own ``mtl_train/`` has no ``conf/``, yet it is the one imported whenever the
    repository root is on ``sys.path`` (``python -m mtl_train`` or a script run from the root),
    even when a non-editable install is present. In that case only, register the sibling
    ``conf/`` under that name (an editable install's import hook maps the same directory).
    """
    import importlib.util
    import sys
    from pathlib import Path

    name = __name__ + ".conf"
    here = Path(__file__).resolve().parent
    conf = here.parent / "conf"
    if name in sys.modules or (here / "conf").is_dir() or not (conf / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(name, conf / "__init__.py", submodule_search_locations=[str(conf)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["conf"] = module  # as the import system binds a loaded submodule on its parent


_register_source_conf()
