"""The numbers of an evaluation, as pure functions of samples and their scores.

The unit of an evaluation is the prompt: both models answer the same held-out prompts, K
samples each, with the same seed. Every headline number is therefore built from per-prompt
numbers (`prompt_numbers`), and its uncertainty comes from resampling prompts: a paired
bootstrap that draws prompts with replacement and keeps both models' answers to each one,
so the spread between easy and hard prompts, which both models share, cancels out of a
change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rlhfkit.eval import registry
from rlhfkit.eval.measures import (  # noqa: F401 (the numbers of one sample, by their old home)
    TOXIC,
    Key,
    best_of_n_kl,
    compliance_share,
    refuses,
    sample_kl,
    sequence_kl,
)

LEVEL = 0.95  # of every interval
RESAMPLES = 2000  # bootstrap resamples: the interval's ends move by well under its width
BATCH = 500  # resamples computed at once (memory: BATCH × prompts × numbers floats)
Columns = Mapping[Key, np.ndarray]  # one value per prompt, the prompts on the last axis


def relative_change(before, after):
    """(after − before) / |before|, elementwise on arrays; NaN where `before` is 0."""
    before = np.asarray(before, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(before == 0, np.nan, (after - before) / np.abs(before))


def prompt_numbers(samples: Sequence[Mapping], scorers: Sequence[str]) -> dict[Key, float]:
    """One prompt's numbers from its K scored samples (each a dict with `completion`,
    `toxicity` by scorer, `logp`, `ref_logp`, maybe `reward` and `judge_preference`): those
    of every metric of eval/registry.py, in its order: each scorer's (keyed (scorer, name):
    the mean P(toxic) and the share of samples above 0.5), then the others (a pooled one's
    parts: perplexity's NLL summed over every token under the reference, `nll`, and the
    number of tokens, `tokens`). A metric the samples cannot give (no reward) is left out."""
    numbers: dict[Key, float] = {}
    for name in scorers:
        for metric in registry.SCORER_NUMBERS.members:
            numbers[(name, metric.name)] = metric.compute(samples, name)
    for metric in registry.METRICS:
        if metric.pool is not None:
            numbers.update({part: compute(samples) for part, compute in metric.parts.items()})
        elif (value := metric.compute(samples)) is not None:
            numbers[metric.name] = value
    return numbers


def prompt_columns(per_prompt: Sequence[Mapping[Key, float]]) -> dict[Key, np.ndarray]:
    """The prompts' numbers as one array per number, a value per prompt."""
    return {key: np.array([p[key] for p in per_prompt], dtype=np.float64) for key in per_prompt[0]}


def model_numbers(columns: Columns, axis: int = -1) -> dict[Key, np.ndarray]:
    """A model's headline numbers from its per-prompt columns (the prompts along `axis`):
    the mean over prompts of each, except a pooled metric's (eval/registry.py), computed
    from its parts summed over the prompts where its first part is: perplexity, exp(Σ NLL /
    Σ tokens), in which every token weighs the same (a prompt drawn twice by a resample
    counts twice)."""
    pooled = {part: m for m in registry.METRICS if m.pool is not None for part in m.parts}
    numbers = {}
    for key, values in columns.items():
        if key not in pooled:
            numbers[key] = values.mean(axis=axis)
        elif (metric := pooled[key]).name not in numbers:
            sums = {part: columns[part].sum(axis) for part in metric.parts}
            with np.errstate(divide="ignore", invalid="ignore"):
                numbers[metric.name] = metric.pool(sums)
    return numbers


def changes(before: Mapping[Key, np.ndarray], after: Mapping[Key, np.ndarray]) -> dict:
    """The change after vs before of every number, as its metric (eval/registry.py) has it:
    a relative change; a difference (the reward's: its zero and scale are arbitrary); none
    (KL: 0 before, by definition)."""
    out = {}
    for key, value in before.items():
        metric = registry.find(key)
        kind = metric.change if metric is not None else "relative"
        if kind == "difference":
            out[key] = after[key] - value
        elif kind == "relative":
            out[key] = relative_change(value, after[key])
    return out


def bootstrap_interval(
    samples: Sequence[np.ndarray], statistic: Callable, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The 95% interval of each value of `statistic(*samples, axis)` (vectorised) from
    resampling the prompts (the last axis) of all `samples` together: scipy's BCa. BCa
    corrects the percentile interval for the bias and skew of a statistic's bootstrap
    distribution, and ours are ratios (a relative change, a perplexity), which are both.
    Where BCa is undefined because the statistic has no spread at all (a toxic share that is
    0 after on every prompt: a change of −100% in every resample) the percentile interval of
    the same resamples is used; it is NaN where some resample leaves the statistic undefined
    (a number that is 0 before)."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    if samples[0].shape[-1] < 2:  # one prompt: nothing to resample
        nothing = np.full_like(statistic(*samples), np.nan)
        return nothing, nothing

    def interval(method: str, n_resamples: int, previous=None):
        return bootstrap(
            tuple(samples),
            statistic,
            n_resamples=n_resamples,
            batch=BATCH,
            vectorized=True,
            paired=True,  # one draw of prompts for every sample
            axis=-1,
            confidence_level=LEVEL,
            method=method,
            bootstrap_result=previous,
            rng=np.random.default_rng(seed),
        )

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)  # a NaN end is reported as null
        bca = interval("BCa", RESAMPLES)
        percentile = interval("percentile", 0, bca).confidence_interval  # the same resamples
    low, high = bca.confidence_interval
    undefined = np.isnan(low) | np.isnan(high)
    return np.where(undefined, percentile.low, low), np.where(undefined, percentile.high, high)


def _stacked(columns: Columns) -> tuple[list[Key], np.ndarray]:
    keys = list(columns)
    return keys, np.stack([columns[k] for k in keys])


def _interval_or_none(low: float, high: float) -> list[float] | None:
    return [float(low), float(high)] if math.isfinite(low) and math.isfinite(high) else None


def model_intervals(columns: Columns, seed: int) -> dict[Key, list[float] | None]:
    """The 95% interval of each of a model's headline numbers, from resampling prompts."""
    keys, matrix = _stacked(columns)
    names = list(model_numbers(columns))

    def statistic(x, axis=-1):
        return np.stack([model_numbers(dict(zip(keys, x, strict=True)), axis)[n] for n in names])

    low, high = bootstrap_interval([matrix], statistic, seed)
    return {name: _interval_or_none(lo, hi) for name, lo, hi in zip(names, low, high, strict=True)}


def paired_changes(
    before: Columns, after: Columns, seed: int
) -> tuple[dict[Key, float], dict[Key, list[float] | None]]:
    """The change of every headline number from `before` to `after` (per-prompt columns of
    the same prompts in the same order) and its 95% interval, [low, high] or None where it
    is undefined, from a paired bootstrap over prompts."""
    keys, before_matrix = _stacked(before)
    _, after_matrix = _stacked({k: after[k] for k in keys})
    names = list(changes(model_numbers(before), model_numbers(after)))

    def statistic(b, a, axis=-1):
        numbers = [model_numbers(dict(zip(keys, x, strict=True)), axis) for x in (b, a)]
        change = changes(*numbers)
        return np.stack([change[n] for n in names])

    point = statistic(before_matrix, after_matrix)
    low, high = bootstrap_interval([before_matrix, after_matrix], statistic, seed)
    change = {name: float(value) for name, value in zip(names, point, strict=True)}
    ci = {name: _interval_or_none(lo, hi) for name, lo, hi in zip(names, low, high, strict=True)}
    return change, ci
