import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import REPO


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mtl_train").rglob("__init__.py")}
    assert found | {"mtl_train.conf"} == listed


def test_every_config_group_option_validates():
    from omegaconf import OmegaConf

    from mtl_train.config import SCHEMAS, validate_group

    for group in SCHEMAS:
        for path in sorted((REPO / "conf" / group).glob("*.yaml")):
            validate_group(group, OmegaConf.load(path))


def test_scripts_run_from_the_repository_root_with_a_non_editable_install(tmp_path):
    """Issue 18 item 4: with a non-editable install, ``python -m mtl_train`` (which the bench and
    reproduce scripts start) run from the repository root imports the checkout's own
    ``mtl_train/``, which has no ``conf/`` (the install ships it as ``mtl_train.conf``);
    mtl_train/__init__.py registers the sibling ``conf/`` then.

    About 15-25 s: a wheel built and installed without dependencies (--no-deps, --no-index,
    --no-build-isolation, from a copy of the sources so that no build/ lands in the checkout),
    then ``python -m mtl_train --help`` and the cheapest script that starts ``python -m
    mtl_train``, reproduce_esmm_bias.py on 400 synthetic rows, one seed, one epoch (two
    trainings). The venv has no packages of its own: a .pth file shows it the running
    interpreter's site-packages (torch, hydra, pip and setuptools >= 70.1 from the test extra,
    which builds a wheel without the ``wheel`` package), never the base Python's, which a fresh
    machine leaves without them."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("mtl_train", "conf"):
        shutil.copytree(REPO / d, src / d, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    py = str(venv / "bin" / "python")
    site_dir = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                              capture_output=True, text=True, env=env).stdout.strip()
    outer = [d for d in sys.path if os.path.basename(d) in ("site-packages", "dist-packages")]
    (Path(site_dir) / "_outer_site.pth").write_text("".join(f"{d}\n" for d in outer))

    def run(*args, cwd=REPO):
        proc = subprocess.run([py, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run("-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "--disable-pip-version-check",
        str(src), cwd=tmp_path)
    installed = run("-c", "import mtl_train; print(mtl_train.__file__)", cwd=tmp_path).strip()
    assert str(venv) in installed and (os.path.exists(os.path.join(os.path.dirname(installed), "conf", "config.yaml")))
    # from the root, the checkout's mtl_train/ shadows the installed one: its conf comes from conf/
    where = run("-c", "import mtl_train.conf as c, mtl_train as m; print(m.__file__); print(c.__file__)").split()
    assert where == [str(REPO / "mtl_train" / "__init__.py"), str(REPO / "conf" / "__init__.py")]
    assert "mtl-train" in run("-m", "mtl_train", "--help")
    out = run("scripts/reproduce_esmm_bias.py", "--out", str(tmp_path / "runs"), "--rows", "400", "--epochs", "1",
              "--seeds", "0")
    assert "esmm > naive" in out
