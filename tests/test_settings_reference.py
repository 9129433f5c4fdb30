"""docs/configuration.md is what the settings classes say: generated from them, and checked
here so that a setting added, removed or described in the code shows in the reference."""

from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.settings_reference import DOCUMENT, REGENERATE, render, settings_classes

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "src" / "rlhfkit").rglob("*.py"))


def test_the_committed_reference_is_what_the_code_generates():
    assert DOCUMENT == ROOT / "docs" / "configuration.md"
    assert DOCUMENT.is_file(), f"{DOCUMENT} is missing: run `{REGENERATE}`"
    assert DOCUMENT.read_text() == render(), (
        f"docs/configuration.md differs from the settings classes: run `{REGENERATE}` "
        "and commit docs/configuration.md"
    )


def test_every_settings_class_of_the_source_is_found_wherever_it_lives():
    # read from the source text, not from the classes: a class the import walk missed shows
    declared = {
        name
        for source in SOURCES
        for name in re.findall(
            r"^class (\w+)\((?:StageConfig|\w+TrainerConfig)\)", source.read_text(), re.M
        )
    }
    found = {cls.__name__ for cls in settings_classes()}
    assert {"PipelineConfig", "PPOConfig", "RMConfig", "DPOConfig", "SFTConfig"} <= declared
    assert declared <= found


def test_every_setting_has_a_row_and_every_class_a_heading():
    text = render()
    for cls in settings_classes():
        assert f"\n## {cls.__name__}\n" in text
        for name, field in cls.model_fields.items():
            assert f"| `{field.alias or name}` |" in text, f"{cls.__name__}.{name}"


def test_a_row_shows_type_default_and_description():
    text = render()
    row = next(line for line in text.splitlines() if line.startswith("| `advantage` |"))
    assert '`"gae" \\| "rloo" \\| "grpo"`' in row and '`"gae"`' in row and "GAE" in row
    assert "| `run_dir` | `str` | required |" in text
