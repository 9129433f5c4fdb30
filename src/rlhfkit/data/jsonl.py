"""JSONL reading with FILE:LINE errors, and atomic JSONL writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhfkit.errors import RlhfkitError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises `FILE:LINE: why`."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as e:
        raise RlhfkitError(f"{path}: cannot read ({e.strerror or e})") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RlhfkitError(f"{path}:{number}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise RlhfkitError(f"{path}:{number}: expected a JSON object")
                yield number, obj
        except UnicodeDecodeError:
            raise RlhfkitError(f"{path}: not UTF-8 text") from None


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records to `path` atomically (a reader never sees half a file); return the count."""
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for record in records:
            yield json.dumps(record, ensure_ascii=False) + "\n"
            count += 1

    atomic_write(path, lines())
    return count


def atomic_write(path: str | Path, chunks: Iterable[str] | str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`: a kill or a
    full disk leaves the old file (or none), never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines([chunks] if isinstance(chunks, str) else chunks)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
