"""The layers of docs/architecture.md, checked on the source: every import of an rlhfkit
module — at the top of a file or inside a function — goes to the same layer or one below,
and no modules of one layer import each other in a circle. Imports under
`if TYPE_CHECKING:` never run and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "rlhfkit"

# Bottom to top; a module belongs to the first entry naming it or a package above it.
LAYERS = [
    (
        "base",
        [
            "rlhfkit",
            "errors",
            "files",
            "progress",
            "config",
            "trackers",
            "plots",
            "packages",
            "formatting",
            "shapes",
        ],
    ),  # fmt: skip
    ("models", ["models", "generation"]),
    ("data", ["data"]),
    ("feedback", ["feedback"]),
    ("reward", ["reward"]),
    ("train", ["train"]),
    ("cai", ["cai"]),
    ("eval", ["eval"]),
    ("report", ["report"]),
    ("stages", ["stages"]),
    ("pipeline", ["seeds", "pipeline", "export", "settings_reference"]),
    ("compare", ["compare"]),
    ("interfaces", ["cli", "web", "__main__"]),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of a module named like `rlhfkit.train.sft`."""
    name = module.removeprefix("rlhfkit").removeprefix(".")
    best = None
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            member = "" if member == "rlhfkit" else member
            inside = name == member or (member and name.startswith(member + "."))
            if inside and (best is None or len(member) > best[1]):
                best = (index, len(member))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the docs")
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every rlhfkit import in the file of `module`, wherever it stands."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("rlhfkit"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("rlhfkit"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    is_module = (SRC.parent / (full.replace(".", "/") + ".py")).exists() or (
                        SRC.parent / full.replace(".", "/")
                    ).is_dir()
                    found.append((node.lineno, full if is_module else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def graph() -> dict[str, set[str]]:
    return {module_name(p): {m for _, m in imports(p)} - {module_name(p)} for p in sources()}


def violations(module: str, path: Path) -> list[str]:
    """The imports of `path`, read as module `module`, that go to a higher layer."""
    bad = []
    for line, target in imports(path, module):
        if layer_of(target) > layer_of(module):
            bad.append(
                f"{module}, line {line} ({LAYERS[layer_of(module)][0]}) imports "
                f"{target} ({LAYERS[layer_of(target)][0]})"
            )
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Circles of imports between modules of one layer (a module importing its own package's
    __init__ does not count)."""
    found, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if layer_of(target) != layer_of(node) or node.startswith(target + "."):
                continue
            if target in path:
                found.append([*path[path.index(target) :], target])
            elif target not in done:
                walk(target, [*path, target])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            walk(start, [start])
    return found


def test_every_import_runs_to_the_same_layer_or_below():
    assert [v for p in sources() for v in violations(module_name(p), p)] == []


def test_no_modules_of_one_layer_import_each_other_in_a_circle():
    assert cycles(graph()) == []


def test_every_module_is_in_a_layer_named_in_the_architecture_doc():
    doc = (SRC.parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for path in sources():
        layer_of(module_name(path))
    for name, _ in LAYERS:
        assert f"**{name}**" in doc, f"docs/architecture.md does not describe the {name} layer"


@pytest.mark.parametrize(
    ("module", "source"),
    [  # the cycle this check was written against, an import in a function, a plain import
        ("rlhfkit.models.stack", "from rlhfkit.train.ppo.policy import Policy\n"),
        ("rlhfkit.cai.revise", "def f():\n    from rlhfkit.eval.metrics import distinct_n\n"),
        ("rlhfkit.data.jsonl", "import rlhfkit.cli\n"),
    ],
)
def test_the_check_fails_on_an_import_against_the_order(tmp_path, module, source):
    fake = tmp_path / "module.py"
    fake.write_text(source)
    assert len(violations(module, fake)) == 1


def test_the_cycle_check_finds_a_circle_within_a_layer():
    edges = {"rlhfkit.models.stack": {"rlhfkit.models.loading"},
             "rlhfkit.models.loading": {"rlhfkit.models.stack"}}  # fmt: skip
    assert cycles(edges) == [["rlhfkit.models.loading", "rlhfkit.models.stack",
                              "rlhfkit.models.loading"]]  # fmt: skip
