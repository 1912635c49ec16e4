"""Where the data of a run lives when it trains on a GPU, and how its batches reach the device.

The rule (:func:`place_data`), applied once when the trainer is built, after the model and its
optimizers are on the device:

- ``trainer.device`` is the CPU: nothing moves; the splits and their loaders are used as the
  dataset loader built them (the CPU code path is unchanged).
- CUDA, a split held in memory (``dataset.mode=memory``, or ``auto`` where the splits fit the
  host budget, see :mod:`mtl_train.data.stream`): while the in-memory splits, train first, then
  val and test, fit in :data:`DEVICE_DATA_FRACTION` of the device's free memory
  (``torch.cuda.mem_get_info``, read after the model and optimizer state are allocated; the
  rest is left to activations and the allocator), each such split moves to the GPU as tensors
  (ids, dense values, labels, sequences, evaluation-only columns). A training batch is then
  gathered on the device by index (the epoch's permutation, drawn by the same CPU generator
  as on the CPU path, is copied to the device once per epoch): a step never waits on a
  host-to-device copy, and the batches hold the same rows in the same order as on the CPU.
- CUDA, an in-memory split that does not fit: it stays in host memory, page-locked
  (``pin_memory``), and its training loader is wrapped in :class:`DeviceLoader`.
- CUDA, a streamed split (``dataset.mode=stream``, or ``auto`` over the host budget): its
  training loader is wrapped in :class:`DeviceLoader`: each batch is pinned and copied on a
  side CUDA stream one batch ahead, so the copy of batch k+1 overlaps the step on batch k.

Evaluation reads device-resident splits in place; the others are copied chunk by chunk
(:func:`~mtl_train.train.device.to_device`).
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch

from mtl_train.data.schema import DatasetBundle, Split, Table

log = logging.getLogger(__name__)

DEVICE_DATA_FRACTION = 0.5
"""Share of the device's free memory (after the model and optimizer state are allocated) that
the in-memory splits may take on the GPU; the rest is left to activations, gradients and the
caching allocator. The bench workload's 500k rows take 0.11 GB (27 int64 and 2 float32 columns)."""


def table_bytes(table: Table) -> int:
    """Bytes of the tensors of an in-memory split."""
    blocks = [table.sparse, table.dense, table.labels, table.seq, *table.extra.values()]
    return sum(t.numel() * t.element_size() for t in blocks)


def free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA ``device`` (``torch.cuda.mem_get_info``)."""
    return int(torch.cuda.mem_get_info(device)[0])


def plan(data: DatasetBundle, device: torch.device, free_bytes: int | None = None) -> dict[str, str]:
    """Where each split goes (see the module docstring): ``{"train"|"val"|"test": where}``, with
    ``where`` one of ``"host"`` (CPU training: as loaded), ``"device"`` (moved to the GPU),
    ``"pinned"`` (in memory, page-locked, copied ahead) and ``"stream"`` (streamed, copied ahead).

    Args:
        free_bytes: the device's free memory in bytes (default: read from ``device``).
    """
    if device.type != "cuda":
        return {name: "host" for name, _ in data.splits()}
    budget = DEVICE_DATA_FRACTION * (free_device_memory(device) if free_bytes is None else free_bytes)
    out, used = {}, 0
    for name, split in data.splits():
        if not isinstance(split, Table):
            out[name] = "stream"
            continue
        size = table_bytes(split)
        if used + size <= budget:
            out[name], used = "device", used + size
        else:
            out[name] = "pinned"
    return out


def place_data(data: DatasetBundle, device: torch.device, free_bytes: int | None = None) -> tuple[DatasetBundle, dict]:
    """The bundle with its splits placed by :func:`plan` (the same bundle on the CPU), and the plan.

    A device-resident split is a :class:`~mtl_train.data.schema.Table` whose tensors are on
    ``device``; a pinned one, a Table in page-locked host memory."""
    where = plan(data, device, free_bytes)
    if device.type != "cuda":
        return data, where
    moved = {}
    for name, split in data.splits():
        if where[name] == "device":
            moved[name] = split.to(device)
        elif where[name] == "pinned":
            moved[name] = split.to(torch.device("cpu"), pin=True)
        else:
            moved[name] = split
    log.info("data on %s: %s", device, ", ".join(f"{k} {v}" for k, v in where.items()))
    return DatasetBundle(data.schema, moved["train"], moved["val"], moved["test"], data.info), where


def train_loader_on(split: Split, loader, device: torch.device, where: str):
    """The training loader as the trainer iterates it: ``loader`` itself on the CPU and for a
    device-resident split (its batches are on the device already), else a :class:`DeviceLoader`."""
    if device.type != "cuda" or where == "device":
        return loader
    return DeviceLoader(loader, device)


class DeviceLoader:
    """A training loader whose batches arrive on a CUDA device, copied one batch ahead on a
    side stream (pinned host memory, ``non_blocking`` copies), so that the copy of the next
    batch overlaps the step on the current one.

    It keeps the data-position interface of the loader it wraps
    (:class:`~mtl_train.data.loader.LoaderPosition`: ``set_epoch``, ``state_dict``,
    ``load_state_dict``, ``len``, ``kind``) and counts only the batches it has handed out: the
    batch fetched ahead is not part of the position, and a loop that stops early puts the
    wrapped loader back at the first batch not handed out, so a checkpoint and a resume see
    exactly the batches of the unwrapped loader.
    """

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device
        self.kind = loader.kind
        self.ahead = 0  # batches taken from self.loader and not yet handed out (0 or 1)
        self._stream = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def batch(self) -> int:
        return self.loader.batch - self.ahead

    def set_epoch(self, epoch: int) -> None:
        self.ahead = 0
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        state = dict(self.loader.state_dict())
        state["batch"] -= self.ahead
        return state

    def load_state_dict(self, state: dict) -> None:
        self.ahead = 0
        self.loader.load_state_dict(state)

    def _copy(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.cuda.stream(self._stream):
            return {k: (v if v.is_pinned() else v.pin_memory()).to(self.device, non_blocking=True)
                    for k, v in batch.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        source = iter(self.loader)
        nxt = None
        try:
            for batch in source:
                copied = self._copy(batch)
                self.ahead = 1
                if nxt is not None:
                    yield self._ready(nxt)
                nxt = copied
            if nxt is not None:
                self.ahead = 0
                batch, nxt = nxt, None
                yield self._ready(batch)
        finally:
            if self.ahead:  # stopped early: the batch fetched ahead was never handed out
                state = self.state_dict()
                self.ahead = 0
                close = getattr(source, "close", None)
                if close is not None:
                    close()
                self.loader.load_state_dict(state)

    def _ready(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` usable on the current stream: wait for its copy, and tell the caching
        allocator that the current stream uses its memory (it was allocated on the side stream)."""
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        for v in batch.values():
            v.record_stream(current)
        return batch
