"""`rlhfkit run CONFIG.yaml`: the stages as one run, each writing into its own folder of the
run directory:

    generate  → feedback.db, generate/completions.jsonl   sample completions to rank
    label     → label/labels.json                          automatic labelers rank them
    agreement → agreement/agreement.json, heatmap.png      how much the labelers agree
    pairs     → pairs/pairs.jsonl                          consensus rankings → C(n,2) pairs
    train-rm  → rm/                                        the reward model
    ppo       → ppo/                                       PPO against it, LoRA policy
    eval      → eval/eval.json                             before vs after, held-out prompts
    report    → report/report.html                         everything on one page

A stage is done when its folder holds `done.json`, written last; a rerun skips done stages
and redoes (or, for PPO, resumes) an unfinished one, so an interrupted run — or a full
disk — costs at most the stage it stopped in. Once a stage has run, the stages after it
run again too: their outputs were made from what it replaced. The whole config is kept in the run
directory, and a different config is refused there before any work starts.

The run directory must be new, empty, or made by rlhfkit (its `.rlhfkit` marker file says
so; each stage's folder has its own), and nothing is written in it until every check has
passed: a folder of the user's is never overwritten or deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from rlhfkit.config import StageConfig, read_yaml_settings
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import (
    atomic_write,
    check_ours,
    claim_directory,
    remove_if_unused,
    remove_ours,
)

STAGES = ["generate", "label", "agreement", "pairs", "train-rm", "ppo", "eval", "report"]
Stage = Literal["generate", "label", "agreement", "pairs", "train-rm", "ppo", "eval", "report"]
PROJECT = "run"  # the feedback project inside the run's own store
NEEDS = {  # stage → stages whose outputs it reads
    "label": ["generate"],
    "agreement": ["label"],
    "pairs": ["label"],
    "train-rm": ["pairs"],
    "eval": ["ppo"],
}


class GenerateStage(StageConfig):
    setting = "generate setting"
    limit: int | None = Field(200, ge=1, description="training prompts to sample for")
    n: int = Field(4, ge=2, description="completions per prompt, to be ranked")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1)


class Labeler(StageConfig):
    setting = "labeler setting"
    name: str
    reward: str = "scorer:profanity"
    noise: float = Field(0.5, ge=0, description="in standard deviations of the reward")
    seed: int = 0


def _three_labelers() -> list[Labeler]:
    return [Labeler(name=f"ai-{k}", seed=k) for k in (1, 2, 3)]


class LabelStage(StageConfig):
    setting = "label setting"
    labelers: list[Labeler] = Field(default_factory=_three_labelers, min_length=1)


class PairsStage(StageConfig):
    setting = "pairs setting"
    method: Literal["borda", "tideman"] = "borda"
    min_tau: float | None = Field(0.2, description="exclude labelers below it; null: nobody")


class PipelineConfig(StageConfig):
    """A run: which stages, the shared defaults, and each stage's own settings (PPO, reward
    model and eval settings are those of `rlhfkit ppo`, `train-rm` and `eval`)."""

    setting = "pipeline setting"

    run_dir: str
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)
    model: str = "smollm2-135m-instruct"
    prompts: str = "builtin:rtp"
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="prompts held out for eval")
    seed: int = 0
    generate: GenerateStage = Field(default_factory=GenerateStage)
    label: LabelStage = Field(default_factory=LabelStage)
    pairs: PairsStage = Field(default_factory=PairsStage)
    train_rm: dict[str, Any] = Field(default_factory=dict, alias="train-rm")
    ppo: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _in_order(self) -> PipelineConfig:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("a stage is listed twice")
        self.stages = sorted(self.stages, key=STAGES.index)
        return self

    @property
    def run(self) -> Path:
        return Path(self.run_dir)

    def rm_config(self):
        from rlhfkit.reward.train import RMConfig

        return RMConfig.make(**{"seed": self.seed, **self.train_rm})

    def ppo_config(self):
        from rlhfkit.rl.ppo import PPOConfig

        defaults = {
            "model": self.model,
            "prompts": self.prompts,
            "split": "train",
            "eval_fraction": self.eval_fraction,
            "reward": f"rm:{self.run / 'rm'}",
            "seed": self.seed,
        }
        return PPOConfig.make(**{**defaults, **self.ppo})

    def eval_config(self):
        from rlhfkit.eval.run import EvalConfig

        ppo = self.ppo_config()
        defaults = {
            "policy": str(self.run / "ppo" / "policy"),
            "reference": ppo.model,
            "prompts": ppo.prompts,
            "eval_fraction": ppo.eval_fraction,
            "reward": ppo.reward,
            "max_new_tokens": ppo.max_new_tokens,
            "temperature": ppo.temperature,
            "mode": ppo.mode,
            "seed": self.seed,
        }
        return EvalConfig.make(**{**defaults, **self.eval})


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline YAML; every stage's settings are checked now, so a typo in
    the last stage fails before the first one starts."""
    path = Path(path)
    values = read_yaml_settings(path, "pipeline settings")
    try:
        config = PipelineConfig.make(**values)
        config.rm_config(), config.ppo_config(), config.eval_config()
    except RlhfkitError as e:
        raise RlhfkitError(f"{path}: {e}") from None
    return config


