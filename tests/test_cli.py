"""The command line end to end: the hot-house ranking example, and one-line errors on bad input."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import SEED_COMPLETIONS, seed_rankings, write_jsonl

AIR, NOTHING, NOT_HOT = SEED_COMPLETIONS[1], SEED_COMPLETIONS[0], SEED_COMPLETIONS[2]


def test_seed_example_end_to_end(cli, tmp_path, store_url):
    seed = write_jsonl(tmp_path / "seed.jsonl", seed_rankings())
    cli("project", "create", "hot", "--criterion", "helpfulness", "--store", store_url)
    imported = cli("feedback", "import", seed, "--project", "hot", "--store", store_url)
    assert "3 rankings created" in imported.output

    report = json.loads(
        cli("feedback", "agreement", "--project", "hot", "--json", "--store", store_url).stdout
    )
    flagged = {row["labeler"]: row["flagged"] for row in report["labelers"]}
    assert flagged == {"H1": False, "H2": False, "H3": True}
    assert report["pairwise_agreement"] == pytest.approx(1 / 3)
    assert report["krippendorff_alpha"] == pytest.approx(-5 / 27)

    table = cli(
        "feedback",
        "agreement",
        "--project",
        "hot",
        "--store",
        store_url,
        "--heatmap",
        tmp_path / "heat.png",
    ).stdout
    assert "FLAGGED" in table and (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"

    out = tmp_path / "pairs.jsonl"
    summary = cli("feedback", "pairs", "--project", "hot", "--out", out, "--store", store_url)
    assert "1 prompts → 3 pairs, 0 ties skipped, excluded labelers: H3" in summary.output
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    # Exactly the example's pairs: H3 left out, the others' consensus, preferred first.
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (AIR, NOTHING),
        (NOTHING, NOT_HOT),
        (AIR, NOT_HOT),
    ]
    assert all(p["prompt"] == "My house is too hot." for p in pairs)


def test_export_and_reimport_through_the_cli(cli, tmp_path, sqlite_url):
    cli(
        "feedback",
        "import",
        write_jsonl(tmp_path / "s.jsonl", seed_rankings()),
        "--store",
        sqlite_url,
    )
    out = tmp_path / "export.jsonl"
    cli("feedback", "export", "--out", out, "--store", sqlite_url)
    assert [json.loads(x)["labeler"] for x in out.read_text().splitlines()] == ["H1", "H2", "H3"]
    again = cli("feedback", "import", out, "--store", sqlite_url)
    assert "3 rankings unchanged" in again.output


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "a", "chosen": "x", "rejected": "y", "labeler": "h"}', '{"prompt": oops}'],
            "bad.jsonl:2: invalid JSON",
        ),
        (
            [
                json.dumps(
                    {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2, 3], "labeler": "h"}
                )
            ],
            "bad.jsonl:1: 'ranks' must be a list of 2 integers",
        ),
        (
            [
                json.dumps(
                    {"prompt": "", "completions": ["a", "b"], "ranks": [1, 2], "labeler": "h"}
                )
            ],
            "bad.jsonl:1: 'prompt' is empty",
        ),
        (
            [
                json.dumps(
                    {"prompt": "p", "completions": ["a", ""], "ranks": [1, 2], "labeler": "h"}
                )
            ],
            "bad.jsonl:1: completion 2 is empty",
        ),
    ],
)
def test_bad_files_are_one_line_errors_and_import_nothing(
    cli, tmp_path, sqlite_url, lines, message
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    result = cli("feedback", "import", bad, "--store", sqlite_url, ok=False)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    listing = cli("project", "list", "--store", sqlite_url).stdout
    assert "default" not in listing  # nothing was written, not even the project


def test_errors_from_the_installed_command_have_no_traceback(tmp_path):
    """The real console script, not the in-process runner: exit code and stderr as users see."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "RLHFKIT_STORE": "sqlite:////no/such/dir/x.db"}
    for args, message in [
        (["feedback", "agreement"], "cannot open store 'sqlite:////no/such/dir/x.db'"),
        (["feedback", "import", str(tmp_path / "missing.jsonl")], "missing.jsonl: cannot read"),
    ]:
        done = subprocess.run(
            [os.path.join(bin_dir, "rlhfkit"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1


def test_unknown_project_and_empty_project(cli, tmp_path, sqlite_url):
    result = cli(
        "feedback",
        "pairs",
        "--project",
        "ghost",
        "--out",
        tmp_path / "p.jsonl",
        "--store",
        sqlite_url,
        ok=False,
    )
    assert result.exit_code == 1 and "no project 'ghost'" in result.output
    cli("project", "create", "empty", "--store", sqlite_url)
    result = cli(
        "feedback",
        "pairs",
        "--project",
        "empty",
        "--out",
        tmp_path / "p.jsonl",
        "--store",
        sqlite_url,
        ok=False,
    )
    assert "has no feedback that gives pairs" in result.output
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.slow
def test_reward_commands(cli, tmp_path, sqlite_url):
    """label auto -> pairs -> train-rm -> eval-rm, all through the command line."""
    from rlhfkit.data.prompts import load_prompts

    texts = [p.prompt for p in load_prompts("builtin:rtp", limit=120)]
    records = [
        {
            "prompt": f"Say something, #{i}.",
            "completions": texts[4 * i : 4 * i + 4],
            "labeler": "seed",
            "ranks": [1, 2, 3, 4],
        }
        for i in range(30)
    ]
    cli("feedback", "import", write_jsonl(tmp_path / "c.jsonl", records), "--store", sqlite_url)
    for k in range(2):
        result = cli(
            "label",
            "auto",
            "--reward",
            "scorer:profanity",
            "--labeler",
            f"ai-{k}",
            "--noise",
            "0.3",
            "--seed",
            k,
            "--store",
            sqlite_url,
        )
        assert "30 rankings created" in result.output
    pairs = tmp_path / "pairs.jsonl"
    cli("feedback", "pairs", "--out", pairs, "--keep-flagged", "--store", sqlite_url)
    result = cli(
        "train-rm",
        "--pairs",
        pairs,
        "--out",
        tmp_path / "rm",
        "--epochs",
        "1",
        "--held-out-fraction",
        "0.3",
        "--max-length",
        "64",
    )
    assert "held-out accuracy" in result.output and f"rm:{tmp_path / 'rm'}" in result.output
    report = json.loads(
        cli(
            "eval-rm",
            "--reward-model",
            tmp_path / "rm",
            "--pairs",
            pairs,
            "--project",
            "default",
            "--json",
            "--store",
            sqlite_url,
        ).stdout
    )
    assert report["overall"]["pairs"] > 100  # its ECE is pinned by hand in the next test
    assert {row["labeler"] for row in report["labelers"]} == {"seed", "ai-0", "ai-1"}
    table = cli("eval-rm", "--reward-model", "scorer:profanity", "--pairs", pairs).stdout
    assert "scorer:profanity on" in table and "accuracy" in table


def test_eval_rm_reports_the_hand_computed_calibration(cli, tmp_path, monkeypatch):
    """A reward that reads its score off the completion, on four pairs with known margins:
    P(chosen ≻ rejected) = σ(margin) = 0.78, 0.78, 0.22, 0.93, so the confidence is 0.78 for
    three pairs (two right) and 0.93 for one (right).
    ECE = 3/4·|2/3 − 0.78| + 1/4·|1 − 0.93| = 0.085 + 0.0175 = 0.1025."""
    (tmp_path / "score_is_text.py").write_text(
        "def score(prompts, completions):\n    return [float(c) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m78, m93 = math.log(0.78 / 0.22), math.log(0.93 / 0.07)
    margins = [m78, m78, -m78, m93]
    pairs = [
        {"prompt": f"q{i}", "chosen": str(m), "rejected": "0.0"} for i, m in enumerate(margins)
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    report = json.loads(
        cli(
            "eval-rm", "--reward-model", "python:score_is_text:score", "--pairs", path, "--json"
        ).stdout
    )["overall"]
    sys.modules.pop("score_is_text", None)
    assert report["pairs"] == 4 and report["accuracy"] == 0.75
    assert report["ece"] == pytest.approx(0.1025, abs=1e-6)
    assert report["mean_margin"] == pytest.approx((m78 + m93) / 4)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no records"),
        (
            '{"prompt": "p", "chosen": "same", "rejected": "same"}\n',
            "pairs.jsonl:1: 'chosen' and 'rejected' are the same text",
        ),
        ('{"prompt": "p", "completion": "c", "label": "up", "labeler": "x"}\n', "expected pairs"),
    ],
)
def test_train_rm_bad_pairs_files(cli, tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    result = cli("train-rm", "--pairs", path, "--out", tmp_path / "rm", ok=False)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "rm").exists()


def test_train_rm_bad_settings_fail_before_any_model_loads(cli, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    result = cli("train-rm", "--pairs", path, "--out", tmp_path / "rm", "--epochs", "0", ok=False)
    assert (
        "reward model setting 'epochs': Input should be greater than or equal to 1" in result.output
    )
    result = cli(
        "train-rm", "--pairs", path, "--out", tmp_path / "rm", "--schedule", "wavy", ok=False
    )
    assert "reward model setting 'schedule'" in result.output


def test_label_auto_with_a_spec_that_names_nothing(cli, sqlite_url):
    result = cli(
        "label", "auto", "--reward", "vibes", "--labeler", "x", "--store", sqlite_url, ok=False
    )
    assert result.exit_code == 1 and "unknown reward spec 'vibes'" in result.output
