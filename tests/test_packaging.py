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
