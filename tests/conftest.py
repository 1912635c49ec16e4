import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CENSUS = SHARED / "census-income-kdd" / "census-income.test.gz"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped, with the reason, on a machine without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a machine with one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_cli(args, cwd, check=True, env=None):
    """Run ``python -m mtl_train`` in ``cwd``; returns the CompletedProcess."""
    e = dict(os.environ, **(env or {}))
    e.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-m", "mtl_train", *args], cwd=cwd, capture_output=True, text=True, env=e,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"mtl-train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def find_run_dir(root: Path) -> Path:
    runs = sorted(p.parent for p in root.glob("outputs/*/*/metrics.json"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def fused_on():
    """The hand-written kernels on for the test (trainer.fused_kernels=true), and on again after it."""
    from mtl_train import kernels

    with kernels.use_fused(True):
        yield


@pytest.fixture
def data(tmp_path):
    """A small Parquet impression log (helpers.write_log): the folder, the train and the val table."""
    from helpers import write_log  # helpers imports conftest: not at the top

    train = write_log(tmp_path / "train.parquet", 500, 0)
    val = write_log(tmp_path / "val.parquet", 200, 1)
    return tmp_path, train, val
