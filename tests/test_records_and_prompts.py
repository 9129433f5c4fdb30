"""Record validation, JSONL io and the built-in prompt sets."""

import json
import sys

import pytest

from conftest import held_out_by_hash  # test_reward_parts imports it from here too
from rlhfkit.data.jsonl import read_jsonl, write_jsonl
from rlhfkit.data.prompts import load_prompts
from rlhfkit.data.records import (
    MISSING_LABELER,
    Pair,
    PromptRecord,
    RankingRecord,
    RecordError,
    ThumbsRecord,
    parse_record,
)
from rlhfkit.errors import RlhfkitError
from rlhfkit.reward.data import read_pairs


def test_each_record_kind_is_recognised_and_unknown_keys_ignored():
    r = parse_record(
        {
            "prompt": "p",
            "completions": ["a", "b"],
            "ranks": [2, 1],
            "labeler": "x",
            "extra": {"kept": "or ignored"},
        }
    )
    assert r == RankingRecord("p", ("a", "b"), (2, 1), "x")
    assert parse_record(
        {"prompt": "p", "completion": "a", "label": "up", "labeler": "x"}
    ) == ThumbsRecord("p", "a", "up", "x")
    assert parse_record({"prompt": "p", "chosen": "a", "rejected": "b"}, "file") == Pair(
        "p", "a", "b", "file"
    )
    assert parse_record({"prompt": "p", "id": 7}) == PromptRecord("p", "7")


def test_hh_rlhf_transcripts_split_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Sure, gladly."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."
    pair = parse_record({"chosen": chosen, "rejected": rejected}, "hh")
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == ("Sure, gladly.", "No.")


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [1], "labeler": "x"}, "list of 2"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1], "labeler": "x"}, "ranks 1..2"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [2, 2], "labeler": "x"}, "ranks 1..2"),
        (
            {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 4, 2], "labeler": "x"},
            "1..3",
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "ranks": [1, True], "labeler": "x"},
            "integers",
        ),
        ({"prompt": "p", "completions": ["a", "a"], "ranks": [1, 2], "labeler": "x"}, "same text"),
        (
            {"prompt": "p", "completions": ["a", " "], "ranks": [1, 2], "labeler": "x"},
            "completion 2",
        ),
        (
            {"prompt": " ", "completions": ["a", "b"], "ranks": [1, 2], "labeler": "x"},
            "'prompt' is empty",
        ),
        ({"prompt": "p", "completion": "a", "label": "meh", "labeler": "x"}, "'up' or 'down'"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "same text"),
        ({"chosen": "no turns", "rejected": "here"}, "HH-RLHF"),
        ({"text": "what is this"}, "not a prompt"),
    ],
)
def test_bad_records_say_what_is_wrong(obj, message):
    with pytest.raises(RecordError, match=message):
        parse_record(obj)


UNNAMED = [
    {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]},
    {"prompt": "p", "completion": "a", "label": "up"},
    {"prompt": "p", "chosen": "a", "rejected": "b"},
]


@pytest.mark.parametrize("obj", UNNAMED, ids=["ranking", "thumbs", "pair"])
def test_one_check_requires_a_labeler_of_every_kind_of_feedback(obj):
    """An import requires a labeler (the record's or the default); reading does not."""
    assert parse_record(obj).labeler is None
    assert parse_record(obj, "dflt", require_labeler=True).labeler == "dflt"
    with pytest.raises(RecordError) as error:
        parse_record(obj, require_labeler=True)
    assert str(error.value) == MISSING_LABELER


def test_reward_training_on_a_ranking_file_asks_for_pairs_not_a_labeler(tmp_path):
    """train-rm has no --labeler: a file without labelers is judged on being pairs."""
    rankings, pairs = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_jsonl(rankings, UNNAMED[:1])
    write_jsonl(pairs, UNNAMED[2:])
    with pytest.raises(RlhfkitError, match=r"r\.jsonl: expected pairs .* found 1 other records"):
        read_pairs(rankings)
    assert read_pairs(pairs) == [Pair("p", "a", "b")]


def test_ties_are_allowed():
    assert parse_record(
        {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 1, 3], "labeler": "x"}
    ).ranks == (1, 1, 3)


