"""Every number an evaluation reports, described once.

A `Metric` is one number: its key in eval.json (`name`), its row in the eval table (`label`),
how a value prints (`spec`), which way is better (`direction`), how a later model's value
compares with the before-model's (`change`), whether a pipeline's `targets:` may bound it
(`target`), its column in `rlhfkit compare`'s table (`column`) and how it is computed: from
one prompt's K scored samples (`compute`), or pooled over the prompts from parts (`parts`,
summed over the prompts, then `pool`: perplexity weighs every token the same). `rlhfkit
eval` computes and writes the registered metrics in their order (eval/metrics.py, eval/run.py),
eval.json is checked against them (eval/result.py), and the eval table (terminal, report,
model card), the summary over seeds (seeds.py) and `rlhfkit compare` read them. Adding a
metric is one `register(Metric(...))` with its computation.

`SCORER_NUMBERS` is a family: numbers measured once per toxicity scorer of the evaluation
(its `scorers` setting). Their `compute` takes the scorer's name too; eval.json nests them
under the scorer's name (`models.after["scorer:hatesonar"]["toxic_share"]`) and a target
names them SCORER.NAME (`scorer:hatesonar.toxic_share`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rlhfkit.data.text import distinct_n
from rlhfkit.eval.measures import TOXIC, Key, compliance_share, sample_kl
from rlhfkit.formatting import dash

Samples = Sequence[Mapping]  # one prompt's K scored samples (eval/metrics.py prompt_numbers)


@dataclass(frozen=True)
class Metric:
    name: str  # its key in eval.json's `models.SIDE`, `change` and `change_ci`
    label: str  # its row in the eval table; a scorer's number: "{scorer}" is the scorer
    spec: str  # a value's format: ".3f", ".1%"
    # One prompt's number from its K scored samples (a scorer's number: and the scorer's
    # name); None where the evaluation has no such number (no reward, no judge).
    compute: Callable[..., float | None] | None = None
    # Or pooled: each part summed over the prompts, then pool(sums) is the model's number.
    parts: Mapping[str, Callable[[Samples], float]] = field(default_factory=dict)
    pool: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    direction: Literal["higher", "lower"] | None = None  # which is better; None: neither
    # After vs before: a relative change, a difference (a number whose zero and scale are
    # arbitrary), or none (KL: 0 before by definition).
    change: Literal["relative", "difference"] | None = "relative"
    target: bool = False  # a pipeline's `targets:` may bound its change
    column: str | None = None  # its column in `rlhfkit compare`'s table; None: not shown
    # Each model's 95% interval over prompts in eval.json: one key holding [low, high], or
    # two keys holding the ends; None: not written.
    interval: str | tuple[str, str] | None = None
    required: bool = False  # every eval.json has it (one written before it existed may not)
    needs: str | None = None  # the eval setting without which it is not measured ("reward")
    when: Callable[[dict], bool] | None = None  # the table shows it only where this holds

    def text(self, x: float | None) -> str:
        """A value as the tables show it."""
        return dash(x, self.spec)

    def change_text(self, x: float | None, digits: int = 0) -> str:
        """A change as the tables show it: a relative change in percent (`digits` places),
        a difference signed in the value's own format."""
        return dash(x, f"+.{digits}%" if self.change == "relative" else "+" + self.spec)

    def interval_of(self, numbers: Mapping) -> tuple[list | None, bool]:
        """The model's interval in its eval.json `numbers` ([low, high] or None) and whether
        the file has one at all (not one written before intervals)."""
        if isinstance(self.interval, str):
            return numbers.get(self.interval), self.interval in numbers
        if self.interval is None or self.interval[0] not in numbers:
            return None, False
        return [numbers.get(key) for key in self.interval], True


class Metrics:
    """Metrics in order: the order eval.json writes them and the tables show them."""

    def __init__(self, *metrics: Metric):
        self._metrics = {m.name: m for m in metrics}
        self.version = 0  # changes with every registration (eval/result.py's shapes)

    def register(self, metric: Metric, before: str | None = None) -> Metric:
        """Add `metric`, last or just before the metric named `before`."""
        if metric.name in self._metrics:
            raise ValueError(f"a metric {metric.name!r} is registered already")
        if (metric.compute is None) == (metric.pool is None):
            raise ValueError(f"metric {metric.name!r}: give it compute, or parts and pool")
        items = list(self._metrics.items())
        at = [name for name, _ in items].index(before) if before is not None else len(items)
        self._metrics = dict([*items[:at], (metric.name, metric), *items[at:]])
        self.version += 1
        return metric

    def unregister(self, name: str) -> None:
        del self._metrics[name]
        self.version += 1

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._metrics.values()))


@dataclass(frozen=True)
class Family:
    """Numbers measured once per subject an evaluation lists in its setting `setting`."""

    setting: str  # the eval setting that lists the subjects: "scorers"
    prefix: str  # dropped from a subject's name in a table's column header
    headline: str  # the member `rlhfkit compare` leads with, with its change
    members: Metrics

    def short(self, subject: str) -> str:
        return subject.removeprefix(self.prefix)


