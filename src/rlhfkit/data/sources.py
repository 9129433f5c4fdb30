"""Where records come from: a JSONL file (read by rlhfkit, errors name FILE:LINE), a local
Parquet, CSV or JSON file or a `datasets` directory saved with `save_to_disk` (read by the
`datasets` library), or a Hub dataset `hf:NAME[:CONFIG][@SPLIT]` (cached by `datasets`;
offline, a dataset not in the cache fails in seconds with one line).

Every source yields (number, record) pairs, numbered from 1, so a bad record is reported as
`SOURCE:N: why` whatever it came from. `fields` renames columns (`{"prompt": "question"}`
reads the column `question` as the prompt). TRL's conversational records (a `prompt`,
`chosen` and `rejected` given as lists of {"role", "content"} messages, or `chosen` and
`rejected` alone as whole conversations that share their opening) become rlhfkit's text
records here (`conversational_to_text`); a multi-turn prompt keeps its messages beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhfkit.errors import RlhfkitError

DATASET_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json"}


def parse_fields(pairs: list[str] | None) -> dict[str, str]:
    """`--field prompt=question` flags as {"prompt": "question"}."""
    fields = {}
    for item in pairs or []:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise RlhfkitError(f"--field {item!r}: expected OURS=THEIRS, e.g. prompt=question")
        fields[ours.strip()] = theirs.strip()
    return fields


def is_dataset_source(spec: str | Path) -> bool:
    """Whether the `datasets` library reads this source (anything but a JSONL file)."""
    spec = str(spec)
    path = Path(_split_suffix(spec)[0])
    return (
        spec.startswith("hf:")
        or path.suffix.lower() in DATASET_SUFFIXES
        or (path.is_dir() and _saved_dataset(path))
    )


def read_source(
    spec: str | Path,
    fields: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(number, record) for each record of the source, columns renamed by `fields`,
    conversational records turned into text records."""
    from rlhfkit.data.jsonl import read_jsonl

    rows = _dataset_rows(str(spec)) if is_dataset_source(spec) else read_jsonl(spec, on_bytes)
    for number, obj in rows:
        if fields:
            obj = _renamed(obj, fields, spec, number)
        yield number, conversational_to_text(obj, f"{spec}:{number}")


def _renamed(obj: dict, fields: Mapping[str, str], spec, number: int) -> dict:
    obj = dict(obj)
    for ours, theirs in fields.items():
        if theirs not in obj:
            raise RlhfkitError(
                f"{spec}:{number}: no field '{theirs}' (for --field {ours}={theirs}); it has "
                + ", ".join(sorted(map(str, obj)))
            )
        obj[ours] = obj.pop(theirs)
    return obj


def _saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _split_suffix(spec: str) -> tuple[str, str | None]:
    name, at, split = spec.rpartition("@")
    return (name, split) if at and split and "/" not in split else (spec, None)


def _dataset_rows(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    dataset = load_dataset_source(spec)
    for number, row in enumerate(dataset, start=1):
        yield number, dict(row)


def load_dataset_source(spec: str):
    """The `datasets.Dataset` a source names (one split of it)."""
    try:
        import datasets
    except ImportError:
        raise RlhfkitError(
            f"{spec}: reading datasets needs the `datasets` package (pip install datasets)"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if spec.startswith("hf:"):
        return _hub_dataset(datasets, spec)
    base, split = _split_suffix(spec)
    path = Path(base)
    if not path.exists():
        raise RlhfkitError(f"{base}: no such file or directory")
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            builder = DATASET_SUFFIXES[path.suffix.lower()]
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # pyarrow, pandas and datasets each raise their own kinds
        raise RlhfkitError(f"{base}: cannot read it as a dataset ({_first_line(e)})") from None
    return _one_split(loaded, split, base)


def _hub_dataset(datasets, spec: str):
    from rlhfkit.models.loading import hub_reachable

    name, split = _split_suffix(spec.removeprefix("hf:"))
    name, _, config = name.partition(":")
    split = split or "train"
    if not name:
        raise RlhfkitError(f"{spec}: expected hf:NAME[:CONFIG][@SPLIT]")
    hint = "where the Hub is reachable, load it and save_to_disk(), then pass that directory"
    offline = not hub_reachable()
    was = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = was or offline  # unreachable: the local cache only
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        where = "the Hub is not reachable and it is not in the local cache" if offline else ""
        reason = where or _first_line(e)
        raise RlhfkitError(f"cannot load {spec}: {reason}; {hint}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = was


def _one_split(loaded, split: str | None, where: str):
    if hasattr(loaded, "keys"):  # a DatasetDict: one split of it
        splits = list(loaded.keys())
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise RlhfkitError(f"{where}: name a split with @SPLIT (it has {', '.join(splits)})")
        return loaded[split]
    if split is not None:
        raise RlhfkitError(f"{where}: holds one dataset, no splits: drop @{split}")
    return loaded


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# TRL's conversational format ------------------------------------------------------------


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def conversational_to_text(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """A record whose prompt, chosen or rejected are lists of messages, as text: the prompt
    a lone user message's content (or, with more turns, their rendering with the packaged
    model's chat template, the messages kept as `prompt_messages`), each answer the content
    of its assistant messages. With no `prompt`, chosen and rejected are whole conversations
    and the prompt is the messages they share. Other records pass unchanged."""
    chosen, rejected, prompt = obj.get("chosen"), obj.get("rejected"), obj.get("prompt")
    if not any(_is_messages(v) for v in (chosen, rejected, prompt)):
        return obj
    obj = dict(obj)
    if _is_messages(chosen) and _is_messages(rejected) and prompt is None:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise RlhfkitError(f"{where}: chosen and rejected share no opening messages")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if _is_messages(prompt):
        obj["prompt"] = prompt_text(prompt)
        if not _single_user_turn(prompt):
            obj["prompt_messages"] = prompt
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        if _is_messages(answer):
            obj[key] = answer_text(answer, f"{where}: {key}")
    return obj


def _single_user_turn(messages: list[dict]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == "user"


def answer_text(messages: list[dict], where: str) -> str:
    """The assistant's words in an answer given as messages."""
    said = [str(m["content"]) for m in messages if m["role"] == "assistant"]
    if not said:
        raise RlhfkitError(f"{where} holds no assistant message")
    return "\n\n".join(said)


def prompt_text(messages: list[dict]) -> str:
    """A lone user message as its text; a longer conversation rendered with the packaged
    model's chat template up to the assistant's turn (sample from such prompts in raw mode:
    the template is already applied)."""
    if _single_user_turn(messages):
        return str(messages[0]["content"])
    return _chat_template().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


_TEMPLATE = []


def _chat_template():
    if not _TEMPLATE:
        from transformers import AutoTokenizer

        from rlhfkit.models.loading import DEFAULT_POLICY, resolve_model

        _TEMPLATE.append(AutoTokenizer.from_pretrained(resolve_model(DEFAULT_POLICY)))
    return _TEMPLATE[0]


def source_sha256(spec: str | Path) -> str:
    """What a run records of its data, to know it again on resume: a file's SHA-256, a saved
    dataset directory's (its files, in order), or a Hub dataset's name with its fingerprint."""
    digest = hashlib.sha256()
    path = Path(spec)
    if str(spec).startswith("hf:"):
        digest.update(f"{spec}\0{load_dataset_source(str(spec))._fingerprint}".encode())
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()
