"""Constitutions as data, and the exact texts built from them.

A constitution is a YAML file: principles, each with a critique request and a revision
request (stage 1: the model criticises and rewrites its own answer) and a question for the
judge (stage 2: which of two answers follows the principle better), plus few-shot chains
shown to the model before its own. `builtin:default` is the one shipped in
`cai/constitutions/`; any other value is a path.

The texts sent to a model are pure functions of the constitution and the conversation, so
tests pin them exactly:
- critique and revision are chat messages (the model's own chat template applies);
- the judge reads plain text that ends in "(", so the answer is the next token, "A" or "B",
  whose probability the judge reads (from the logits, or an endpoint's top log-probs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhfkit.errors import RlhfkitError

BUILTIN_DIR = Path(__file__).parent / "constitutions"
PRINCIPLE_FIELDS = ("name", "critique", "revision", "choose")
EXAMPLE_FIELDS = ("principle", "prompt", "response", "critique", "revision")
CRITIQUE_PREFIX = "Critique request: "
REVISION_PREFIX = "Revision request: "

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # asks the model to find what is wrong with its last answer
    revision: str  # asks it to rewrite that answer
    choose: str  # asks a judge which of two answers follows the principle better


@dataclass(frozen=True)
class Example:
    principle: str
    prompt: str
    response: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()

    def principle(self, name: str) -> Principle:
        for principle in self.principles:
            if principle.name == name:
                return principle
        raise RlhfkitError(f"constitution '{self.name}' has no principle '{name}'")

    def draw(self, rng: random.Random) -> Principle:
        """A principle drawn at random, as the paper draws one for each critique and each
        comparison."""
        return rng.choice(self.principles)


def _text(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RlhfkitError(f"{where}: '{field}' must be a non-empty text")
    return value.strip()


def _fields(entry, where: str, fields: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise RlhfkitError(f"{where}: must be a mapping with {', '.join(fields)}")
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise RlhfkitError(f"{where}: unknown field '{unknown[0]}' (fields: {', '.join(fields)})")
    return {field: _text(entry.get(field), where, field) for field in fields}


def parse_constitution(data, source: str) -> Constitution:
    """A constitution from parsed YAML; a one-line error naming the principle (or example)
    and the field that is wrong."""
    if not isinstance(data, dict):
        raise RlhfkitError(f"{source}: a constitution is a mapping with 'principles'")
    entries = data.get("principles")
    if not isinstance(entries, list) or not entries:
        raise RlhfkitError(f"{source}: 'principles' must be a non-empty list")
    principles = []
    for i, entry in enumerate(entries):
        label = entry.get("name") if isinstance(entry, dict) else None
        where = f"{source}: principle {i + 1}" + (f" ('{label}')" if isinstance(label, str) else "")
        principles.append(Principle(**_fields(entry, where, PRINCIPLE_FIELDS)))
    names = [p.name for p in principles]
    for name in names:
        if names.count(name) > 1:
            raise RlhfkitError(f"{source}: principle '{name}' is named twice")
    examples = []
    for i, entry in enumerate(data.get("examples") or []):
        where = f"{source}: example {i + 1}"
        example = Example(**_fields(entry, where, EXAMPLE_FIELDS))
        if example.principle not in names:
            raise RlhfkitError(f"{where}: 'principle' names no principle ('{example.principle}')")
        examples.append(example)
    name = data.get("name", Path(source).stem)
    return Constitution(str(name), tuple(principles), tuple(examples))


def load_constitution(spec: str | Path = "builtin:default") -> Constitution:
    """`builtin:NAME` (shipped with rlhfkit) or the path of a YAML file."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        path = BUILTIN_DIR / f"{spec.removeprefix('builtin:')}.yaml"
        if not path.exists():
            shipped = ", ".join(f"builtin:{p.stem}" for p in sorted(BUILTIN_DIR.glob("*.yaml")))
            raise RlhfkitError(f"no constitution '{spec}'; shipped: {shipped}")
    else:
        path = Path(spec)
        if not path.is_file():
            raise RlhfkitError(f"constitution file '{spec}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RlhfkitError(f"{spec}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_constitution(data, spec)


# --- the texts sent to the model ----------------------------------------------------------


def _chain(
    constitution: Constitution, principle: Principle, prompt: str, response: str
) -> Messages:
    """The few-shot chains, then the conversation to be criticised."""
    messages: Messages = []
    for example in constitution.examples:
        shown = constitution.principle(example.principle)
        messages += [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
            {"role": "user", "content": CRITIQUE_PREFIX + shown.critique},
            {"role": "assistant", "content": example.critique},
            {"role": "user", "content": REVISION_PREFIX + shown.revision},
            {"role": "assistant", "content": example.revision},
        ]
    return messages + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]


def critique_messages(
    constitution: Constitution, principle: Principle, prompt: str, response: str
) -> Messages:
    """Ask the model to criticise its `response` to `prompt` under `principle`."""
    return _chain(constitution, principle, prompt, response) + [
        {"role": "user", "content": CRITIQUE_PREFIX + principle.critique}
    ]


def revision_messages(
    constitution: Constitution, principle: Principle, prompt: str, response: str, critique: str
) -> Messages:
    """Ask the model to rewrite its `response` after its own `critique`."""
    return critique_messages(constitution, principle, prompt, response) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": REVISION_PREFIX + principle.revision},
    ]


def judge_text(principle: Principle, prompt: str, first: str, second: str) -> str:
    """The judge's question about two answers to `prompt`, shown as (A) `first` and
    (B) `second`; it ends in "(" so that the next token is the choice."""
    return (
        "Consider the following conversation between a human and an assistant:\n"
        f"Human: {prompt}\n"
        f"{principle.choose}\n"
        "Options:\n"
        f"(A) {first}\n"
        f"(B) {second}\n"
        "The answer is: ("
    )