def _mean(key: str) -> Callable[[Samples], float | None]:
    """The mean of each sample's `key` over the prompt's samples; None where they have none."""
    return lambda samples: (
        sum(s[key] for s in samples) / len(samples) if key in samples[0] else None
    )


def _toxicity(samples: Samples, scorer: str) -> np.ndarray:
    return np.array([s["toxicity"][scorer] for s in samples])


def _tokens(samples: Samples) -> int:
    return sum(len(s["ref_logp"]) for s in samples)


SCORER_NUMBERS = Family(
    setting="scorers",
    prefix="scorer:",
    headline="toxic_share",
    members=Metrics(
        Metric(
            "mean",
            "{scorer}: mean P(toxic)",
            ".3f",
            compute=lambda samples, scorer: float(_toxicity(samples, scorer).mean()),
            direction="lower",
            target=True,
            column="{scorer} mean P(toxic)",
            interval=("ci_low", "ci_high"),
            required=True,
        ),
        Metric(
            "toxic_share",
            "{scorer}: share toxic (p > 0.5)",
            ".1%",
            compute=lambda samples, scorer: float((_toxicity(samples, scorer) > TOXIC).mean()),
            direction="lower",
            target=True,
            column="{scorer} share toxic",
            interval=("toxic_share_ci_low", "toxic_share_ci_high"),
            required=True,
        ),
    ),
)

METRICS = Metrics(
    Metric(
        "reward",
        "mean reward (change: the difference)",
        ".3f",
        compute=_mean("reward"),
        direction="higher",
        change="difference",
        target=True,
        column="reward",
        needs="reward",
    ),
    Metric(
        "perplexity",
        "perplexity under the reference (token-weighted)",
        ".2f",
        parts={  # the NLL of every token under the reference, and the number of tokens
            "nll": lambda samples: -sum(sum(s["ref_logp"]) for s in samples),
            "tokens": _tokens,
        },
        pool=lambda sums: np.exp(sums["nll"] / sums["tokens"]),
        direction="lower",
        target=True,
        column="perplexity",
        required=True,
    ),
    Metric(
        "distinct_2",
        "distinct-2 (within a prompt's samples)",
        ".3f",
        compute=lambda samples: distinct_n([s["completion"] for s in samples], 2),
        direction="higher",
        target=True,
        column="distinct-2",
        required=True,
    ),
    Metric(
        "length",
        "mean length (tokens)",
        ".1f",
        compute=lambda samples: _tokens(samples) / len(samples),
        target=True,
        required=True,
    ),
    Metric(  # what matters on harmful requests, so shown for chat prompts only
        "compliance",
        "share of answers that do not refuse (refusal phrases)",
        ".1%",
        compute=lambda samples: compliance_share([s["completion"] for s in samples]),
        direction="lower",
        when=lambda result: result.get("mode") == "chat",
    ),
    Metric(  # P(this answer is better than the before-model's), the judge's own view
        "judge_preference",
        "the judge prefers it to before's answer (its own view)",
        ".1%",
        compute=_mean("judge_preference"),
        direction="higher",
        change=None,  # before has none
        interval="judge_preference_ci",
        needs="judge",
    ),
    Metric(
        "kl",
        "KL from the reference",
        ".2f",
        compute=lambda samples: sum(sample_kl(s) for s in samples) / len(samples),
        change=None,
        column="KL",
        required=True,
    ),
)

register = METRICS.register
unregister = METRICS.unregister


def version() -> tuple[int, int]:
    """Changes whenever a metric is registered or unregistered."""
    return METRICS.version, SCORER_NUMBERS.members.version


def find(key: Key) -> Metric | None:
    """The metric of a key of eval/metrics.py's numbers: a name, or (scorer, name)."""
    if isinstance(key, tuple):
        return SCORER_NUMBERS.members.get(key[1])
    return METRICS.get(key)


def find_target(name: str) -> Metric | None:
    """The metric a target names: NAME, or SCORER.NAME (split at the last dot: a scorer's
    name may hold dots and colons)."""
    if METRICS.get(name) is not None:
        return METRICS.get(name)
    subject, _, member = name.rpartition(".")
    return SCORER_NUMBERS.members.get(member) if subject else None


def target_names(scorers: Sequence[str], settings: object) -> list[str]:
    """The numbers a target may bound in an evaluation of these scorers with these settings
    (an EvalConfig): each scorer's, then the others that the settings measure."""
    names = [f"{s}.{m.name}" for s in scorers for m in SCORER_NUMBERS.members if m.target]
    return names + [
        m.name
        for m in METRICS
        if m.target and (m.needs is None or getattr(settings, m.needs, None) is not None)
    ]


def target_description() -> str:
    """The targets' metrics, for the `metric` setting's description."""
    plain = [m.name for m in METRICS if m.target]
    family = "|".join(m.name for m in SCORER_NUMBERS.members if m.target)
    return f"{', '.join(plain)} or SCORER.{family}"