class Reporter:
    """What a pipeline reports as it goes; the CLI draws it, the default says nothing."""

    def stage(self, name: str, note: str) -> None: ...

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1, description: str | None = None) -> None: ...

    def done(self, name: str, seconds: float, summary: str) -> None: ...

    def warn(self, message: str) -> None: ...


def _done_file(run: Path, stage: str) -> Path:
    return run / stage / "done.json"


def is_done(run: Path, stage: str) -> bool:
    return _done_file(run, stage).is_file()


def _folders(config: PipelineConfig) -> dict[Path, str]:
    """Every folder the run writes in or may delete, with the stage that owns it."""
    folders = {config.run / stage: stage for stage in STAGES}
    folders[config.run / "rm"] = "train-rm"  # the reward model, beside train-rm's done.json
    return folders


def check_run_dir(config: PipelineConfig) -> None:
    """The run directory is new, empty, or one of ours holding a run of this config (the
    stage list may grow between runs), and so is each stage's folder in it. Reads only."""
    check_ours(config.run, "run")
    for folder, stage in _folders(config).items():
        check_ours(folder, stage)
    saved = config.run / "pipeline.json"
    if saved.is_file():
        theirs = json.loads(saved.read_text())
        mine = _settings(config)
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise RlhfkitError(
                f"{config.run} holds a run of a different config (differs in "
                f"{', '.join(changed)}): use another run_dir, or delete {config.run}"
            )


def _settings(config: PipelineConfig) -> dict:
    return config.model_dump(mode="json", by_alias=True, exclude={"stages"})


def start_run_dir(config: PipelineConfig, config_path: str | None = None) -> None:
    """Mark the run directory as ours and keep the config in it: once the checks passed."""
    claim_directory(config.run, "run")
    saved = config.run / "pipeline.json"
    if not saved.is_file():
        atomic_write(saved, json.dumps(_settings(config), indent=2))
    text = (
        Path(config_path).read_text(encoding="utf-8")
        if config_path
        else yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
    )
    atomic_write(config.run / "config.yaml", text)


