"""Writing files and directories atomically, and the marker that says a directory is ours.

Every file or directory a reader may pick up (a checkpoint, a policy, a reward model, a
stage's results) is built under a temporary name beside its final one and renamed into
place, so a kill or a full disk leaves the old version or none, never half of one.

An output directory given by the user is written or deleted in only when it is empty (or
does not exist yet) or carries the marker file `.rlhfkit`, which says which command made
it: a folder of the user's that happens to share the name is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rlhfkit.errors import RlhfkitError

MARKER = ".rlhfkit"
OLD_CHECKPOINT = "checkpoint.pt"  # PPO's pickled checkpoint, before rl.checkpoint's; never loaded
# What an rlhfkit from before the marker left in its folders: such a folder is refused with
# its own advice rather than as a stranger's.
_UNMARKED_OUTPUTS = ("pipeline.json", "done.json", OLD_CHECKPOINT, "model/reward.json")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; a missing, unreadable or binary file is one line naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise RlhfkitError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise RlhfkitError(f"{path}: not UTF-8 text") from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed over `path` when the block ends
    without an error, deleted when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, chunks: Iterable[str] | str | bytes) -> None:
    """Write text (a string or its pieces) or bytes to `path` atomically."""
    with atomic_file(path) as tmp:
        if isinstance(chunks, bytes):
            tmp.write_bytes(chunks)
            return
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines([chunks] if isinstance(chunks, str) else chunks)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside `path` to fill; it replaces `path` (and whatever was
    there) when the block ends without an error, and is deleted when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = tmp.with_name(tmp.name + ".old")
        if path.exists():
            os.replace(path, old)  # a directory cannot be renamed over a non-empty one
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def owner(path: Path) -> str | None:
    """Which rlhfkit command made this directory, by its marker; None without one."""
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))["made_by"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_ours(path: str | Path, made_by: str) -> None:
    """`path` may be written in by `made_by` (a command or stage name): it does not exist,
    is an empty directory, or carries the marker of `made_by`. Reads only."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise RlhfkitError(f"{path} is a file, not a directory: choose another output directory")
    made = owner(path)
    if made == made_by:
        return
    if made is not None:
        raise RlhfkitError(
            f"{path} holds the output of rlhfkit {made}, not of {made_by}: choose another directory"
        )
    if not any(path.iterdir()):
        return
    if any((path / name).exists() for name in _UNMARKED_OUTPUTS):
        raise RlhfkitError(
            f"{path} looks like the output of an older rlhfkit, which did not mark its folders "
            f"(no {MARKER} file): start afresh in a new directory, or delete this one"
        )
    raise RlhfkitError(
        f"{path} is not empty and was not made by rlhfkit: it is left alone; choose a new or "
        "empty directory"
    )


def claim_directory(path: str | Path, made_by: str) -> Path:
    """Make `path` a directory of `made_by`'s (see check_ours), marking it if it is new."""
    path = Path(path)
    check_ours(path, made_by)
    if owner(path) is None:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / MARKER, json.dumps({"made_by": made_by}) + "\n")
    return path


def remove_ours(path: str | Path, made_by: str) -> None:
    """Delete a directory `made_by` made (by its marker); refuse any other."""
    path = Path(path)
    if not path.exists():
        return
    check_ours(path, made_by)
    if owner(path) == made_by:
        shutil.rmtree(path)
    elif path.is_dir():  # empty: nothing of anyone's to lose
        path.rmdir()


def remove_if_unused(path: str | Path) -> None:
    """Delete a directory of ours that holds nothing but its marker: made for output that
    never came (a stage that failed at once)."""
    path = Path(path)
    if path.is_dir() and [p.name for p in path.iterdir()] == [MARKER]:
        shutil.rmtree(path)
