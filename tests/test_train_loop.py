"""The one training loop (train/loop.py) on tiny models: checkpoints written before the
trainers shared it still resume; a reward model, which could not resume before, resumes
after Ctrl-C to the same weights as a run never stopped; the resume rule is one for all."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import write_jsonl
from rlhfkit.config import RetiredName
from rlhfkit.data.synthetic import relevance_pairs
from rlhfkit.errors import RlhfkitError
from rlhfkit.train import loop
from rlhfkit.train.checkpoint import CHECKPOINT, read_state

# Written by rlhfkit before this loop (commit f07fe24) on a tiny Llama saved at OLD_MODEL,
# from sft.jsonl and pairs.jsonl beside them: SFT and DPO one epoch, PPO one step.
OLD = Path(__file__).parent / "data" / "old-checkpoints"
OLD_MODEL = "/tmp/oldck/work/tiny"


def old_run(name: str, tmp_path: Path, model: str) -> Path:
    """A copy of an old run directory, its model path pointed at this session's copy of the
    same tiny model (saved from the same seed)."""
    out = tmp_path / name
    out.mkdir(parents=True)
    shutil.copy(OLD / name / "metrics.jsonl", out / "metrics.jsonl")
    with safe_open(OLD / name / CHECKPOINT, framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    metadata["state"] = metadata["state"].replace(OLD_MODEL, model)
    save_file(tensors, out / CHECKPOINT, metadata=metadata)
    (out / ".rlhfkit").write_text(json.dumps({"made_by": name}))
    return out


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_sft_checkpoint_of_the_old_layout_resumes(tiny_model, tmp_path):
    from rlhfkit.train.sft import SFTConfig, train_sft

    out = old_run("sft", tmp_path, tiny_model)
    config = SFTConfig(policy=tiny_model, epochs=2, batch_size=4, lr=1e-2, held_out_fraction=0.25)
    summary = train_sft(OLD / "sft.jsonl", out, config, resume=True)
    assert steps_logged(out) == list(range(1, summary["steps"] + 1))
    assert summary["steps"] == 2 * steps_logged(OLD / "sft")[-1]  # the second epoch, only
    assert read_state(out / CHECKPOINT)["run"]["settings"]["epochs"] == 2  # today's layout
    with pytest.raises(RlhfkitError, match=r"other settings \(max_length 256, not 64\)"):
        train_sft(OLD / "sft.jsonl", old_run("sft", tmp_path / "again", tiny_model),
                  config.model_copy(update={"max_length": 64}), resume=True)  # fmt: skip


def test_a_dpo_checkpoint_of_the_old_layout_resumes_with_its_reference(tiny_model, tmp_path):
    from rlhfkit.train.dpo import DPOConfig, train_dpo

    out = old_run("dpo", tmp_path, tiny_model)
    config = DPOConfig(policy=tiny_model, epochs=2, batch_size=4, lr=1e-2, held_out_fraction=0.25)
    summary = train_dpo(OLD / "pairs.jsonl", out, config, resume=True)
    assert steps_logged(out) == list(range(1, summary["steps"] + 1))
    assert summary["held_out"]["after"]["accuracy"] is not None
    other = tmp_path / "other.jsonl"  # one pair more
    other.write_text(
        (OLD / "pairs.jsonl").read_text() + '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    )
    with pytest.raises(RlhfkitError, match="started on other data"):
        train_dpo(other, old_run("dpo", tmp_path / "again", tiny_model), config, resume=True)


def test_a_ppo_checkpoint_of_the_old_layout_resumes(tiny_model, tmp_path):
    from rlhfkit.train.ppo import PPOConfig, run_ppo

    out = old_run("ppo", tmp_path, tiny_model)
    config = PPOConfig(policy=tiny_model, prompts="builtin:dialogues", mode="raw", batch_size=4,
                       minibatches=2, max_new_tokens=4, steps=3, seed=3, device="cpu")  # fmt: skip
    result = run_ppo(config, out, resume=True, reward=lambda p, c: torch.ones(len(c)))
    assert result["steps"] == 3 and steps_logged(out) == [1, 2, 3]


def rm_config(model: str, **changes):
    from rlhfkit.train.reward_model import RMConfig

    settings = dict(base=model, lora=True, lora_r=4, epochs=2, batch_size=8, lr=1e-2,
                    max_length=48, held_out_fraction=0.25, eval_every=2, patience=10)  # fmt: skip
    return RMConfig(**{**settings, **changes})


def saved_model(out: Path) -> dict[str, torch.Tensor]:
    with safe_open(out / "model" / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def test_a_reward_model_resumes_after_ctrl_c_to_the_weights_of_a_run_never_stopped(
    tiny_model, tmp_path, monkeypatch
):
    from rlhfkit.train import reward_model

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
         for p in relevance_pairs(k=3)[:48]],
    )  # fmt: skip
    straight = tmp_path / "straight"
    reward_model.train_reward_model(pairs, straight, rm_config(tiny_model))
    total = steps_logged(straight)[-1]
    assert total >= 6

    update = reward_model.RewardModelTrainer.update

    def ctrl_c_at_step_5(self, step):
        if step == 4:  # the fifth step, after the checkpoint of step 4
            raise KeyboardInterrupt
        return update(self, step)

    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(reward_model.RewardModelTrainer, "update", ctrl_c_at_step_5)
        with pytest.raises(RlhfkitError, match="checkpoint of step 4 .* --resume"):
            reward_model.train_reward_model(pairs, out, rm_config(tiny_model))
    with pytest.raises(RlhfkitError, match="--resume"):
        reward_model.train_reward_model(pairs, out, rm_config(tiny_model))
    with pytest.raises(RlhfkitError, match=r"other settings \(lr 0.01, not 0.02\)"):
        reward_model.train_reward_model(pairs, out, rm_config(tiny_model, lr=2e-2), resume=True)
    reward_model.train_reward_model(pairs, out, rm_config(tiny_model), resume=True)
    with pytest.raises(RlhfkitError, match="holds a finished reward model: nothing to resume"):
        reward_model.train_reward_model(pairs, out, rm_config(tiny_model), resume=True)

    def lines(folder):
        records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "pairs_per_s"} for r in records]

    assert lines(out) == lines(straight)  # every step and evaluation once, the same numbers
    a, b = saved_model(straight), saved_model(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / CHECKPOINT).exists()  # a finished reward model has no use for it
    saved = json.loads((out / "model" / "reward.json").read_text())
    assert (
        saved["metrics"] == json.loads((straight / "model" / "reward.json").read_text())["metrics"]
    )


class Counting(loop.Trainer):
    """A trainer of one number, to see the loop's bookkeeping alone."""

    made_by, title = "count", "counting"

    def __init__(self, out: Path, total: int, fail_at: int | None = None, stop_at=None):
        self.out, self.total_steps, self.fail_at = out, total, fail_at
        self.settings, self.generator, self.value = None, torch.Generator(), 0.0
        self.stop_at = stop_at

    def stop(self, record):
        return "enough" if self.stop_at and record["loss"] >= self.stop_at else None

    def update(self, step):
        self.value += 1
        return {"loss": float("nan") if step + 1 == self.fail_at else self.value}

    def checkpoint_due(self, steps_done):
        return steps_done % 2 == 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_a_failed_step_is_not_kept_and_a_resume_logs_each_step_once(tmp_path):
    out = tmp_path / "count"
    run = {"data": None, "settings": {}}
    with pytest.raises(RlhfkitError, match=r"loss became nan at step 5; .*checkpoint \(step 4\)"):
        loop.fit(Counting(out, 6, fail_at=5), None, run, loop.Progress())
    assert steps_logged(out) == [1, 2, 3, 4]
    assert read_state(out / CHECKPOINT)["trainer"]["value"] == 4
    shutil.copy(out / CHECKPOINT, tmp_path / "four.safetensors")
    metrics = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    for kept in (metrics[:3], [*metrics, '{"step": 5, "loss": 5.0}\n']):
        # killed after step 4's checkpoint but before its line; or after step 5's line but
        # before its checkpoint: either way each step is logged once, step 4 from the
        # checkpoint, step 5 from its training again
        (out / "metrics.jsonl").write_text("".join(kept))
        finished = loop.fit(Counting(out, 6), read_state(out / CHECKPOINT), run, loop.Progress())
        assert finished.steps == 6 and steps_logged(out) == [1, 2, 3, 4, 5, 6]
        losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert losses == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        (out / CHECKPOINT).unlink()
        shutil.copy(tmp_path / "four.safetensors", out / CHECKPOINT)


