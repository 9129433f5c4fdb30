"""`rlhfkit compare CONFIG.yaml`: alignment methods side by side on the same feedback.

The shared stages of a run (generate, label, agreement, pairs, and a reward model per seed)
run once, as `rlhfkit run` runs them; then each method of the config trains from the same
model on the same pairs or reward model, and is evaluated on the same held-out prompts with
the same scorers and seed:

    ppo     PPO against the reward model (settings: `ppo`, then the method's own; GAE,
            RLOO or GRPO is its `advantage`)
    dpo     DPO on the pairs (settings: `dpo`, then the method's own)
    best_of the reference's best of N samples by the reward model: no training

Each method of each seed runs in a fresh process (`--only`), so its wall time and peak
memory are its own, into RUN/seed-N/methods/NAME/: `train/` (the trainer's run directory,
resumed if the process was stopped), `eval.json`, and `result.json` written last (a method
with it is done and skipped). RUN/comparison.json, .png and .html gather them.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rlhfkit.config import StageConfig, read_yaml_settings
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval import registry
from rlhfkit.files import atomic_write, claim_directory
from rlhfkit.formatting import DASH
from rlhfkit.progress import Progress

SHARED = ["generate", "label", "agreement", "pairs", "train-rm"]


class MethodConfig(StageConfig):
    """One method: exactly one of `ppo` (settings over the common PPO ones), `dpo` (over the
    common DPO ones) or `best_of` (N)."""

    setting = "method setting"

    ppo: dict[str, Any] | None = Field(
        None, description="PPO settings over the common `ppo:` ones (any `advantage`)"
    )
    dpo: dict[str, Any] | None = Field(None, description="DPO settings over the common `dpo:` ones")
    best_of: int | None = Field(
        None,
        ge=2,
        description="N: the reference's best of N samples by the reward model, no training",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> MethodConfig:
        given = [k for k in ("ppo", "dpo", "best_of") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a method is one of ppo, dpo or best_of, not {given or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("ppo", "dpo", "best_of") if getattr(self, k) is not None)


class CompareConfig(StageConfig):
    """Settings of `rlhfkit compare`: the shared stages, then every method from the same
    model, pairs and reward model, once per seed."""

    setting = "compare setting"

    run_dir: str = Field(
        description="where the comparison's shared stages and each method's folder go"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="the shared stages once; a reward model and every method once per seed",
    )
    pipeline: dict[str, Any] = Field(
        default_factory=dict, description="the shared stages' settings, as in `rlhfkit run`"
    )
    ppo: dict[str, Any] = Field(default_factory=dict, description="every PPO method's")
    dpo: dict[str, Any] = Field(default_factory=dict, description="every DPO method's")
    eval: dict[str, Any] = Field(default_factory=dict, description="every method's")
    methods: dict[str, MethodConfig] = Field(
        min_length=1, description="each method by its name: one of ppo, dpo or best_of"
    )

    @model_validator(mode="before")
    @classmethod
    def _retired_names_of_sections(cls, values: Any) -> Any:
        """Retired names in the sections kept as mappings, put as the new ones."""
        if not isinstance(values, dict):
            return values
        from rlhfkit.pipeline import PipelineConfig, renew_sections

        values = renew_sections(values)
        if isinstance(values.get("pipeline"), dict):
            values["pipeline"] = renew_sections(PipelineConfig.renew(values["pipeline"]))
        if isinstance(values.get("methods"), dict):
            values["methods"] = {
                name: renew_sections(method) if isinstance(method, dict) else method
                for name, method in values["methods"].items()
            }
        return values

    @property
    def run(self) -> Path:
        return Path(self.run_dir)

    def shared(self):
        """The `rlhfkit run` config of the shared stages (its reward models per seed)."""
        from rlhfkit.pipeline import PipelineConfig

        return PipelineConfig.make(
            **{**self.pipeline, "run_dir": self.run_dir, "stages": SHARED, "seeds": self.seeds}
        )

    def method_dir(self, seed: int, name: str) -> Path:
        return self.run / f"seed-{seed}" / "methods" / name

    def seed_run(self, seed: int):
        """The `rlhfkit run` config of one seed: its defaults for PPO and DPO, its reward model."""
        from rlhfkit.pipeline import seed_config

        return seed_config(self.shared(), seed)

    def ppo_config(self, seed: int, method: MethodConfig):
        from rlhfkit.train.ppo.step import PPOConfig

        defaults = self.seed_run(seed).ppo_config().model_dump()
        return PPOConfig.make(**{**defaults, **self.ppo, **method.ppo})

    def dpo_config(self, seed: int, method: MethodConfig):
        from rlhfkit.train.dpo import DPOConfig

        defaults = self.seed_run(seed).dpo_config().model_dump()
        return DPOConfig.make(**{**defaults, **self.dpo, **method.dpo})

    def eval_config(self, seed: int, name: str):
        """The same prompts, scorers, reward and sampling seed for every method."""
        from rlhfkit.eval.run import EvalConfig
        from rlhfkit.train.ppo.step import PPOConfig

        method = self.methods[name]
        shared = self.shared()
        trained = self.method_dir(seed, name) / "train" / "policy"
        sampling = {  # as PPO samples
            key: self.ppo.get(key, PPOConfig.model_fields[key].default)
            for key in ("max_new_tokens", "temperature", "mode")
        }
        defaults = {
            "policy": shared.policy if method.kind == "best_of" else str(trained),
            "reference": shared.policy,
            "prompts": shared.prompts,
            "eval_fraction": shared.eval_fraction,
            "reward": self.seed_run(seed).ppo_config().reward,  # the one PPO trains against
            **sampling,
            "intermediate": False,
            "best_of": method.best_of,
            "seed": seed,
        }
        return EvalConfig.make(**{**defaults, **self.eval})


def load_compare(path: str | Path) -> CompareConfig:
    """Read and check a comparison YAML: every method's settings now, before any work."""
    path = Path(path)
    try:
        config = CompareConfig.make(**read_yaml_settings(path, "compare settings"))
        config.shared()
        for name, method in config.methods.items():
            if method.kind == "ppo":
                config.ppo_config(config.seeds[0], method)
            elif method.kind == "dpo":
                config.dpo_config(config.seeds[0], method)
            config.eval_config(config.seeds[0], name)
    except RlhfkitError as e:
        raise RlhfkitError(f"{path}: {e}") from None
    return config


