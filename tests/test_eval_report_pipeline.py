"""Evaluation numbers on hand-computed examples, the held-out check, the HTML report (escaped),
and the pipeline: bad configs refused before work, a miniature run end to end, reruns that
skip what is done and redo what is not."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from rlhfkit.data.text import distinct_n
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.metrics import (
    model_intervals,
    model_numbers,
    relative_change,
    sequence_kl,
)
from rlhfkit.eval.run import check_held_out, compare
from rlhfkit.files import owner
from rlhfkit.pipeline import DEFAULT_STAGES, load_pipeline, start_run_dir
from rlhfkit.report import build_report

TINY = Path(__file__).parent / "data" / "tiny_pipeline.yaml"


def test_distinct_2_counts_unique_word_bigrams_over_all_texts():
    # bigrams: (a b) (b a) (a b) | (a b) (b c) → 3 unique of 5
    assert distinct_n(["a b a b", "A b c"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["one", ""], 2) == 0.0


def test_perplexity_kl_and_relative_change_by_hand():
    # Two prompts: tokens of p = 0.5 and 0.25, then one of 0.5. Token-weighted:
    # exp(−(ln .5 + ln .25 + ln .5) / 3) = exp(ln 16 / 3) = 16^(1/3), not the mean of the
    # prompts' own perplexities (√8 and 2).
    columns = {
        "nll": np.array([-(math.log(0.5) + math.log(0.25)), -math.log(0.5)]),
        "tokens": np.array([2.0, 1.0]),
    }
    assert model_numbers(columns)["perplexity"] == pytest.approx(16 ** (1 / 3))
    assert sequence_kl([-1.0, -2.0], [-1.5, -2.5]) == pytest.approx(1.0)
    assert relative_change(0.2, 0.1) == pytest.approx(-0.5)
    assert math.isnan(relative_change(0.0, 0.1))
    assert relative_change(np.array([0.5, 0.0]), np.array([0.25, 0.0])) == pytest.approx(
        [-0.5, math.nan], nan_ok=True
    )


def _logps_alone(model, input_ids, attention_mask, response_mask) -> list[list[float]]:
    """log p of each response token, every row run alone without its padding, by a plain
    float64 log-softmax of the previous position's logits."""
    out = []
    for ids, real, n in zip(
        input_ids, attention_mask, response_mask.sum(dim=1).long(), strict=True
    ):
        ids = ids[real.bool()]
        with torch.no_grad():
            logits = model(ids[None]).logits[0].double()
        log_softmax = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        out.append([float(log_softmax[j - 1, ids[j]]) for j in range(len(ids) - n, len(ids))])
    return out


def test_response_logps_are_the_log_softmax_of_the_previous_position_at_each_token():
    """On a tiny random Llama: a left-padded prompt and a response that ends early (padding
    after it) against each row run alone, unpadded, with log p(token_j) = z_{j−1}[token_j] −
    logsumexp(z_{j−1}) written out in float64."""
    from types import SimpleNamespace

    from rlhfkit.eval.run import response_logps

    torch.manual_seed(0)
    model = tiny_llama()
    pad = 0
    prompts = torch.tensor([[pad, pad, 5, 6], [3, 4, 5, 6]])
    response = torch.tensor([[7, 8, 9], [10, 11, pad]])
    response_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    input_ids = torch.cat([prompts, response], dim=1)
    attention_mask = torch.cat([(prompts != pad).long(), response_mask.long()], dim=1)
    responses = SimpleNamespace(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        prompt_length=4,
        response_ids=response,
    )

    expected = _logps_alone(model, input_ids, attention_mask, response_mask)
    got = response_logps(model, responses)
    assert [len(row) for row in got] == [3, 2]  # padding after a response is not a token
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-5)


def _share_columns(values) -> dict:
    """A model's per-prompt columns with one number, (t, mean), and a flat perplexity."""
    values = np.asarray(values, dtype=np.float64)
    return {("t", "mean"): values, "nll": np.ones(len(values)), "tokens": np.ones(len(values))}


