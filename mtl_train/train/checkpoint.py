"""Atomic checkpoints: written to a temporary file in the same folder, then renamed."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` so that a reader never sees a partial file: the data is
    written and fsynced to a temporary file beside ``path``, then ``os.replace``d over it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict:
    """Every RNG the training loop touches: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_atomic`."""
    return torch.load(path, map_location=map_location, weights_only=False)