def preflight(config: PipelineConfig) -> None:
    """Everything a stage needs exists or will be made earlier in this run, and the models
    named load, before any heavy work."""
    from rlhfkit.models import resolve_model
    from rlhfkit.reward import load_reward

    todo = [s for s in config.stages if not is_done(config.run, s)]
    for stage in todo:
        for need in NEEDS.get(stage, []):
            if need not in config.stages and not is_done(config.run, need):
                raise RlhfkitError(
                    f"stage {stage} needs the output of {need}, which is neither in this run's "
                    f"stages nor done in {config.run}"
                )
    rm_dir = config.run / "rm"
    if "ppo" in todo:
        ppo = config.ppo_config()
        ppo.check_hardware()  # here, not when the config loads: eval may run elsewhere
        ours = ppo.reward == f"rm:{rm_dir}"
        if ours and "train-rm" not in config.stages and not is_done(config.run, "train-rm"):
            raise RlhfkitError(
                "stage ppo needs the reward model of train-rm: add train-rm to the stages, "
                "or set ppo.reward"
            )
        if not ours:
            load_reward(ppo.reward)
        resolve_model(ppo.model)
    if "report" in todo and not (
        {"ppo", "eval"} & set(config.stages)
        or is_done(config.run, "ppo")
        or is_done(config.run, "eval")
    ):
        raise RlhfkitError("stage report needs ppo or eval: add one of them to the stages")
    if "generate" in todo:
        resolve_model(config.model)


def run_pipeline(
    config: PipelineConfig, config_path: str | None = None, progress: Reporter | None = None
):
    """Run the config's stages in order, skipping those done; returns one row per stage:
    (stage, "ran" | "skipped", seconds, summary)."""
    progress = progress or Reporter()
    check_run_dir(config)
    preflight(config)
    start_run_dir(config, config_path)  # nothing is written before the checks pass
    rows = []
    upstream_ran = False
    for stage in config.stages:
        if upstream_ran and is_done(config.run, stage):  # made from outputs now replaced
            remove_ours(config.run / stage, stage)
        if is_done(config.run, stage):
            summary = json.loads(_done_file(config.run, stage).read_text())["summary"]
            progress.stage(stage, "done before, skipped")
            rows.append((stage, "skipped", 0.0, summary))
            continue
        progress.stage(stage, "")
        claim_directory(config.run / stage, stage)
        started = time.perf_counter()
        try:
            summary = RUNNERS[stage](config, progress)
        except BaseException:
            remove_if_unused(config.run / stage)  # a stage that failed at once leaves no folder
            raise
        seconds = time.perf_counter() - started
        atomic_write(
            _done_file(config.run, stage),
            json.dumps({"summary": summary, "seconds": round(seconds, 1)}),
        )
        progress.done(stage, seconds, summary)
        rows.append((stage, "ran", seconds, summary))
        upstream_ran = True
    return rows


# --- the stages: each reads its inputs from the run directory and writes its folder -------


def _store(config: PipelineConfig):
    from rlhfkit.feedback.store import Store

    return Store(f"sqlite:///{config.run / 'feedback.db'}")


