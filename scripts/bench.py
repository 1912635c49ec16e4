"""Throughput benchmark of mtl-train on the bench workload (../shared/bench/README.md).

In one invocation: generate the workload if needed (make_workload.py: 400,000 train rows,
100,000 valid rows), then, ``--repeat`` times in turn, run

  1. ``roofline.py``   GEMM throughput / FLOPs per sample (the ceiling, ratio 1.00), sampled
     before and after every other run of the round; the ratios use the best sample (a
     single sample on a shared VM has varied by 2x within minutes, and the lowest ones
     would flatter every ratio);
  2. ``raw_limit.py``  the same MMoE in plain PyTorch on tensors already in memory;
  3. ``mtl-train``     the real CLI code path: dataset=parquet with the bench schema (26
     categorical columns, tasks click and purchase), MMoE 8 experts [256, 128], embedding 16,
     towers [64], batch 2048, Adam lr 1e-3, one epoch, in-memory mode;
  4. with ``--stream``: the same run with ``dataset.mode=stream``;
  5. with ``--bf16``: the in-memory run with ``trainer.precision=bf16`` (bfloat16 autocast of
     embedding and backbone), reported against both ceilings: roofline.py's float32 figure and
     ``roofline.py --dtype bfloat16`` (the same GEMM in bfloat16, sampled next to every float32
     sample: a bf16 run's own ceiling), with its val AUCs minus the float32 run's;
  6. ``scripts/bench_step.py`` (unless ``--skip-step``; with ``--bf16`` also in bf16): the
     training step and roofline.py's GEMM interleaved in one process, so that both sides
     see the same speed phase of the machine; steady state, batches in memory, no loading;

``--threads N`` runs every side with N threads (roofline.py ``--threads``, ``trainer.num_threads``,
bench_step.py ``--threads``, OMP_NUM_THREADS for raw_limit.py): ``--threads 1`` is the fair
one-thread comparison of ../shared/bench/README.md.

and print samples/s, the ratios to the roofline and to raw_limit measured in the same
round, the peak RSS of every process (``os.wait4``) and the val AUCs of both tasks.

mtl-train's samples/s is ``run.json: train_loop_samples_per_s``: the training loop with
batch loading, excluding validation, checkpoints and the (cached) prepare step, as
raw_limit.py excludes its loading and evaluation.

``--big-rows N`` also writes an N-row log of the bench schema (a directory of 1M-row files,
make_workload.py with seeds 100, 101, ...; the hidden label model is the same in every file)
and trains on it streamed for ``--big-steps`` steps, reporting samples/s and peak RSS next to
an in-memory run of the same number of steps on the 400k workload; ``--big-repeat`` such pairs
alternate and the median of their ratios is reported.

``python scripts/bench.py startup [ARGS]`` runs the start-up benchmark instead (scripts/bench_startup.py:
``--help``, launch to the first step, per-job overhead of a sweep, evaluation over training
samples/s; ``--before DIR`` compares another checkout in the same run).

``python scripts/bench.py balancers [ARGS]`` runs the loss-balancing benchmark instead
(scripts/bench_balancers.py: time per training step of every ``loss=`` method on the bench
MMoE, as a ratio to ``loss=equal`` measured in the same run; ARGS are its options).

``python scripts/bench.py ddp [ARGS]`` runs the several-ranks benchmark instead
(scripts/bench_ddp.py: 2 ranks x 1 thread under torchrun against 1 process x 1 thread and
1 process x 2 threads, samples/s ratios and the share of the 2-rank loop in communication).

``python scripts/bench.py ddp-balancers [ARGS]`` runs the distributed balancer benchmark
(scripts/bench_ddp_balancers.py: step time of ``loss=gradnorm`` and ``loss=pcgrad`` under 2
gloo ranks, as a ratio to ``loss=equal`` under 2 ranks in the same run).

``python scripts/bench.py serve [ARGS]`` runs the serving latency benchmark instead
(scripts/bench_serve.py: p50/p99 per call at batch 1, 64 and 512 of the bench MMoE in eager
PyTorch, the torch.export program and ONNX Runtime, encoded inputs and raw rows).

``python scripts/bench.py diagnostics [ARGS]`` measures the cost of the gradient-conflict
diagnostics (scripts/bench_diagnostics.py: a measured step over a plain one on the bench MMoE, and
the overhead that gives at ``trainer.diagnostics_every_steps`` = N).

Usage: python scripts/bench.py [--workdir DIR] [--repeat N] [--stream] [--bf16] [--threads N] [--big-rows N --big-steps S]
       python scripts/bench.py balancers [--methods ...] [--rounds N] [--clock cpu] [--threads 1]
       python scripts/bench.py ddp-balancers [--methods equal,gradnorm,pcgrad] [--rounds N] [--threads 1]
       python scripts/bench.py serve [--workdir DIR] [--threads 1] [--rounds N] [--json OUT]
       python scripts/bench.py diagnostics [--methods equal,gradnorm,pcgrad] [--rounds 20] [--every 10,50,100]
       python scripts/bench.py ddp [--rounds N] [--steps S] [--losses equal,gradnorm,pcgrad]
       python scripts/bench.py startup [--before DIR] [--repeat N] [--sweep-jobs N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "bench"
CHUNK = 1_000_000
MODES = {  # python scripts/bench.py <mode> [ARGS] runs scripts/<script> with ARGS (see the docstring)
    "balancers": "bench_balancers.py", "ddp": "bench_ddp.py", "ddp-balancers": "bench_ddp_balancers.py",
    "serve": "bench_serve.py", "diagnostics": "bench_diagnostics.py", "startup": "bench_startup.py",
}


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[str, float, float]:
    """Run ``cmd``; returns (stdout+stderr, wall seconds, peak RSS in MB of that process)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, **(env or {})))
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if p.returncode != 0:
        raise SystemExit(f"bench: command failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return text, time.perf_counter() - t0, usage.ru_maxrss / 1024


def ensure_workload(work: Path) -> tuple[Path, Path]:
    train, valid = work / "train.parquet", work / "valid.parquet"
    for path, rows, seed in ((train, 400_000, 0), (valid, 100_000, 1)):
        if not path.exists():
            run([sys.executable, str(BENCH / "make_workload.py"), str(path), str(rows), str(seed)], work)
    schema = work / "schema.yaml"
    schema.write_text("categorical: [" + ", ".join(f"c{i}" for i in range(26)) + "]\n"
                      "tasks: [click, {name: purchase, parent: click}]\n")
    return train, valid


def ensure_big(work: Path, rows: int) -> Path:
    big = work / f"big-{rows}"
    big.mkdir(exist_ok=True)
    for k in range(-(-rows // CHUNK)):
        f = big / f"part-{k:04d}.parquet"
        n = min(CHUNK, rows - k * CHUNK)
        if not f.exists():
            tmp = big / f".tmp-part-{k:04d}.parquet"  # hidden: not read as data until renamed
            run([sys.executable, str(BENCH / "make_workload.py"), str(tmp), str(n), str(100 + k)], work)
            tmp.rename(f)
    return big


def mtl_train(work: Path, name: str, train: Path, val: Path, extra: list[str]) -> dict:
    run_dir = work / "runs" / f"{name}-{time.strftime('%H%M%S')}-{os.getpid()}"
    args = [sys.executable, "-m", "mtl_train", "dataset=parquet", f"dataset.train_path={train}",
            f"dataset.val_path={val}", f"dataset.test_path={val}", f"dataset.schema_file={work / 'schema.yaml'}",
            f"dataset.cache_dir={work / 'cache'}", "dataset.progress=false",
            "model=mmoe", "model.embedding_dim=16", "model.num_experts=8", "model.expert_hidden=[256,128]",
            "graph.tower_hidden=[64]", "trainer.batch_size=2048", "trainer.lr=0.001", "trainer.optimizer=adam",
            "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu", f"hydra.run.dir={run_dir}", *extra]
    text, wall, rss = run(args, REPO)
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"samples_per_s": info["train_loop_samples_per_s"], "samples": info["train_samples"],
            "loop_s": info["train_loop_seconds"], "wall_s": round(wall, 1), "peak_rss_mb": round(rss),
            "auc_click": metrics["val"]["click"]["auc"], "auc_purchase": metrics["val"]["purchase"]["auc"]}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="'python scripts/bench.py balancers [ARGS]' runs the loss-balancing benchmark instead "
               "(scripts/bench_balancers.py; 'balancers --help' lists its options); the other modes: "
               + ", ".join(f"'{m}'" for m in MODES) + " (see the module docstring).")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mtl-bench"),
                    help="where the workload, the prepare cache and the runs go (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds to run (default: %(default)s)")
    ap.add_argument("--stream", action="store_true", help="also train the 400k workload with dataset.mode=stream")
    ap.add_argument("--bf16", action="store_true",
                    help="also train the 400k workload in memory with trainer.precision=bf16 (mixed precision)")
    ap.add_argument("--big-rows", type=int, default=0, help="also stream an N-row log (e.g. 20000000)")
    ap.add_argument("--big-steps", type=int, default=300,
                    help="training steps of the big-log run and of its in-memory reference (default: %(default)s)")
    ap.add_argument("--big-repeat", type=int, default=3,
                    help="alternating (in-memory, streamed) pairs for the big log; the median ratio is reported "
                         "(default: %(default)s)")
    ap.add_argument("--skip-raw", action="store_true", help="skip raw_limit.py (roofline only)")
    ap.add_argument("--threads", type=int, default=0, help="threads of every side (default: each one's own)")
    ap.add_argument("--skip-step", action="store_true", help="skip scripts/bench_step.py (the in-process figure)")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="extra mtl-train overrides for every mtl-train run, e.g. --extra trainer.num_threads=1")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train, valid = ensure_workload(work)
    threads = ["--threads", str(a.threads)] if a.threads else []
    if a.threads:
        a.extra = [f"trainer.num_threads={a.threads}", *a.extra]
    env = {"OMP_NUM_THREADS": str(a.threads)} if a.threads else None
    rounds = []
    print(f"bench: workdir {work}; load average at start {os.getloadavg()}", flush=True)
    for r in range(a.repeat):
        res = {"load_before": [round(x, 2) for x in os.getloadavg()]}
        roofs: list[float] = []
        roofs16: list[float] = []

        def roofline() -> None:  # one more sample (and a bfloat16 one with --bf16), between the runs of the round
            for dtype, into in (("float32", roofs), ("bfloat16", roofs16))[:2 if a.bf16 else 1]:
                text, _, _ = run([sys.executable, str(BENCH / "roofline.py"), "--dtype", dtype, *threads], work)
                into.append(float(re.search(r"roofline_samples_per_s=(\d+)", text).group(1)))

        roofline()
        if not a.skip_raw:
            text, _, rss = run([sys.executable, str(BENCH / "raw_limit.py"), str(train), str(valid)], work, env)
            m = re.search(r"samples_per_s=(\d+) auc_click=([\d.]+) auc_purchase=([\d.]+)", text)
            res["raw_limit"] = {"samples_per_s": float(m.group(1)), "auc_click": float(m.group(2)),
                                "auc_purchase": float(m.group(3)), "peak_rss_mb": round(rss)}
            roofline()
        res["mtl_memory"] = mtl_train(work, "memory", train, valid, ["dataset.mode=memory", *a.extra])
        roofline()
        if a.stream:
            res["mtl_stream"] = mtl_train(work, "stream", train, valid, ["dataset.mode=stream", *a.extra])
            roofline()
        if a.bf16:
            res["mtl_memory_bf16"] = mtl_train(work, "memory-bf16", train, valid,
                                               ["dataset.mode=memory", "trainer.precision=bf16", *a.extra])
            roofline()
        if not a.skip_step:
            for prec in ["fp32"] + (["bf16"] if a.bf16 else []):
                out = work / f"step-{prec}.json"
                run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--json", str(out), *threads,
                     *(["--bf16"] if prec == "bf16" else [])], work)
                res[f"step_{prec}"] = json.loads(out.read_text())
        # the ceiling is the best GEMM rate seen in the round: a single roofline.py sample on a
        # shared VM has read anywhere from 18.6k to 37k samples/s within minutes
        res["roofline_samples"] = roofs
        res["roofline"] = max(roofs)
        if roofs16:
            res["roofline_bf16_samples"] = roofs16
            res["roofline_bf16"] = max(roofs16)
        res["load_after"] = [round(x, 2) for x in os.getloadavg()]
        rounds.append(res)
        report_round(r, res)
    if a.big_rows:
        big = ensure_big(work, a.big_rows)
        res = {"load_before": [round(x, 2) for x in os.getloadavg()], "pairs": []}
        # max_steps ends both runs (the 400k workload repeats epochs to reach it); the in-memory
        # reference and the streamed big log alternate, and the median of the pair ratios is
        # reported: a single pair has read anywhere from 0.86 to 1.01 on this shared machine
        steps = [f"trainer.max_steps={a.big_steps}", "trainer.epochs=1000"]
        for _ in range(a.big_repeat):
            m = mtl_train(work, "memory-steps", train, valid, ["dataset.mode=memory", *steps, *a.extra])
            b = mtl_train(work, "big-stream", big, valid, ["dataset.mode=stream", *steps, *a.extra])
            res["pairs"].append({"memory_same_steps": m, "big_stream": b,
                                 "ratio": round(b["samples_per_s"] / m["samples_per_s"], 4)})
            print(f"big log {a.big_rows} rows streamed, {b['samples']} samples ({a.big_steps} steps): "
                  f"{b['samples_per_s']:.0f} samples/s, peak RSS {b['peak_rss_mb']} MB; in-memory 400k same steps: "
                  f"{m['samples_per_s']:.0f} samples/s, peak RSS {m['peak_rss_mb']} MB; "
                  f"stream/memory = {b['samples_per_s'] / m['samples_per_s']:.3f}", flush=True)
        ratios = sorted(p["ratio"] for p in res["pairs"])
        res["median_ratio"] = statistics.median(ratios)
        res["max_stream_rss_mb"] = max(p["big_stream"]["peak_rss_mb"] for p in res["pairs"])
        res["load_after"] = [round(x, 2) for x in os.getloadavg()]
        rounds.append({"big_rows": a.big_rows, **res})
        print(f"big log: stream/memory median {res['median_ratio']:.3f} over {len(ratios)} pairs "
              f"({', '.join(f'{r:.3f}' for r in ratios)}); peak RSS of the streamed runs <= "
              f"{res['max_stream_rss_mb']} MB", flush=True)
    out = work / "bench.json"
    out.write_text(json.dumps(rounds, indent=1))
    print(f"bench: results in {out}")


