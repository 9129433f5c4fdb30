"""`rlhfkit export`: policies out as standard model directories that plain transformers and
peft load, in a fresh process that never imports rlhfkit, with the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rlhfkit.models.stack import load_policy_model, save_policy, with_fresh_adapter

TEXT = "The weather today is"

# Run in a fresh interpreter: load the export with plain transformers (or peft), print the
# logits of TEXT, and prove rlhfkit was never imported.
PLAIN_LOAD = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, adapter = sys.argv[1], sys.argv[2] == "adapter"
if adapter:
    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained(folder)
else:
    model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model.eval()(**tokenizer(sys.argv[3], return_tensors="pt")).logits
assert not any(name.startswith("rlhfkit") for name in sys.modules), "rlhfkit was imported"
print(json.dumps(logits[0].tolist()))
"""


def plain_logits(folder, kind: str = "merged") -> torch.Tensor:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLAIN_LOAD), str(folder), kind, TEXT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


def rlhfkit_logits(policy) -> torch.Tensor:
    model, tokenizer = load_policy_model(policy)
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits[0]


def trained_adapter_policy(base, folder, stage: str, seed: int):
    """A policy directory of `stage` on `base` whose adapter moved away from zero (as if
    trained), so merging it changes the logits."""
    model, tokenizer = load_policy_model(base)
    model = with_fresh_adapter(model, 4, 8)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    save_policy(model, tokenizer, folder, {"base": str(base), "stage": stage, "lora": True})
    return folder


@pytest.fixture(scope="module")
def policies(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    sft = trained_adapter_policy(tiny_model, root / "sft" / "policy", "sft", 1)
    ppo = trained_adapter_policy(sft, root / "ppo" / "policy", "ppo", 2)
    (root / "ppo" / "config.json").write_text(json.dumps({"lr": 3e-4, "init_kl_coef": 0.07}))
    alone = trained_adapter_policy(tiny_model, root / "dpo" / "policy", "dpo", 3)
    return {"sft": sft, "ppo": ppo, "dpo": alone, "base": tiny_model}


def test_a_merged_export_loads_in_plain_transformers_with_the_policys_logits(policies, tmp_path):
    from rlhfkit.export import export_policy

    out = tmp_path / "export"
    done = export_policy(policies["ppo"], out)
    assert done["kind"] == "merged" and done["stages"] == ["sft", "ppo"]
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not list(out.glob("adapter_*")) and not (out / "value_head.safetensors").exists()
    assert all(path.stat().st_mode & 0o044 for path in [out, *out.iterdir()])  # others read
    ours = rlhfkit_logits(policies["ppo"])
    assert not torch.allclose(ours, rlhfkit_logits(policies["base"]), atol=1e-3)  # it moved
    torch.testing.assert_close(plain_logits(out), ours, atol=1e-4, rtol=1e-4)


def test_an_adapter_export_names_its_base_and_loads_in_plain_peft(policies, tmp_path):
    from rlhfkit.export import export_policy

    out = tmp_path / "adapter"
    export_policy(policies["dpo"], out, adapter_only=True, base_id=policies["base"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == policies["base"]
    assert not (out / "model.safetensors").exists()
    torch.testing.assert_close(
        plain_logits(out, "adapter"), rlhfkit_logits(policies["dpo"]), atol=1e-4, rtol=1e-4
    )


def test_adapter_only_refuses_a_stack_and_a_base_without_a_hub_id(policies, tmp_path, cli):
    answer = cli(
        "export", "--policy", policies["ppo"], "--out", tmp_path / "a", "--adapter-only", ok=False
    )
    assert "sft → ppo" in answer.output and "export it merged" in answer.output
    answer = cli(
        "export", "--policy", policies["dpo"], "--out", tmp_path / "b", "--adapter-only", ok=False
    )
    assert "--base-id" in answer.output and "Traceback" not in answer.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_refuses_what_is_not_a_policy_and_an_occupied_folder(policies, tmp_path, cli):
    answer = cli("export", "--policy", policies["base"], "--out", tmp_path / "x", ok=False)
    assert "not a policy directory rlhfkit wrote" in answer.output
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    answer = cli("export", "--policy", policies["ppo"], "--out", occupied, ok=False)
    assert "not empty" in answer.output
    assert (occupied / "mine.txt").read_text() == "keep me"


def test_the_model_card_says_how_it_was_trained_and_how_it_scored(policies, tmp_path, cli):
    from rlhfkit.export import export_policy

    run = policies["ppo"].parent.parent
    cli(
        "eval",
        "--policy",
        policies["ppo"],
        "--reference",
        policies["base"],
        "--prompts",
        "builtin:dialogues",
        "--limit",
        "2",
        "--samples-per-prompt",
        "1",
        "--max-new-tokens",
        "4",
        "--scorer",
        "scorer:profanity",
        "--no-intermediate",
        "--out",
        run / "eval" / "eval.json",
    )
    done = export_policy(policies["ppo"], tmp_path / "carded")
    assert done["evaluated"] == str(run / "eval" / "eval.json")
    card = (tmp_path / "carded" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- sft: lora `True`" in card and "- ppo: lora `True`" in card
    assert "init_kl_coef=0.07" in card  # the PPO run's settings
    assert "## Evaluation" in card and "| metric | before | after |" in card
    assert "value head was used in training only" in card


def test_a_reward_models_normalisation_is_in_its_transformers_config(tmp_path):
    from rlhfkit.reward.model import RewardModel

    model = RewardModel.from_base("minilm-l6", max_length=64)
    prompts, completions = ["Hi.", "How are you?", "Tell me."], ["Hello!", "Fine.", "No."]
    model.set_normalisation(model.score(prompts, completions, normalise=False))
    model.save(tmp_path / "rm")
    ours = RewardModel.load(tmp_path / "rm")(prompts, completions)
    script = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
norm = model.config.reward_normalisation
batch = tokenizer(json.loads(sys.argv[2]), json.loads(sys.argv[3]), padding=True,
                  truncation=True, max_length=64, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits[:, 0]
print(json.dumps((norm["gain"] * logits + norm["bias"]).tolist()))
"""
    args = [str(tmp_path / "rm" / "model"), json.dumps(prompts), json.dumps(completions)]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(plain, ours.float(), atol=1e-4, rtol=1e-4)
    assert ours.std().item() == pytest.approx(1.0, abs=1e-3)  # normalised, not raw