@pytest.mark.parametrize("name", ["tiny_pipeline", "cai", "demo"])
def test_a_run_directory_saved_under_the_old_names_is_the_same_run(tmp_path, name):
    """pipeline.json as rlhfkit wrote it before the names were unified (model, n, samples,
    eval_fraction of the trainers, judge_model, a judge's reference) is read under today's
    names: today's config of the same run is accepted, a changed setting still refused."""
    from rlhfkit.pipeline import check_run_dir, load_pipeline, with_settings

    configs = {
        "tiny_pipeline": Path(__file__).parent / "data" / "tiny_pipeline.yaml",
        "cai": Path(__file__).parent.parent / "configs" / "cai.yaml",
        "demo": Path(__file__).parent.parent / "configs" / "demo.yaml",
    }
    saved = json.loads(
        (Path(__file__).parent / "data" / "old-run-dirs" / f"{name}.pipeline.json").read_text()
    )
    assert "model" in saved and "policy" not in saved  # written under the old names
    run = tmp_path / "run"
    run.mkdir()
    (run / ".rlhfkit").write_text(json.dumps({"made_by": "run"}))
    (run / "pipeline.json").write_text(json.dumps({**saved, "run_dir": str(run)}))
    config = with_settings(load_pipeline(configs[name]), run_dir=str(run))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RetiredName)  # read silently: the user wrote no old name
        check_run_dir(config)  # the same run
    changed = with_settings(config, generate={**config.generate.model_dump(), "temperature": 0.5})
    with pytest.raises(RlhfkitError, match=r"different config \(differs in generate\)"):
        check_run_dir(changed)


