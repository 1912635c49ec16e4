"""Optional extras (``pip install ".[optuna]"``, ...): one check, one line when one is missing.

A feature that needs an optional package asks :func:`require_extra` before it uses it; a
missing package is then one line ``mtl-train: error: <feature> is not installed (in the
mtl-train clone: pip install ".[<extra>]")`` and exit status 2, never an ``ImportError``
traceback. The check never imports the module (a plugin's import may be slow or have side
effects) and survives the absence of its parent packages: ``hydra_plugins`` is a namespace
package that exists only when some Hydra plugin is installed, and
``importlib.util.find_spec("hydra_plugins.x")`` raises ``ModuleNotFoundError`` without it.
"""
from __future__ import annotations

import importlib.util

from mtl_train.errors import ConfigError


def has_module(module: str) -> bool:
    """Whether ``module`` (a dotted name) can be imported, without importing it; False when it
    or any parent package is missing, or a parent is not a package."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, AttributeError, ValueError):  # a missing parent, a parent that is not a package
        return False


def install_hint(extra: str) -> str:
    """The install command of an extra, e.g. ``pip install ".[optuna]"``."""
    return f'pip install ".[{extra}]"'


def missing_extra_message(extra: str, feature: str) -> str:
    """``<feature> is not installed (in the mtl-train clone: pip install ".[<extra>]")``."""
    return f"{feature} is not installed (in the mtl-train clone: {install_hint(extra)})"


def require_extra(module: str | tuple[str, ...], extra: str, feature: str) -> None:
    """Check that the optional ``module`` (or each of several) of the extra ``extra`` is installed.

    Args:
        module: a dotted module name, e.g. ``hydra_plugins.hydra_optuna_sweeper``, or a tuple of them.
        extra: the name in pyproject's ``[project.optional-dependencies]``, e.g. ``optuna``.
        feature: what needs it, opening the message, e.g. ``hydra/sweeper=optuna: the Optuna sweeper``.

    Raises:
        ConfigError: one line naming ``feature`` and the install command.
    """
    if not all(has_module(m) for m in ((module,) if isinstance(module, str) else module)):
        raise ConfigError(missing_extra_message(extra, feature))


# the optional features of the command line: (module, extra, feature)
OPTUNA = (("hydra_plugins.hydra_optuna_sweeper", "optuna"), "optuna", "hydra/sweeper=optuna: the Optuna sweeper")
EXPORT = (("onnx", "onnxscript", "onnx_ir", "onnxruntime"), "export",
          "mode=export: the ONNX format (onnx, onnxscript, onnxruntime)")
REPORT_PLOT = ("matplotlib", "report", "the plot of mtl-report (matplotlib)")  # a base dependency; checked gracefully