def run_generate(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.generation import SamplingParams
    from rlhfkit.stages.generate import run_generate as generate

    g = config.generate
    result = generate(
        _store(config),
        PROJECT,
        prompts=config.prompts,
        n=g.n,
        model=config.model,
        params=SamplingParams(
            temperature=g.temperature, max_new_tokens=g.max_new_tokens, mode="auto"
        ),
        split="train",
        eval_fraction=config.eval_fraction,
        limit=g.limit,
        batch_size=g.batch_size,
        seed=config.seed,
        out=config.run / "generate" / "completions.jsonl",
        on_start=lambda n: progress.start("sampling completions", n),
        on_progress=progress.advance,
    )
    return f"{result.prompts} prompts × {g.n} completions ({result.completions_stored} stored)"


def run_label(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.reward import load_reward
    from rlhfkit.reward.labelers import auto_label

    store = _store(config)
    counts = {}
    for labeler in config.label.labelers:
        progress.start(f"labeler {labeler.name}", None)
        ranked = auto_label(
            store,
            PROJECT,
            load_reward(labeler.reward),
            labeler.name,
            labeler.noise,
            labeler.seed,
            on_progress=progress.advance,
        )
        counts[labeler.name] = sum(ranked.values())
    atomic_write(config.run / "label" / "labels.json", json.dumps(counts, indent=2))
    return ", ".join(f"{name}: {n} rankings" for name, n in counts.items())


def run_agreement(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.feedback.summary import agreement_summary

    folder = config.run / "agreement"
    folder.mkdir(parents=True, exist_ok=True)
    summary = agreement_summary(
        _store(config),
        PROJECT,
        config.pairs.method,
        config.pairs.min_tau if config.pairs.min_tau is not None else 0.2,
        heatmap=folder / "heatmap.png",
    )
    atomic_write(folder / "agreement.json", json.dumps(summary, indent=2))
    flagged = [a["labeler"] for a in summary["labelers"] if a.get("flagged")]
    alpha = summary["krippendorff_alpha"]
    return (
        f"Krippendorff's α {'–' if alpha is None else f'{alpha:.2f}'}, pairwise agreement "
        f"{summary['pairwise_agreement']:.2f}, flagged: {', '.join(flagged) or 'none'}"
    )


def run_pairs(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.feedback.pairs import build_pairs
    from rlhfkit.feedback.store import get_project

    with _store(config).session() as session:
        result = build_pairs(
            session, get_project(session, PROJECT), config.pairs.method, False, config.pairs.min_tau
        )
    if not result.pairs:
        raise RlhfkitError("the rankings gave no pairs (every ranking a tie?)")
    write_jsonl(config.run / "pairs" / "pairs.jsonl", result.pairs)
    return f"{len(result.pairs)} pairs from {result.prompts} prompts, {result.ties} ties skipped"


def run_train_rm(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.reward.train import train_reward_model

    out = config.run / "rm"
    remove_ours(out, "train-rm")  # a half-trained model from an interrupted run

    def on_event(kind: str, data: dict) -> None:
        if kind == "start":
            progress.start("training the reward model", data.get("steps"))
        elif kind == "step":
            progress.advance(1)
        elif kind == "warning":
            progress.warn(data.get("message", str(data)))

    summary = train_reward_model(
        config.run / "pairs" / "pairs.jsonl", out, config.rm_config(), on_event
    )
    accuracy = summary.get("metrics", {}).get("eval_accuracy")
    return "held-out pair accuracy " + ("–" if accuracy is None else f"{accuracy:.3f}")


def run_ppo_stage(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.rl.trainer import CHECKPOINT, run_ppo

    ppo = config.ppo_config()
    out = config.run / "ppo"
    resume = (out / CHECKPOINT).exists()
    if not resume:
        remove_ours(out, "ppo")  # a run killed before its first checkpoint: start afresh
    progress.start("PPO" + (" (resumed)" if resume else ""), ppo.steps)

    def show(record: dict) -> None:
        progress.advance(
            1,
            f"PPO: reward {record['reward_mean']:+.3f}, KL {record['kl']:.2f}, "
            f"{record['tokens_per_s']:.0f} tok/s",
        )

    result = run_ppo(ppo, out, resume=resume, on_step=show)
    return (
        f"{result['steps']} steps ({result['stopped']}), last mean reward "
        f"{result.get('reward_mean', float('nan')):+.3f}, KL {result.get('kl', float('nan')):.2f}"
    )


def run_eval_stage(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.eval.run import finite, run_eval

    settings = config.eval_config()
    result = run_eval(
        settings,
        on_start=lambda n: progress.start("evaluating before vs after", n),
        on_progress=progress.advance,
        on_warning=progress.warn,
    )
    atomic_write(config.run / "eval" / "eval.json", json.dumps(finite(result), indent=1))
    headline = settings.scorers[0]
    before, after = (result["models"][k][headline] for k in ("before", "after"))
    return (
        f"{headline}: toxic share {before['toxic_share']:.1%} → {after['toxic_share']:.1%}, "
        f"mean {before['mean']:.3f} → {after['mean']:.3f}"
    )


def run_report(config: PipelineConfig, progress: Reporter) -> str:
    from rlhfkit.report import build_report

    return str(build_report(config.run))


RUNNERS: dict[str, Callable[[PipelineConfig, Reporter], str]] = {
    "generate": run_generate,
    "label": run_label,
    "agreement": run_agreement,
    "pairs": run_pairs,
    "train-rm": run_train_rm,
    "ppo": run_ppo_stage,
    "eval": run_eval_stage,
    "report": run_report,
}