def test_a_fresh_start_drops_old_lines_and_a_run_that_stopped_early_stays_stopped(tmp_path):
    out = tmp_path / "count"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 1.0}\n{"step": 1, "loss": 9}\n')
    run = {"data": None, "settings": {}}
    finished = loop.fit(Counting(out, 6, stop_at=4), None, run, loop.Progress())
    assert finished.steps == 4 and finished.stopped == "enough"
    assert steps_logged(out) == [1, 2, 3, 4]  # nothing left of the old run's lines
    again = loop.fit(
        Counting(out, 6, stop_at=4), read_state(out / CHECKPOINT), run, loop.Progress()
    )
    assert again.steps == 4 and again.stopped == "enough" and steps_logged(out) == [1, 2, 3, 4]


def test_a_checkpoint_of_an_unknown_layout_or_lacking_a_setting_is_one_line(tmp_path):
    from rlhfkit.train.checkpoint import write_state
    from rlhfkit.train.sft import SFTConfig

    out = tmp_path / "run"
    out.mkdir()
    write_state(out / CHECKPOINT, {"state": {"step": 1}})  # no record of its run
    config = SFTConfig()
    with pytest.raises(RlhfkitError, match="layout it cannot resume"):
        loop.resume_state(out, "an SFT", True, loop.run_key(config), config)
    # A setting the checkpoint does not record counts as its default, a factory's too.
    saved = loop.run_key(config)
    del saved["settings"]["fields"]
    loop.check_same_run(out / CHECKPOINT, saved, loop.run_key(config), config)
