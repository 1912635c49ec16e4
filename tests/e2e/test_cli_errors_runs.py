"""Bad output folders and missing extras end in one line and exit 2, before any work."""
import sys

import pytest
from conftest import run_cli

HIDE_PLUGINS = '''import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "hydra_plugins" or name.startswith("hydra_plugins."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Hide())
'''


def _one_line(proc, expected):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"mtl-train: error: {expected}"]


@pytest.mark.parametrize("args", [["-m", "hydra/sweeper=optuna", "seed=0,1"], ["-m", "experiment=census_optuna"]])
def test_optuna_sweeper_without_any_hydra_plugin_is_one_line(tmp_path, args):
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_PLUGINS)
    proc = run_cli(args, cwd=tmp_path, check=False, env={"PYTHONPATH": str(tmp_path / "hide")})
    _one_line(proc, 'hydra/sweeper=optuna: the Optuna sweeper is not installed '
                    '(in the mtl-train clone: pip install ".[optuna]")')
    assert not (tmp_path / "multirun").exists()


def test_run_dir_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_cli(["hydra.run.dir=afile/run"], cwd=tmp_path, check=False)
    _one_line(proc, f"hydra.run.dir: cannot create '{tmp_path / 'afile' / 'run'}': '{tmp_path / 'afile'}' is a file, "
                    f"not a directory")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_sweep_dir_the_system_refuses_is_one_line(tmp_path):
    proc = run_cli(["-m", "hydra.sweep.dir=/proc/mtl-train/${now:%H}", "seed=0,1"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("mtl-train: error: hydra.sweep.dir: cannot create '/proc/mtl-train/"), line


def test_infer_output_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_cli(["mode=eval", "checkpoint=nothing", "infer.output=afile/eval.json"], cwd=tmp_path, check=False)
    _one_line(proc, f"infer.output: cannot create '{tmp_path / 'afile'}': '{tmp_path / 'afile'}' is a file, "
                    f"not a directory")
