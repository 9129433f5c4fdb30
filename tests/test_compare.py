"""`rlhfkit compare` in miniature: the shared stages once, every method (PPO with GAE and
RLOO, GRPO, DPO, best-of-n) in a process of its own from the same pairs and reward model,
the same held-out prompts for each, one table; a rerun skips what is done."""

import json
from pathlib import Path

import pytest

from rlhfkit.compare import load_compare

TINY = Path(__file__).parent / "data" / "tiny_compare.yaml"


def _config(tmp_path, text: str | None = None) -> Path:
    path = tmp_path / "compare.yaml"
    path.write_text((text or TINY.read_text()).replace("RUN_DIR", str(tmp_path / "run")))
    return path


def test_the_shipped_comparison_loads_with_five_methods():
    config = load_compare(Path(__file__).parent.parent / "configs" / "compare.yaml")
    assert list(config.methods) == ["ppo-gae", "ppo-rloo", "grpo", "dpo", "best-of-4"]
    assert config.ppo_config(0, config.methods["grpo"]).kl_in == "loss"
    assert config.eval_config(1, "best-of-4").reward.endswith("seed-1/rm")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("best-of-2: {best_of: 2}", None),
        ("best-of-2: {best_of: 2, dpo: {}}", "one of ppo, dpo or best_of"),
        ("best-of-2: {ppo: {advantage: rloo, samples_per_prompt: 1}}", "samples_per_prompt ≥ 2"),
        ("best-of-2: {dpo: {beta: 0}}", "DPO setting 'beta'"),
    ],
)
def test_every_methods_settings_are_checked_when_the_config_loads(tmp_path, change, message):
    from rlhfkit.errors import RlhfkitError

    path = _config(tmp_path, TINY.read_text().replace("best-of-2: {best_of: 2}", change))
    if message is None:
        load_compare(path)
        return
    with pytest.raises(RlhfkitError, match=message) as caught:
        load_compare(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.slow
def test_a_miniature_comparison_runs_every_method_and_reruns_nothing(tmp_path, cli):
    path = _config(tmp_path)
    first = cli("compare", path)
    run = tmp_path / "run"
    comparison = json.loads((run / "comparison.json").read_text())
    methods = [row["method"] for row in comparison["rows"]]
    assert methods == ["before", "ppo-gae", "ppo-rloo", "grpo", "dpo", "best-of-2"]
    for name in methods[1:]:
        out = run / "seed-0" / "methods" / name
        result = json.loads((out / "result.json").read_text())
        assert result["peak_mb"] > 100 and result["eval_seconds"] > 0
        evaluation = json.loads((out / "eval.json").read_text())
        # the same held-out prompts, sampled with the same seed, for every method
        assert [s["prompt"] for s in evaluation["samples"]] == [
            s["prompt"] for s in comparison_samples(run)
        ]
    # The critic-free methods kept no value head; GAE's did.
    assert (run / "seed-0/methods/ppo-gae/train/policy/value_head.safetensors").exists()
    assert not (run / "seed-0/methods/grpo/train/policy/value_head.safetensors").exists()
    dpo = json.loads((run / "seed-0/methods/dpo/train/dpo.json").read_text())
    assert dpo["steps"] == 1
    best = comparison["rows"][-1]
    assert best["kl"] == pytest.approx(0.693147 - 0.5)  # log 2 − 1/2
    assert (run / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    page = (run / "comparison.html").read_text()
    assert page.count("<tr><td>0</td>") == 6 and "data:image/png;base64," in page
    assert "best-of-2" in first.output
    again = cli("compare", path)
    assert again.output.count("done before, skipped") >= 5 + 5  # stages, then methods


def comparison_samples(run: Path) -> list[dict]:
    return json.loads((run / "seed-0/methods/ppo-gae/eval.json").read_text())["samples"]
