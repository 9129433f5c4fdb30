"""Stage settings: pydantic models that refuse unknown keys and impossible values with one
line naming the setting, before any model is loaded."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from rlhfkit.errors import RlhfkitError


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setting: ClassVar[str] = "setting"  # how errors name these settings, e.g. "PPO setting"

    @classmethod
    def make(cls, **values) -> Self:
        """Build from keyword values (None means "use the default"), or raise RlhfkitError."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "config"
            message = first["msg"].removeprefix("Value error, ")
            raise RlhfkitError(f"{cls.setting} '{where}': {message}") from None
