"""The shape of eval.json, the file `rlhfkit eval` writes, and its loader.

The numbers' part is made from the metrics of eval/registry.py: each model's numbers
(`models.SIDE`), the changes (`change`, `change_ci`, and each stage's in between under
`intermediate`), and each scorer's numbers beside them under the scorer's name, which a
fixed shape cannot name (load_eval checks those). Everything else is fixed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, create_model, model_validator

from rlhfkit.errors import RlhfkitError
from rlhfkit.eval import registry
from rlhfkit.shapes import Interval, Number, Shape, check, check_entry, read_json


class EvalSettings(Shape):
    scorers: list[str] = Field(min_length=1)
    samples_per_prompt: int | None = None
    samples: int | None = None  # its name in files written before samples_per_prompt

    @model_validator(mode="after")
    def _samples_named(self) -> EvalSettings:
        if self.samples_per_prompt is None and self.samples is None:
            raise ValueError("samples_per_prompt is missing")
        return self


def samples_per_prompt(result: dict) -> int:
    """How many samples of each prompt an evaluation drew, whichever name its file uses."""
    config = result["config"]
    return config.get("samples_per_prompt") or config["samples"]


class HeldOut(Shape):
    prompts: int
    split: str
    samples_per_prompt: int | None = None  # absent from files written before intervals


class SampleSide(Shape):
    completion: str
    toxicity: dict[str, float]
    reward: Number = None
    judge_preference: Number = None


class Sample(Shape):
    prompt: str
    before: SampleSide
    after: SampleSide


class Agreement(Shape):
    agreements: int
    comparisons: int
    share: Number


class JudgeNumbers(Shape):
    judge: str
    pairs: int
    unanswered: int
    position_bias: Number
    option_mass: Number
    scorer_margin: float
    agreement: dict[str, Agreement]


@dataclass(frozen=True)
class EvalShapes:
    """eval.json's shapes for the metrics registered now."""

    file: type[Shape]
    model: type[Shape]  # one model's numbers; each scorer's (`scorer`) beside them
    scorer: type[Shape]
    scorer_change: type[Shape]
    scorer_interval: type[Shape]


def _field(kind, required: bool):
    return (kind, ...) if required else (kind, None)


def _numbers(name: str, metrics) -> type[Shape]:
    """A model's numbers: each metric's value and the interval it keeps (absent from files
    written before intervals)."""
    fields = {}
    for m in metrics:
        fields[m.name] = _field(Number, m.required)
        if isinstance(m.interval, str):
            fields[m.interval] = _field(Interval, False)
        elif m.interval is not None:
            fields.update({key: _field(Number, False) for key in m.interval})
    return create_model(name, __base__=Shape, **fields)


def _changes(name: str, metrics, kind) -> type[Shape]:
    """The changes (kind Number) or their intervals (kind Interval) of the metrics that change."""
    fields = {m.name: _field(kind, m.required) for m in metrics if m.change is not None}
    return create_model(name, __base__=Shape, **fields)


@lru_cache(maxsize=4)
def _shapes(version) -> EvalShapes:
    metrics, scorer = list(registry.METRICS), list(registry.SCORER_NUMBERS.members)
    model = _numbers("ModelNumbers", metrics)
    changes = _changes("Changes", metrics, Number)
    intervals = _changes("ChangeIntervals", metrics, Interval)
    models = create_model("Models", __base__=Shape, before=(model, ...), after=(model, ...))
    intermediate = create_model(
        "Intermediate",  # a stage in between: its numbers are under `models` by its name
        __base__=Shape,
        policy=(str, ...),
        change=(changes, ...),
        change_ci=(intervals, ...),
    )
    file = create_model(
        "EvalFile",
        __base__=Shape,
        config=(EvalSettings, ...),
        policy=(str, ...),
        reference=(str, ...),
        held_out=(HeldOut, ...),
        models=(models, ...),
        change=(changes, ...),
        change_ci=(intervals | None, None),  # absent from files written before intervals
        intermediate=(dict[str, intermediate], Field(default_factory=dict)),
        judge=(JudgeNumbers | None, None),
        samples=(list[Sample], ...),
    )
    return EvalShapes(
        file=file,
        model=model,
        scorer=_numbers("ScorerNumbers", scorer),
        scorer_change=_changes("ScorerChanges", scorer, Number),
        scorer_interval=_changes("ScorerIntervals", scorer, Interval),
    )


def eval_shapes() -> EvalShapes:
    return _shapes(registry.version())


def load_eval(path: Path) -> dict:
    """eval.json as written by `rlhfkit eval`, or a one-line error naming the file."""
    from rlhfkit.eval.run import columns_of

    shapes = eval_shapes()
    result = read_json(path)
    check(shapes.file, result, str(path))
    scorers = result["config"]["scorers"]
    models, change, change_ci = result["models"], result["change"], result.get("change_ci")
    sides = columns_of(result)
    for side in sides[1:-1]:
        check_entry(models, side, shapes.model, path, "models")
    for name in scorers:
        for side in sides:
            check_entry(models[side], name, shapes.scorer, path, f"models.{side}")
        check_entry(change, name, shapes.scorer_change, path, "change")
        if change_ci is not None:
            check_entry(change_ci, name, shapes.scorer_interval, path, "change_ci")
    for metric in registry.METRICS:  # one that before has, every later model and change have
        if metric.required or metric.name not in models["before"]:
            continue
        for side in sides[1:]:
            if metric.name not in models[side]:
                raise RlhfkitError(f"{path}: 'models.{side}.{metric.name}': Field required")
        if metric.change is not None and not isinstance(
            change.get(metric.name, ""), int | float | None
        ):
            raise RlhfkitError(f"{path}: 'change.{metric.name}': Input should be a number or null")
    for i, sample in enumerate(result["samples"]):
        for side in sides:
            check_entry(sample, side, SampleSide, path, f"samples.{i}")
            missing = [n for n in scorers if n not in sample[side]["toxicity"]]
            if missing:
                raise RlhfkitError(
                    f"{path}: 'samples.{i}.{side}.toxicity' has no score from {missing[0]}"
                )
    return result
