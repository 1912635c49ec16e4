"""A model too large for the process's memory is refused before it is allocated (issue 14, item 4)."""
import resource

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import run_cli


def test_a_hashed_table_too_large_for_the_memory_limit_is_refused_before_allocation(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    pq.write_table(pa.table({"query": rng.integers(0, 10**9, n), "user": rng.integers(0, 30, n),
                             "click": (rng.random(n) < 0.3).astype(float)}), tmp_path / "train.parquet")
    r = run_cli(["dataset=parquet", f"dataset.train_path={tmp_path / 'train.parquet'}",
                 "dataset.categorical=[user,{name: query, hash_buckets: 100000000}]", "dataset.numeric=[]",
                 "dataset.tasks=[click]", "model.embedding_dim=8", "trainer.progress=false", "trainer.device=cpu"],
                cwd=tmp_path, check=False, env={"MTL_TRAIN_MEMORY_LIMIT_MB": "2000"})
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("mtl-train: error: model: the embeddings and optimizer state need ~9.6 GB "
                           "(table 'query': 100,000,002 x 8), more than the "), last
    assert last.endswith("; lower hash_buckets or model.embedding_dim"), last
    assert "Traceback" not in r.stderr
    # the 3.2 GB table was never allocated: no child process of this test session came near it
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < 2e9
