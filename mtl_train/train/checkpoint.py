"""Checkpoint files: written atomically (temporary file in the same folder, fsync, rename),
found from a run directory or a file, and loaded with one-line errors.

What a training checkpoint (``checkpoints/last.pt``, ``checkpoints/best.pt``) holds is declared
in :mod:`mtl_train.train.state`: the model, optimizers, LR schedulers, balancer, data position,
RNG states and progress of the run, its resolved config and its
:class:`~mtl_train.data.schema.FeatureSchema` (with the fitted encoders where the dataset has
them), so that eval/predict can rebuild the model without the training data.

Checkpoints are pickles (``torch.load(weights_only=False)``, needed for the schema and the RNG
states): load only checkpoints you trust.
"""
from __future__ import annotations

import glob
import os

from mtl_train.errors import ConfigError, DataError
from mtl_train.io import write_atomic


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` so that a reader never sees a partial file: written to a
    temporary file beside ``path``, fsynced, then ``os.replace``d over it and the folder fsynced
    (the rename survives a power loss); see :func:`mtl_train.io.write_atomic`."""
    import torch  # here, not at the top: the CLI reads run directories (existing_checkpoints) before importing torch

    write_atomic(lambda tmp: torch.save(obj, tmp), path, durable=True)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete ``.tmp-*.pt`` files left in ``folder`` by a process killed while saving."""
    stale = glob.glob(os.path.join(folder, ".tmp-*.pt"))
    for p in stale:
        os.unlink(p)
    return stale


def load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_atomic`.

    Raises:
        DataError: the file is missing or not a readable checkpoint (one line, naming it).
    """
    import torch

    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable checkpoint ({msg})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise DataError(f"{path}: not an mtl-train checkpoint (no 'model' entry)")
    return obj


def find_checkpoint(path: str, key: str, prefer: tuple[str, ...] = ("last.pt", "best.pt")) -> str:
    """The checkpoint file named by ``path``: the file itself, or in a run directory
    ``<path>/checkpoints/<first of prefer that exists>``.

    Raises:
        ConfigError: nothing there (names ``key``, the config key that gave the path).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for folder in (os.path.join(path, "checkpoints"), path):
            for name in prefer:
                p = os.path.join(folder, name)
                if os.path.isfile(p):
                    return p
        raise ConfigError(f"{key}: no checkpoint ({' or '.join(prefer)}) in {path}/checkpoints")
    raise ConfigError(f"{key}: no such file or run directory: {path}")


def run_dir_of(checkpoint_path: str) -> str | None:
    """The run directory that holds ``checkpoint_path`` (``<run>/checkpoints/x.pt``), or None."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    return os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None


def existing_checkpoints(run_dir: str) -> list[str]:
    """The checkpoint files already in ``<run_dir>/checkpoints``."""
    return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.pt")))


def all_finite(state_dict: dict) -> bool:
    """True when every floating tensor of a (model) state dict is finite."""
    import torch

    for v in state_dict.values():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return False
    return True
