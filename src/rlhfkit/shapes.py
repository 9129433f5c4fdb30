"""The shapes of the JSON files rlhfkit reads back (which a user may have edited), and the
one-line error naming the file and field where one does not fit.

Strict: a number written as a string is as wrong as a missing key. Numbers may be null
(rlhfkit writes NaN as null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import read_text

Number = float | None
Interval = Annotated[list[float], Field(min_length=2, max_length=2)] | None  # [low, high]


class Shape(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def check(shape: type[Shape], value, where: str, prefix: str = "") -> None:
    """Raise `WHERE: 'FIELD': what is wrong` (one line) unless `value` has `shape`."""
    try:
        shape.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(([prefix] if prefix else []) + [str(x) for x in first["loc"]])
        message = "should be a JSON object" if first["type"] == "model_type" else first["msg"]
        where = f"{where}: '{field}'" if field else where
        raise RlhfkitError(f"{where}: {message}") from None


def check_entry(container: dict, key: str, shape: type[Shape], path: Path, where: str) -> None:
    """`container[key]` (at `where` in the file `path`) has `shape`."""
    if key not in container:
        raise RlhfkitError(f"{path}: '{where}.{key}': Field required")
    check(shape, container[key], str(path), f"{where}.{key}")


def read_json(path: Path):
    """The JSON in `path`, or a one-line error `PATH:LINE: invalid JSON`."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RlhfkitError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
