"""What the code and the documents point readers to exists: every document a source file names
is in the repository, every section it names is a heading of that document, and every relative
link of the README and docs/ leads to a file (and heading) that is there."""

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


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def _links(document: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", document.read_text()))
    return LINK.findall(text)


def _anchors(document: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped,
    spaces as hyphens (a repeated heading gets -1, -2, ...)."""
    anchors: set[str] = set()
    for line in FENCE.sub("", document.read_text()).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_every_relative_link_of_the_documents_resolves():
    broken = []
    for document in DOCUMENTS:
        for link in _links(document):
            if re.match(r"[a-z]+:", link):  # https:, mailto:: outside the repository
                continue
            path, _, anchor = link.partition("#")
            target = (document.parent / path).resolve() if path else document
            if not target.exists():
                broken.append(f"{document.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{document.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken


def test_the_documents_link_somewhere_at_all():
    assert len(_links(ROOT / "README.md")) >= 10
    assert all(_links(document) for document in DOCUMENTS)


def test_the_readme_is_a_front_page_that_leads_to_every_document():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < 300, (
        "the README is a front page: move detail to docs/"
    )
    assert "make demo" in readme.read_text() and "make test" in readme.read_text()
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / link.partition("#")[0]).resolve() for link in _links(index)}
    unlisted = [d.name for d in DOCUMENTS[1:] if d != index and d.resolve() not in linked]
    assert not unlisted, f"docs/README.md does not list {unlisted}"


def test_an_unknown_record_says_which_keys_make_a_record():
    with pytest.raises(RecordError) as error:
        parse_record({"text": "hello", "score": 3})
    message = str(error.value)
    for keys in ("'prompt'", "'completions' + 'ranks'", "'completion' + 'label'"):
        assert keys in message
    assert "'chosen' + 'rejected'" in message and ".md" not in message
