"""Training throughput on several ranks: 2 ranks x 1 thread (torchrun, gloo) against 1 process x
1 thread with the same per-rank batch, and against 1 process x 2 threads, on the bench workload
of ../shared/bench/README.md (MMoE, 8 experts [256, 128], embedding 16, towers [64], batch 2048
per rank, Adam), all through the real CLI (``dataset=parquet``, in memory).

Each round runs the three configurations in a fresh random order (a shared machine's drifting
speed then favours none); a configuration's figure is ``run.json: train_loop_samples_per_s``
(the training loop with batch loading, validation and checkpoints excluded; for the 2-rank run
the rows of both ranks). The report gives, per round and as medians over rounds, the ratios
2 ranks / 1 process x 1 thread (the scaling of the data-parallel step) and 2 ranks / 1 process x
2 threads (what the second core buys either way), and two views of communication: the share of
the 2-rank loop in the step's blocking collectives (``run.json: communication_seconds`` of rank
0 over its loop time: the per-step all-reduce of losses, counts and flags, waiting for the other
rank included; DDP's gradient all-reduce overlaps the backward pass and is not in it), and the
data-parallel overhead 1 - (2-rank samples/s / 2) / (1 process x 1 thread samples/s): the share
of a rank's step that one process alone would not spend (every collective, the gradient
all-reduce included, and the waiting). ``--losses equal,gradnorm,pcgrad`` adds 2-rank runs of those methods and their step
time against ``loss=equal`` under 2 ranks.

Usage: python scripts/bench.py ddp [--workdir DIR] [--rounds N] [--steps S] [--losses equal,...]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, ensure_workload, run  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(work: Path, name: str, train_path: Path, val: Path, ranks: int, threads: int, steps: int, loss: str) -> dict:
    """One CLI run of ``steps`` optimizer steps; returns run.json's figures."""
    run_dir = work / "runs" / f"ddp-{name}-{time.strftime('%H%M%S')}-{os.getpid()}-{random.randrange(10**6)}"
    args = ["dataset=parquet", f"dataset.train_path={train_path}", f"dataset.val_path={val}", f"dataset.test_path={val}",
            f"dataset.schema_file={work / 'schema.yaml'}", f"dataset.cache_dir={work / 'cache'}", "dataset.progress=false",
            "dataset.mode=memory", "model=mmoe", "model.embedding_dim=16", "model.num_experts=8",
            "model.expert_hidden=[256,128]", "graph.tower_hidden=[64]", "trainer.batch_size=2048", "trainer.lr=0.001",
            f"loss={loss}", "trainer.epochs=1", f"trainer.max_steps={steps}", "trainer.progress=false",
            "trainer.device=cpu", f"trainer.num_threads={threads}", f"hydra.run.dir={run_dir}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1",
                f"--master-port={_free_port()}", "-m", "mtl_train"] if ranks > 1 else [sys.executable, "-m", "mtl_train"]
    run([*launcher, *args], REPO, env={"OMP_NUM_THREADS": str(threads)})
    info = json.loads((run_dir / "run.json").read_text())
    out = {"samples_per_s": info["train_loop_samples_per_s"], "loop_s": info["train_loop_seconds"],
           "steps": info["steps"], "world_size": info.get("world_size", 1)}
    if "communication_seconds" in info:
        out["comm_share"] = info["communication_seconds"] / max(info["train_loop_seconds"], 1e-9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mtl-bench"),
                    help="where the workload, the prepare cache and the runs go (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the configurations (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps of every run (default: %(default)s)")
    ap.add_argument("--losses", default="equal",
                    help="comma-separated loss= methods run on 2 ranks; the first is the reference (default: equal)")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train_path, val = ensure_workload(work)
    losses = a.losses.split(",")
    print(f"bench ddp: workdir {work}; {a.steps} steps of 2048 rows per rank; load average at start "
          f"{os.getloadavg()}", flush=True)
    # the prepare step (cached) runs once, outside the rounds
    train(work, "warmup", train_path, val, 1, 1, 2, "equal")
    configs = [("2r x 1t", 2, 1, losses[0]), ("1p x 1t", 1, 1, losses[0]), ("1p x 2t", 1, 2, losses[0])]
    configs += [(f"2r x 1t {loss}", 2, 1, loss) for loss in losses[1:]]
    rounds = []
    for r in range(a.rounds):
        order = random.sample(configs, len(configs))
        res = {name: train(work, name.replace(" ", ""), train_path, val, ranks, threads, a.steps, loss)
               for name, ranks, threads, loss in order}
        rounds.append(res)
        two = res["2r x 1t"]
        line = (f"round {r + 1}: " + ", ".join(f"{n} {res[n]['samples_per_s']:,.0f}/s" for n, *_ in configs)
                + f"; 2r/1p1t x{two['samples_per_s'] / res['1p x 1t']['samples_per_s']:.2f}, 2r/1p2t "
                  f"x{two['samples_per_s'] / res['1p x 2t']['samples_per_s']:.2f}, blocking collectives "
                  f"{100 * two['comm_share']:.1f}% of the 2-rank loop, data-parallel overhead "
                  f"{100 * overhead(res):.1f}%")
        for loss in losses[1:]:
            other = res[f"2r x 1t {loss}"]
            line += f"; {loss} step time x{two['samples_per_s'] / other['samples_per_s']:.2f} of {losses[0]}"
        print(line, load_average(), flush=True)

    def med(f):
        return statistics.median(f(res) for res in rounds)

    print(f"median over {a.rounds} round(s): 2 ranks x 1 thread / 1 process x 1 thread "
          f"x{med(lambda x: x['2r x 1t']['samples_per_s'] / x['1p x 1t']['samples_per_s']):.2f}; "
          f"/ 1 process x 2 threads x{med(lambda x: x['2r x 1t']['samples_per_s'] / x['1p x 2t']['samples_per_s']):.2f}; "
          f"blocking collectives {100 * med(lambda x: x['2r x 1t']['comm_share']):.1f}% of the 2-rank loop; "
          f"data-parallel overhead {100 * med(overhead):.1f}%", flush=True)


def overhead(res: dict) -> float:
    """1 - (2-rank samples/s per rank) / (1 process x 1 thread samples/s)."""
    return 1 - res["2r x 1t"]["samples_per_s"] / 2 / res["1p x 1t"]["samples_per_s"]


def load_average() -> str:
    return f"(load {os.getloadavg()[0]:.1f})"


if __name__ == "__main__":
    main()
