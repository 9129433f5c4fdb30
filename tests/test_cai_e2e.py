"""Constitutional AI end to end on the packaged SmolLM2 (slow): stage 1 makes a dataset of
revisions and an SFT adapter whose loss on held-out revisions went down; stage 2 has the
same small model judge completions of the SFT policy, and its `ai` rankings flow through
pairs, a reward model and two PPO steps that start from the SFT policy and are held to it
(KL 0 at the first step)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_constitutional_ai_stage_1_then_stage_2(tmp_path, cli):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    revise = tmp_path / "revise"
    stage1 = cli(
        "cai",
        "revise",
        "--out",
        revise,
        "--prompts",
        "builtin:redteam",
        "--limit",
        "24",
        "--max-new-tokens",
        "40",
        "--batch-size",
        "12",
        "--filter-reward",
        "none",
        "--store",
        store,
    )
    assert "24 prompts in 'cai-revise'" in stage1.output
    chains = [json.loads(line) for line in (revise / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 24 and all(c["steps"][0]["critique"] for c in chains)
    kept = (revise / "revisions.jsonl").read_text().splitlines()
    assert len(kept) >= 12, stage1.output

    sft = tmp_path / "sft"
    cli(
        "sft",
        "--data",
        revise / "revisions.jsonl",
        "--out",
        sft,
        "--epochs",
        "3",
        "--held-out-fraction",
        "0.25",
        "--lr",
        "3e-4",
    )
    summary = json.loads((sft / "sft.json").read_text())
    loss = summary["held_out_loss"]
    assert summary["examples"]["held_out"] >= 2
    assert loss["after"] < loss["before"], loss

    policy = sft / "policy"
    cli(
        "generate",
        "--prompts",
        "builtin:rtp",
        "--split",
        "train",
        "--limit",
        "6",
        "--samples-per-prompt",
        "3",
        "--policy",
        policy,
        "--max-new-tokens",
        "16",
        "--project",
        "judged",
        "--store",
        store,
    )
    report = tmp_path / "judge.json"
    cli(
        "label",
        "judge",
        "-p",
        "judged",
        "--force",
        "--check-prompts",
        "6",
        "--report",
        report,
        "--store",
        store,
    )
    judged = json.loads(report.read_text())
    assert judged["prompts_ranked"] == 6 and judged["pairs"] == 6 * 3
    pairs = tmp_path / "pairs.jsonl"
    cli("feedback", "pairs", "-p", "judged", "--out", pairs, "--store", store)
    rm = tmp_path / "rm"
    cli("train-rm", "--pairs", pairs, "--out", rm, "--epochs", "1", "--reads", "completion")
    ppo = tmp_path / "ppo"
    cli(
        "ppo",
        "--out",
        ppo,
        "--policy",
        policy,
        "--reward",
        f"rm:{rm}",
        "--prompts",
        "builtin:rtp",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--minibatches",
        "1",
        "--max-new-tokens",
        "8",
    )
    steps = [json.loads(line) for line in (ppo / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # held to the SFT model
    info = json.loads((ppo / "policy" / "rlhfkit_policy.json").read_text())
    assert info["base"] == str(policy) and info["stage"] == "ppo"


def test_the_constitutional_pipeline_in_miniature(tmp_path, cli):
    from pathlib import Path

    from rlhfkit.pipeline import load_pipeline

    text = (Path(__file__).parent / "data" / "tiny_cai.yaml").read_text()
    path = tmp_path / "cai.yaml"
    path.write_text(text.replace("RUN_DIR", str(tmp_path / "run")))
    config = load_pipeline(path)
    run = tmp_path / "run"
    assert config.ppo_config().policy == str(run / "sft" / "policy")
    first = cli("run", path)
    assert first.output.count(" ran ") == 10  # one labeler alone: agreement has nothing to say
    for artefact in (
        "revise/revisions.jsonl",
        "revise/chains.jsonl",
        "sft/policy/rlhfkit_policy.json",
        "label/judge-ai-judge.json",
        "pairs/pairs.jsonl",
        "ppo/metrics.jsonl",
    ):
        assert (run / artefact).is_file(), artefact
    generated = json.loads((run / "generate" / "done.json").read_text())
    assert "4 prompts × 3 completions" in generated["summary"]
    judge = json.loads((run / "label" / "judge-ai-judge.json").read_text())
    assert judge["forced"] is True and judge["prompts_ranked"] == 4
    steps = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # PPO starts at the SFT policy
    # The evaluation: the original model, the SFT policy PPO started from, the final policy;
    # the run's judge compared each later answer with the original's.
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert list(result["models"]) == ["before", "sft", "after"]
    assert result["intermediate"]["sft"]["policy"] == str(run / "sft" / "policy")
    assert result["judge"]["judge"] == "smollm2-135m-instruct" and result["judge"]["pairs"] == 4
    assert 0 <= result["models"]["after"]["judge_preference"] <= 1
    assert "│ the judge" in first.output and "┃ sft " in first.output  # in the table
    page = (run / "report" / "report.html").read_text()
    assert "<h2>Constitutional AI</h2>" in page and "<h3>The AI judge</h3>" in page
    assert cli("run", path).output.count("done before, skipped") == 10
