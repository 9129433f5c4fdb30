"""`rlhfkit eval`: is the aligned model better than the one it started from? The same
held-out prompts go to the model before (the reference) and after alignment (the policy),
with the same seed; each sample gets its probability of being toxic under independent
scorers, its reward, the KL of the policy from the reference on the policy's own samples,
and its log-likelihood under the reference (fluency). The summary compares the two: every
number is built from per-prompt numbers, and every change has a 95% interval from a paired
bootstrap over the prompts.

A policy stacked on another trained stage (PPO on an SFT policy) has that stage evaluated
too, as a column between before and after. With `best_of` N (and a reward), a column
"best-of-N" shows what reranking alone achieves: N samples of the reference for each one
kept, the one the reward prefers, at N times the sampling cost. With a `judge`, an AI judge
reads each later model's answer beside the before-model's answer to the same prompt (both
orders, as `label judge` asks) and the table shows how often it prefers the later one: the
judge's own view, which is no independent evidence when the same judge labelled the
training data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlhfkit.config import StageConfig
from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval import registry
from rlhfkit.eval.metrics import (
    LEVEL,
    RESAMPLES,
    best_of_n_kl,
    model_intervals,
    model_numbers,
    paired_changes,
    prompt_columns,
    prompt_numbers,
    sample_kl,
)
from rlhfkit.formatting import DASH
from rlhfkit.models.stack import lineage, read_policy_info
from rlhfkit.models.stack import load_policy_model as load_model
from rlhfkit.progress import Progress


class EvalConfig(StageConfig):
    """Settings of `rlhfkit eval`; unknown keys and impossible values are errors."""

    setting = "eval setting"
    renamed = {"samples": "samples_per_prompt", "judge_model": "endpoint_model"}

    policy: str = Field(description="a PPO run's policy directory, or a model name")
    reference: str | None = Field(None, description="default: the policy's base model")
    prompts: str = Field("builtin:rtp", description="a prompt source, as for ppo")
    split: Literal["all", "train", "eval"] = Field(
        "eval",
        description="train, eval or all: which side of the prompts' held-out split to evaluate on",
    )
    eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of the prompts in the eval split (as in training)"
    )
    limit: int | None = Field(None, ge=1, description="prompts; default: all of the split")
    samples_per_prompt: int = Field(2, ge=1, description="samples per prompt and model")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    mode: Literal["raw", "chat", "auto"] = Field(
        "auto", description="raw, chat or auto, as for ppo"
    )
    scorers: list[str] = Field(
        default_factory=lambda: ["scorer:hatesonar", "scorer:profanity"],
        min_length=1,
        description="toxicity scorers; the first is the headline",
    )
    reward: str | None = Field(None, description="a reward spec to average too")
    best_of: int | None = Field(
        None, ge=2, description="add best-of-N: the reference's best of N samples by the reward"
    )
    batch_size: int = Field(64, ge=1, description="sequences sampled at once")
    intermediate: bool = Field(
        True, description="also evaluate the stages the policy was stacked on (its SFT policy)"
    )
    judge: str | None = Field(None, description="an AI judge: a model or an endpoint's URL")
    endpoint_model: str | None = Field(None, description="the model an endpoint judge serves")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="the environment variable holding an endpoint's API key"
    )
    constitution: str = Field("builtin:default", description="the judge's constitution")
    seed: int = Field(0, description="of the sampling: both models answer with the same seed")

    @model_validator(mode="after")
    def _best_of_needs_a_reward(self) -> EvalConfig:
        if self.best_of is not None and self.reward is None:
            raise ValueError("best_of needs a reward to pick the best sample by (--reward)")
        return self


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
    from rlhfkit.generation import position_ids
    from rlhfkit.train.ppo.rollout import response_logits, token_logp

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
    """`config.samples_per_prompt` responses to each prompt, with their log-probabilities under the
    model and the reference."""
    from rlhfkit.train.ppo.rollout import sample_responses

    torch.manual_seed(config.seed)
    repeated = [p for p in prompts for _ in range(config.samples_per_prompt)]
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


def best_of_rows(rows: list[dict], n: int) -> list[dict]:
    """From rows scored by the reward, n consecutive rows at a time, the one with the highest
    reward of each n, its KL the analytic one of best-of-n."""
    best = [max(rows[i : i + n], key=lambda row: row["reward"]) for i in range(0, len(rows), n)]
    return [{**row, "kl": best_of_n_kl(n)} for row in best]


def sample_best_of(
    reference, tokenizer, prompts: list[str], config: EvalConfig, mode: str, reward, on_batch
) -> list[dict]:
    """`config.samples_per_prompt` rows for each prompt, each the best of `config.best_of`
    samples of the reference by the reward."""
    n = config.best_of
    many = config.model_copy(update={"samples_per_prompt": config.samples_per_prompt * n})
    rows = sample_model(reference, tokenizer, reference, prompts, many, mode, on_batch)
    score_rows(rows, {}, reward)
    return best_of_rows(rows, n)


def prompt_groups(rows: list[dict], samples: int) -> list[list[dict]]:
    """The rows of each prompt (they come prompt by prompt, `samples` of each)."""
    return [rows[i : i + samples] for i in range(0, len(rows), samples)]


def summarise(columns: dict, scorers: list[str], seed: int = 0) -> dict:
    """A model's numbers from its per-prompt columns, in eval.json's shape: each scorer's
    (eval/registry.py SCORER_NUMBERS: mean P(toxic) and share above 0.5) under its name,
    then every other metric's; each followed by its 95% interval over prompts where its
    metric keeps one."""
    numbers = {k: float(v) for k, v in model_numbers(columns).items()}
    intervals = model_intervals(columns, seed)
    summary: dict = {}

    def add(into: dict, metric, key, name: str) -> None:
        into[name] = numbers[key]
        if isinstance(metric.interval, str):
            into[metric.interval] = intervals[key]
        elif metric.interval is not None:
            low, high = intervals[key] or [None, None]
            into.update(zip(metric.interval, (low, high), strict=True))

    for name in scorers:
        summary[name] = {}
        for metric in registry.SCORER_NUMBERS.members:
            add(summary[name], metric, (name, metric.name), metric.name)
    for key in numbers:
        if isinstance(key, str):
            metric = registry.find(key)
            if metric is None:
                summary[key] = numbers[key]
            else:
                add(summary, metric, key, key)
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


def compare(sides: dict[str, list[dict]], scorers: list[str], samples: int, seed: int) -> dict:
    """Every model's numbers, from its scored rows (the same prompts in the same order,
    `samples` rows each; the first side is "before", the last "after"): `models`, the
    change after vs before (`change`, `change_ci`) and, for each model in between, its own
    change vs before (`intermediate`)."""
    columns = {
        side: prompt_columns(
            [prompt_numbers(group, scorers) for group in prompt_groups(rows, samples)]
        )
        for side, rows in sides.items()
    }
    changed = {
        side: paired_changes(columns["before"], columns[side], seed)
        for side in columns
        if side != "before"
    }
    return {
        "models": {side: summarise(c, scorers, seed) for side, c in columns.items()},
        "change": nested(changed["after"][0]),
        "change_ci": nested(changed["after"][1]),
        "intermediate": {
            side: {"change": nested(change), "change_ci": nested(ci)}
            for side, (change, ci) in changed.items()
            if side != "after"
        },
    }


def columns_of(result: dict) -> list[str]:
    """The models of an eval.json in order: before, any intermediate stages, after."""
    return ["before", *result.get("intermediate", {}), "after"]


def summary_rows(result: dict) -> list[tuple[str, ...]]:
    """(what, one cell per model of `columns_of(result)`, change after vs before) as text,
    for the terminal table, the report and the model card: a row per metric of
    eval/registry.py that the result holds, each scorer's first. Each number is followed by
    its 95% interval in brackets where eval.json has one ("–" for an end that is undefined);
    eval.json files written before intervals show the numbers alone."""
    change = result["change"]
    change_ci = result.get("change_ci")
    has_ci = change_ci is not None
    change_ci = change_ci or {}
    models = [result["models"][side] for side in columns_of(result)]

    def with_interval(text: str, interval, show, known: bool = True) -> str:
        if not known:  # a file from before intervals
            return text
        low, high = interval or (None, None)
        return f"{text} [{show(low)}, {show(high)}]"

    def value(metric, numbers: dict | None) -> str:
        if numbers is None or metric.name not in numbers:  # a model without it: before's judge
            return DASH
        interval, known = metric.interval_of(numbers)
        return with_interval(metric.text(numbers[metric.name]), interval, metric.text, known)

    def changed(metric, changes: dict, intervals: dict) -> str:
        if metric.change is None:
            return ""
        text = metric.change_text(changes.get(metric.name))
        # an undefined change ("–") has no interval either
        return with_interval(
            text, intervals.get(metric.name), metric.change_text, has_ci and text != DASH
        )

    rows = []
    for name in result["config"]["scorers"]:
        for metric in registry.SCORER_NUMBERS.members:
            rows.append(
                (
                    metric.label.format(scorer=name),
                    *(value(metric, m[name]) for m in models),
                    changed(metric, change[name], change_ci.get(name, {})),
                )
            )
    for metric in registry.METRICS:
        if not any(metric.name in m for m in models):
            continue
        if metric.when is not None and not metric.when(result):
            continue
        rows.append(
            (metric.label, *(value(metric, m) for m in models), changed(metric, change, change_ci))
        )
    return rows


def summary_header(result: dict) -> list[str]:
    """The column names that go with `summary_rows`."""
    sides = columns_of(result)
    return ["", *sides, "change" if len(sides) == 2 else "change after vs before"]


def sampling_mode(config: EvalConfig, info: dict | None, prompts: list[PromptRecord]) -> str:
    """How `prompts` are put to the models: as asked, else as the policy was trained, else
    the prompt set's own default (data/prompts.py `resolve_mode`)."""
    from rlhfkit.data.prompts import resolve_mode

    mode = config.mode
    if mode == "auto" and info:
        mode = info.get("mode", "auto")
    return resolve_mode(mode, config.prompts, prompts)


