"""A run over several seeds: what it adds to a single run.

With `seeds: [0, 1, 2]` the pipeline runs the stages after pairs once per seed, each in its
own run directory RUN/seed-N/ (rlhfkit.pipeline). This module keeps the config's targets,
gathers the seeds' evaluations into RUN/summary.json (for every number of eval.json's
`change`: each seed's value and interval, the mean, min and max over the seeds, and for a
target whether every seed met it) and draws RUN/report/report.html over the seeds.

One seed on one machine is an anecdote: a target counts as met only when every seed met it.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from pydantic import Field, model_validator

from rlhfkit.config import StageConfig
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval import registry
from rlhfkit.eval.result import samples_per_prompt
from rlhfkit.files import atomic_write, claim_directory, owner, read_text
from rlhfkit.formatting import dash


class TargetConfig(StageConfig):
    """A bound on one number of eval.json's `change`: a relative change after vs before
    (the reward's is a difference), e.g. scorer:hatesonar.toxic_share at most -0.5."""

    setting = "target"
    metric: str = Field(description=registry.target_description())
    at_most: float | None = Field(None, description="met when the change is at most this")
    at_least: float | None = Field(None, description="met when the change is at least this")

    @model_validator(mode="after")
    def _one_bound(self) -> TargetConfig:
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError("a target takes one bound: at_most or at_least")
        return self

    def met(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value <= self.at_most if self.at_most is not None else value >= self.at_least

    def bound(self) -> dict[str, float]:
        return self.model_dump(include={"at_most", "at_least"}, exclude_none=True)


def check_targets(targets: list[TargetConfig], evaluation) -> None:
    """Every target names a number the evaluation (an EvalConfig) will report: checked when
    the config loads, not when the run is over."""
    names = registry.target_names(evaluation.scorers, evaluation)
    for target in targets:
        if target.metric not in names:
            raise RlhfkitError(
                f"target '{target.metric}' is not a number the evaluation reports; one of: "
                + ", ".join(names)
            )


def lookup(change: dict, metric: str):
    """A metric's entry in eval.json's `change` (or `change_ci`): a key of it, or
    KEY.NUMBER split at the last dot (a scorer's name may hold dots and colons).
    KeyError when it has none."""
    if metric in change:
        return change[metric]
    key, _, number = metric.rpartition(".")
    entry = change.get(key) if key else None
    if not isinstance(entry, dict) or number not in entry:
        raise KeyError(metric)
    return entry[number]


def metrics_of(change: dict) -> list[str]:
    """Every number of a `change`, by the name a target gives it."""
    names = []
    for key, value in change.items():
        if isinstance(value, dict):
            names += [f"{key}.{number}" for number in value]
        else:
            names.append(key)
    return names


def seed_dir(run: Path, seed: int) -> Path:
    return run / f"seed-{seed}"


def _evaluation(run: Path, seed: int) -> tuple[Path, dict] | None:
    """A seed's eval.json (checked), or None before its eval stage is done."""
    from rlhfkit.eval.result import load_eval

    path = seed_dir(run, seed) / "eval" / "eval.json"
    done = seed_dir(run, seed) / "eval" / "done.json"
    return (path, load_eval(path)) if done.is_file() and path.is_file() else None


def _rm_accuracy(run: Path, seed: int) -> float | None:
    """The held-out pair accuracy of a seed's reward model, as it recorded it."""
    try:
        info = json.loads((seed_dir(run, seed) / "rm" / "model" / "reward.json").read_text())
        return info["metrics"]["eval_accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finite(values: list) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _metric_row(metric: str, target: TargetConfig | None, evaluations: dict) -> dict:
    """One number over the seeds: each seed's value and interval, mean, min, max, and
    whether each seed and every seed met the target."""
    seeds = []
    for seed, found in evaluations.items():
        value = interval = None
        if found:
            path, result = found
            try:
                value = lookup(result["change"], metric)
            except KeyError:
                if target:
                    raise RlhfkitError(f"{path}: 'change' has no {metric} (a target)") from None
            with contextlib.suppress(KeyError):  # an evaluation without intervals has none
                interval = lookup(result.get("change_ci") or {}, metric)
        seeds.append(
            {
                "seed": seed,
                "value": value,
                "ci": interval,
                "met": target.met(value) if target else None,
            }
        )
    values = _finite([s["value"] for s in seeds])
    return {
        "metric": metric,
        "target": target.bound() if target else None,
        "seeds": seeds,
        "mean": sum(values) / len(values) if values else None,
        "min": min(values, default=None),
        "max": max(values, default=None),
        "met": all(s["met"] for s in seeds) if target else None,
    }


def summarise_seeds(run: Path, seeds: list[int], targets: list[TargetConfig]) -> dict:
    """The seeds' evaluations side by side: the targets first, then every other number of
    eval.json's `change`; a seed not evaluated yet has no values, and misses every target."""
    evaluations = {seed: _evaluation(run, seed) for seed in seeds}
    targeted = {t.metric for t in targets}
    found = [result for _, result in filter(None, evaluations.values())]
    others = [m for m in metrics_of(found[0]["change"]) if m not in targeted] if found else []
    rows = [_metric_row(t.metric, t, evaluations) for t in targets]
    rows += [_metric_row(metric, None, evaluations) for metric in others]
    per_seed = []
    for seed, evaluated in evaluations.items():
        path, result = evaluated or (None, {})
        per_seed.append(
            {
                "seed": seed,
                "eval": str(path) if path else None,
                "reward_model_accuracy": _rm_accuracy(run, seed),
                **{k: result.get(k) for k in ("models", "change", "change_ci")},
            }
        )
    return {
        "seeds": seeds,
        "all_met": all(row["met"] for row in rows[: len(targets)]) if targets else None,
        "metrics": rows,
        "per_seed": per_seed,
    }


def write_summary(run: Path, seeds: list[int], targets: list[TargetConfig]) -> dict:
    """RUN/summary.json (see summarise_seeds), written atomically; returns it."""
    from rlhfkit.eval.run import finite

    summary = summarise_seeds(run, seeds, targets)
    atomic_write(run / "summary.json", json.dumps(finite(summary), indent=1))
    return summary


def summary_line(summary: dict) -> str:
    evaluated = sum(1 for s in summary["per_seed"] if s["eval"])
    targets = [row for row in summary["metrics"] if row["target"]]
    met = sum(1 for row in targets if row["met"])
    result = f"{met} of {len(targets)} targets met on every seed" if targets else "no targets"
    return f"{evaluated} of {len(summary['seeds'])} seeds evaluated; {result}"


def change_text(metric: str, x: float | None) -> str:
    """A change as the table shows it, by its metric (eval/registry.py): a relative change in
    percent, a difference (the reward's) as a number."""
    found = registry.find_target(metric)
    if found is None:  # a number of `change` no metric describes: a relative change
        return dash(x, "+.1%")
    return found.change_text(x, digits=1)


def _target_text(row: dict) -> str:
    target = row["target"]
    if not target:
        return ""
    if "at_most" in target:
        return "≤ " + change_text(row["metric"], target["at_most"])
    return "≥ " + change_text(row["metric"], target["at_least"])


def _value_text(metric: str, seed: dict) -> str:
    text = change_text(metric, seed["value"])
    if seed["ci"]:  # an end the bootstrap could not place is shown as a dash
        low, high = (change_text(metric, x) for x in seed["ci"])
        text += f" [{low}, {high}]"
    return text


def _verdict(row: dict) -> str:
    if row["met"] is None:
        return ""
    missed = [str(s["seed"]) for s in row["seeds"] if not s["met"]]
    return "yes" if not missed else "no: seed " + ", ".join(missed)


def summary_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The summary as text, for the terminal and the report: a header, then one row per
    number (change after vs before, with its 95% interval, on each seed; mean, min and max
    over the seeds; whether every seed met its target), and the reward models' accuracy."""
    seeds = summary["seeds"]
    header = ["change", "target", *(f"seed {s}" for s in seeds), "mean", "min", "max", "met"]
    rows = []
    for row in summary["metrics"]:
        metric = row["metric"]
        rows.append(
            [
                metric,
                _target_text(row),
                *(_value_text(metric, s) for s in row["seeds"]),
                *(change_text(metric, row[k]) for k in ("mean", "min", "max")),
                _verdict(row),
            ]
        )
    accuracies = [s["reward_model_accuracy"] for s in summary["per_seed"]]
    values = _finite(accuracies)
    if values:
        rows.append(
            [
                "reward model held-out accuracy",
                "",
                *(dash(a, ".3f") for a in accuracies),
                f"{sum(values) / len(values):.3f}",
                f"{min(values):.3f}",
                f"{max(values):.3f}",
                "",
            ]
        )
    return header, rows


def _training(run: Path, seeds: list[int]) -> dict[str, list[dict]]:
    """Each seed's PPO metrics (checked), by its label, for the seeds that have them."""
    from rlhfkit.report import load_metrics

    logs = {seed: seed_dir(run, seed) / "ppo" / "metrics.jsonl" for seed in seeds}
    return {f"seed {seed}": load_metrics(path) for seed, path in logs.items() if path.is_file()}


def _seed_sections(run: Path, summary: dict) -> list[dict]:
    from rlhfkit.eval.run import summary_header, summary_rows

    sections = []
    for entry in summary["per_seed"]:
        seed = entry["seed"]
        own_report = seed_dir(run, seed) / "report" / "report.html"
        _, result = _evaluation(run, seed) or (None, None)
        sections.append(
            {
                "seed": seed,
                "accuracy": entry["reward_model_accuracy"],
                "prompts": result["held_out"]["prompts"] if result else None,
                "samples": samples_per_prompt(result) if result else None,
                "header": summary_header(result) if result else [],
                "rows": summary_rows(result) if result else [],
                "report": own_report.relative_to(run).as_posix() if own_report.is_file() else None,
            }
        )
    return sections


def build_seeds_report(run: Path, summary: dict, out: Path | None = None) -> Path:
    """OUT/report.html (OUT: RUN/report by default) over the seeds: the summary table, the
    training curves with a line per seed, each seed's before/after table, the labelers'
    agreement, and links to each seed's own report. Self-contained: plots are embedded
    PNGs."""
    from rlhfkit.plots import page_image, plot_curves_by_seed
    from rlhfkit.report import curves_logged, render

    # Read and check every input before writing anything.
    training = _training(run, summary["seeds"])
    sections = _seed_sections(run, summary)
    heatmap = run / "agreement" / "heatmap.png"
    heatmap_png = heatmap.read_bytes() if heatmap.is_file() else None
    out = claim_directory(out or run / "report", "report")
    curves = curves_logged([r for records in training.values() for r in records])
    curves_png = plot_curves_by_seed(training, curves) if curves else None
    if curves_png:
        atomic_write(out / "training.png", curves_png)
    header, rows = summary_table(summary)
    page = render(
        "seeds.html.j2",
        run_path=str(run),
        seeds=summary["seeds"],
        all_met=summary["all_met"],
        header=header,
        rows=rows,
        curves=curves_png and page_image(curves_png, "PPO training curves, one line per seed"),
        sections=sections,
        heatmap=heatmap_png and page_image(heatmap_png, "labeler agreement heatmap"),
    )
    path = out / "report.html"
    atomic_write(path, page)
    return path


def seeds_held(run: Path) -> list[int]:
    """The seeds whose run directories RUN holds: RUN/seed-N/ made by `rlhfkit run`."""
    names = [p.name.removeprefix("seed-") for p in run.glob("seed-*")]
    seeds = {int(n) for n in names if n.isdigit()}
    return sorted(s for s in seeds if owner(seed_dir(run, s)) == "run")


def _last_summary(run: Path) -> tuple[list[int], list[TargetConfig]]:
    """The seeds and targets of RUN/summary.json, the summary the run wrote last."""
    path = run / "summary.json"
    try:
        summary = json.loads(read_text(path))
        seeds, rows = summary["seeds"], summary["metrics"]
        targets = [
            TargetConfig(metric=row["metric"], **row["target"]) for row in rows if row["target"]
        ]
        if not seeds or not all(type(s) is int and s >= 0 for s in seeds):
            raise ValueError
    except (ValueError, KeyError, TypeError):  # pydantic's ValidationError is a ValueError
        raise RlhfkitError(f"{path}: not a summary over seeds as `rlhfkit run` writes it") from None
    return seeds, targets


def report_over_seeds(run: Path, out: Path | None = None) -> Path | None:
    """`rlhfkit report RUN` on a run over seeds: RUN/summary.json and RUN/report/ made afresh
    from the seeds' evaluations, as the run makes them, for the seeds and targets of the
    summary the run wrote last (before its first: every seed directory RUN holds, without
    targets). None when RUN holds no run over seeds."""
    if (run / "summary.json").is_file():
        seeds, targets = _last_summary(run)
    else:
        seeds, targets = seeds_held(run), []
    if not seeds:
        return None
    return build_seeds_report(run, write_summary(run, seeds, targets), out)
