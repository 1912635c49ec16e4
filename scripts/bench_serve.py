"""Serving latency of the bench MMoE (../shared/bench/README.md): eager PyTorch, the torch.export
program (``.pt2``, reloaded with ``torch.export.load``) and ONNX Runtime, at batch 1, 64 and 512,
the same model and thread count, measured in one run.

Two paths per runtime, each timed per call (``time.perf_counter``):

- ``model``: encoded inputs (``sparse`` int64 [B, 26], ``dense`` float32 [B, 0]) -> the
  exported outputs (``prob_click``, ``prob_purchase``, ``prob_purchase_given_click``);
- ``raw``: raw rows (a pyarrow Table of the 26 id columns, as read from the log) -> the same
  probabilities. eager: the training encoder (``Encoder.transform``, as ``mode=predict`` on a
  file) then the model; pt2: the serving encoder (:mod:`mtl_train.serving.rows`, numpy and
  pyarrow) then the program; onnx: :class:`mtl_train.serving.scorer.Scorer` (the serving encoder
  then ONNX Runtime: no torch).

The model is the bench MMoE (embedding 16, 8 experts [256, 128], towers [64], tasks click and
purchase) with the vocabularies prepared from the 400k-row bench log, at its initial weights
(latency does not depend on the values). Rounds interleave every runtime and batch size, so that
all see the same phases of a shared machine; p50 and p99 are over every call of every round,
after a warm-up. Printed: p50, p99 (wall ms per call), the p50 of the CPU time per call
(``time.process_time``: on a loaded machine a call's wall time is mostly waiting for a core,
and a call that follows any wait, such as numpy/pyarrow work before a torch call, waits longer)
and rows/s per path, runtime and batch, and the ratio of ONNX Runtime's p50 to eager's at batch
1 (the goal: at most 0.5), of wall and of CPU time.

Usage: python scripts/bench.py serve [--workdir DIR] [--threads 1] [--rounds 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
BATCHES = (1, 64, 512)
CALLS = {1: 200, 64: 60, 512: 20}  # per round, path and runtime
BENCH_MODEL = ["model=mmoe", "model.embedding_dim=16", "model.num_experts=8", "model.expert_hidden=[256,128]",
               "graph.tower_hidden=[64]"]


def build(work: Path, train: Path, valid: Path):
    """The bench MMoE at its initial weights, its schema (with the encoders prepared from the
    bench log) and its resolved config."""
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from mtl_train.config import validate
    from mtl_train.data.datasets import load_dataset
    from mtl_train.models.builder import build_model

    over = ["dataset=parquet", f"dataset.train_path={train}", f"dataset.val_path={valid}", f"dataset.test_path={valid}",
            f"dataset.schema_file={work / 'schema.yaml'}", f"dataset.cache_dir={work / 'cache'}",
            "dataset.progress=false", "dataset.mode=stream", *BENCH_MODEL]
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        cfg = validate(compose("config", overrides=over))
    bundle = load_dataset(cfg.dataset, cfg.seed)
    torch.manual_seed(0)
    model = build_model(bundle.schema, cfg.model, cfg.graph).eval()
    return model, bundle.schema, OmegaConf.to_container(cfg, resolve=True)


def served_module(model):
    """The model with the export signature: the exporter's ServingModule where this checkout has
    it (branch export), else the same wrapper written here."""
    import torch

    try:
        from mtl_train.export import ServingModule

        return ServingModule(model).eval()
    except ImportError:
        pass
    from mtl_train.serving.features import signature

    class Served(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.names = [o["output"] for o in signature(model.schema, {"graph": {"name": "independent"}})["outputs"]]

        def forward(self, sparse, dense):
            batch = {"sparse": sparse, "dense": dense, "labels": dense.new_zeros(sparse.shape[0], 2)}
            outs = self.model.graph.eval_outputs(self.model(batch), batch)
            return tuple(outs[n].score for n in self.names)

    return Served().eval()


def export(module, schema, config: dict, folder: Path) -> None:
    """model.pt2 (torch.export, dynamic batch), model.onnx (dynamo exporter from that program),
    features.json: what mode=export writes, made here so that the bench runs on any branch."""
    import torch

    from mtl_train import kernels
    from mtl_train.serving.features import signature, write_features

    sig = signature(schema, config)
    example = (torch.full((3, len(schema.sparse)), 2, dtype=torch.int64), torch.zeros(3, len(schema.dense)))
    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision's operators, absent here
    with torch.no_grad(), kernels.use_fused(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
        torch.export.save(program, str(folder / "model.pt2"))
        onnx = torch.onnx.export(program, example, dynamo=True, verbose=False,
                                 input_names=[i["name"] for i in sig["inputs"]],
                                 output_names=[o["name"] for o in sig["outputs"]])
        onnx.save(str(folder / "model.onnx"), external_data=True)
    write_features(str(folder), schema, config)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mtl-bench"),
                    help="where the bench log and the prepare cache are (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)

    import pyarrow.parquet as pq
    import torch
    from bench import ensure_workload

    from mtl_train import kernels
    from mtl_train.serving.scorer import Scorer

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train, valid = ensure_workload(work)
    torch.set_num_threads(a.threads)
    print(f"bench serve: workdir {work}; {a.threads} thread(s); load average at start {os.getloadavg()}", flush=True)
    model, schema, config = build(work, train, valid)
    kernels.set_fused(bool(config["trainer"]["fused_kernels"]))  # eager as mode=predict runs it
    module = served_module(model)
    folder = Path(tempfile.mkdtemp(prefix="mtl-serve-", dir=work))
    t0 = time.perf_counter()
    export(module, schema, config, folder)
    print(f"exported to {folder} in {time.perf_counter() - t0:.1f} s", flush=True)
    program = torch.export.load(str(folder / "model.pt2")).module()
    scorer = Scorer(str(folder), threads=a.threads)
    encoder = scorer.encoder
    train_encoder = schema.encoders

    features = [f.name for f in schema.sparse]
    raw = pq.read_table(valid, columns=features)
    rng = np.random.default_rng(0)
    slices = {b: [raw.slice(int(s), b) for s in rng.integers(0, raw.num_rows - b, 16)] for b in BATCHES}
    encoded = {b: [encoder.encode(t) for t in ts] for b, ts in slices.items()}
    tensors = {b: [(torch.from_numpy(e["sparse"]), torch.from_numpy(e["dense"])) for e in es]
               for b, es in encoded.items()}

    def eager_model(x):
        with torch.no_grad():
            return module(*x)

    def pt2_model(x):
        with torch.no_grad():
            return program(*x)

    def ort_model(e):
        return scorer.run(e)

    def eager_raw(t):
        table, _ = train_encoder.transform(t, "rows", labels_required=False)
        with torch.no_grad():
            return module(table.sparse, table.dense)

    def pt2_raw(t):
        e = encoder.encode(t)
        with torch.no_grad():
            return program(torch.from_numpy(e["sparse"]), torch.from_numpy(e["dense"]))

    def ort_raw(t):
        return scorer.score(t)

    paths = {("model", "eager"): (eager_model, tensors), ("model", "pt2"): (pt2_model, tensors),
             ("model", "onnx"): (ort_model, encoded), ("raw", "eager"): (eager_raw, slices),
             ("raw", "pt2"): (pt2_raw, slices), ("raw", "onnx"): (ort_raw, slices)}

    # the three runtimes give the same probabilities on the same rows
    e512 = encoded[512][0]
    ref = [t.numpy() for t in eager_model(tensors[512][0])]
    diff = {"pt2": max(float(np.abs(r - t.numpy()).max()) for r, t in zip(ref, pt2_model(tensors[512][0]))),
            "onnx": max(float(np.abs(r - o).max()) for r, o in zip(ref, ort_model(e512).values()))}
    print(f"max |difference| from eager over 512 rows: pt2 {diff['pt2']:.1e}, onnx {diff['onnx']:.1e}", flush=True)

    times: dict[tuple, list[float]] = {(p, r, b): [] for (p, r) in paths for b in BATCHES}
    cpu: dict[tuple, list[float]] = {(p, r, b): [] for (p, r) in paths for b in BATCHES}
    for (p, r), (fn, inputs) in paths.items():  # warm-up
        for b in BATCHES:
            for x in inputs[b][:4]:
                fn(x)
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for b in BATCHES:
            for (p, r), (fn, inputs) in paths.items():
                xs = inputs[b]
                out, out_cpu = times[(p, r, b)], cpu[(p, r, b)]
                for i in range(CALLS[b]):
                    x = xs[i % len(xs)]
                    c = time.process_time()
                    t = time.perf_counter()
                    fn(x)
                    out.append(time.perf_counter() - t)
                    out_cpu.append(time.process_time() - c)
        load.append(os.getloadavg()[0])
    rows = []
    print(f"{'path':5s} {'runtime':7s} {'batch':>5s} {'p50 ms':>9s} {'p99 ms':>9s} {'cpu p50 ms':>10s} {'rows/s':>10s} "
          f"{'calls':>6s}")
    for p in ("model", "raw"):
        for b in BATCHES:
            for r in ("eager", "pt2", "onnx"):
                ts = times[(p, r, b)]
                p50, p99, c50 = percentile(ts, 50) * 1e3, percentile(ts, 99) * 1e3, percentile(cpu[(p, r, b)], 50) * 1e3
                rows.append({"path": p, "runtime": r, "batch": b, "p50_ms": p50, "p99_ms": p99, "cpu_p50_ms": c50,
                             "rows_per_s": b / (p50 / 1e3), "calls": len(ts)})
                print(f"{p:5s} {r:7s} {b:5d} {p50:9.3f} {p99:9.3f} {c50:10.3f} {b / (p50 / 1e3):10.0f} {len(ts):6d}")
    fig = {(x["path"], x["runtime"], x["batch"]): x for x in rows}
    ratios = {f"{p}_{k}": fig[(p, "onnx", 1)][k] / fig[(p, "eager", 1)][k] for p in ("model", "raw")
              for k in ("p50_ms", "cpu_p50_ms")}
    print(f"ONNX Runtime / eager p50 at batch 1 (goal <= 0.5): model {ratios['model_p50_ms']:.3f} "
          f"(cpu time {ratios['model_cpu_p50_ms']:.3f}), raw rows {ratios['raw_p50_ms']:.3f} "
          f"(cpu time {ratios['raw_cpu_p50_ms']:.3f}); load average over the rounds {min(load):.2f}..{max(load):.2f}",
          flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "rounds": a.rounds, "load": load, "parity": diff,
                                            "figures": rows, "onnx_over_eager_p50_batch1": ratios}, indent=1))


if __name__ == "__main__":
    main()