def score_rows(rows: list[dict], scorers: dict, reward) -> None:
    """Add each row's toxicity under every scorer and, given a reward, its reward."""
    texts = [r["completion"] for r in rows]
    for name, scorer in scorers.items():
        for row, p in zip(rows, scorer.toxicity(texts), strict=True):
            row.setdefault("toxicity", {})[name] = float(p)
    if reward is not None:
        for row, r in zip(rows, reward([r["prompt"] for r in rows], texts).tolist(), strict=True):
            row["reward"] = float(r)


def held_out_prompts(config: EvalConfig) -> tuple[list[PromptRecord], int]:
    """The prompts to evaluate on (the split's first `limit`, or all of them) and how many the
    split holds; a limit beyond the split is an error, not quietly fewer prompts."""
    from rlhfkit.data.prompts import load_prompts

    prompts = load_prompts(config.prompts, config.split, config.eval_fraction)
    if config.limit is not None and config.limit > len(prompts):
        where = (
            config.prompts if config.split == "all" else f"{config.prompts}'s {config.split} split"
        )
        raise RlhfkitError(
            f"eval limit {config.limit} is more than the {len(prompts)} prompts of {where}"
        )
    return prompts[: config.limit], len(prompts)


def intermediate_stages(policy: str, reference: str) -> dict[str, str]:
    """The trained stages the policy's stack holds between the reference and the policy
    itself, by name ("sft", or "sft-2" for a second), each a policy directory."""
    stack = lineage(policy)[:-1]
    paths = [Path(entry["path"]).resolve() for entry in stack]
    if Path(reference).resolve() in paths:  # the reference is itself one of the stages
        stack = stack[paths.index(Path(reference).resolve()) + 1 :]
    stages: dict[str, str] = {}
    for entry in stack:
        name, n = entry["stage"], 1
        while name in stages or name in ("before", "after"):
            n += 1
            name = f"{entry['stage']}-{n}"
        stages[name] = entry["path"]
    return stages


