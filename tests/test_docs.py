"""What the code points users and readers to exists: every document a source file names is
in the repository, and every section it names is a heading of that document."""

import re
from pathlib import Path

import pytest

from rlhfkit.data.records import RecordError, parse_record

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "src" / "rlhfkit").rglob("*.py")) + [ROOT / "pyproject.toml"]
DOCUMENT = re.compile(r"[\w./-]+\.md\b")
# A pointer to a section, `docs/NAME.md, "Heading"`, may break its line inside the quotes.
SECTION = re.compile(r'(docs/[\w./-]+\.md),\s+"([^"]+)"')


def _headings(document: Path) -> set[str]:
    return {
        line.lstrip("#").strip() for line in document.read_text().splitlines() if line[:3] == "## "
    }


def test_every_document_the_code_names_is_in_the_repository():
    named = {
        (source.relative_to(ROOT), name)
        for source in SOURCES
        for name in DOCUMENT.findall(source.read_text())
    }
    assert named, "the code names no document at all"
    missing = [f"{source}: {name}" for source, name in sorted(named) if not (ROOT / name).is_file()]
    assert not missing


def test_every_section_the_code_names_is_a_heading_of_its_document():
    pointers = [
        (source.relative_to(ROOT), document, " ".join(section.split()))
        for source in SOURCES
        for document, section in SECTION.findall(source.read_text())
    ]
    assert len(pointers) >= 5  # records, prompts, scorers, loading, rollout
    missing = [
        f'{source}: {document}, "{section}"'
        for source, document, section in pointers
        if not (ROOT / document).is_file() or section not in _headings(ROOT / document)
    ]
    assert not missing


def test_the_readme_links_the_architecture_document():
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()


def test_an_unknown_record_says_which_keys_make_a_record():
    with pytest.raises(RecordError) as error:
        parse_record({"text": "hello", "score": 3})
    message = str(error.value)
    for keys in ("'prompt'", "'completions' + 'ranks'", "'completion' + 'label'"):
        assert keys in message
    assert "'chosen' + 'rejected'" in message and ".md" not in message
