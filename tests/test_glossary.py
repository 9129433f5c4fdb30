"""One name per concept (docs/glossary.md), read from the glossary and checked against every
command's options and every settings class's fields: no concept is spelled a retired way,
every retired flag still works (and says so), and every retired key is read as its new
name."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import click
import pytest
import typer

import rlhfkit
from rlhfkit.cli import RETIRED_FLAGS, app
from rlhfkit.config import StageConfig

GLOSSARY = Path(__file__).parent.parent / "docs" / "glossary.md"
EVERYWHERE = "*"
# The commands, or pipeline sections, whose names a settings class holds.
SCOPE_OF_CLASS = {
    "SFTConfig": "sft",
    "ScheduledTrainerConfig": "sft",  # the settings SFT and DPO share
    "DPOConfig": "dpo",
    "PPOConfig": "ppo",
    "RMConfig": "train-rm",
    "EvalConfig": "eval",
    "GenerateConfig": "generate",
    "ReviseConfig": "revise",
    "LabelerConfig": "labeler",
    "PipelineConfig": "run",
    "TicTacToeConfig": "examples tictactoe",
}


@dataclasses.dataclass
class Concept:
    what: str
    names: list[str]
    retired: dict[str, set[str]]  # old name → where it is retired (EVERYWHERE: all)


def read_glossary(text: str) -> list[Concept]:
    concepts = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        retired = {}
        for part in filter(None, (p.strip() for p in cells[2].split(";"))):
            names, _, where = part.partition(" (")
            places = {w.strip() for w in where.rstrip(")").split(",")} if where else {EVERYWHERE}
            for name in re.findall(r"`([^`]+)`", names):
                retired[name] = places
        concepts.append(Concept(cells[0], re.findall(r"`([^`]+)`", cells[1]), retired))
    return concepts


CONCEPTS = read_glossary(GLOSSARY.read_text(encoding="utf-8"))


def retired_in(name: str, scope: str) -> Concept | None:
    """The concept whose retired names include `name` in `scope`, if any."""
    for concept in CONCEPTS:
        places = concept.retired.get(name)
        if places and (EVERYWHERE in places or scope in places):
            return concept
    return None


def commands() -> dict[str, click.Command]:
    """Every command by its path ("label judge"), as click builds it."""
    found = {}

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name]) if getattr(sub, "commands", None) else None
            if not getattr(sub, "commands", None):
                found[" ".join([*path, name])] = sub

    walk(typer.main.get_command(app), [])
    return found


def misspelled_flags(path: str, command: click.Command) -> list[str]:
    """The command's visible flags that spell a concept a retired way."""
    bad = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        for flag in param.opts:
            concept = retired_in(flag, path)
            if concept is not None:
                bad.append(f"{path} {flag}: use {concept.names[0]} ({concept.what})")
    return bad