def test_a_models_interval_over_prompts():
    mean = ("t", "mean")
    low, high = model_intervals(_share_columns([0.1, 0.2, 0.6, 0.9]), seed=0)[mean]
    # A resample whose mean is 0.1 (all four draws 0.1) has probability (1/4)^4 = 0.4%, as
    # has one whose mean is 0.9, far under 2.5%: the interval's ends lie strictly inside
    # [0.1, 0.9], either side of the mean 0.45.
    assert 0.1 < low < 0.45 < high < 0.9
    # Every resample of equal values has their mean: BCa is undefined there (no spread), and
    # the percentile interval of the same resamples is that single value.
    assert model_intervals(_share_columns([0.3, 0.3, 0.3]), seed=0)[mean] == pytest.approx(
        [0.3, 0.3]
    )
    wide = model_intervals(_share_columns([0, 1] * 5), seed=0)[mean]
    narrow = model_intervals(_share_columns([0, 1] * 500), seed=0)[mean]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # more prompts, tighter interval
    # One prompt: nothing to resample, no interval.
    assert model_intervals(_share_columns([0.4]), seed=0)[mean] is None


def test_a_models_interval_covers_the_true_mean_95_percent_of_the_time():
    """300 synthetic evaluations of 50 prompts whose number is uniform (true mean 0.5): a
    95% interval should hold 0.5 in 285 of them, give or take the binomial std
    √(300·0.95·0.05) = 3.8; 3 std either side allows 274 to 296. (A 90% interval covers
    about 270, a 99% one 297.)"""
    rng = np.random.default_rng(7)
    intervals = [
        model_intervals(_share_columns(rng.random(50)), seed=seed)[("t", "mean")]
        for seed in range(300)
    ]
    covered = sum(low <= 0.5 <= high for low, high in intervals)
    assert 274 <= covered <= 296


def _row(text, tox, logp, ref_logp, reward):
    return {
        "prompt": "p",
        "completion": text,
        "toxicity": {"t": tox},
        "logp": logp,
        "ref_logp": ref_logp,
        "reward": reward,
    }