def peak_memory_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_method(config: CompareConfig, seed: int, name: str, progress: Progress) -> dict:
    """Train one method of one seed (resuming), then evaluate it; writes result.json last."""
    from rlhfkit.eval.run import run_eval, write_result
    from rlhfkit.stages import resume_or_clear

    method = config.methods[name]
    out = config.method_dir(seed, name)
    train = out / "train"
    claim_directory(out, "compare")
    started = time.perf_counter()
    if method.kind == "ppo":
        from rlhfkit.train.ppo.trainer import run_ppo

        resumed = resume_or_clear(train, "ppo")
        run_ppo(config.ppo_config(seed, method), train, resume=resumed, progress=progress)
    elif method.kind == "dpo":
        from rlhfkit.train.dpo import MADE_BY, train_dpo

        resumed = resume_or_clear(train, MADE_BY)
        pairs = config.run / "pairs" / "pairs.jsonl"
        train_dpo(pairs, train, config.dpo_config(seed, method), resumed, progress)
    else:
        resumed = False
    trained = time.perf_counter()
    train_peak = peak_memory_mb()
    result = run_eval(config.eval_config(seed, name), progress)
    write_result(result, out / "eval.json")
    summary = {
        "method": name,
        "kind": method.kind,
        "seed": seed,
        # this process's share of the training, if an earlier one was stopped and resumed
        "train_seconds": round(trained - started, 1),
        "resumed": resumed,
        # best-of-n's cost is in sampling: its peak is the evaluation's, which samples N×
        "peak_mb": round(train_peak if method.kind != "best_of" else peak_memory_mb()),
        "eval_seconds": round(time.perf_counter() - trained, 1),
    }
    atomic_write(out / "result.json", json.dumps(summary, indent=2))
    return summary


def run_compare(
    config: CompareConfig, config_path: str | Path, progress: Progress | None = None
) -> dict:
    """The shared stages, then every method of every seed not done yet, each in a process of
    its own; returns the comparison (also written to RUN/comparison.*)."""
    from rlhfkit.pipeline import run_pipeline

    progress = progress or Progress()
    run_pipeline(config.shared(), progress=progress)
    for seed in config.seeds:
        for name in config.methods:
            if (config.method_dir(seed, name) / "result.json").is_file():
                progress.note(f"== seed {seed}, {name}: done before, skipped")
                continue
            progress.note(f"== seed {seed}, {name} (a process of its own)")
            command = [sys.executable, "-m", "rlhfkit", "compare", str(config_path)]
            command += ["--only", name, "--seed", str(seed)]
            if subprocess.run(command).returncode != 0:
                raise RlhfkitError(
                    f"method {name} of seed {seed} failed (its own error is above); run "
                    "again to resume it"
                )
    comparison = gather(config)
    write_comparison(config.run, comparison)
    return comparison


def _columns() -> tuple[list, list]:
    """The metrics the table shows (eval/registry.py `column`): each scorer's, its headline
    first, and the others."""
    family = registry.SCORER_NUMBERS
    scored = sorted(
        (m for m in family.members if m.column), key=lambda m: m.name != family.headline
    )
    return scored, [m for m in registry.METRICS if m.column]