def report_round(r: int, res: dict) -> None:
    roof = res["roofline"]
    raw = res.get("raw_limit")
    print(f"round {r + 1}: load {res['load_before']} -> {res['load_after']}; roofline {roof:.0f} samples/s "
          f"(the best of {len(res['roofline_samples'])} samples taken between the runs: "
          f"{', '.join(f'{x:.0f}' for x in res['roofline_samples'])})")
    if "roofline_bf16" in res:
        print(f"  bf16 roofline {res['roofline_bf16']:.0f} samples/s (best of "
              f"{', '.join(f'{x:.0f}' for x in res['roofline_bf16_samples'])})")
    if raw:
        print(f"  raw_limit.py     {raw['samples_per_s']:8.0f} samples/s  x{raw['samples_per_s'] / roof:.3f} roofline  "
              f"peak RSS {raw['peak_rss_mb']} MB  val auc click {raw['auc_click']:.4f} purchase {raw['auc_purchase']:.4f}")
    for key in ("mtl_memory", "mtl_stream", "mtl_memory_bf16"):
        m = res.get(key)
        if not m:
            continue
        vs_raw = f"x{m['samples_per_s'] / raw['samples_per_s']:.3f} raw_limit  " if raw else ""
        print(f"  {key:15s} {m['samples_per_s']:8.0f} samples/s  x{m['samples_per_s'] / roof:.3f} roofline  {vs_raw}"
              f"peak RSS {m['peak_rss_mb']} MB  val auc click {m['auc_click']:.4f} purchase {m['auc_purchase']:.4f}"
              + (f"  (auc - raw: {m['auc_click'] - raw['auc_click']:+.4f}, {m['auc_purchase'] - raw['auc_purchase']:+.4f})"
                 if raw else ""), flush=True)
    bf, fp = res.get("mtl_memory_bf16"), res.get("mtl_memory")
    if bf and "roofline_bf16" in res:
        print(f"  bf16 run: x{bf['samples_per_s'] / res['roofline_bf16']:.3f} bf16 roofline, x"
              f"{bf['samples_per_s'] / fp['samples_per_s']:.2f} the fp32 run; val auc bf16 - fp32: click "
              f"{bf['auc_click'] - fp['auc_click']:+.4f}, purchase {bf['auc_purchase'] - fp['auc_purchase']:+.4f}",
              flush=True)
    for prec in ("fp32", "bf16"):
        st = res.get(f"step_{prec}")
        if st:
            print(f"  in one process ({prec}, bench_step.py): train step {st['step_ms_median']:.1f} ms vs roofline budget "
                  f"{st['roofline_budget_ms_median']:.1f} ms, interleaved: x{st['ratio_of_medians']:.3f} roofline "
                  f"(medians), x{st['ratio_best_best']:.3f} (best/best); GEMMs alone "
                  f"{st['gemm_time_over_budget_profiled']:.2f} x the budget"
                  + (f"; x{st['ratio_of_medians_bf16_roofline']:.3f} bf16 roofline (medians)"
                     if "ratio_of_medians_bf16_roofline" in st else ""), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in MODES:
        import runpy

        sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), MODES[sys.argv[1]]), *sys.argv[2:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        main()
