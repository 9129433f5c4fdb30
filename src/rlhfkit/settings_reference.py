"""The configuration reference, `docs/configuration.md`, generated from the settings classes.

The settings classes are found, not listed: every module of the package is imported (walked
with pkgutil, so a class moved to another module is still found), and the reference covers
every subclass of `rlhfkit.config.StageConfig` and every other pydantic model of rlhfkit
that one of them holds as a setting. Each class gets a heading, the first paragraph of its
docstring and a table of its fields (name as written in YAML, type, default, the field's
`description`), in the order of the class names (ignoring case).

    python -m rlhfkit.settings_reference           # write docs/configuration.md
    python -m rlhfkit.settings_reference --check   # exit 1 if it differs from the code's
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import rlhfkit
from rlhfkit.config import StageConfig

DOCUMENT = Path(__file__).resolve().parents[2] / "docs/configuration.md"
REGENERATE = "python -m rlhfkit.settings_reference"
# Importing these would do something: `python -m rlhfkit` runs the command line.
NOT_IMPORTED = {"rlhfkit.__main__"}


def import_package() -> None:
    """Import every module of rlhfkit, so that every settings class is defined."""
    for module in pkgutil.walk_packages(rlhfkit.__path__, "rlhfkit."):
        if module.name not in NOT_IMPORTED and not module.name.endswith(".__main__"):
            importlib.import_module(module.name)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, however deeply (`list[TargetConfig] | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def settings_classes() -> list[type[BaseModel]]:
    """Every settings class of rlhfkit, by name: the StageConfig subclasses and the models
    they hold, each once."""
    import_package()
    found: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = _subclasses(StageConfig)
    while todo:
        cls = todo.pop()
        if cls.__name__.startswith("_") or not cls.__module__.startswith("rlhfkit."):
            continue
        if found.setdefault(cls.__name__, cls) is not cls:
            raise RuntimeError(
                f"two settings classes are named {cls.__name__} "
                f"({found[cls.__name__].__module__} and {cls.__module__}): rename one"
            )
        for field in cls.model_fields.values():
            todo += [m for m in _models_in(field.annotation) if m.__name__ not in found]
    return [found[name] for name in sorted(found, key=str.lower)]


def _anchor(name: str) -> str:
    return name.lower()


def _type(annotation: Any, known: set[str]) -> str:
    """An annotation as a reader would write it: `list[str] | None`, `"gae" | "rloo"`."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and annotation.__name__ in known:
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0], known)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a, known) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(a, known) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return f"see [{type(value).__name__}](#{_anchor(type(value).__name__)})"
    return f"`{json.dumps(_plain(value), ensure_ascii=False, default=repr)}`"


def _plain(value: Any) -> Any:
    """A default as YAML would hold it: a model as its settings that differ from theirs."""
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.model_dump(exclude_defaults=True).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _summary(cls: type) -> str:
    """The first paragraph of the class's own docstring (not one it inherits)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return " ".join(doc.split("\n\n")[0].split())


def render(classes: list[type[BaseModel]] | None = None) -> str:
    classes = settings_classes() if classes is None else classes
    known = {cls.__name__ for cls in classes}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the settings classes by `python -m rlhfkit.settings_reference`;",
        "     do not edit: change a setting's `description=` in the code and regenerate. -->",
        "",
        "Every setting of every settings class, as a YAML file (`--config FILE`, or a section",
        "of a pipeline config) names it. An unknown key is an error. How the classes fit",
        "together: a pipeline config is a [PipelineConfig](#pipelineconfig), whose sections",
        "are the other classes (`ppo:` a [PPOConfig](#ppoconfig), `train-rm:` an",
        "[RMConfig](#rmconfig), `dpo:` a [DPOConfig](#dpoconfig), `sft:` an",
        "[SFTConfig](#sftconfig), `eval:` an [EvalConfig](#evalconfig)); `rlhfkit compare`",
        "reads a [CompareConfig](#compareconfig). The tutorials are in [the docs](README.md).",
        "",
        "Classes: " + " · ".join(f"[{c.__name__}](#{_anchor(c.__name__)})" for c in classes),
    ]
    for cls in classes:
        lines += ["", f"## {cls.__name__}", ""]
        if summary := _summary(cls):
            lines += [summary, ""]
        lines += ["| setting | type | default | description |", "|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            type_text = _type(field.annotation, known)
            for model in _models_in(field.annotation):
                type_text = type_text.replace(
                    model.__name__, f"[{model.__name__}](#{_anchor(model.__name__)})"
                )
            cells = [
                f"`{field.alias or name}`",
                type_text if "](#" in type_text else f"`{type_text}`",
                _default(field),
                field.description or "",
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {DOCUMENT.name} is not up to date"
    )
    parser.add_argument("--out", type=Path, default=DOCUMENT, help="where the reference goes")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
