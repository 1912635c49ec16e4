"""ESMM's central claim on sample-selection bias (Ma et al., SIGIR 2018), on the synthetic set.

The synthetic click model is biased (``dataset.click_bias``): clicked impressions are not a
random sample of all impressions. Two CVR estimators are compared over seeds:

- ``naive``: the paper's BASE model, a CVR tower trained on clicked impressions only
  (``model=single_task`` - own embeddings and MLP per task - with
  ``graph=independent graph.parent_positive_only=true``);
- ``esmm``: ``model=esmm`` (shared embeddings, CVR supervised through pCTCVR = pCTR * pCVR on all
  impressions).

Both have the paper's 200-80 layers after the embeddings. The figure is the test AUC of pCVR
against the ground truth ``purchase_if_click`` (would this impression convert if clicked) on the
ENTIRE impression space (metrics.json output ``purchase_given_click_entire``), next to the usual
CVR AUC on clicked rows (``purchase_given_click``).

    nice -n 19 python scripts/reproduce_esmm_bias.py --out runs/esmm_bias
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import mean_std, run_mtl  # noqa: E402

MODELS = {
    "naive": ["model=single_task", "model.embedding_dim=18", "model.hidden=[200,80]", "graph=independent",
              "graph.parent_positive_only=true", "graph.tower_hidden=[]"],
    "esmm": ["model=esmm"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/esmm_bias")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--click-bias", type=float, default=1.0)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    a = ap.parse_args()
    data = ["dataset=synthetic", f"dataset.click_bias={a.click_bias}", f"dataset.train_rows={a.rows}",
            f"dataset.val_rows={a.rows // 5}", f"dataset.test_rows={a.rows // 5}", f"trainer.epochs={a.epochs}",
            *a.extra]
    out = Path(a.out)
    res: dict = {}
    for name, over in MODELS.items():
        for seed in a.seeds:
            args = [*data, *over, f"seed={seed}"]
            m = run_mtl(args, out / f"{name}_seed{seed}")["test"]
            res.setdefault(name, []).append({
                "seed": seed,
                "cvr_auc_entire": m["purchase_given_click_entire"]["auc"],
                "cvr_auc_clicked": m["purchase_given_click"]["auc"],
                "ctcvr_auc": m["purchase"]["auc"],
                "ctr_auc": m["click"]["auc"],
                "command": "mtl-train " + " ".join(args),
            })
            print(name, seed, json.dumps({k: v for k, v in res[name][-1].items() if k != "command"}), flush=True)
    (out / "summary.json").write_text(json.dumps(res, indent=2))
    print("\n| model | pCVR AUC, entire space vs purchase_if_click | CVR AUC, clicked rows | CTCVR AUC | CTR AUC |")
    print("|---|---|---|---|---|")
    for name, rows in res.items():
        cells = []
        for key in ("cvr_auc_entire", "cvr_auc_clicked", "ctcvr_auc", "ctr_auc"):
            m, sd = mean_std([r[key] for r in rows])
            cells.append(f"{m:.4f} ± {sd:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    wins = sum(e["cvr_auc_entire"] > n["cvr_auc_entire"] for e, n in zip(res["esmm"], res["naive"]))
    print(f"\nesmm > naive on entire-space pCVR AUC in {wins} of {len(a.seeds)} seeds "
          f"(per seed: {[round(e['cvr_auc_entire'] - n['cvr_auc_entire'], 4) for e, n in zip(res['esmm'], res['naive'])]})")


if __name__ == "__main__":
    main()