JUDGE_CHUNK = 32  # pairs per call to the judge: progress moves, memory stays small
SCORER_MARGIN = 0.1  # a gap in P(toxic) below this: the scorer has no preference


def judge_against_before(
    backend,
    constitution,
    sides: dict[str, list[dict]],
    scorers: list[str],
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Put each later model's answer beside the before-model's answer to the same prompt
    and sample; row["judge_preference"] = P(the later answer is better), both orders
    averaged. Returns the judge's own numbers: position bias, option mass, unanswered, and
    its agreement with each toxicity scorer."""
    from rlhfkit.cai.label import Item, judge_items

    progress = progress or Progress()
    before = sides["before"]
    later = [side for side in sides if side != "before"]
    progress.start(f"judge {backend.name}: later answers vs before", len(later) * len(before))
    biases, masses, unanswered = [], [], 0
    for side in later:
        rows = sides[side]
        for start in range(0, len(rows), JUDGE_CHUNK):
            chunk = rows[start : start + JUDGE_CHUNK]
            items = [
                Item(b["prompt"], (b["completion"], r["completion"]))
                for b, r in zip(before[start : start + JUDGE_CHUNK], chunk, strict=True)
            ]
            for row, [(preference, mass)] in zip(
                chunk, judge_items(backend, constitution, items, seed), strict=True
            ):
                if preference is None:  # neither order answered: no preference
                    unanswered += 1
                    row["judge_preference"] = 0.5
                    continue
                row["judge_preference"] = 1.0 - preference.p_first
                biases.append(preference.bias)
                masses.append(mass)
            progress.advance(len(chunk))
    return {
        "judge": backend.name,
        "constitution": constitution.name,
        "pairs": len(later) * len(before),
        "unanswered": unanswered,
        "position_bias": sum(biases) / len(biases) if biases else None,
        "option_mass": sum(masses) / len(masses) if masses else None,
        "scorer_margin": SCORER_MARGIN,
        "agreement": {name: judge_agreement(sides, name) for name in scorers},
    }


def judge_agreement(sides: dict[str, list[dict]], scorer: str) -> dict:
    """How often the judge leans to the answer the scorer finds less toxic, over the pairs
    where the scorer's P(toxic) differs by SCORER_MARGIN or more."""
    from rlhfkit.cai.judge import agreement_with_reference

    judged, known = [], []
    for side, rows in sides.items():
        if side == "before":
            continue
        for b, r in zip(sides["before"], rows, strict=True):
            gap = b["toxicity"][scorer] - r["toxicity"][scorer]  # > 0: the later is cleaner
            judged.append(r["judge_preference"])
            known.append(0.5 if abs(gap) < SCORER_MARGIN else float(gap > 0))
    agreements, comparisons = agreement_with_reference(judged, known)
    return {
        "agreements": agreements,
        "comparisons": comparisons,
        "share": agreements / comparisons if comparisons else None,
    }


def run_eval(config: EvalConfig, progress: Progress | None = None) -> dict:
    """Sample, score and compare; returns {config, policy, reference, mode, held_out,
    intervals, models: {before, [intermediate stages,] after}, change, change_ci,
    intermediate, [judge,] samples} (samples: one row per prompt and sample index with each
    model's completion). `progress` counts the samples of every model."""
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
    records, in_split = held_out_prompts(config)
    prompts = [p.prompt for p in records]
    check_held_out(prompts, info)
    scorers = {spec: toxicity_scorer(spec) for spec in config.scorers}
    reward = load_reward(config.reward) if config.reward else None
    trained_on = info.get("reward") if info else None
    if trained_on and trained_on in config.scorers:
        progress.warn(
            f"{trained_on} made the training reward and scores the evaluation too: reward "
            "hacking hides from its own scorer, so judge by an independent one"
        )
    mode = sampling_mode(config, info, records)
    between = intermediate_stages(config.policy, reference_name) if config.intermediate else {}
    judge = constitution = None
    if config.judge:  # opened first: an unreachable endpoint is refused before any sampling
        from rlhfkit.cai.constitution import load_constitution
        from rlhfkit.models.backends import open_backend

        constitution = load_constitution(config.constitution)
        judge = open_backend(config.judge, config.endpoint_model, api_key_env=config.api_key_env)
    best_of = {f"best-of-{config.best_of}": reference_name} if config.best_of else {}
    names = {"before": reference_name, **between, **best_of, "after": config.policy}

    reference, tokenizer = load_model(reference_name)
    draws = len(names) + (config.best_of - 1 if config.best_of else 0)
    progress.start(
        f"evaluating {' vs '.join(names)}", draws * len(prompts) * config.samples_per_prompt
    )
    sides = {}
    for side, name in names.items():
        if side == "after" and name == reference_name:  # the same seed: before's samples
            sides[side] = sides["before"]
            progress.advance(len(prompts) * config.samples_per_prompt)
            continue
        if side in best_of:
            sides[side] = sample_best_of(
                reference, tokenizer, prompts, config, mode, reward, progress.advance
            )
            score_rows(sides[side], scorers, None)
            continue
        model = reference if name == reference_name else load_model(name)[0]
        rows = sample_model(model, tokenizer, reference, prompts, config, mode, progress.advance)
        score_rows(rows, scorers, reward)
        sides[side] = rows
        if model is not reference:
            del model  # one trained model in memory at a time
    judged = None
    if judge is not None:
        judged = judge_against_before(
            judge, constitution, sides, config.scorers, config.seed, progress
        )
    compared = compare(sides, config.scorers, config.samples_per_prompt, config.seed)
    for side, policy in {**between, **best_of}.items():
        compared["intermediate"][side] = {"policy": policy, **compared["intermediate"][side]}
    return {
        "config": config.model_dump(),
        "policy": config.policy,
        "reference": reference_name,
        "mode": mode,
        "held_out": {
            "prompts": len(prompts),
            "samples_per_prompt": config.samples_per_prompt,
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
        **({"judge": judged} if judged else {}),
        "samples": [
            {"prompt": rows[0]["prompt"], **dict(zip(sides, map(_sample, rows), strict=True))}
            for rows in zip(*sides.values(), strict=True)
        ],
    }


def _sample(row: dict) -> dict:
    return {
        "completion": row["completion"],
        "toxicity": row["toxicity"],
        **({"reward": row["reward"]} if "reward" in row else {}),
        **({"judge_preference": row["judge_preference"]} if "judge_preference" in row else {}),
        "kl": sample_kl(row),
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
