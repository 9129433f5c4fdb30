"""PPO checkpoints and saved policies on a tiny random model: a resume that lost its last
metrics line writes it back once, a resume with other settings is refused naming them, a
pickle where a checkpoint or value head belongs is never unpickled, a crash mid-save leaves
the previous policy, and a config for another machine's hardware loads anywhere."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.train import loop
from rlhfkit.train.ppo import trainer
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.step import PPOConfig
from rlhfkit.train.ppo.trainer import run_ppo, save_ppo_policy

TIMING = ("seconds", "per_s")  # differ from run to run; everything else must not


def length_reward(prompts, completions):
    return torch.tensor([float(len(c)) for c in completions])


def tiny_config(model: str, **changes) -> PPOConfig:
    settings = dict(
        policy=model,
        prompts="builtin:dialogues",
        mode="raw",
        batch_size=4,
        minibatches=2,
        max_new_tokens=4,
        steps=3,
        seed=3,
        device="cpu",
    )
    return PPOConfig(**{**settings, **changes})


def metric_lines(out: Path) -> list[dict]:
    """Every line of metrics.jsonl, in order (a duplicate line stays a duplicate), without
    the timings."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in records]


@pytest.fixture(scope="module")
def straight_run(tiny_model, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("straight") / "run"
    run_ppo(tiny_config(tiny_model), out, reward=length_reward)
    return metric_lines(out)


def test_a_resume_writes_back_the_metrics_line_a_kill_lost_once(tiny_model, straight_run, tmp_path):
    out = tmp_path / "run"
    run_ppo(tiny_config(tiny_model, steps=2), out, reward=length_reward)
    # As if killed after step 2's checkpoint was written, before its metrics line was.
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 2
    (out / "metrics.jsonl").write_text(lines[0])

    run_ppo(tiny_config(tiny_model), out, resume=True, reward=length_reward)
    resumed = metric_lines(out)
    assert [r["step"] for r in resumed] == [1, 2, 3]  # one line a step, none twice
    assert resumed == straight_run  # step 2 from the checkpoint, step 3 trained after it


def test_a_resume_with_other_settings_is_refused_naming_them(tiny_model, tmp_path):
    out = tmp_path / "run"
    run_ppo(tiny_config(tiny_model, steps=1), out, reward=length_reward)
    before = (out / "metrics.jsonl").read_bytes()
    changed = tiny_config(tiny_model, lr=3e-4, temperature=0.7)
    with pytest.raises(RlhfkitError) as refused:
        run_ppo(changed, out, resume=True, reward=length_reward)
    message = str(refused.value)
    assert "\n" not in message
    assert "other settings (lr 0.0001, not 0.0003; temperature 1.0, not 0.7)" in message
    assert (out / "metrics.jsonl").read_bytes() == before
    # Training longer is the same run, not another one.
    run_ppo(tiny_config(tiny_model, steps=2), out, resume=True, reward=length_reward)
    assert [r["step"] for r in metric_lines(out)] == [1, 2]


class Payload:
    """Unpickling this writes a file: what a hostile checkpoint could do instead."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (exec, (f"open({str(self.flag)!r}, 'w').write('the payload ran')",))


def _plant(path: Path, flag: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "payload": Payload(flag)}, path)


@pytest.mark.parametrize(
    "name, refusal",
    [
        ("checkpoint.pt", "written by an older rlhfkit"),
        ("checkpoint.safetensors", "not a checkpoint of this rlhfkit"),
    ],
)
def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tiny_model, tmp_path, name, refusal):
    out = tmp_path / "run"  # a run folder of ours (its marker says so), tampered with
    out.mkdir()
    (out / ".rlhfkit").write_text(json.dumps({"made_by": "ppo"}))
    flag = tmp_path / "pwned"
    _plant(out / name, flag)
    with pytest.raises(RlhfkitError, match=refusal) as refused:
        run_ppo(tiny_config(tiny_model), out, resume=True, reward=length_reward)
    assert "\n" not in str(refused.value) and name in str(refused.value)
    assert not flag.exists()
    assert not (out / "metrics.jsonl").exists()  # refused before anything was written


def test_a_pickled_value_head_is_refused_and_never_unpickled(tmp_path):
    flag = tmp_path / "pwned"
    _plant(tmp_path / "new" / "value_head.safetensors", flag)
    with pytest.raises(RlhfkitError, match="not a safetensors file"):
        trainer.read_value_head(tmp_path / "new")
    _plant(tmp_path / "old" / "value_head.pt", flag)
    with pytest.raises(RlhfkitError, match="written by an older rlhfkit"):
        trainer.read_value_head(tmp_path / "old")
    assert not flag.exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_crash_while_saving_the_policy_leaves_the_previous_one_or_none(
    tiny_model, tmp_path, monkeypatch
):
    config = tiny_config(tiny_model)
    torch.manual_seed(0)
    policy = Policy.load(tiny_model, config.lora_args())

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as m:  # the first save dies after the adapter, before the tokenizer
        m.setattr(policy.tokenizer, "save_pretrained", disk_full)
        with pytest.raises(OSError):
            save_ppo_policy(policy, tmp_path / "policy", config)
    assert not (tmp_path / "policy").exists()

    save_ppo_policy(policy, tmp_path / "policy", config)
    complete = _snapshot(tmp_path / "policy")
    assert {"adapter_model.safetensors", "value_head.safetensors", "rlhfkit_policy.json"} <= set(
        complete
    )
    with torch.no_grad():
        policy.value_head.weight.fill_(1.0)  # a later policy, whose save fails half-way
    with monkeypatch.context() as m:
        m.setattr(policy.tokenizer, "save_pretrained", disk_full)
        with pytest.raises(OSError):
            save_ppo_policy(policy, tmp_path / "policy", config)
    assert _snapshot(tmp_path / "policy") == complete
    assert trainer.read_value_head(tmp_path / "policy")["weight"].eq(0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no debris left


def test_a_config_for_other_hardware_loads_and_ppo_refuses_it_when_it_starts(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    bf16 = PPOConfig.make(policy=tiny_model, device="cpu", precision="bf16")  # loads
    with pytest.raises(RlhfkitError, match="bf16 on a CPU needs AVX-512.*use fp32"):
        run_ppo(bf16, tmp_path / "bf16", reward=length_reward)
    assert not (tmp_path / "bf16").exists()  # refused before anything was written
    if not torch.cuda.is_available():
        cuda = PPOConfig.make(policy=tiny_model, device="cuda")  # loads
        with pytest.raises(RlhfkitError, match="'cuda': this machine has no CUDA device"):
            run_ppo(cuda, tmp_path / "cuda", reward=length_reward)
        assert not (tmp_path / "cuda").exists()
    with pytest.raises(RlhfkitError, match="not a torch device"):
        PPOConfig.make(device="gpu0")  # a name torch does not know is still a config error


def test_ctrl_c_during_a_steps_bookkeeping_takes_effect_when_it_ends():
    """The checkpoint, the metrics line and the collectives of a step are never cut short;
    the interrupt still comes, at the block's end, and the usual handler is back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if ignored here
    try:
        finished = False
        with pytest.raises(KeyboardInterrupt), loop._ctrl_c_waits():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
        assert finished
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with loop._ctrl_c_waits():  # no Ctrl-C: nothing raised
            finished = "again"
        assert finished == "again"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored_during_a_steps_bookkeeping():
    """A run started with SIGINT ignored (a background job, nohup) is not interrupted."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with loop._ctrl_c_waits():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
