"""Time the exact AUC over N predictions (default 10 million) against sklearn in the same run.

Scores are rounded to 4 decimals so that many are tied (the hard case for exactness);
the two values must agree to 1e-9. Prints seconds for mtl_train.metrics.exact_auc,
sklearn.metrics.roc_auc_score and, when installed, torchmetrics' exact binary_auroc.

Usage: python scripts/bench_auc.py [N] [REPEAT]
"""
import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mtl_train.metrics import exact_auc


def timed(f, repeat):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = f()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.05).astype(np.float32)
    s = np.round(rng.random(n) * 0.5 + 0.3 * y, 4).astype(np.float32)
    print(f"n={n} threads={torch.get_num_threads()} load={os.getloadavg()} (best of {repeat})")
    t_own, a_own = timed(lambda: exact_auc(s, y), repeat)
    t_sk, a_sk = timed(lambda: roc_auc_score(y, s), repeat)
    print(f"exact_auc      {t_own:7.3f} s  auc={a_own:.12f}")
    print(f"sklearn        {t_sk:7.3f} s  auc={a_sk:.12f}  exact_auc/sklearn time = {t_own / t_sk:.3f}")
    try:
        from torchmetrics.functional.classification import binary_auroc
    except ImportError:
        print("torchmetrics   not installed")
    else:
        st, yt = torch.from_numpy(s), torch.from_numpy(y.astype(np.int64))
        t_tm, a_tm = timed(lambda: float(binary_auroc(st, yt, thresholds=None)), repeat)
        print(f"torchmetrics   {t_tm:7.3f} s  auc={a_tm:.12f}  torchmetrics/sklearn time = {t_tm / t_sk:.3f}")
    assert abs(a_own - a_sk) < 1e-9, (a_own, a_sk)


if __name__ == "__main__":
    main()
