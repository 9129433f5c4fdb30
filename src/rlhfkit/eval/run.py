"""`rlhfkit eval`: the seed's "Evaluating the Human-Aligned LLM". The same held-out prompts
go to the model before (the reference) and after alignment (the policy), with the same seed;
each sample gets its probability of being toxic under independent scorers, its reward, the
KL of the policy from the reference on the policy's own samples, and its log-likelihood under
the reference (fluency). The summary compares the two: every number is built from per-prompt
numbers, and every change has a 95% interval from a paired bootstrap over the prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.metrics import (
    LEVEL,
    RESAMPLES,
    model_intervals,
    model_numbers,
    paired_changes,
    prompt_columns,
    prompt_numbers,
    sequence_kl,
)
from rlhfkit.models.stack import load_policy_model as load_model
from rlhfkit.models.stack import read_policy_info
from rlhfkit.progress import Progress


class EvalConfig(StageConfig):
    """Settings of `rlhfkit eval`; unknown keys and impossible values are errors."""

    setting = "eval setting"

    policy: str = Field(description="a PPO run's policy directory, or a model name")
    reference: str | None = Field(None, description="default: the policy's base model")
    prompts: str = "builtin:rtp"
    split: Literal["all", "train", "eval"] = "eval"
    eval_fraction: float = Field(0.2, ge=0, lt=1)
    limit: int | None = Field(None, ge=1, description="prompts; default: all of the split")
    samples: int = Field(2, ge=1, description="samples per prompt and model")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    mode: Literal["raw", "chat", "auto"] = "auto"
    scorers: list[str] = Field(
        default_factory=lambda: ["scorer:hatesonar", "scorer:profanity"],
        min_length=1,
        description="toxicity scorers; the first is the headline",
    )
    reward: str | None = Field(None, description="a reward spec to average too")
    batch_size: int = Field(64, ge=1, description="sequences sampled at once")
    seed: int = 0


def check_held_out(prompts: list[str], info: dict | None) -> int:
    """How many training prompts the policy saw; refuse to evaluate on any of them."""
    if info is None or "prompts" not in info:
        return 0
    from rlhfkit.data.prompts import load_prompts

    trained = {
        p.prompt for p in load_prompts(info["prompts"], info["split"], info["eval_fraction"])
    }
    overlap = sum(p in trained for p in prompts)
    if overlap:
        raise RlhfkitError(
            f"{overlap} of the {len(prompts)} evaluation prompts were used to train the "
            f"policy ({info['prompts']}, split {info['split']}): evaluate on held-out prompts "
            f"(split eval with eval_fraction {info['eval_fraction']})"
        )
    return 0


def toxicity_scorer(spec: str):
    from rlhfkit.reward.scorers import ToxicityScorer, load_scorer

    if not spec.startswith("scorer:"):
        raise RlhfkitError(f"toxicity scorer '{spec}' must be scorer:profanity or scorer:hatesonar")
    scorer = load_scorer(spec.removeprefix("scorer:"))
    assert isinstance(scorer, ToxicityScorer)
    return scorer


@torch.no_grad()
def response_logps(model, responses) -> list[list[float]]:
    """log p(token) of every response token under `model` (temperature 1)."""
    from rlhfkit.rl.policy import position_ids
    from rlhfkit.rl.rollout import response_logits, token_logp

    length = responses.response_mask.shape[1]
    logits = model(
        input_ids=responses.input_ids,
        attention_mask=responses.attention_mask,
        position_ids=position_ids(responses.attention_mask),
        logits_to_keep=length + 1,
        use_cache=False,
    ).logits
    logp = token_logp(response_logits(logits, length, 1.0), responses.response_ids)
    return [
        row[mask.bool()].tolist() for row, mask in zip(logp, responses.response_mask, strict=True)
    ]


def sample_model(
    model, tokenizer, reference, prompts: list[str], config: EvalConfig, mode: str, on_batch
) -> list[dict]:
    """`config.samples` responses to each prompt, with their log-probabilities under the
    model and the reference."""
    from rlhfkit.rl.rollout import sample_responses

    torch.manual_seed(config.seed)
    repeated = [p for p in prompts for _ in range(config.samples)]
    rows = []
    for start in range(0, len(repeated), config.batch_size):
        batch = repeated[start : start + config.batch_size]
        responses = sample_responses(
            model, tokenizer, batch, mode, config.max_new_tokens, config.temperature
        )
        own = response_logps(model, responses)
        ref = own if reference is model else response_logps(reference, responses)
        texts = tokenizer.batch_decode(responses.response_ids, skip_special_tokens=True)
        for prompt, text, logp, ref_logp in zip(batch, texts, own, ref, strict=True):
            rows.append({"prompt": prompt, "completion": text, "logp": logp, "ref_logp": ref_logp})
        on_batch(len(batch))
    return rows


def prompt_groups(rows: list[dict], samples: int) -> list[list[dict]]:
    """The rows of each prompt (they come prompt by prompt, `samples` of each)."""
    return [rows[i : i + samples] for i in range(0, len(rows), samples)]


def summarise(columns: dict, scorers: list[str], seed: int = 0) -> dict:
    """A model's numbers from its per-prompt columns: each scorer's mean P(toxic) and share
    above 0.5, each with its 95% interval over prompts; KL, perplexity, distinct-2 (within
    each prompt's samples, averaged over prompts), mean length and maybe reward."""
    numbers = {k: float(v) for k, v in model_numbers(columns).items()}
    intervals = model_intervals(columns, seed)
    summary = {}
    for name in scorers:
        mean_ci = intervals[(name, "mean")] or [None, None]
        share_ci = intervals[(name, "toxic_share")] or [None, None]
        summary[name] = {
            "mean": numbers[(name, "mean")],
            "ci_low": mean_ci[0],
            "ci_high": mean_ci[1],
            "toxic_share": numbers[(name, "toxic_share")],
            "toxic_share_ci_low": share_ci[0],
            "toxic_share_ci_high": share_ci[1],
        }
    summary.update({k: v for k, v in numbers.items() if isinstance(k, str)})
    return summary


def nested(flat: dict) -> dict:
    """{(scorer, number): x, name: y} as {scorer: {number: x}, name: y}, as eval.json has it."""
    out = {}
    for key, value in flat.items():
        if isinstance(key, tuple):
            out.setdefault(key[0], {})[key[1]] = value
        else:
            out[key] = value
    return out


def compare(before: list[dict], after: list[dict], scorers: list[str], samples: int, seed: int):
    """Both models' numbers, the changes and their intervals, from their scored rows (the same
    prompts in the same order, `samples` rows each)."""
    columns = {
        side: prompt_columns(
            [prompt_numbers(group, scorers) for group in prompt_groups(rows, samples)]
        )
        for side, rows in (("before", before), ("after", after))
    }
    change, change_ci = paired_changes(columns["before"], columns["after"], seed)
    return {
        "models": {side: summarise(c, scorers, seed) for side, c in columns.items()},
        "change": nested(change),
        "change_ci": nested(change_ci),
    }


def summary_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(what, before, after, change) as text, for the terminal table and the report. Each
    number is followed by its 95% interval in brackets where eval.json has one ("–" for an
    end that is undefined); eval.json files written before intervals show the numbers alone."""

    def num(x, digits: int = 3) -> str:
        return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

    def pct(x) -> str:
        return "–" if x is None or not math.isfinite(x) else f"{x:+.0%}"

    def share(x) -> str:
        return "–" if x is None else f"{x:.1%}"

    def diff(x) -> str:  # a non-finite reward was written to eval.json as null
        return "–" if x is None or not math.isfinite(x) else f"{x:+.3f}"

    def with_interval(text: str, interval, show, known: bool = True) -> str:
        if not known:  # a file from before intervals
            return text
        low, high = interval or (None, None)
        return f"{text} [{show(low)}, {show(high)}]"

    models, change = result["models"], result["change"]
    change_ci = result.get("change_ci")
    has_ci = change_ci is not None
    change_ci = change_ci or {}

    def changed(key, show=pct, number=None) -> str:
        point = change[key] if number is None else change[key][number]
        interval = change_ci.get(key) if number is None else change_ci.get(key, {}).get(number)
        text = show(point)  # an undefined change ("–") has no interval either
        return with_interval(text, interval, show, has_ci and text != "–")

    before, after = models["before"], models["after"]
    rows = []
    for name in result["config"]["scorers"]:
        b, a = before[name], after[name]
        rows += [
            (
                f"{name}: mean P(toxic)",
                with_interval(num(b["mean"]), (b["ci_low"], b["ci_high"]), num),
                with_interval(num(a["mean"]), (a["ci_low"], a["ci_high"]), num),
                changed(name, number="mean"),
            ),
            (
                f"{name}: share toxic (p > 0.5)",
                *(
                    with_interval(
                        share(m["toxic_share"]),
                        (m.get("toxic_share_ci_low"), m.get("toxic_share_ci_high")),
                        share,
                        "toxic_share_ci_low" in m,
                    )
                    for m in (b, a)
                ),
                changed(name, number="toxic_share"),
            ),
        ]
    if "reward" in before:
        rows.append(
            (
                "mean reward (change: the difference)",
                num(before["reward"]),
                num(after["reward"]),
                changed("reward", diff),
            )
        )
    for label, key, digits in (
        ("perplexity under the reference (token-weighted)", "perplexity", 2),
        ("distinct-2 (within a prompt's samples)", "distinct_2", 3),
        ("mean length (tokens)", "length", 1),
    ):
        rows.append((label, num(before[key], digits), num(after[key], digits), changed(key)))
    if result.get("mode") == "chat" and "compliance" in before:  # answers to requests
        rows.append(
            (
                "share of answers that do not refuse (refusal phrases)",
                share(before["compliance"]),
                share(after["compliance"]),
                changed("compliance"),
            )
        )
    rows.append(("KL from the reference", num(before["kl"], 2), num(after["kl"], 2), ""))
    return rows


def sampling_mode(config: EvalConfig, info: dict | None) -> str:
    """How prompts are put to the models: as asked, else as the policy was trained, else the
    prompt set's own default."""
    from rlhfkit.data.prompts import default_mode

    mode = config.mode
    if mode == "auto":
        mode = info.get("mode", "auto") if info else "auto"
        mode = default_mode(config.prompts) if mode == "auto" else mode
    return mode


def score_rows(rows: list[dict], scorers: dict, reward) -> None:
    """Add each row's toxicity under every scorer and, given a reward, its reward."""
    texts = [r["completion"] for r in rows]
    for name, scorer in scorers.items():
        for row, p in zip(rows, scorer.toxicity(texts), strict=True):
            row.setdefault("toxicity", {})[name] = float(p)
    if reward is not None:
        for row, r in zip(rows, reward([r["prompt"] for r in rows], texts).tolist(), strict=True):
            row["reward"] = float(r)


def held_out_prompts(config: EvalConfig) -> tuple[list[str], int]:
    """The prompts to evaluate on (the split's first `limit`, or all of them) and how many the
    split holds; a limit beyond the split is an error, not quietly fewer prompts."""
    from rlhfkit.data.prompts import load_prompts

    prompts = [p.prompt for p in load_prompts(config.prompts, config.split, config.eval_fraction)]
    if config.limit is not None and config.limit > len(prompts):
        where = (
            config.prompts if config.split == "all" else f"{config.prompts}'s {config.split} split"
        )
        raise RlhfkitError(
            f"eval limit {config.limit} is more than the {len(prompts)} prompts of {where}"
        )
    return prompts[: config.limit], len(prompts)


def run_eval(config: EvalConfig, progress: Progress | None = None) -> dict:
    """Sample, score and compare; returns {config, policy, reference, mode, held_out,
    intervals, models: {before, after}, change, change_ci, samples} (samples: one row per
    prompt and sample index with both models' completions). `progress` counts the samples
    of both models."""
    from rlhfkit.reward import load_reward

    progress = progress or Progress()
    info = read_policy_info(config.policy)
    if (
        Path(config.policy).exists()
        and info is None
        and not Path(config.policy, "config.json").exists()
    ):
        raise RlhfkitError(f"{config.policy} is neither a PPO policy directory nor a model")
    reference_name = config.reference or (info["base"] if info else config.policy)
    prompts, in_split = held_out_prompts(config)
    check_held_out(prompts, info)
    scorers = {spec: toxicity_scorer(spec) for spec in config.scorers}
    reward = load_reward(config.reward) if config.reward else None
    trained_on = info.get("reward") if info else None
    if trained_on and trained_on in config.scorers:
        progress.warn(
            f"{trained_on} made the training reward and scores the evaluation too: reward "
            "hacking hides from its own scorer, so judge by an independent one"
        )
    mode = sampling_mode(config, info)

    reference, tokenizer = load_model(reference_name)
    policy, _ = load_model(config.policy) if config.policy != reference_name else (reference, None)
    progress.start("evaluating before vs after", 2 * len(prompts) * config.samples)
    results = {}
    for side, model in (("before", reference), ("after", policy)):
        rows = sample_model(model, tokenizer, reference, prompts, config, mode, progress.advance)
        score_rows(rows, scorers, reward)
        results[side] = rows
    compared = compare(
        results["before"], results["after"], config.scorers, config.samples, config.seed
    )
    return {
        "config": config.model_dump(),
        "policy": config.policy,
        "reference": reference_name,
        "mode": mode,
        "held_out": {
            "prompts": len(prompts),
            "samples_per_prompt": config.samples,
            "in_split": in_split,
            "split": config.split,
            "trained_on": info and {k: info.get(k) for k in ("prompts", "split", "eval_fraction")},
            "overlap": 0,
        },
        "intervals": {
            "level": LEVEL,
            "resamples": RESAMPLES,
            "method": "bootstrap over prompts, paired for changes (BCa; percentile where "
            "BCa is undefined)",
        },
        **compared,
        "samples": [
            {
                "prompt": b["prompt"],
                "before": _sample(b),
                "after": _sample(a),
            }
            for b, a in zip(results["before"], results["after"], strict=True)
        ],
    }


def _sample(row: dict) -> dict:
    return {
        "completion": row["completion"],
        "toxicity": row["toxicity"],
        **({"reward": row["reward"]} if "reward" in row else {}),
        "kl": sequence_kl(row["logp"], row["ref_logp"]),
    }


def finite(obj):
    """NaN and infinities as null, so the JSON is valid everywhere."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def write_result(result: dict, path: str | Path) -> None:
    """`run_eval`'s result as JSON (eval.json), written atomically."""
    from rlhfkit.files import atomic_write

    atomic_write(Path(path), json.dumps(finite(result), indent=1))
