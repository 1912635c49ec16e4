import os

import pytest

from mtl_train.errors import ConfigError
from mtl_train.io import creatable_dir_problem, ensure_writable_dir


def test_a_folder_under_a_regular_file_cannot_be_created(tmp_path):
    (tmp_path / "f").write_text("x")
    assert creatable_dir_problem(str(tmp_path / "f" / "run")) == f"'{tmp_path / 'f'}' is a file, not a directory"
    with pytest.raises(ConfigError) as e:
        ensure_writable_dir("export.output", str(tmp_path / "f" / "a" / "b"))
    assert str(e.value) == f"export.output: cannot create '{tmp_path / 'f' / 'a' / 'b'}': '{tmp_path / 'f'}' is a file, " \
                           f"not a directory"


def test_a_folder_the_system_refuses_gives_its_reason():
    why = creatable_dir_problem("/proc/mtl-train-test/run")
    assert why is not None and "\n" not in why


def test_a_creatable_folder_is_probed_without_leaving_anything(tmp_path):
    assert creatable_dir_problem(str(tmp_path / "a" / "b")) is None
    assert not os.path.exists(tmp_path / "a")
    assert ensure_writable_dir("k", str(tmp_path / "a" / "b"), create=True) == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
