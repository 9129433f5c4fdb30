"""The records stages exchange (docs/architecture.md, "Record formats"), validated into
one-line messages.

Unknown keys are ignored, never fatal. `parse_record` recognises a record by its keys:
ranking (`completions` + `ranks`), thumbs (`completion` + `label`), pair (`chosen` +
`rejected`, with `prompt` or as HH-RLHF transcripts) and prompt (`prompt` alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

HH_ASSISTANT = "\n\nAssistant:"
MISSING_LABELER = "'labeler' is missing (name one in the record, or give --labeler NAME)"


class RecordError(ValueError):
    """A record that does not fit its format; the message says what is wrong."""


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    id: str | None = None
    messages: str | None = None  # a conversation's prompt: its messages, as JSON text


@dataclass(frozen=True)
class RankingRecord:
    """`ranks[i]` is the rank of `completions[i]`; 1 is best, equal ranks are ties. A ranking
    of a single completion is valid but ranks nothing: an import skips and counts it."""

    prompt: str
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    labeler: str | None = None  # None: not given (an import then needs a default labeler)
    labeler_kind: str | None = None  # None: not given (a new labeler is then "human")
    messages: str | None = None


@dataclass(frozen=True)
class ThumbsRecord:
    prompt: str
    completion: str
    label: str  # "up" | "down"
    labeler: str | None = None
    labeler_kind: str | None = None
    messages: str | None = None


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    labeler: str | None = None
    labeler_kind: str | None = None
    messages: str | None = None


Record = PromptRecord | RankingRecord | ThumbsRecord | Pair


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RecordError(f"'{key}' must be a string")
    if not value.strip():
        raise RecordError(f"'{key}' is empty")
    return value


def _labeler(
    obj: dict[str, Any], default: str | None, required: bool
) -> tuple[str | None, str | None]:
    name = obj.get("labeler", default)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise RecordError("'labeler' must be a non-empty string")
    if name is None and required:
        raise RecordError(MISSING_LABELER)
    kind = obj.get("labeler_kind")
    if kind not in (None, "human", "ai"):
        raise RecordError("'labeler_kind' must be 'human' or 'ai'")
    return (name.strip() if name else None), kind


def messages_json(obj: dict[str, Any]) -> str | None:
    """A conversation's prompt messages (`prompt_messages`, as data/sources.py keeps them),
    as JSON text, or None."""
    messages = obj.get("prompt_messages")
    if messages is None:
        return None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise RecordError("'prompt_messages' must be a list of {role, content} messages")
    return json.dumps(messages, ensure_ascii=False)


def check_ranks(ranks: Any, n: int) -> tuple[int, ...]:
    """Ranks of n completions: integers in 1..n with 1 present; equal values are ties."""
    if not isinstance(ranks, list | tuple) or len(ranks) != n:
        raise RecordError(f"'ranks' must be a list of {n} integers, one per completion")
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise RecordError("'ranks' must hold integers")
    if min(ranks) != 1 or max(ranks) > n:
        raise RecordError(
            f"'ranks' must be ranks 1..{n} (1 = best, ties allowed), got {list(ranks)}"
        )
    return tuple(ranks)


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split HH-RLHF transcripts into (prompt, chosen reply, rejected reply).

    The prompt is the shared dialogue up to and including the last "Assistant:" turn marker.
    """
    cut = chosen[: _common_prefix_length(chosen, rejected)].rfind(HH_ASSISTANT)
    if cut < 0:
        raise RecordError("'chosen' and 'rejected' share no '\\n\\nAssistant:' turn (not HH-RLHF?)")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def _common_prefix_length(a: str, b: str) -> int:
    """By bisection over slices compared in C: a character loop in Python was the slowest
    step of importing HH-RLHF transcripts."""
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low] holds throughout
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def check_completions(obj: dict[str, Any]) -> tuple[str, list[str]]:
    """The prompt and completions of a record that lists a prompt's completions."""
    prompt = _text(obj, "prompt")
    completions = obj.get("completions")
    if not isinstance(completions, list) or not completions:
        raise RecordError("'completions' must be a non-empty list of strings")
    for i, c in enumerate(completions):
        if not isinstance(c, str) or not c.strip():
            raise RecordError(f"completion {i + 1} is empty or not a string")
    if len(set(completions)) != len(completions):
        raise RecordError("'completions' holds the same text twice")
    return prompt, completions


def parse_record(
    obj: dict[str, Any], default_labeler: str | None = None, require_labeler: bool = False
) -> Record:
    """Turn one decoded JSON object into a validated record, or raise RecordError.
    `require_labeler`: a ranking, thumbs or pair must name its labeler, or `default_labeler`
    names it (an import needs one; training on a file of pairs does not)."""
    if "ranks" in obj or "completions" in obj:
        prompt, completions = check_completions(obj)
        ranks = check_ranks(obj.get("ranks"), len(completions))
        labeler, kind = _labeler(obj, default_labeler, require_labeler)
        return RankingRecord(prompt, tuple(completions), ranks, labeler, kind, messages_json(obj))
    if "label" in obj:
        prompt, completion = _text(obj, "prompt"), _text(obj, "completion")
        if obj["label"] not in ("up", "down"):
            raise RecordError("'label' must be 'up' or 'down'")
        labeler, kind = _labeler(obj, default_labeler, require_labeler)
        return ThumbsRecord(prompt, completion, obj["label"], labeler, kind, messages_json(obj))
    if "chosen" in obj or "rejected" in obj:
        chosen, rejected = _text(obj, "chosen"), _text(obj, "rejected")
        if "prompt" in obj:
            prompt = _text(obj, "prompt")
        else:
            prompt, chosen, rejected = split_hh(chosen, rejected)
            if not chosen or not rejected:
                raise RecordError("an HH-RLHF reply is empty")
        if chosen == rejected:
            raise RecordError("'chosen' and 'rejected' are the same text")
        labeler, kind = _labeler(obj, default_labeler, require_labeler)
        return Pair(prompt, chosen, rejected, labeler, kind, messages_json(obj))
    if "prompt" in obj:
        record_id = obj.get("id")
        record_id = None if record_id is None else str(record_id)
        return PromptRecord(_text(obj, "prompt"), record_id, messages_json(obj))
    raise RecordError(
        "not a prompt, ranking, thumbs or pair record: expected 'prompt' alone, "
        "'completions' + 'ranks', 'completion' + 'label', or 'chosen' + 'rejected'"
    )
