"""Several processes (ranks) training one model: the launch environment, the process group and
the few collective helpers the CLI and the trainer use.

Launchers (PyTorch's own engine, ``torch.distributed``; nothing home-made):

- ``torchrun --nproc-per-node=N -m mtl_train ...`` (also ``--nnodes``, ``--rdzv-backend=c10d
  --rdzv-endpoint=HOST:PORT``): torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
- Slurm, ``srun --ntasks=N python -m mtl_train ...``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``
  (set by srun, not in the sbatch script itself), ``SLURM_LOCALID``; ``MASTER_ADDR`` defaults to the first host of the
  step's node list and ``MASTER_PORT`` to 29500 + the job id modulo 1000 (set either to choose).

Without these variables (or with a world size of 1) :func:`detect` returns None and nothing in
the run changes: no process group, no collective, byte-identical outputs.

The process group uses ``gloo`` when training on CPU and ``nccl`` on CUDA
(``trainer.dist_backend`` overrides), with the collective timeout ``trainer.dist_timeout_s``.
Every rank uses the same seed, so balancers that draw random numbers (``loss=rlw``) draw the
same ones on every rank.

A rank that dies or hangs: every rank publishes a heartbeat (time, training step) in the
launcher's key-value store; when a collective fails or times out, :func:`failure_message` names
the ranks whose heartbeat stopped (dead) or which are behind (hung).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from mtl_train.errors import ConfigError, MtlError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's --help and precheck need none of it
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
HEARTBEAT_S = 1.0  # seconds between heartbeats; a rank silent for 2 of them counts as dead


class DistributedError(MtlError):
    """A rank died, hung past ``trainer.dist_timeout_s``, or the process group could not form."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job, read from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (or any launcher setting RANK/WORLD_SIZE) or "slurm"


def _int(environ, name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}: the launcher's environment variable must be an integer, got {value!r}") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    m = re.match(r"([^,\[]+)(?:\[([^\],]+?)(?:[-,][^\]]*)?\])?", nodelist.strip())
    if not m:
        raise ConfigError(f"SLURM_STEP_NODELIST: cannot read the node list {nodelist!r}; set MASTER_ADDR")
    return m.group(1) + (m.group(2) or "")


def detect(environ=None) -> DistEnv | None:
    """The job this process belongs to, or None for a single process.

    Raises:
        ConfigError: a launcher variable that is not an integer, a rank outside the world size.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        addr, port, launcher = env.get("MASTER_ADDR", "127.0.0.1"), env.get("MASTER_PORT", "29500"), "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # a task of srun (not the sbatch script itself)
        rank = _int(env, "SLURM_PROCID")
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        port = env.get("MASTER_PORT") or str(29500 + _int(env, "SLURM_JOB_ID") % 1000 if "SLURM_JOB_ID" in env else 29500)
        launcher = "slurm"
    else:
        return None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK: {rank} outside the world size {world}")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"MASTER_PORT: must be an integer, got {port!r}") from None
    return DistEnv(rank, world, local, addr, port_n, launcher)


def backend_for(device: torch.device, backend: str | None) -> str:
    """``trainer.dist_backend`` (None: gloo on CPU, nccl on CUDA) for a run on ``device``.

    Raises:
        ConfigError: an unknown backend, one this torch build lacks, or nccl without CUDA."""
    import torch
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in BACKENDS:
        raise ConfigError(f"trainer.dist_backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"trainer.dist_backend: nccl needs CUDA devices; this run trains on {device.type} "
                          f"(trainer.device), where gloo works")
    if not torch.distributed.is_available() or not torch.distributed.is_backend_available(backend):
        raise ConfigError(f"trainer.dist_backend: this torch build has no {backend} backend")
    return backend


_ENV: DistEnv | None = None
_FLAG_DEVICE = None  # the device of object collectives: CUDA under NCCL (set by init), else CPU
_STEP = 0  # the training step this rank has reached (in its heartbeat)
_TIMEOUT_S = 0.0


def init(env: DistEnv, device: torch.device, backend: str | None, timeout_s: float) -> str:
    """Join the process group of the job ``env`` (``init_process_group`` from the environment)
    and start this rank's heartbeat; returns the backend. A CUDA rank uses device
    ``cuda:<local rank>``.

    Raises:
        ConfigError: see :func:`backend_for`. DistributedError: the group did not form within
            ``timeout_s`` seconds (a rank that never started, a wrong MASTER_ADDR/PORT).
    """
    import torch
    global _ENV, _FLAG_DEVICE, _TIMEOUT_S
    backend = backend_for(device, backend)
    for k, v in (("RANK", env.rank), ("WORLD_SIZE", env.world_size), ("LOCAL_RANK", env.local_rank),
                 ("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port)):
        os.environ.setdefault(k, str(v))
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        _FLAG_DEVICE = torch.device("cuda", torch.cuda.current_device())
    try:
        torch.distributed.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                                             timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - torch raises several types here
        raise DistributedError(f"rank {env.rank}: the process group of {env.world_size} ranks did not form "
                               f"(MASTER_ADDR={env.master_addr} MASTER_PORT={env.master_port}, "
                               f"trainer.dist_timeout_s={timeout_s:g}): {_first_line(e)}") from None
    _ENV, _TIMEOUT_S = env, timeout_s
    threading.Thread(target=_heartbeat, name="mtl-heartbeat", daemon=True).start()
    return backend


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_distributed() -> bool:
    """True inside a job of several ranks (after :func:`init`)."""
    return _ENV is not None


def rank() -> int:
    """This process's rank (0 for a single process)."""
    return _ENV.rank if _ENV else 0


