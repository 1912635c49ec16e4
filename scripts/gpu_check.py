"""The GPU checks of scripts/gpu_check.sh (issue 18, item 2), one subcommand each.

  roofline   GEMM throughput at the bench model's shapes on the device, as ``../shared/bench/roofline.py``
             measures it on the CPU (same layer list, same FLOPs per sample: forward x3 for forward +
             backward, the same [B, 26*16] x [26*16, 8*256] GEMM timed), in float32 (TF32 off), TF32 and
             bfloat16; roofline.py itself has no device option (its flags: BATCH, --dtype, --threads) and
             times without synchronising, which on a GPU would time the launch queue;
  resume     a run killed with SIGKILL after its first checkpoint, resumed, against an uninterrupted run:
             metrics.json must be the same bytes;
  bench      the bench workload (../shared/bench/README.md) through the CLI in fp32, TF32 and bf16 at batch
             2048 and in bf16 at larger batches: samples/s (run.json: train_loop_samples_per_s), ratios to
             the fp32 run and to the roofline of the same precision, val AUCs and their distance from the
             2048 run, peak GPU memory (run.json: peak_gpu_memory_mb).

``--dry`` runs the same code on the CPU at tiny sizes (no GPU at hand: the script stays testable).
TF32 is switched on for a run with ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` (torch's own switch, read when
the process starts); mtl-train itself leaves torch's default (TF32 off for float32 GEMMs).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "bench"
INP, EXPERTS, H1, H2, TOWER, TASKS = 26 * 16, 8, 256, 128, 64, 2  # roofline.py's bench model
LAYERS = [(INP, H1), (H1, H2)] * EXPERTS + [(INP, EXPERTS)] * TASKS + [(H2, TOWER), (TOWER, 1)] * TASKS
FLOPS_PER_SAMPLE = 3 * sum(2 * i * o for i, o in LAYERS)


def roofline(batch: int, dtype: str, device: str, seconds: float = 0.3) -> float:
    """Training samples/s the bench model's GEMMs alone would allow on ``device`` (best of 3 windows)."""
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(batch, INP, dtype=dt, device=device)
    w = torch.randn(INP, EXPERTS * H1, dtype=dt, device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(5):
        a @ w
    sync()
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while n < 20 or time.perf_counter() - t0 < seconds:
            for _ in range(10):
                a @ w
            n += 10
            sync()
        best = max(best, 2 * batch * INP * EXPERTS * H1 * n / (time.perf_counter() - t0))
    return best / FLOPS_PER_SAMPLE


def cmd_roofline(a) -> dict:
    out = {}
    for b in a.batches:
        for dtype in ("float32", "tf32", "bfloat16"):
            if dtype == "tf32" and a.device != "cuda":
                continue
            out[f"{dtype}@{b}"] = round(roofline(b, dtype, a.device, 0.05 if a.dry else 0.3))
            print(f"roofline {a.device} {dtype:8s} batch {b:6d}: {out[f'{dtype}@{b}']:12,d} samples/s "
                  f"({FLOPS_PER_SAMPLE / 1e6:.2f} MFLOP/sample)", flush=True)
    return out


def _mtl(args: list[str], run_dir: Path, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "mtl_train", *args, f"hydra.run.dir={run_dir}", "trainer.progress=false"]
    e = dict(os.environ, **(env or {}))
    if not wait:
        return subprocess.Popen(cmd, cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=e)
    p = subprocess.run(cmd, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    if p.returncode:
        raise SystemExit(f"gpu_check: mtl-train failed ({p.returncode}): {' '.join(args)}\n{p.stdout[-3000:]}")
    return p


def cmd_resume(a) -> dict:
    work = Path(a.workdir) / "resume"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    rows = ["dataset.train_rows=20000", "dataset.val_rows=4000", "dataset.test_rows=4000"] if a.dry else []
    args = [*rows, f"trainer.device={a.device}", "trainer.epochs=2", "trainer.checkpoint_every_steps=5",
            "model.dropout=0.1"]
    _mtl(args, work / "whole")
    killed = work / "killed"
    p = _mtl(args, killed, wait=False)
    last = killed / "checkpoints" / "last.pt"
    while p.poll() is None and not last.exists():
        time.sleep(0.05)
    if p.poll() is None:
        time.sleep(0.5)  # a few steps past the checkpoint: they are redone after the resume
        p.send_signal(signal.SIGKILL)
    p.wait()
    step = None
    if last.exists():
        import torch

        step = torch.load(last, weights_only=False, map_location="cpu")["step"]
    _mtl([f"trainer.resume={killed}"], killed)
    same = (killed / "metrics.json").read_bytes() == (work / "whole" / "metrics.json").read_bytes()
    res = {"killed_at_checkpoint_step": step, "killed_before_end": p.returncode == -signal.SIGKILL,
           "metrics_identical": same}
    if not same:
        w, k = (json.loads((d / "metrics.json").read_text()) for d in (work / "whole", killed))
        res["max_auc_difference"] = max(abs((k["test"][t]["auc"] or 0) - (m["auc"] or 0)) for t, m in w["test"].items())
    print(f"kill and resume on {a.device}: {res}", flush=True)
    return res


def _workload(a) -> tuple[Path, Path, Path]:
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train, valid = work / "train.parquet", work / "valid.parquet"
    rows = (8000, 2000) if a.dry else (400_000, 100_000)
    for path, n, seed in ((train, rows[0], 0), (valid, rows[1], 1)):
        if not path.exists():  # kept between runs of the script (idempotent, and the prepare cache stays valid)
            subprocess.run([sys.executable, str(BENCH / "make_workload.py"), str(path), str(n), str(seed)], cwd=work,
                           check=True, stdout=subprocess.DEVNULL)
    schema = work / "schema.yaml"
    schema.write_text("categorical: [" + ", ".join(f"c{i}" for i in range(26)) + "]\n"
                      "tasks: [click, {name: purchase, parent: click}]\n")
    return train, valid, schema


def cmd_bench(a, roofs: dict) -> dict:
    train, valid, schema = _workload(a)
    runs = Path(a.workdir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = ["dataset=parquet", f"dataset.train_path={train}", f"dataset.val_path={valid}", f"dataset.test_path={valid}",
            f"dataset.schema_file={schema}", f"dataset.cache_dir={Path(a.workdir) / 'cache'}", "dataset.progress=false",
            "dataset.mode=memory", "model=mmoe", "model.embedding_dim=16", "model.num_experts=8",
            "model.expert_hidden=[256,128]", "graph.tower_hidden=[64]", "trainer.optimizer=adam", "trainer.epochs=1",
            f"trainer.device={a.device}"]
    plan = [("fp32", 2048, {}), ("bf16", 2048, {})]
    if a.device == "cuda":
        plan.insert(1, ("tf32", 2048, {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}))
    plan += [("bf16", b, {}) for b in a.batches[1:]]
    out = {}
    for prec, batch, env in plan:
        run_dir = runs / f"{prec}-{batch}-{time.strftime('%H%M%S')}"
        lr = 1e-3 * (batch / 2048) ** 0.5  # square-root scaling of the learning rate with the batch
        _mtl([*base, f"trainer.batch_size={batch}", f"trainer.lr={lr:g}",
              f"trainer.precision={'bf16' if prec == 'bf16' else 'fp32'}"], run_dir, env)
        info = json.loads((run_dir / "run.json").read_text())
        val = json.loads((run_dir / "metrics.json").read_text())["val"]
        out[f"{prec}@{batch}"] = {"samples_per_s": info["train_loop_samples_per_s"],
                                  "peak_gpu_memory_mb": info.get("peak_gpu_memory_mb"),
                                  "auc_click": val["click"]["auc"], "auc_purchase": val["purchase"]["auc"]}
    fp32 = out["fp32@2048"]["samples_per_s"]
    kind = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16"}
    print(f"bench workload on {a.device} ({'dry run, tiny' if a.dry else '400k train rows, 1 epoch'}):")
    for key, r in out.items():
        prec, batch = key.split("@")
        roof = roofs.get(f"{kind[prec]}@{batch}") or roofs.get(f"{kind[prec]}@2048")
        ref = out.get(f"{prec}@2048", out["bf16@2048"])
        d = max(abs(r["auc_click"] - ref["auc_click"]), abs(r["auc_purchase"] - ref["auc_purchase"]))
        r.update(over_fp32=r["samples_per_s"] / fp32, over_roofline=r["samples_per_s"] / roof if roof else None,
                 auc_distance_from_2048=d)
        print(f"  {key:10s} {r['samples_per_s']:12,.0f} samples/s  x{r['over_fp32']:.2f} fp32  "
              + (f"x{r['over_roofline']:.3f} {kind[prec]} roofline  " if roof else "")
              + f"val auc click {r['auc_click']:.4f} purchase {r['auc_purchase']:.4f} (|d| vs batch 2048 {d:.4f}"
              f"{', within 0.002' if d <= 0.002 else ', OVER 0.002'})  peak GPU memory {r['peak_gpu_memory_mb']} MB",
              flush=True)
    within = [int(k.split("@")[1]) for k, r in out.items() if k.startswith("bf16") and r["auc_distance_from_2048"] <= 0.002]
    print(f"  largest bf16 batch within 0.002 val AUC of batch 2048: {max(within)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["roofline", "resume", "bench", "all"])
    ap.add_argument("--dry", action="store_true", help="on the CPU at tiny sizes (a machine without CUDA)")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "mtl-gpu-check"))
    ap.add_argument("--batches", type=int, nargs="+", default=None,
                    help="batch sizes: the first is the bench batch (default 2048 8192 32768; dry: 2048 4096)")
    a = ap.parse_args()
    a.device = "cpu" if a.dry else "cuda"
    a.batches = a.batches or ([2048, 4096] if a.dry else [2048, 8192, 32768])
    a.workdir = str(Path(a.workdir) / ("dry" if a.dry else "cuda"))
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    res = {}
    if a.what in ("roofline", "bench", "all"):
        res["roofline"] = cmd_roofline(a)
    if a.what in ("resume", "all"):
        res["resume"] = cmd_resume(a)
    if a.what in ("bench", "all"):
        res["bench"] = cmd_bench(a, res["roofline"])
    if a.device == "cuda":
        import torch

        res["device"] = torch.cuda.get_device_name(0)
    out = Path(a.workdir) / f"gpu_check-{a.what}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"gpu_check: results in {out}")


if __name__ == "__main__":
    main()
