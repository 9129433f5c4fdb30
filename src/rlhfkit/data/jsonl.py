"""JSONL reading with FILE:LINE errors, and atomic JSONL writing."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write

__all__ = [
    "atomic_write",
    "parse_jsonl_lines",
    "read_jsonl",
    "write_jsonl",
]  # atomic_write lives in files.py


def read_jsonl(
    path: str | Path, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises `FILE:LINE: why`.
    `on_bytes` is told how many bytes each line took, for a progress bar."""
    path = Path(path)
    try:
        handle = path.open("rb")  # decoded line by line, so a bad byte is reported with its line
    except OSError as e:
        raise RlhfkitError(f"{path}: cannot read ({e.strerror or e})") from None
    with handle:
        yield from parse_jsonl_lines(handle, str(path), on_bytes)


def parse_jsonl_lines(
    lines: Iterable[bytes], name: str, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`read_jsonl` for lines of bytes from anywhere (a file, an upload); errors name `name`."""
    for number, raw in enumerate(lines, start=1):
        if on_bytes:
            on_bytes(len(raw))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RlhfkitError(
                f"{name}:{number}: not UTF-8 text (byte {e.start + 1} of the line)"
            ) from None
        if not line.strip():
            continue
        obj = _decode(line, f"{name}:{number}")
        if not isinstance(obj, dict):
            raise RlhfkitError(f"{name}:{number}: expected a JSON object")
        yield number, obj


def _decode(line: str, where: str) -> Any:
    """json.loads, with every way it can fail on hostile input turned into one line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RlhfkitError(f"{where}: invalid JSON ({e.msg})") from None
    except ValueError:  # the only other ValueError: Python's limit on digits in an integer
        raise RlhfkitError(
            f"{where}: invalid JSON (an integer of more than {sys.get_int_max_str_digits()} digits)"
        ) from None
    except RecursionError:
        raise RlhfkitError(f"{where}: invalid JSON (nested too deeply)") from None
    # A "\ud800" escape decodes to a lone surrogate, which no text can hold (hashing or storing
    # it fails later); only an escape can make one, so only lines with one are searched.
    if "\\u" in line and _has_lone_surrogate(obj):
        raise RlhfkitError(f"{where}: invalid JSON (a \\u escape names a lone surrogate)")
    return obj


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


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