def world_size() -> int:
    """The number of ranks (1 for a single process)."""
    return _ENV.world_size if _ENV else 1


def local_rank() -> int:
    return _ENV.local_rank if _ENV else 0


def is_main() -> bool:
    """True on rank 0, the rank that writes the run directory (always True for one process)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: a CUDA device without an index becomes ``cuda:<local rank>``."""
    import torch
    if _ENV is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _ENV.local_rank % torch.cuda.device_count())
    return device


def set_step(step: int) -> None:
    """The training step this rank has reached (published in its heartbeat)."""
    global _STEP
    _STEP = int(step)


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled); ``obj`` itself for a single process."""
    import torch
    if _ENV is None:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src, device=_FLAG_DEVICE)
    return box[0]


def gather_objects(obj, dst: int = 0) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank ``dst`` (None elsewhere); [obj] for one process."""
    import torch
    if _ENV is None:
        return [obj]
    out = [None] * _ENV.world_size if _ENV.rank == dst else None
    torch.distributed.gather_object(obj, out, dst=dst)
    return out


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] for one process."""
    import torch
    if _ENV is None:
        return [obj]
    out = [None] * _ENV.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A new tensor: ``tensor`` reduced over ranks (``sum`` or ``max``); a copy for one process."""
    import torch
    out = tensor.detach().clone()
    if _ENV is None:
        return out
    moved = out.to(_FLAG_DEVICE or "cpu")
    torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
    return moved.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any rank: a decision taken once and acted on by all."""
    import torch
    if _ENV is None:
        return bool(flag)
    return bool(all_reduce(torch.tensor([1.0 if flag else 0.0]), "max").item())


# ---- liveness ------------------------------------------------------------------------------
def _store():
    """A client of the launcher's key-value store (torchrun's agent, or rank 0's under srun)."""
    import torch
    return torch.distributed.TCPStore(_ENV.master_addr, _ENV.master_port, _ENV.world_size, False,
                                      timedelta(seconds=10))


def _heartbeat() -> None:
    try:
        store = _store()
        while True:
            store.set(f"mtl/hb/{_ENV.rank}", f"{time.time():.3f} {_STEP}")
            time.sleep(HEARTBEAT_S)
    except Exception:  # noqa: BLE001 - the store went away: the job is ending
        return


def _beats(store) -> dict[int, tuple[float, int]]:
    """{rank: (time of its last heartbeat, its step)}; (-inf, -1) for a rank that never beat."""
    out = {}
    for r in range(_ENV.world_size):
        try:
            t, step = store.get(f"mtl/hb/{r}").decode().split()
            out[r] = (float(t), int(step))
        except Exception:  # noqa: BLE001 - no heartbeat from that rank
            out[r] = (float("-inf"), -1)
    return out