def _method_numbers(result: dict, side: str, scorers: list[str]) -> dict:
    """A model's numbers the table shows, each with its change from before where it has
    one; each scorer's with their intervals, and the headline's change with its interval."""
    model = result["models"][side]
    if side == "after":
        change, change_ci = result["change"], result["change_ci"]
    elif side == "before":  # no change from itself
        change = change_ci = {}
    else:
        change = result["intermediate"][side]["change"]
        change_ci = result["intermediate"][side]["change_ci"]
    scored, others = _columns()
    numbers: dict[str, Any] = {m.name: model.get(m.name) for m in others}
    numbers.update({f"{m.name}_change": change.get(m.name) for m in others if m.change})
    headline = registry.SCORER_NUMBERS.headline
    for name in scorers:
        numbers[name] = {}
        for metric in scored:
            numbers[name][metric.name] = model[name][metric.name]
            numbers[name][f"{metric.name}_ci"] = metric.interval_of(model[name])[0]
        numbers[name][f"{headline}_change"] = change.get(name, {}).get(headline)
        numbers[name][f"{headline}_change_ci"] = change_ci.get(name, {}).get(headline)
    return numbers


def gather(config: CompareConfig) -> dict:
    """Every seed's methods (and its before-model) with their numbers, time and memory."""
    rows = []
    for seed in config.seeds:
        for i, name in enumerate(config.methods):
            out = config.method_dir(seed, name)
            result = json.loads((out / "eval.json").read_text())
            spent = json.loads((out / "result.json").read_text())
            scorers = result["config"]["scorers"]
            if i == 0:  # every method's before is the same model, prompts and seed
                before = _method_numbers(result, "before", scorers)
                rows.append({"seed": seed, "method": "before", **before})
            best_of = result["config"]["best_of"]
            side = f"best-of-{best_of}" if spent["kind"] == "best_of" else "after"
            rows.append({"seed": seed, **_method_numbers(result, side, scorers), **spent})
    return {"scorers": scorers, "held_out": result["held_out"], "rows": rows}


def _with_interval(x, interval, show) -> str:
    """x as `show` makes it, followed by its interval where it has one (an undefined end as a
    dash); a dash alone where x is undefined."""
    text = show(x)
    if interval is not None and text != DASH:
        text += f" [{show(interval[0])}, {show(interval[1])}]"
    return text


def table_rows(comparison: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison as a header and text rows, one per seed and method."""
    scorers = comparison["scorers"]
    scored, others = _columns()
    headline = registry.SCORER_NUMBERS.headline
    header = ["seed", "method"]
    for name in scorers:
        short = registry.SCORER_NUMBERS.short(name)
        columns = [m.column.format(scorer=short) for m in scored]
        header += [columns[0], "change", *columns[1:]]  # the headline's change beside it
    header += [m.column for m in others] + ["train s", "eval s", "peak MB"]
    rows = []
    for row in comparison["rows"]:
        cells = [str(row["seed"]), row["method"]]
        is_before = row["method"] == "before"
        for name in scorers:
            n = row[name]
            shown = [_with_interval(n[m.name], n[f"{m.name}_ci"], m.text) for m in scored]
            change = _with_interval(
                n[f"{headline}_change"], n[f"{headline}_change_ci"], scored[0].change_text
            )
            cells += [shown[0], "" if is_before else change, *shown[1:]]
        cells += [m.text(row.get(m.name)) for m in others]
        for key in ("train_seconds", "eval_seconds", "peak_mb"):
            cells.append("" if is_before else f"{row[key]:.0f}")
        rows.append(cells)
    return header, rows


def figure(comparison: dict) -> bytes:
    """Share toxic under the first scorer against KL, a point per seed and method, with the
    share's interval: what each method bought and what it cost in distance; a PNG."""
    from rlhfkit.plots import png_bytes, pyplot

    plt = pyplot()
    name = comparison["scorers"][0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    methods = list(dict.fromkeys(row["method"] for row in comparison["rows"]))
    for i, method in enumerate(methods):
        rows = [row for row in comparison["rows"] if row["method"] == method]
        x = [row["kl"] for row in rows]
        y = [row[name]["toxic_share"] for row in rows]
        low = [row[name]["toxic_share"] - (row[name]["toxic_share_ci"][0] or 0) for row in rows]
        high = [(row[name]["toxic_share_ci"][1] or 0) - row[name]["toxic_share"] for row in rows]
        ax.errorbar(x, y, yerr=[low, high], fmt="o", capsize=3, label=method, color=f"C{i}")
    ax.set(xlabel="KL from the reference (nats a sample)", ylabel=f"{name} share toxic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


def write_comparison(run: Path, comparison: dict) -> None:
    """RUN/comparison.json, .png (the figure) and .html (the table and the figure)."""
    from rlhfkit.eval.run import finite
    from rlhfkit.plots import page_image
    from rlhfkit.report import render

    png = figure(comparison)
    header, rows = table_rows(comparison)
    page = render(
        "compare.html.j2",
        run_path=str(run),
        prompts=comparison["held_out"]["prompts"],
        samples=comparison["held_out"]["samples_per_prompt"],
        header=header,
        rows=rows,
        figure=page_image(png, "share toxic against KL, each method and seed"),
    )
    atomic_write(run / "comparison.json", json.dumps(finite(comparison), indent=1))
    atomic_write(run / "comparison.png", png)
    atomic_write(run / "comparison.html", page)