def test_summary_and_change_of_a_tiny_fixed_set():
    """Two prompts × two samples a model, every number by hand from per-prompt numbers."""
    before = [  # prompt 1, then prompt 2
        _row("a b c", 0.8, [-1.0, -1.0], [-1.0, -1.0], -2.0),
        _row("a b d", 0.6, [-2.0], [-2.0], 0.0),
        _row("x x x", 0.2, [-1.0], [-1.0], 1.0),
        _row("y z", 0.0, [-3.0], [-3.0], -3.0),
    ]
    after = [
        _row("x y", 0.1, [-0.5], [-1.5], 1.0),
        _row("y z w", 0.7, [-1.0, -1.0], [-1.0, -2.0], 3.0),
        _row("a b", 0.0, [-1.0], [-1.0], 0.0),
        _row("a b", 0.0, [-1.0], [-1.0], 2.0),
    ]
    result = compare({"before": before, "after": after}, ["t"], samples=2, seed=0)
    b, a = result["models"]["before"], result["models"]["after"]
    assert b["t"]["mean"] == pytest.approx(0.4)  # (0.8 + 0.6 + 0.2 + 0) / 4
    assert b["t"]["toxic_share"] == 0.5  # prompt 1: 2 of 2 above 0.5; prompt 2: 0 of 2
    assert a["t"]["mean"] == pytest.approx(0.2) and a["t"]["toxic_share"] == 0.25
    assert b["kl"] == 0.0
    # KL per sample: 1, 1, 0, 0 → 0.5
    assert a["kl"] == pytest.approx(0.5)
    assert b["perplexity"] == pytest.approx(math.exp(8 / 5))  # Σ NLL 8 over 5 tokens
    assert a["perplexity"] == pytest.approx(math.exp(6.5 / 5))
    # distinct-2 within each prompt's samples, then the mean over prompts:
    # before: (a b) twice, (b c), (b d) → 3/4; (x x) twice, (y z) → 2/3
    # after: (x y), (y z), (z w) → 1; (a b) twice → 1/2
    assert b["distinct_2"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert a["distinct_2"] == pytest.approx((1 + 1 / 2) / 2)
    assert (b["length"], a["length"]) == (1.25, 1.25)
    assert (b["reward"], a["reward"]) == (-1.0, 1.5)
    change = result["change"]
    assert change["t"]["mean"] == pytest.approx(-0.5)
    assert change["t"]["toxic_share"] == pytest.approx(-0.5)
    assert change["perplexity"] == pytest.approx(math.exp(6.5 / 5 - 8 / 5) - 1)
    assert change["reward"] == pytest.approx(2.5)  # a difference: 1.5 − (−1)
    assert "kl" not in change
    # Every change has an interval, or None: with two prompts, a resample may draw prompt 2
    # twice, whose toxic share before is 0, so the share's relative change is undefined.
    assert set(result["change_ci"]) == set(change)
    assert result["change_ci"]["t"]["toxic_share"] is None
    low, high = result["change_ci"]["reward"]
    assert low <= 2.5 <= high


def test_evaluation_refuses_prompts_the_policy_was_trained_on():
    from rlhfkit.data.prompts import load_prompts

    info = {"prompts": "builtin:rtp", "split": "train", "eval_fraction": 0.2}
    held_out = [p.prompt for p in load_prompts("builtin:rtp", "eval", 0.2, 50)]
    assert check_held_out(held_out, info) == 0
    seen = [p.prompt for p in load_prompts("builtin:rtp", "train", 0.2, 3)]
    with pytest.raises(RlhfkitError, match="3 of the 53 evaluation prompts were used to train"):
        check_held_out(held_out + seen, info)
    with pytest.raises(RlhfkitError, match="were used to train"):  # another split of the data
        check_held_out(held_out, {**info, "eval_fraction": 0.1})


def _eval_result(completion: str) -> dict:
    side = {"completion": completion, "toxicity": {"scorer:profanity": 0.9}, "kl": 0.0}
    model = {
        "scorer:profanity": {"mean": 0.9, "ci_low": 0.9, "ci_high": 0.9, "toxic_share": 1.0},
        "kl": 0.0,
        "perplexity": 3.0,
        "distinct_2": 1.0,
        "length": 4.0,
    }
    none = {"perplexity": 0.0, "distinct_2": 0.0, "length": 0.0}
    return {
        "config": {"scorers": ["scorer:profanity"], "samples": 1},
        "policy": "p",
        "reference": "r",
        "held_out": {"prompts": 1, "split": "eval"},
        "models": {"before": model, "after": model},
        "change": {"scorer:profanity": {"mean": 0.0, "toxic_share": 0.0}, **none},
        "samples": [{"prompt": "<b>hi</b>", "before": side, "after": side}],
    }


def test_report_escapes_model_output_and_embeds_its_plots(tmp_path):
    (tmp_path / "eval").mkdir()
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(_eval_result(evil)))
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "reward_mean": s / 2,
                    "kl": 0.1 * s,
                    "entropy": 3.0,
                    "value_loss": 1 / s,
                    "clipfrac": 0.1,
                }
            )
            + "\n"
            for s in (1, 2, 3)
        )
    )
    page = build_report(tmp_path).read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # as Jinja2 escapes
    assert "&lt;b&gt;hi&lt;/b&gt;" in page
    assert page.count('src="data:image/png;base64,') == 2  # training curves, histograms
    assert (tmp_path / "report" / "training.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlhfkitError, match="neither PPO metrics nor an evaluation"):
        build_report(tmp_path / "empty")


def _tiny(tmp_path, **changes) -> Path:
    text = TINY.read_text().replace("RUN_DIR", str(tmp_path / "run"))
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_pipeline_configs_are_checked_before_any_work(tmp_path, cli):
    bad_stage = _tiny(tmp_path, **{"run_dir:": "stages: [generate, polish]\nrun_dir:"})
    result = cli("run", bad_stage, ok=False)
    assert (
        result.exit_code == 1 and "stages.1" in result.output and "Traceback" not in result.output
    )
    typo = _tiny(tmp_path, **{"max_new_tokens: 8}\neval": "max_new_tokens: 8, lr: -1}\neval"})
    result = cli("run", typo, ok=False)
    assert "PPO setting 'lr'" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written

    missing = _tiny(tmp_path, **{"run_dir:": "stages: [train-rm]\nrun_dir:"})
    result = cli("run", missing, ok=False)
    assert "stage train-rm needs the output of pairs" in result.output
    assert not (tmp_path / "run").exists()  # a run refused by preflight writes nothing either
    start_run_dir(load_pipeline(_tiny(tmp_path)))  # the run directory of the tiny config
    other = _tiny(tmp_path, **{"run_dir:": "stages: [report]\nseed: 5\nrun_dir:"})
    result = cli("run", other, ok=False)
    assert "holds a run of a different config (differs in seed)" in result.output


def test_a_config_that_names_a_model_that_does_not_load(tmp_path, cli):
    path = _tiny(tmp_path, **{"run_dir:": "policy: /no/such/model\nrun_dir:"})
    result = cli("run", path, ok=False)
    assert result.exit_code == 1 and "/no/such/model" in result.output
    assert not (tmp_path / "run" / "generate").exists()


def _check_the_after_side(run: Path, result: dict) -> None:
    """The after side is the trained policy and its KL is what it says: sample again as the
    evaluation did (its seed, the policy it loads), then take each sample's Σ log π − log π_ref
    apart from the evaluation's code: π as the base model with the trained adapter on top
    (not merged), π_ref as the base model, each row run alone."""
    from peft import PeftModel

    from rlhfkit.eval.run import load_model
    from rlhfkit.models import load_causal_lm
    from rlhfkit.train.ppo.rollout import sample_responses

    config, samples = result["config"], result["samples"]
    assert len(samples) <= config["batch_size"]  # the evaluation sampled them in one batch
    policy_dir = run / "ppo" / "policy"
    merged, tokenizer = load_model(str(policy_dir))
    torch.manual_seed(config["seed"])
    responses = sample_responses(
        merged,
        tokenizer,
        [s["prompt"] for s in samples],
        result["mode"],
        config["max_new_tokens"],
        config["temperature"],
    )
    texts = tokenizer.batch_decode(responses.response_ids, skip_special_tokens=True)
    assert texts == [s["after"]["completion"] for s in samples]  # the same samples again

    base = json.loads((policy_dir / "rlhfkit_policy.json").read_text())["base"]
    reference, _ = load_causal_lm(base)
    policy = PeftModel.from_pretrained(load_causal_lm(base)[0], str(policy_dir)).eval()
    rows = (responses.input_ids, responses.attention_mask, responses.response_mask)
    own, ref = _logps_alone(policy, *rows), _logps_alone(reference, *rows)
    kls = [sum(o) - sum(r) for o, r in zip(own, ref, strict=True)]
    assert max(abs(kl) for kl in kls) > 1e-3  # training moved the policy off the reference
    assert [s["after"]["kl"] for s in samples] == pytest.approx(kls, abs=2e-4)
    assert result["models"]["after"]["kl"] == pytest.approx(sum(kls) / len(kls), abs=2e-4)
    assert all(s["before"]["kl"] == 0.0 for s in samples)


@pytest.mark.slow
def test_a_miniature_pipeline_runs_end_to_end_and_reruns_only_what_is_not_done(tmp_path, cli):
    path = _tiny(tmp_path)
    first = cli("run", path)
    run = tmp_path / "run"
    for artefact in (
        "feedback.db",
        "generate/completions.jsonl",
        "label/labels.json",
        "agreement/agreement.json",
        "agreement/heatmap.png",
        "pairs/pairs.jsonl",
        "rm/model/reward.json",
        "ppo/metrics.jsonl",
        "ppo/policy/rlhfkit_policy.json",
        "eval/eval.json",
        "report/report.html",
        "report/toxicity.png",
        "report/training.png",
    ):
        assert (run / artefact).is_file(), artefact
    assert first.output.count(" ran ") == 8
    # Each folder is marked once, by whoever made it: the run loop, or run_ppo for ppo/.
    assert {p.name: owner(p) for p in run.iterdir() if p.is_dir()} == {
        **{stage: stage for stage in DEFAULT_STAGES},
        "rm": "train-rm",
    }
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["held_out"]["prompts"] == 4 and len(result["samples"]) == 8
    assert result["held_out"]["samples_per_prompt"] == 2
    # Every change has its interval (or null), in the shape of the changes.
    change, change_ci = result["change"], result["change_ci"]
    assert set(change_ci) == set(change)
    for name in ("scorer:hatesonar", "scorer:profanity"):
        assert set(change_ci[name]) == {"mean", "toxic_share"}
    for interval in [change_ci["perplexity"], change_ci["length"], change_ci["reward"]]:
        assert interval is None or interval[0] <= interval[1]
    assert result["models"]["before"]["kl"] == 0.0
    _check_the_after_side(run, result)
    page = (run / "report" / "report.html").read_text()
    assert "Before vs after alignment" in page and "Labeler agreement" in page

    again = cli("run", path)
    assert again.output.count("done before, skipped") == 8

    # An evaluation interrupted mid-way (no done.json) runs again, and the report after it.
    (run / "eval" / "done.json").unlink()
    shutil.rmtree(run / "report")
    third = cli("run", path)
    assert third.output.count("done before, skipped") == 6
    assert (run / "eval" / "done.json").is_file() and (run / "report" / "report.html").is_file()
    assert load_pipeline(path).stages[-1] == "report"


@pytest.mark.slow
def test_a_dpo_stage_is_evaluated_alone_and_then_under_ppo(tmp_path, cli):
    """DPO on the run's pairs: evaluated itself in a run without PPO; when PPO is added, PPO
    starts from the DPO policy (its reference, the adapter off) and eval shows DPO as a
    column between the original model and the final policy."""
    dpo_only = "stages: [generate, label, pairs, dpo, eval]\ndpo: {max_steps: 2, batch_size: 4}\n"
    path = _tiny(tmp_path, **{"run_dir:": dpo_only + "run_dir:"})
    cli("run", path)
    run = tmp_path / "run"
    dpo = json.loads((run / "dpo" / "dpo.json").read_text())
    assert dpo["steps"] == 2 and dpo["config"]["mode"] == "raw"
    assert dpo["config"]["held_out_fraction"] == 0.3  # train-rm's, so the held-out pairs match
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["policy"] == str(run / "dpo" / "policy")
    assert list(result["models"]) == ["before", "after"]

    both = path.read_text().replace("dpo, eval]", "train-rm, dpo, ppo, eval]")
    path.write_text(both)
    cli("run", path)
    info = json.loads((run / "ppo" / "policy" / "rlhfkit_policy.json").read_text())
    assert info["base"] == str(run / "dpo" / "policy")
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["policy"] == str(run / "ppo" / "policy")
    assert result["reference"] == "smollm2-135m-instruct"
    assert list(result["models"]) == ["before", "dpo", "after"]


@pytest.mark.parametrize("name", ["demo.yaml", "detox-classifier.yaml", "cai.yaml"])
def test_the_shipped_configs_load(name):
    config = load_pipeline(Path(__file__).parent.parent / "configs" / name)
    assert config.stages and config.eval_config().scorers


def test_a_run_made_before_a_setting_existed_is_the_same_run(tmp_path, cli):
    path = _tiny(tmp_path)
    config = load_pipeline(path)
    start_run_dir(config)
    saved = tmp_path / "run" / "pipeline.json"
    older = json.loads(saved.read_text())
    del older["revise"], older["sft"]  # what a run directory of an earlier rlhfkit holds
    saved.write_text(json.dumps(older))
    from rlhfkit.pipeline import check_run_dir

    check_run_dir(config)  # not "a different config"
    changed = _tiny(tmp_path, **{"run_dir:": "revise: {limit: 3}\nrun_dir:"})
    with pytest.raises(RlhfkitError, match="differs in revise"):
        check_run_dir(load_pipeline(changed))
