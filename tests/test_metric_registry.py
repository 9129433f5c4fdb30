"""Each metric is described once (eval/registry.py): one registered here reaches every output
that reads an evaluation: eval.json, the report, the summary over seeds (as a target too),
`rlhfkit compare`'s table and the model card."""

import json
from pathlib import Path

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.eval import registry
from rlhfkit.eval.registry import Metric
from rlhfkit.eval.run import compare, write_result

SCORER = "scorer:profanity"
LABEL = "share of answers that shout (!)"


def _shouts(samples) -> float:
    return sum("!" in s["completion"] for s in samples) / len(samples)


@pytest.fixture
def shouting():
    """A metric registered for one test, then taken off again."""
    metric = registry.register(
        Metric(
            "shouting",
            LABEL,
            ".1%",
            compute=_shouts,
            direction="lower",
            target=True,
            column="shouting",
        )
    )
    yield metric
    registry.unregister("shouting")


def _row(prompt: str, completion: str, tox: float) -> dict:
    return {
        "prompt": prompt,
        "completion": completion,
        "toxicity": {SCORER: tox},
        "logp": [-1.0, -1.0],
        "ref_logp": [-1.0, -1.5],
    }


def _eval_json(path: Path) -> dict:
    """eval.json as the eval code writes it (its numbers from `compare`, as `run_eval`
    makes them), for three prompts, two samples each."""
    prompts = ["p0", "p0", "p1", "p1", "p2", "p2"]
    shouts = {"before": "!!!!a!", "after": "a!aaaa"}  # a completion of one word: ! or a
    toxicity = {"before": [0.9, 0.1, 0.8, 0.7, 0, 0.6], "after": [0.1, 0.1, 0.6, 0, 0, 0.2]}
    before, after = (
        [_row(*row) for row in zip(prompts, shouts[side], toxicity[side], strict=True)]
        for side in ("before", "after")
    )
    side = lambda row: {k: row[k] for k in ("completion", "toxicity")}  # noqa: E731
    result = {
        "config": {"scorers": [SCORER], "samples": 2, "best_of": None},
        "policy": "run/ppo/policy",
        "reference": "tiny",
        "mode": "raw",
        "held_out": {"prompts": 3, "samples_per_prompt": 2, "split": "eval", "overlap": 0},
        **compare({"before": before, "after": after}, [SCORER], samples=2, seed=0),
        "samples": [
            {"prompt": b["prompt"], "before": side(b), "after": side(a)}
            for b, a in zip(before, after, strict=True)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(result, path)
    return json.loads(path.read_text())


def test_a_registered_metric_reaches_every_output(tmp_path, shouting):
    # eval.json: each model's value, the change and its interval, after the built-in ones
    result = _eval_json(tmp_path / "run" / "eval" / "eval.json")
    assert result["models"]["before"]["shouting"] == pytest.approx(5 / 6)
    assert result["models"]["after"]["shouting"] == pytest.approx(1 / 6)
    assert result["change"]["shouting"] == pytest.approx(-0.8)
    low, high = result["change_ci"]["shouting"]
    assert low <= -0.8 <= high
    assert list(result["models"]["after"])[-1] == "shouting"

    # the report: a row of the table, each value in the metric's format
    from rlhfkit.report import build_report

    page = " ".join(build_report(tmp_path / "run").read_text().split())
    row = page[page.index(f"<th>{LABEL}</th>") :].split("</tr>")[0]
    assert row.startswith(f"<th>{LABEL}</th><td>83.3%</td><td>16.7%</td><td>-80% [")

    # the summary over seeds: a target on it is accepted and checked on every seed
    from rlhfkit.eval.run import EvalConfig
    from rlhfkit.seeds import TargetConfig, check_targets, summary_table, write_summary

    seeds = tmp_path / "seeds"
    for seed in (0, 1):
        _eval_json(seeds / f"seed-{seed}" / "eval" / "eval.json")
        (seeds / f"seed-{seed}" / "eval" / "done.json").write_text("{}")
    target = TargetConfig(metric="shouting", at_most=-0.5)
    check_targets([target], EvalConfig(policy="p", scorers=[SCORER]))
    summary = write_summary(seeds, [0, 1], [target])
    assert summary["metrics"][0]["metric"] == "shouting" and summary["all_met"] is True
    _, rows = summary_table(summary)
    assert rows[0][:2] == ["shouting", "≤ -50.0%"] and rows[0][2].startswith("-80.0% [")

    # `rlhfkit compare`: a column of its table, and its numbers in comparison.json
    from rlhfkit.compare import CompareConfig, gather, table_rows, write_comparison

    config = CompareConfig.make(run_dir=str(tmp_path / "cmp"), methods={"dpo": {"dpo": {}}})
    out = config.method_dir(0, "dpo")
    _eval_json(out / "eval.json")
    spent = {
        "method": "dpo",
        "kind": "dpo",
        "train_seconds": 1.0,
        "eval_seconds": 2.0,
        "peak_mb": 300,
    }
    (out / "result.json").write_text(json.dumps(spent))
    comparison = gather(config)
    assert comparison["rows"][1]["shouting"] == pytest.approx(1 / 6)
    assert comparison["rows"][1]["shouting_change"] == pytest.approx(-0.8)
    header, rows = table_rows(comparison)
    column = header.index("shouting")
    assert [row[column] for row in rows] == ["83.3%", "16.7%"]
    write_comparison(config.run, comparison)
    assert "<th>shouting</th>" in (config.run / "comparison.html").read_text()

    # the model card's evaluation table
    from rlhfkit.export import model_card

    stack = [{"base": "tiny", "stage": "ppo", "path": str(tmp_path / "ppo" / "policy")}]
    card = model_card(stack, "merged", None, tmp_path / "run" / "eval" / "eval.json")
    assert f"| {LABEL} | 83.3% | 16.7% | -80% [" in card


def test_a_registered_metric_is_checked_in_eval_json_and_gone_once_unregistered(tmp_path):
    from rlhfkit.eval.result import load_eval
    from rlhfkit.seeds import TargetConfig, check_targets

    path = tmp_path / "eval.json"
    metric = Metric("shouting", LABEL, ".1%", compute=_shouts, target=True)
    registry.register(metric, before="kl")
    try:
        result = _eval_json(path)
        assert list(result["models"]["after"])[-2:] == ["shouting", "kl"]
        result["models"]["after"]["shouting"] = "17%"
        path.write_text(json.dumps(result))
        with pytest.raises(RlhfkitError, match="'models.after.shouting': Input should be a valid"):
            load_eval(path)
        del result["models"]["after"]["shouting"]  # before has it: every later model must too
        path.write_text(json.dumps(result))
        with pytest.raises(RlhfkitError, match="'models.after.shouting': Field required"):
            load_eval(path)
        with pytest.raises(ValueError, match="registered already"):
            registry.register(metric)
    finally:
        registry.unregister("shouting")
    assert "shouting" not in _eval_json(path)["models"]["after"]
    assert load_eval(path)  # a file of the built-in metrics loads as before
    with pytest.raises(RlhfkitError, match="target 'shouting' is not a number"):
        from rlhfkit.eval.run import EvalConfig

        check_targets([TargetConfig(metric="shouting", at_most=0)], EvalConfig(policy="p"))


def test_every_built_in_metric_is_described_in_full():
    for metric in [*registry.METRICS, *registry.SCORER_NUMBERS.members]:
        assert metric.label and metric.spec
        assert metric.direction in ("higher", "lower", None)
        assert metric.change in ("relative", "difference", None)
        assert (metric.compute is None) != (metric.pool is None), metric.name
    assert registry.target_names([SCORER], object()) == [
        f"{SCORER}.mean",
        f"{SCORER}.toxic_share",
        "perplexity",
        "distinct_2",
        "length",
    ]  # no reward without a reward setting
