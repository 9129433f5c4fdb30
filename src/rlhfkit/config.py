"""Stage settings: pydantic models that refuse unknown keys and impossible values with one
line naming the setting, before any model is loaded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import read_text


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setting: ClassVar[str] = "setting"  # how errors name these settings, e.g. "PPO setting"
    # what a trainer's resumed run may set otherwise than its checkpoint (train/loop.py)
    may_change_on_resume: ClassVar[frozenset[str]] = frozenset()
    # settings' retired names: old → the one name (docs/glossary.md); read for one release
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _retired_names(cls, values: Any) -> Any:
        return cls.renew(values) if isinstance(values, dict) else values

    @classmethod
    def renew(cls, values: dict, quiet: bool = False) -> dict:
        """`values` with every retired name put as its new one (the new name wins where both
        are), saying so unless `quiet` (settings a run directory or a checkpoint saved before
        the rename)."""
        out = dict(values)
        for old, new in cls.renamed.items():
            if old in out:
                if not quiet:
                    deprecated(f"{cls.setting} '{old}'", f"'{new}'")
                value = out.pop(old)
                out.setdefault(new, value)
        return out

    @classmethod
    def make(cls, **values) -> Self:
        """Build from keyword values (None means "use the default"), or raise RlhfkitError."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            first = e.errors()[0]
            message = first["msg"].removeprefix("Value error, ")
            if not first["loc"]:  # a check of the settings together
                raise RlhfkitError(f"{cls.setting}s: {message}") from None
            where = ".".join(str(x) for x in first["loc"])
            raise RlhfkitError(f"{cls.setting} '{where}': {message}") from None


class RetiredName(FutureWarning):
    """A setting or flag used by a name that has a new one; it works for one more release."""


def deprecated(old: str, new: str) -> None:
    """Say once that `old` is a retired name of `new` (the CLI prints it as one line)."""
    warnings.warn(f"{old} is deprecated: use {new}", RetiredName, stacklevel=3)


def read_yaml_settings(path: Path, what: str) -> dict[str, Any]:
    """A YAML file of settings as a dict; an unreadable file, a syntax error or a key that is
    not a name is one line naming the file (and the line). `what` names the settings in the
    message, e.g. "pipeline settings"."""
    text = read_text(path)
    try:
        values = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        raise RlhfkitError(_yaml_error(path, e)) from None
    except yaml.YAMLError as e:
        raise RlhfkitError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RlhfkitError(f"{path}: expected a mapping of {what}")
    _check_keys(path, yaml.compose(text, Loader=yaml.SafeLoader))
    return values


def _yaml_error(path: Path, e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = e.problem or "cannot parse"
    if e.context and e.context_mark and e.context_mark is not mark:
        problem += f", {e.context} that started on line {e.context_mark.line + 1}"
    return f"{where}: invalid YAML ({problem})"


def _check_keys(path: Path, node: yaml.Node | None) -> None:
    """Every mapping key is a name: `1: x` would reach the settings as the integer 1."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.tag not in (_YAML_STR, _YAML_MERGE):
                raise RlhfkitError(
                    f"{path}:{key.start_mark.line + 1}: a setting's name must be text, "
                    f"not {key.value}"
                )
            _check_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_keys(path, item)


_YAML_STR = "tag:yaml.org,2002:str"
_YAML_MERGE = "tag:yaml.org,2002:merge"
