"""Streaming splits: Parquet read row group by row group, for data larger than memory.

A :class:`StreamSplit` is what a dataset returns for a split it does not hold in memory;
``StreamSplit.loader(...)`` gives the training loader (:class:`StreamingLoader`), and
``StreamSplit.batches(n)`` reads every row once, in file order, for evaluation.

Every training loader (this one and :class:`mtl_train.data.loader.InMemoryLoader`) offers:
``set_epoch(epoch)``, ``__iter__`` yielding batch dicts, ``__len__`` (batches per epoch),
``state_dict() -> {"epoch", "batch"}`` and ``load_state_dict(state)`` (the next ``__iter__``
resumes after that many batches of that epoch, with the same order as an uninterrupted run).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from mtl_train.data.files import in_file
from mtl_train.data.loader import LoaderPosition
from mtl_train.data.schema import Split, Table

BLOCKS = ("sparse", "seq", "dense", "labels")
"""The blocks of every encoded record batch; ``weights`` is added where a task has a weight column."""


def reader_threads(setting: int | None) -> int:
    """``dataset.num_workers`` -> background reader threads of a streamed split.

    ``null`` (auto) gives 1 when the machine has a core beyond torch's intra-op threads and 0
    (read inline, between steps) otherwise: on 2 cores with 2 torch threads a reader thread
    preempts one GEMM thread, and the other waits for it at every parallel region. On the
    bench's 20M-row log that made streaming 0.86-0.96x the in-memory speed, against
    0.97-0.99x inline (docs/RESULTS.md, issue 5).
    """
    if setting is not None:
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores > torch.get_num_threads() else 0


def _to_batch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    b = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("sparse", "dense", "labels")}
    if arrays["seq"].shape[1]:
        b["seq"] = torch.from_numpy(np.ascontiguousarray(arrays["seq"]))
    if "weights" in arrays:
        b["weights"] = torch.from_numpy(np.ascontiguousarray(arrays["weights"]))
    return b


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def read_table(source, encoder, rows: int) -> Table:
    """Read a whole split into an in-memory :class:`Table`, record batch by record batch into
    preallocated columnar arrays (peak memory: the table plus one record batch)."""
    from mtl_train.system import progress_bar

    spec = encoder.spec
    out = {
        "sparse": np.empty((rows, len(spec.categorical)), dtype=np.int64),
        "seq": np.zeros((rows, spec.seq_width), dtype=np.int64),
        "dense": np.empty((rows, len(spec.numeric)), dtype=np.float32),
        "labels": np.empty((rows, len(spec.tasks)), dtype=np.float32),
    }
    if encoder.weighted:
        out["weights"] = np.empty((rows, len(spec.tasks)), dtype=np.float32)
    at = 0
    bar = progress_bar(total=rows, desc=f"reading {source.name} into memory", unit="row", mininterval=1.0, leave=False,
               disable=rows < 1_000_000)
    for unit in source.units:
        pf = pq.ParquetFile(unit.file)
        for t in source.tables(unit, encoder.columns, pf):
            with in_file(unit.file):
                enc = encoder.encode(t)
            n = t.num_rows
            for k in out:
                out[k][at:at + n] = enc[k]
            at += n
            bar.update(n)
    bar.close()
    assert at == rows, f"{source.name}: read {at} rows, expected {rows}"
    weights = torch.from_numpy(out["weights"]) if "weights" in out else None
    return Table(torch.from_numpy(out["sparse"]), torch.from_numpy(out["dense"]), torch.from_numpy(out["labels"]),
                 {}, torch.from_numpy(out["seq"]), weights)


class StreamSplit(Split):
    """A split read from Parquet on demand.

    Args:
        source: the split's row groups (:class:`mtl_train.data.sources.SplitSource`).
        encoder: :class:`mtl_train.data.encode.Encoder`.
        rows: the split's row count (from the prepare step).
        cfg: the streaming options (``shuffle_buffer``, ``num_workers``; the dataset config).
        report: the prepare step's report of this split (``positives``, ``funnel_violations``).
    """

    kind = "stream"

    def __init__(self, source, encoder, rows: int, cfg, report: dict):
        self.source, self.encoder, self.rows, self.report = source, encoder, rows, report
        self.shuffle_buffer = int(cfg.shuffle_buffer)
        self.num_workers = reader_threads(cfg.num_workers)
        self._unit_rows = None
        self._local = threading.local()

    def __len__(self) -> int:
        return self.rows

    def unit_rows(self) -> list[int]:
        """This split's rows in each row group (computed once)."""
        if self._unit_rows is None:
            self._unit_rows = self.source.rows_per_unit()
        return self._unit_rows

    def encoded_units(self, order: list[int]) -> Iterator[dict[str, np.ndarray]]:
        """Encoded record batches of the row groups ``order`` (indices into source.units), in
        that order; the reader opens its own file handles."""
        # file handles (footers read once) kept per thread: each reader thread opens its own
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        for i in order:
            unit = self.source.units[i]
            pf = handles.get(unit.file)
            if pf is None:
                if len(handles) >= 64:  # bound the open files
                    handles.pop(next(iter(handles)))
                pf = handles[unit.file] = pq.ParquetFile(unit.file)
            for t in self.source.tables(unit, self.encoder.columns, pf):
                with in_file(unit.file):
                    enc = self.encoder.encode(t)
                yield enc

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in file order, in batches of ``batch_size`` (the last may be shorter)."""
        pending: list[dict[str, np.ndarray]] = []
        have = 0
        for enc in self.encoded_units(list(range(len(self.source.units)))):
            pending.append(enc)
            have += len(enc["labels"])
            if have >= batch_size:
                pool = _concat(pending)
                n_full = have - have % batch_size
                for s in range(0, n_full, batch_size):
                    yield _to_batch({k: v[s:s + batch_size] for k, v in pool.items()})
                pending = [{k: v[n_full:] for k, v in pool.items()}] if have > n_full else []
                have -= n_full
        if have:
            yield _to_batch(_concat(pending))

    def loader(self, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = False) -> "StreamingLoader":
        return StreamingLoader(self, batch_size, shuffle, seed, rank, world_size, self.shuffle_buffer,
                               self.num_workers, drop_last)

    def positives(self, tasks) -> dict[str, int]:
        """Counted by the prepare step."""
        return {t.name: int(self.report["positives"][t.name]) for t in tasks}

    def funnel_violations(self, tasks) -> dict[str, int]:
        """Counted by the prepare step."""
        return {t.name: int(self.report["funnel_violations"][t.name]) for t in tasks if t.parent is not None}


class StreamingLoader(LoaderPosition):
    """Training batches of a :class:`StreamSplit`: shuffled row-group order plus a shuffle buffer.

    Epoch e: the row groups are permuted with ``numpy.random.default_rng([seed, e])``; with
    ``world_size`` > 1 rank r takes every world_size-th row group of that order (each rank
    reads only its own files), and every rank stops after the smallest rank's batch count, so
    that all ranks run the same number of steps. Shards are whole row groups, so the rows a
    rank reads beyond that count wait for a later epoch: up to a row group's worth per rank and
    epoch (row groups much smaller than an epoch's rows per rank keep this small; a world
    size above the number of row groups is refused). Rows then pass through a shuffle buffer of
    ``shuffle_buffer`` rows: once the buffer is full it is permuted
    (``default_rng([seed, e, rank])``), the rows beyond half of its size (whole batches only)
    are emitted and the other half is kept to mix with the next row groups; at the end of the
    epoch the remainder is permuted and emitted. A row thus lands within about
    ``shuffle_buffer`` rows of a uniformly random position among its neighbouring row groups.

    With ``num_workers`` > 0, that many background threads read and encode row groups ahead
    (row group k by worker k mod num_workers, each with its own file handles; pyarrow and
    numpy release the GIL), and their output is consumed in the epoch's order, so batches
    are the same for any ``num_workers``.

    ``len()`` is exact: per-row-group row counts are known from the Parquet footers (and the
    split hash for carved splits).
    """

    kind = "stream"

    def __init__(self, split: StreamSplit, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 262144, num_workers: int = 0, drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if world_size > len(split.source.units):
            raise ValueError(f"world size {world_size} exceeds the {len(split.source.units)} row groups of the split: "
                             f"a rank would read no rows (shards are whole row groups; write smaller row groups)")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.shuffle_buffer = max(int(shuffle_buffer), batch_size)
        self.num_workers = num_workers
        self.epoch = 0
        self.batch = 0  # batches of self.epoch handed out so far

    def _orders(self) -> list[list[int]]:
        n = len(self.split.source.units)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [order[r::self.world_size].tolist() for r in range(self.world_size)]

    def _batches_of(self, rows: int) -> int:
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __len__(self) -> int:
        counts = self.split.unit_rows()
        per_rank = [self._batches_of(sum(counts[i] for i in o)) for o in self._orders()]
        return min(per_rank) if self.world_size > 1 else per_rank[0]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        limit, start = len(self), self.batch
        if start >= limit:  # this epoch is exhausted until the next set_epoch
            return
        for i, batch in enumerate(self._generate()):
            if i >= limit:
                break
            if i < start:
                continue
            self.batch = i + 1  # counted when handed out, as InMemoryLoader
            yield batch

    # ---- reading ---------------------------------------------------------------------------
    def _units(self, order: list[int]) -> Iterator[dict[str, np.ndarray]]:
        if self.num_workers <= 0:
            yield from self.split.encoded_units(order)
            return
        w = self.num_workers
        queues = [queue.Queue(maxsize=4) for _ in range(w)]
        stop = threading.Event()
        end = object()

        def work(k: int) -> None:
            try:
                for i in order[k::w]:
                    for enc in self.split.encoded_units([i]):
                        while not stop.is_set():
                            try:
                                queues[k].put(enc, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                    while not stop.is_set():  # one marker per row group keeps the order
                        try:
                            queues[k].put(None, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # surfaced in the consumer
                queues[k].put(e)
            queues[k].put(end)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(w)]
        for t in threads:
            t.start()
        try:
            for j in range(len(order)):
                q = queues[j % w]
                while True:
                    item = q.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if item is end:  # pragma: no cover - a worker ended early
                        raise RuntimeError("loader worker ended early")
                    yield item
        finally:
            stop.set()
            for q in queues:  # unblock workers waiting on a full queue
                while not q.empty():
                    q.get_nowait()

    def _generate(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        bs, cap = self.batch_size, self.shuffle_buffer
        pending: list[dict[str, np.ndarray]] = []
        have = 0
        for enc in self._units(self._orders()[self.rank]):
            pending.append(enc)
            have += len(enc["labels"])
            if have < cap:
                continue
            pool = _concat(pending)
            n_out = (have - cap // 2) // bs * bs
            if self.shuffle:
                # batch i is pool[perm][i*bs:(i+1)*bs], gathered batch by batch: the permuted
                # pool itself (the whole buffer again) is never materialised
                perm = rng.permutation(have)
                for s in range(0, n_out, bs):
                    yield _to_batch({k: v[perm[s:s + bs]] for k, v in pool.items()})
                pending = [{k: v[perm[n_out:]] for k, v in pool.items()}]
            else:
                for s in range(0, n_out, bs):
                    yield _to_batch({k: v[s:s + bs] for k, v in pool.items()})
                pending = [{k: v[n_out:] for k, v in pool.items()}]
            have -= n_out
        if have:
            pool = _concat(pending)
            if self.shuffle:
                perm = rng.permutation(have)
                pool = {k: v[perm] for k, v in pool.items()}
            stop = have - have % bs if self.drop_last else have
            for s in range(0, stop, bs):
                yield _to_batch({k: v[s:s + bs] for k, v in pool.items()})


def train_loader(split: Split, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
    """The training loader of a split (:meth:`Split.loader`): an
    :class:`~mtl_train.data.loader.InMemoryLoader` for a :class:`Table`, a
    :class:`StreamingLoader` for a :class:`StreamSplit`."""
    return split.loader(batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