def test_read_jsonl_reports_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": \n')
    with pytest.raises(RlhfkitError, match=r"x\.jsonl:3: invalid JSON"):
        list(read_jsonl(path))
    path.write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(RlhfkitError, match=r"x\.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"prompt": "\\ud800"}', "a \\u escape names a lone surrogate"),
        ('{"prompt": ["\\udc00 alone"]}', "a \\u escape names a lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"prompt": "p", "n": ' + "7" * 5000 + "}", "an integer of more than {limit} digits"),
    ],
    ids=["surrogate", "surrogate-in-list", "nested", "long-integer"],
)
def test_hostile_json_is_one_line_naming_file_and_line(tmp_path, line, why):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(RlhfkitError) as error:
        list(read_jsonl(path))
    limit = sys.get_int_max_str_digits()
    assert str(error.value) == f"{path}:2: invalid JSON ({why.format(limit=limit)})"


def test_escapes_that_make_real_characters_are_fine(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "\\ud83d\\ude00 \\u00e9", "note": "\\\\ud800"}\n')
    assert list(read_jsonl(path)) == [(1, {"prompt": "\U0001f600 \u00e9", "note": "\\ud800"})]


def test_bytes_that_are_not_utf8_are_reported_with_their_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes('{"prompt": "café"}\n\n'.encode() + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(RlhfkitError) as error:
        list(read_jsonl(path))
    assert str(error.value) == f"{path}:3: not UTF-8 text (byte 16 of the line)"


def test_a_ranking_of_one_completion_is_a_valid_record_and_of_none_an_error():
    one = parse_record({"prompt": "p", "completions": ["a"], "ranks": [1], "labeler": "x"})
    assert one == RankingRecord("p", ("a",), (1,), "x")
    with pytest.raises(RecordError, match="'completions' must be a non-empty list"):
        parse_record({"prompt": "p", "completions": [], "ranks": [], "labeler": "x"})


def test_write_jsonl_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary left over


def test_builtin_sets_load_and_mix_their_categories():
    rtp = load_prompts("builtin:rtp")
    assert len(rtp) == 623  # 7 categories × 100 RealToxicityPrompts, 77 of them repeats
    assert len({p.prompt for p in rtp}) == len(rtp)
    assert len({p.id.split(":")[0] for p in rtp[:7]}) == 7  # round-robin over categories
    redteam = load_prompts("builtin:redteam")
    assert sum(p.id.startswith("advbench") for p in redteam) == 520
    assert any(p.id.startswith("donotanswer/") for p in redteam[:10])
    dialogues = load_prompts("builtin:dialogues")
    assert len(dialogues) > 300 and len({p.prompt for p in dialogues}) == len(dialogues)


def test_split_is_stable_disjoint_and_near_the_fraction(tmp_path):
    everything = [p.prompt for p in load_prompts("builtin:rtp")]
    train = load_prompts("builtin:rtp", split="train", eval_fraction=0.2)
    held_out = load_prompts("builtin:rtp", split="eval", eval_fraction=0.2)
    assert len(everything) == 623
    assert [p.prompt for p in held_out] == [t for t in everything if held_out_by_hash(t, 0.2)]
    assert [p.prompt for p in train] == [t for t in everything if not held_out_by_hash(t, 0.2)]
    assert 0.15 < len(held_out) / 623 < 0.25
    assert load_prompts("builtin:rtp", split="eval", limit=5) == held_out[:5]
    # The split depends on the text alone, not on the file it came from or its position.
    mixed = [*everything[:50], "A prompt of my own.", "Another one of mine."][::-1]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in mixed))
    mine = [p.prompt for p in load_prompts(str(path), split="eval", eval_fraction=0.2)]
    assert mine == [t for t in mixed if held_out_by_hash(t, 0.2)]
    assert 0 < len(mine) < len(mixed)


def test_prompt_file_errors(tmp_path):
    with pytest.raises(RlhfkitError, match="unknown prompt set 'builtin:nope'"):
        load_prompts("builtin:nope")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    with pytest.raises(RlhfkitError, match=r"p\.jsonl:2: 'prompt' must be a non-empty string"):
        load_prompts(str(bad))
