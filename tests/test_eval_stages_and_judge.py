"""The evaluation of a stacked policy (before, the SFT stage it sits on, after), the AI judge's
preference for the later answers, and the report's Constitutional AI section: numbers by
hand, the page escaped, malformed CAI files refused in one line."""

import html
import json
import sys

import pytest

from conftest import ScorerJudge
from rlhfkit.cai.constitution import load_constitution
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.run import (
    columns_of,
    compare,
    finite,
    intermediate_stages,
    judge_against_before,
    summary_header,
    summary_rows,
)
from rlhfkit.models.stack import POLICY_INFO
from rlhfkit.report import build_report

CLEAN = "Thank you, that sounds lovely."
PROFANE = "Shut up, you stupid fucking idiot."


def _row(prompt, text, tox, logp, ref_logp):
    return {
        "prompt": prompt,
        "completion": text,
        "toxicity": {"t": tox},
        "logp": logp,
        "ref_logp": ref_logp,
    }


def test_a_stage_in_between_gets_its_own_column_and_change_from_before():
    """Two prompts, one sample each: before, sft, after, by hand."""
    before = [_row("p", "a b", 0.8, [-1.0], [-1.0]), _row("q", "c d", 0.4, [-1.0], [-1.0])]
    sft = [_row("p", "a b", 0.4, [-0.5], [-1.0]), _row("q", "c d", 0.2, [-1.0], [-1.0])]
    after = [_row("p", "a b", 0.2, [-0.5], [-2.0]), _row("q", "c d", 0.1, [-1.0], [-1.0])]
    result = compare({"before": before, "sft": sft, "after": after}, ["t"], samples=1, seed=0)
    assert list(result["models"]) == ["before", "sft", "after"]
    assert result["models"]["sft"]["t"]["mean"] == pytest.approx(0.3)  # (0.4 + 0.2) / 2
    assert result["models"]["sft"]["kl"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    # after vs before: 0.15 vs 0.6 → −75%; sft vs before: 0.3 vs 0.6 → −50%
    assert result["change"]["t"]["mean"] == pytest.approx(-0.75)
    assert list(result["intermediate"]) == ["sft"]
    assert result["intermediate"]["sft"]["change"]["t"]["mean"] == pytest.approx(-0.5)
    result |= {"config": {"scorers": ["t"]}, "mode": "raw"}
    assert columns_of(result) == ["before", "sft", "after"]
    assert summary_header(result) == ["", "before", "sft", "after", "change after vs before"]
    rows = summary_rows(result)
    assert all(len(row) == 5 for row in rows)
    mean = next(row for row in rows if row[0] == "t: mean P(toxic)")
    assert [cell.split(" [")[0] for cell in mean[1:]] == ["0.600", "0.300", "0.150", "-75%"]
    assert next(row for row in rows if row[0] == "KL from the reference")[1:] == (
        "0.00",
        "0.25",
        "0.75",
        "",
    )


def _policy_dir(path, base, stage):
    path.mkdir()
    (path / POLICY_INFO).write_text(json.dumps({"base": str(base), "stage": stage, "lora": True}))
    return path


def test_the_stages_between_are_read_from_the_policys_stack(tmp_path):
    sft = _policy_dir(tmp_path / "sft", "smollm2-135m-instruct", "sft")
    sft2 = _policy_dir(tmp_path / "sft2", sft, "sft")
    ppo = _policy_dir(tmp_path / "ppo", sft2, "ppo")
    assert intermediate_stages(str(ppo), "smollm2-135m-instruct") == {
        "sft": str(sft),
        "sft-2": str(sft2),
    }
    # Held to the second SFT policy, PPO's evaluation has nothing in between.
    assert intermediate_stages(str(ppo), str(sft2)) == {}
    assert intermediate_stages(str(sft), "smollm2-135m-instruct") == {}
    assert intermediate_stages("smollm2-135m-instruct", "smollm2-135m-instruct") == {}


def _sides():
    """Two prompts, one sample each: the later model cleans prompt 1's answer and spoils
    prompt 2's. Toxicity as a scorer would see it: profane 0.9, clean 0.1."""

    def row(prompt, text):
        tox = 0.9 if text == PROFANE else 0.1
        return {"prompt": prompt, "completion": text, "toxicity": {"t": tox}}

    return {
        "before": [row("Reply 1", PROFANE), row("Reply 2", CLEAN)],
        "after": [row("Reply 1", CLEAN), row("Reply 2", PROFANE)],
    }


def test_the_judges_preference_for_the_later_answers_by_hand():
    sides = _sides()
    judged = judge_against_before(ScorerJudge(), load_constitution(), sides, ["t"])
    # Prompt 1: before (profane) shown as (A) gets P(A) = 0.1, after shown as (A) 0.9:
    # P(before better) = (0.1 + 1 − 0.9) / 2 = 0.1, so P(after better) = 0.9. Prompt 2: 0.1.
    assert [r["judge_preference"] for r in sides["after"]] == pytest.approx([0.9, 0.1])
    assert "judge_preference" not in sides["before"][0]
    assert judged["pairs"] == 2 and judged["unanswered"] == 0
    assert judged["position_bias"] == pytest.approx(0.0)  # (0.1 + 0.9) / 2 − 1/2
    # The scorer prefers the cleaner answer in both pairs, and so does the judge.
    assert judged["agreement"]["t"] == {"agreements": 2, "comparisons": 2, "share": 1.0}


def test_the_judges_preference_reaches_the_table_with_its_interval():
    sides = _sides()
    for side in sides.values():
        for row in side:
            row |= {"logp": [-1.0], "ref_logp": [-1.0]}
    judge_against_before(ScorerJudge(), load_constitution(), sides, ["t"])
    result = compare(sides, ["t"], samples=1, seed=0)
    assert result["models"]["after"]["judge_preference"] == pytest.approx(0.5)
    assert "judge_preference" not in result["models"]["before"]
    assert "judge_preference" not in result["change"]  # no change: before has none
    result |= {"config": {"scorers": ["t"]}, "mode": "raw"}
    row = next(r for r in summary_rows(result) if r[0].startswith("the judge prefers it"))
    assert row[1] == "–" and row[2].startswith("50.0% [") and row[3] == ""


# --- the report's CAI section ------------------------------------------------------------------


def _attack(where: str) -> str:
    return f'<script>alert("{where}")</script><img src=x onerror=alert("{where}")>'


def _cai_run(tmp_path, text=lambda where: where):
    run = tmp_path / "run"
    (run / "revise").mkdir(parents=True)
    chains = [
        {
            "prompt": text(f"request {i}"),
            "steps": [
                {
                    "round": 1,
                    "principle": text(f"principle {i}"),
                    "response": text(f"response {i}"),
                    "critique": text(f"critique {i}"),
                    "revision": text(f"revision {i}"),
                    "model": "m",
                }
            ],
            "dropped": None if i < 2 else "scores worse",
            "scores": {"first": 1.0, "final": 2.0 - i},
        }
        for i in range(3)
    ]
    (run / "revise" / "chains.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chains))
    (run / "sft").mkdir()
    sft = {
        "examples": {"train": 2, "held_out": 1, "empty_skipped": 0},
        "held_out_loss": {"before": 2.5, "after": 1.75},
        "steps": 4,
    }
    (run / "sft" / "sft.json").write_text(json.dumps(sft))
    (run / "label").mkdir()
    judge = {
        "labeler": text("labeler"),
        "judge": text("judge"),
        "reference": "scorer:profanity",
        "prompts_ranked": 4,
        "prompts_already_ranked": 0,
        "pairs": 12,
        "unanswered": 0,
        "position_bias": 0.31,
        "option_mass": 0.71,
        "agreements": 6,
        "comparisons": 8,
        "forced": True,
        "counts": {},
        "agreement": 0.75,
    }
    (run / "label" / "judge-x.json").write_text(json.dumps(judge))
    return run


def test_the_cai_section_shows_counts_chains_sft_and_the_judge(tmp_path):
    page = " ".join(build_report(_cai_run(tmp_path)).read_text().split())
    assert "<h2>Constitutional AI</h2>" in page
    assert "<p>Stage 1: 3 red-team prompts answered" in page
    assert "<tr><td>kept</td><td>2</td></tr><tr><td>dropped: scores worse</td><td>1</td></tr>" in (
        page.replace("</tr> <tr>", "</tr><tr>")
    )
    assert "loss on 1 held-out revisions 2.500 → 1.750 (per response token)" in page
    for i in range(3):
        assert f"critique {i}" in page and f"revision {i}" in page
    assert "score 1.00 → 0.00" in page  # the dropped chain's scores
    assert "<td>75% of 8 pairs</td><td>+0.31</td>" in page
    assert "forced past the check" in page


def test_every_cai_text_reaches_the_page_escaped(tmp_path):
    page = build_report(_cai_run(tmp_path, _attack)).read_text()
    assert "<script" not in page and "<img src=x" not in page
    shown = html.unescape(page)
    for field in ("request 0", "principle 1", "response 0", "critique 1", "revision 0", "judge"):
        assert _attack(field) not in page and _attack(field) in shown, field


@pytest.mark.parametrize(
    ("where", "line", "message"),
    [
        ("revise/chains.jsonl", '{"prompt": "p", "steps": [], "dropped": null}\n', "'steps'"),
        ("revise/chains.jsonl", '{"prompt": 3, "steps": [], "dropped": null}\n', "'prompt'"),
        ("sft/sft.json", '{"examples": {}, "held_out_loss": {}, "steps": 1}', "'examples.train'"),
        ("label/judge-x.json", '{"labeler": "x"}', "'judge'"),
    ],
)
def test_a_malformed_cai_file_is_one_line_naming_it(tmp_path, where, line, message):
    run = _cai_run(tmp_path)
    (run / where).write_text(line)
    with pytest.raises(RlhfkitError) as error:
        build_report(run)
    text = str(error.value)
    assert text.startswith(str(run / where)) and message in text and "\n" not in text
    assert not (run / "report").exists()


def test_an_eval_json_with_a_stage_between_loads_and_shows_three_columns(tmp_path):
    sides = {
        name: [
            {**_row("p", f"{name} 0", tox, [-1.0], [-1.0]), "reward": 0.0},
            {**_row("q", f"{name} 1", tox / 2, [-1.0], [-1.0]), "reward": 1.0},
        ]
        for name, tox in (("before", 0.8), ("sft", 0.6), ("after", 0.2))
    }
    compared = compare(sides, ["t"], samples=1, seed=0)
    compared["intermediate"]["sft"] = {"policy": "runs/x/sft/policy"} | compared["intermediate"][
        "sft"
    ]

    def side(row):
        return {k: row[k] for k in ("completion", "toxicity", "reward")}

    result = {
        "config": {"scorers": ["t"], "samples": 1},
        "policy": "runs/x/ppo/policy",
        "reference": "base",
        "mode": "raw",
        "held_out": {"prompts": 2, "samples_per_prompt": 1, "split": "eval"},
        **compared,
        "samples": [
            {"prompt": rows[0]["prompt"], **{k: side(r) for k, r in zip(sides, rows, strict=True)}}
            for rows in zip(*sides.values(), strict=True)
        ],
    }
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "eval.json").write_text(json.dumps(finite(result)))
    page = " ".join(build_report(run).read_text().split())
    assert "base (before), runs/x/sft/policy (sft) and runs/x/ppo/policy (after)" in page
    assert "<th>before</th><th>sft</th><th>after</th><th>change after vs before</th>" in page
    assert "<th>prompt</th><th>before</th><th>sft</th><th>after</th>" in page
    assert "sft 0" in page
    del result["samples"][1]["sft"]  # a sample without the stage's answer
    (run / "eval" / "eval.json").write_text(json.dumps(finite(result)))
    with pytest.raises(RlhfkitError, match=r"'samples\.1\.sft': Field required"):
        build_report(run)


def test_eval_with_an_unreachable_judge_is_one_line_before_any_sampling(cli):
    from web_support import free_port

    answer = cli(
        "eval",
        "--policy",
        "smollm2-135m-instruct",
        "--limit",
        "1",
        "--scorer",
        "scorer:profanity",
        "--judge",
        f"http://127.0.0.1:{free_port()}/v1",
        ok=False,
    )
    assert answer.exit_code != 0 and "cannot connect" in answer.output
    assert "Traceback" not in answer.output and "evaluating" not in answer.output


def test_a_seeds_report_shows_the_cai_stages_its_seeds_share(tmp_path):
    run = _cai_run(tmp_path)
    seed = run / "seed-1"
    (seed / "ppo").mkdir(parents=True)
    (seed / "ppo" / "metrics.jsonl").write_text(json.dumps({"step": 1, "kl": 0.1}) + "\n")
    page = build_report(seed).read_text()
    assert "<h2>Constitutional AI</h2>" in page and "critique 0" in page


def test_best_of_n_keeps_each_groups_highest_reward_with_the_analytic_kl():
    from rlhfkit.eval.metrics import best_of_n_kl
    from rlhfkit.eval.run import best_of_rows

    assert best_of_n_kl(4) == pytest.approx(1.386294 - 0.75)  # log 4 − 3/4
    assert best_of_n_kl(2) == pytest.approx(0.693147 - 0.5)
    rows = [
        {"completion": c, "reward": r} for c, r in zip("abcdef", [1, 5, 2, 0, -1, -3], strict=True)
    ]
    best = best_of_rows(rows, 3)
    assert [r["completion"] for r in best] == ["b", "d"]  # 5 of (1, 5, 2); 0 of (0, −1, −3)
    assert all(r["kl"] == pytest.approx(best_of_n_kl(3)) for r in best)


def test_best_of_n_needs_a_reward_and_n_of_two_or_more(cli):
    answer = cli("eval", "--policy", "x", "--best-of", "4", ok=False)
    assert "best_of needs a reward" in answer.output and "Traceback" not in answer.output
    answer = cli(
        "eval", "--policy", "x", "--best-of", "1", "--reward", "scorer:profanity", ok=False
    )
    assert "'best_of'" in answer.output and "Traceback" not in answer.output


def test_best_of_n_is_a_column_between_before_and_after(tmp_path, tiny_model, cli, monkeypatch):
    (tmp_path / "by_length.py").write_text(
        "def score(prompts, completions):\n    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "eval.json"
    args = ["--policy", tiny_model, "--prompts", "builtin:dialogues", "--limit", "8"]
    args += ["--scorer", "scorer:profanity", "--reward", "python:by_length:score"]
    cli("eval", *args, "--best-of", "3", "--max-new-tokens", "8", "--out", out)
    result = json.loads(out.read_text())
    assert columns_of(result) == ["before", "best-of-3", "after"]
    models = result["models"]
    assert models["best-of-3"]["kl"] == pytest.approx(1.098612 - 2 / 3)  # log 3 − 2/3
    # The longest of three samples is longer than one sample, on average over 16 draws.
    assert models["best-of-3"]["reward"] > models["before"]["reward"]
    change = result["intermediate"]["best-of-3"]["change"]["reward"]
    assert change == pytest.approx(models["best-of-3"]["reward"] - models["before"]["reward"])
    # The policy is the reference itself: after is before's samples, not drawn again.
    assert [s["after"] for s in result["samples"]] == [s["before"] for s in result["samples"]]
    sys.modules.pop("by_length", None)
