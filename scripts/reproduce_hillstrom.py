"""Funnel graphs on real data: Hillstrom e-mail (visit -> conversion), each graph on the mmoe
backbone, over seeds.

For each graph (independent, esmm, dbmtl, gmsl, aitm, with the graph's default config) and
seed, one ``mtl-train dataset=hillstrom model=mmoe graph=<g> seed=<s>`` run (the seed also
draws the 60/20/20 split, so the spread covers split and initialisation). Reported: mean +-
std (sample, ddof=1) over seeds of the TEST split's

- visit AUC (output ``visit``, all rows);
- conversion AUC on all rows (output ``conversion``: P(conversion | customer); for esmm the
  product pCTR * pCVR);
- conversion AUC on visited rows only (output ``conversion_given_visit``: for esmm its
  conditional head pCVR, for the others their conversion probability on those rows).

    nice -n 19 python scripts/reproduce_hillstrom.py --data ../shared/data/hillstrom-email/hillstrom.csv
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import mean_std, run_mtl  # noqa: E402

GRAPHS = ["independent", "esmm", "dbmtl", "gmsl", "aitm"]
COLUMNS = [("visit", "visit AUC"), ("conversion", "conversion AUC, all rows"),
           ("conversion_given_visit", "conversion AUC, visited rows")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/hillstrom-email/hillstrom.csv"))
    ap.add_argument("--out", default="runs/hillstrom")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--graphs", nargs="+", default=GRAPHS)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (default: the trainer's "
                    "defaults, 5 epochs of batch 1024 with early stopping on val auc/mean)")
    a = ap.parse_args()
    out = Path(a.out)
    res: dict = {}
    for graph in a.graphs:
        for seed in a.seeds:
            args = ["dataset=hillstrom", f"dataset.path={a.data}", "model=mmoe", f"graph={graph}", f"seed={seed}", *a.extra]
            m = run_mtl(args, out / f"{graph}_seed{seed}")["test"]
            row = {"seed": seed, **{k: m[k]["auc"] for k, _ in COLUMNS}, "command": "mtl-train " + " ".join(args)}
            res.setdefault(graph, []).append(row)
            print(graph, seed, json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    (out / "summary.json").write_text(json.dumps(res, indent=2))
    print("\n| graph (on mmoe) | " + " | ".join(t for _, t in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for graph, rows in res.items():
        cells = []
        for key, _ in COLUMNS:
            mu, sd = mean_std([r[key] for r in rows])
            cells.append(f"{mu:.4f} ± {sd:.4f}")
        print(f"| {graph} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
