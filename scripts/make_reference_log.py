"""The Parquet log of scripts/reference_outputs.sh: 30,000/5,000/5,000 rows with integer ids with
nulls, a hashed id column, a string column under min_count, a log-normalised price with nulls, an
id-list sequence and a click -> purchase funnel (purchase null on some rows). Deterministic.

Usage: python scripts/make_reference_log.py OUT_DIR
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = """categorical: [user, {name: item, hash_buckets: 20000}, {name: city, min_count: 2}]
numeric: [{name: price, norm: log, fill: zero}]
sequences: [{name: hist, max_len: 6, pooling: mean}]
tasks: [click, {name: purchase, label: buy, parent: click}]
"""


def write(path: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 2000, n).astype(np.int64)
    item = rng.zipf(1.3, n).astype(np.int64) % 50000
    city = np.array(["paris", "rome", "oslo", "lima", "kyiv"])[rng.integers(0, 5, n)].tolist()
    price = rng.lognormal(2, 1, n)
    hist = [list(rng.integers(0, 500, rng.integers(0, 8)).tolist()) for _ in range(n)]
    logit = (user % 7 - 3) * 0.3 + np.log(price) * 0.2 - 2
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    buy = np.where(click == 1, (rng.random(n) < 0.3 + 0.1 * (item % 3 == 0)).astype(float), 0.0)
    table = pa.table({"user": pa.array(user, mask=np.arange(n) % 17 == 3), "item": item,
                      "city": pa.array(city, mask=np.arange(n) % 13 == 5),
                      "price": pa.array(price, mask=np.arange(n) % 11 == 7),
                      "hist": pa.array(hist, type=pa.list_(pa.int64()), mask=np.arange(n) % 19 == 2),
                      "click": click, "buy": pa.array(buy, mask=np.arange(n) % 23 == 1)})
    pq.write_table(table, path, row_group_size=4096)


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, n, seed in (("train", 30000, 0), ("val", 5000, 1), ("test", 5000, 2)):
        write(os.path.join(out, f"{name}.parquet"), n, seed)
    with open(os.path.join(out, "schema.yaml"), "w") as f:
        f.write(SCHEMA)


if __name__ == "__main__":
    main()