def settings_classes() -> list[type]:
    for module in pkgutil.walk_packages(rlhfkit.__path__, "rlhfkit."):
        if module.name != "rlhfkit.__main__" and "migrations" not in module.name:
            importlib.import_module(module.name)
    found, todo = [], list(StageConfig.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    from rlhfkit.train.tictactoe import TicTacToeConfig

    return [*sorted(found, key=lambda c: c.__name__), TicTacToeConfig]


def field_names(cls) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return [field.alias or name for name, field in cls.model_fields.items()]


def misspelled_keys(cls) -> list[str]:
    scope = SCOPE_OF_CLASS.get(cls.__name__, cls.__name__)
    bad = []
    for key in field_names(cls):
        concept = retired_in(key, scope)
        if concept is not None:
            bad.append(f"{cls.__name__}.{key}: use {concept.names[-1]} ({concept.what})")
    return bad


def test_the_glossary_names_each_concept_once():
    assert len(CONCEPTS) >= 15
    names = [name for concept in CONCEPTS for name in concept.names]
    assert len(names) == len(set(names)), "a name that belongs to two concepts"


def test_no_command_spells_a_concept_a_retired_way():
    found = commands()
    assert {"generate", "ppo", "label judge", "cai revise", "examples tictactoe"} <= set(found)
    assert [bad for path, command in found.items() for bad in misspelled_flags(path, command)] == []


def test_no_settings_class_spells_a_concept_a_retired_way_and_every_one_ends_in_config():
    classes = settings_classes()
    assert [bad for cls in classes for bad in misspelled_keys(cls)] == []
    assert [cls.__name__ for cls in classes if not cls.__name__.endswith("Config")] == []
    retired_classes = next(c for c in CONCEPTS if c.names == ["…Config"]).retired
    assert not {cls.__name__ for cls in classes} & set(retired_classes)


def test_every_retired_flag_still_works_under_its_new_name():
    """Each command's retired flags are in the CLI's table, mapped to the glossary's name,
    and nothing else is."""
    found = commands()
    for path, renames in RETIRED_FLAGS.items():
        flags = {flag for param in found[path].params for flag in param.opts}
        for old, new in renames.items():
            concept = retired_in(old, path)
            assert concept is not None, f"{path} {old} is not retired in the glossary"
            assert new == concept.names[0] and new in flags, (path, old, new)
    for concept in CONCEPTS:
        for old, places in concept.retired.items():
            if old.startswith("-"):
                for place in places & set(found):  # commands; the rest are YAML sections
                    assert RETIRED_FLAGS.get(place, {}).get(old) == concept.names[0], (place, old)


def test_every_retired_key_is_read_as_its_new_name():
    for cls in settings_classes():
        scope = SCOPE_OF_CLASS.get(cls.__name__, cls.__name__)
        for old, new in getattr(cls, "renamed", {}).items():
            concept = retired_in(old, scope)
            assert concept is not None and new in concept.names, (cls.__name__, old)
            assert new in field_names(cls)
        for concept in CONCEPTS:
            for old, places in concept.retired.items():
                if not old.startswith("-") and scope in places and hasattr(cls, "renamed"):
                    assert cls.renamed.get(old) in concept.names, (cls.__name__, old)


def test_the_checks_find_a_concept_spelled_the_old_way():
    """Each check fails on a deliberate break: a visible --model on ppo, an eval_fraction
    field on SFT's settings, a glossary that names a concept twice."""
    command = click.Command("ppo", params=[click.Option(["--model"]), click.Option(["--lr"])])
    assert misspelled_flags("ppo", command) == [
        "ppo --model: use --policy (the model trained, sampled or evaluated)"
    ]
    reference = [click.Option(["--reference"])]
    assert misspelled_flags("train-rm", click.Command("train-rm", params=reference))
    assert not misspelled_flags("eval", click.Command("eval", params=reference))  # its own

    class SFTConfig(StageConfig):  # a stand-in with the old key
        eval_fraction: float = 0.1

    assert misspelled_keys(SFTConfig) == [
        "SFTConfig.eval_fraction: use held_out_fraction (a trainer's own held-out share of its "
        "data (salted hash of the prompt))"
    ]


@pytest.mark.parametrize(
    ("args", "old", "new"),
    [
        (["generate", "-n", "x"], "-n", "--samples-per-prompt"),
        (["generate", "-nx"], "-n", "--samples-per-prompt"),
        (["eval-rm", "--model", "x", "--pairs", "missing.jsonl"], "--model", "--reward-model"),
        (
            ["train-rm", "--pairs", "missing.jsonl", "--out", "o", "--eval-fraction=0.2"],
            "--eval-fraction",
            "--held-out-fraction",
        ),  # fmt: skip
    ],
)
def test_a_retired_flag_says_its_new_name_once_and_is_read_as_it(cli, args, old, new):
    result = cli(*args, ok=False)
    assert f"warning: {old} is deprecated: use {new}" in result.output
    assert result.output.count("deprecated") == 1


def test_a_retired_flag_beside_its_new_name_is_one_line(cli):
    result = cli("eval", "--policy", "x", "--samples", "2", "--samples-per-prompt", "3", ok=False)
    assert "--samples and --samples-per-prompt are the same option" in result.output


def test_every_out_says_whether_it_is_a_file_or_a_directory():
    outs = {
        path: param.help
        for path, command in commands().items()
        for param in command.params
        if "--out" in param.opts
    }
    assert len(outs) >= 10 and "report" in outs
    assert {p: h for p, h in outs.items() if not h.startswith(("A file", "A directory"))} == {}


def test_a_retired_key_in_a_config_file_of_flags_is_read_as_its_new_name(cli, tmp_path):
    path = tmp_path / "generate.yaml"
    path.write_text("model: /no/such/model\nsamples_per_prompt: 2\nlimit: 1\n")
    result = cli(
        "generate", "--config", path, "--store", f"sqlite:///{tmp_path / 's.db'}", ok=False
    )
    assert "'model' is deprecated: use 'policy'" in result.output
    assert "/no/such/model" in result.output and "is not an option" not in result.output