def failure_message(err: BaseException) -> str:
    """One line for a failed collective: which rank is dead (its heartbeat stopped: watched for
    two heartbeat intervals) or behind (alive, but it has not reached this rank's step), else the
    backend's own first line."""
    cause = _first_line(err)
    try:
        store = _store()
        first = _beats(store)
        time.sleep(2 * HEARTBEAT_S)
        second = _beats(store)
    except Exception:  # noqa: BLE001 - the store itself is gone: it lives in rank 0 under srun
        return (f"rank {_ENV.rank}: lost the job's store at {_ENV.master_addr}:{_ENV.master_port} "
                f"(rank 0 or the launcher died?) at step {_STEP}: {cause}")
    dead = [r for r in range(_ENV.world_size) if r != _ENV.rank and second[r][0] == first[r][0]]
    if dead:
        return (f"rank {_ENV.rank}: rank {', '.join(map(str, dead))} stopped answering (no heartbeat: dead) at "
                f"step {_STEP}; the job ends ({cause})")
    behind = [r for r, (_, step) in second.items() if step < _STEP]
    if behind:
        return (f"rank {_ENV.rank}: rank {', '.join(map(str, behind))} did not reach step {_STEP} within "
                f"trainer.dist_timeout_s={_TIMEOUT_S:g} (hung?); the job ends")
    return f"rank {_ENV.rank}: a collective failed at step {_STEP}: {cause}"


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed or timed-out collective of the process group."""
    import torch
    if _ENV is None:
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(err, dist_error):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed",
                                                                     "Connection reset", "Timed out", "timed out"))


@contextlib.contextmanager
def collectives():
    """Turn a failed collective inside the block into one :class:`DistributedError` line."""
    try:
        yield
    except (MtlError, KeyboardInterrupt):
        raise
    except Exception as e:
        if is_collective_failure(e):
            raise DistributedError(failure_message(e)) from None
        raise


def exit_barrier(timeout_s: float = 60.0) -> None:
    """Wait (at most ``timeout_s``) until every rank arrives here, through the store rather than
    the process group (which may be broken): a rank leaving early would have the launcher stop
    rank 0 while it still writes the run directory."""
    if _ENV is None:
        return
    try:
        store = _store()
        store.add("mtl/exit", 1)
        deadline = time.time() + timeout_s
        while store.add("mtl/exit", 0) < _ENV.world_size and time.time() < deadline:
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the store is gone: nothing to wait for
        pass


def shutdown() -> None:
    """Leave the process group (at the end of the job)."""
    import torch
    global _ENV
    if _ENV is not None and torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()
    _ENV = None


def rank_prefix_logging() -> None:
    """On ranks other than 0: no log file; warnings and errors to stderr, prefixed ``[rank r]``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.WARNING)
    h.setFormatter(logging.Formatter(f"[rank {rank()}] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.INFO)


def _rebuild(cls: type, message: str) -> BaseException:
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 - an exception class with another constructor
        return MtlError(message)


def on_main(fn):
    """``fn()`` run on rank 0 only, its result (pickled) returned on every rank; an error of
    rank 0 is raised on every rank. For one process: ``fn()``."""
    if _ENV is None:
        return fn()
    outcome = None
    if _ENV.rank == 0:
        try:
            outcome = ("ok", fn(), None)
        except BaseException as e:
            broadcast_object(("error", type(e), str(e)))
            raise
    kind, value, msg = broadcast_object(outcome)
    if kind == "error":
        raise _rebuild(value, msg)
    return value


def main_first(fn):
    """``fn()`` on rank 0 first, then on the other ranks (a dataset whose first load writes a
    cache: one rank writes it, the others read it); an error of rank 0 is raised on every rank
    without the others trying. For one process: ``fn()``."""
    if _ENV is None:
        return fn()
    if _ENV.rank == 0:
        try:
            result = fn()
        except BaseException as e:
            broadcast_object(("error", type(e), str(e)))
            raise
        broadcast_object(("ok", None, None))
        return result
    kind, cls, msg = broadcast_object(None)
    if kind == "error":
        raise _rebuild(cls, msg)
    return fn()
