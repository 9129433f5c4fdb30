"""Data in: prompts and pairs from Parquet, CSV, JSON, saved `datasets` directories and the
Hub (offline here: it must fail in seconds), with column mappings, and TRL's conversational
records, written by the tests in each format (no network)."""

from __future__ import annotations

import json
import time

import pytest

datasets = pytest.importorskip("datasets")

from rlhfkit.data.prompts import load_prompts, split_of  # noqa: E402
from rlhfkit.data.sources import source_sha256  # noqa: E402
from rlhfkit.errors import RlhfkitError  # noqa: E402
from rlhfkit.reward.data import read_pairs  # noqa: E402

QUESTIONS = [f"What is {a} plus {b}?" for a in range(6) for b in range(5)]


def write_formats(folder, rows: list[dict]) -> dict[str, str]:
    """The same rows as Parquet, CSV, JSON (an array), JSONL and a saved dataset."""
    table = datasets.Dataset.from_list(rows)
    paths = {
        "parquet": folder / "data.parquet",
        "csv": folder / "data.csv",
        "json": folder / "data.json",
        "jsonl": folder / "data.jsonl",
        "saved": folder / "saved",
    }
    table.to_parquet(str(paths["parquet"]))
    table.to_csv(str(paths["csv"]), index=False)
    paths["json"].write_text(json.dumps(rows))
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    table.save_to_disk(str(paths["saved"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.mark.parametrize("kind", ["parquet", "csv", "json", "jsonl", "saved"])
def test_prompts_from_every_format_with_a_column_mapping(tmp_path, kind):
    rows = [{"question": q, "uid": i} for i, q in enumerate(QUESTIONS)]
    source = write_formats(tmp_path, rows)[kind]
    fields = {"prompt": "question", "id": "uid"}
    everything = load_prompts(source, "all", fields=fields)
    assert [p.prompt for p in everything] == QUESTIONS
    assert everything[7].id == "7"
    held_out = load_prompts(source, "eval", 0.2, fields=fields)
    assert [p.prompt for p in held_out] == [q for q in QUESTIONS if split_of(q, 0.2) == "eval"]


def test_a_missing_column_names_the_ones_there_are(tmp_path):
    source = write_formats(tmp_path, [{"question": "Hi?"}])["parquet"]
    with pytest.raises(RlhfkitError, match=r"data.parquet:1: 'prompt' must be"):
        load_prompts(source)
    with pytest.raises(RlhfkitError, match=r"no field 'query' .* it has question"):
        load_prompts(source, fields={"prompt": "query"})


def test_a_dataset_dicts_split_is_named_with_an_at(tmp_path):
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": q} for q in QUESTIONS[:10]]),
            "test": datasets.Dataset.from_list([{"prompt": q} for q in QUESTIONS[10:14]]),
        }
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    test = load_prompts(f"{tmp_path / 'dd'}@test")
    assert [p.prompt for p in test] == QUESTIONS[10:14]
    with pytest.raises(RlhfkitError, match=r"name a split with @SPLIT \(it has train, test\)"):
        load_prompts(str(tmp_path / "dd"))


def test_a_hub_dataset_offline_fails_in_seconds_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(RlhfkitError) as caught:
        load_prompts("hf:nobody/no-such-prompts@train")
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith("cannot load hf:nobody/no-such-prompts@train: the Hub is not")
    assert "\n" not in message and "save_to_disk" in message


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]


def trl_pairs() -> list[dict]:
    """TRL's explicit-prompt form (single- and multi-turn) and its implicit-prompt form."""
    return [
        {
            "prompt": [{"role": "user", "content": "Say hi."}],
            "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "prompt": CONVERSATION,
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I will not."}],
        },
        {
            "chosen": [
                {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Four."},
            ],
            "rejected": [
                {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Five."},
            ],
        },
    ]


def test_trl_conversational_pairs_read_as_text_pairs(tmp_path):
    for kind in ("jsonl", "parquet"):
        source = write_formats(tmp_path, trl_pairs())[kind]
        pairs = read_pairs(source)
        assert [(p.prompt, p.chosen, p.rejected) for p in (pairs[0], pairs[2])] == [
            ("Say hi.", "Hi!", "Go away."),
            ("Two plus two?", "Four.", "Five."),
        ]
        multi = pairs[1]  # rendered with the packaged model's chat template
        assert "You are terse." in multi.prompt and "Name a colour." in multi.prompt
        assert multi.prompt.rstrip().endswith("assistant")
        assert json.loads(multi.messages) == CONVERSATION
        assert source_sha256(source) == source_sha256(source)


def test_importing_conversations_keeps_their_messages_for_export(tmp_path, cli, store_url):
    source = write_formats(tmp_path, trl_pairs())["parquet"]
    cli("feedback", "import", source, "-p", "chat", "--labeler", "ann", "--store", store_url)
    out = tmp_path / "pairs.jsonl"
    cli("feedback", "export", "--kind", "pairs", "-p", "chat", "--out", out, "--store", store_url)
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(exported) == 3
    by_chosen = {r["chosen"]: r for r in exported}
    assert by_chosen["Blue."]["prompt_messages"] == CONVERSATION
    assert "prompt_messages" not in by_chosen["Hi!"]  # one user turn: its text is the prompt
    assert by_chosen["Four."]["prompt"] == "Two plus two?"
    # and the export imports again unchanged
    again = cli("feedback", "import", out, "-p", "chat", "--store", store_url)
    assert "3 pairs unchanged" in again.stdout + again.stderr


def test_conversations_that_share_nothing_are_one_line(tmp_path):
    row = {
        "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
        "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}],
    }
    source = write_formats(tmp_path, [row])["jsonl"]
    with pytest.raises(RlhfkitError, match=r"data.jsonl:1: chosen and rejected share no"):
        read_pairs(source)


def test_generate_samples_prompts_of_a_csv_column(tmp_path, cli, tiny_model, store_url):
    source = write_formats(tmp_path, [{"question": q} for q in QUESTIONS[:3]])["csv"]
    result = cli(
        "generate",
        "--prompts",
        source,
        "--field",
        "prompt=question",
        "--policy",
        tiny_model,
        "--samples-per-prompt",
        "2",
        "--max-new-tokens",
        "3",
        "-p",
        "csv",
        "--store",
        store_url,
    )
    assert "project 'csv': 6 completions stored" in result.stdout + result.stderr


def test_train_rm_reads_a_parquet_of_conversational_pairs(tmp_path, cli):
    rows = []
    for i, question in enumerate(QUESTIONS[:12]):
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": f"The answer is {i}."}],
                "rejected": [{"role": "assistant", "content": "I do not know, go away."}],
            }
        )
    source = write_formats(tmp_path, rows)["parquet"]
    out = tmp_path / "rm"
    cli("train-rm", "--pairs", source, "--out", out, "--epochs", "1", "--held-out-fraction", "0")
    info = json.loads((out / "model" / "reward.json").read_text())
    assert info["data"]["pairs"] == 12 and info["data"]["pairs_file"] == source


def test_rendered_conversations_are_sampled_raw_never_wrapped_twice(tmp_path, cli, tiny_model):
    shape = [CONVERSATION[0], {"role": "user", "content": "Name a shape."}]
    rows = [{"prompt": CONVERSATION}, {"prompt": shape}]
    source = write_formats(tmp_path, rows)["jsonl"]
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["--prompts", source, "--policy", tiny_model, "--samples-per-prompt", "2"]
    args += ["--max-new-tokens", "2"]
    result = cli("generate", *args, "--store", store)
    assert "mode raw" in result.stdout + result.stderr  # auto: every prompt is rendered
    answer = cli("generate", *args, "--mode", "chat", "--store", store, ok=False)
    assert "2 of the 2 prompts" in answer.output and "mode raw" in answer.output
    assert "Traceback" not in answer.output
