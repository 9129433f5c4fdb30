"""`rlhfkit run CONFIG.yaml`: the stages as one run, each writing into its own folder of the
run directory:

    revise    → revise/revisions.jsonl                    Constitutional AI, stage 1:
                                                          red-team answers criticised
                                                          and revised (optional)
    sft       → sft/policy                                fine-tuned on the revisions; then
                                                          generate and PPO start from it
    generate  → feedback.db, generate/completions.jsonl   sample completions to rank
    label     → label/labels.json                          automatic labelers (or an AI
                                                          judge of a constitution) rank them
    agreement → agreement/agreement.json, heatmap.png      how much the labelers agree
    pairs     → pairs/pairs.jsonl                          consensus rankings → C(n,2) pairs
    train-rm  → rm/ (its done.json in train-rm/)           the reward model
    dpo       → dpo/policy                                 DPO on the pairs (optional: PPO
                                                          then starts from it)
    ppo       → ppo/                                       PPO against it, LoRA policy
    eval      → eval/eval.json                             before vs after (vs the SFT and
                                                          DPO policies), held-out prompts
    report    → report/report.html                         everything on one page

A stage is done when its folder holds `done.json`, written last; a rerun skips done stages
and redoes (or, for PPO, resumes) an unfinished one, so an interrupted run — or a full
disk — costs at most the stage it stopped in. Once a stage has run, the stages after it
run again too: their outputs were made from what it replaced. The whole config is kept in the run
directory, and a different config is refused there before any work starts.

With `seeds: [0, 1, 2]` the shared stages (generate, label, agreement, pairs) run once, as
above, and the rest once per seed in RUN/seed-N/ with seed N, a run directory of its own
reading the shared pairs; then RUN/summary.json gathers the seeds' evaluations against the
config's `targets`, and RUN/report/ shows them side by side (`rlhfkit.seeds`). The seed list
and the targets are not part of the config a run directory is checked against: adding a
seed runs only that seed.

The run directory must be new, empty, or made by rlhfkit (its `.rlhfkit` marker file says
so; each stage's folder has its own), and nothing is written in it until every check has
passed: a folder of the user's is never overwritten or deleted.

This module keeps the config, the order of the stages, their done-markers and the run loop;
each stage's runner is in `rlhfkit.stages`.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from rlhfkit.config import RetiredName, StageConfig, read_yaml_settings
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import (
    atomic_write,
    check_ours,
    claim_directory,
    remove_if_unused,
    remove_ours,
)
from rlhfkit.progress import Progress
from rlhfkit.seeds import TargetConfig, check_targets
from rlhfkit.stages.cai import ReviseConfig, revise_stage, sft_stage
from rlhfkit.stages.evaluate import eval_stage, report_stage
from rlhfkit.stages.generate import GenerateConfig, generate_stage
from rlhfkit.stages.label import LabelConfig, label_stage
from rlhfkit.stages.pairs import PairsConfig, agreement_stage, pairs_stage
from rlhfkit.stages.train import dpo_stage, ppo_stage, train_rm_stage
from rlhfkit.trackers import Tracker

Stage = Literal[
    "revise",
    "sft",
    "generate",
    "label",
    "agreement",
    "pairs",
    "train-rm",
    "dpo",
    "ppo",
    "eval",
    "report",
]
STAGES: list[str] = list(get_args(Stage))  # in the order they run
OPTIONAL_STAGES = ["revise", "sft", "dpo"]  # Constitutional AI's stage 1, DPO: when listed
DEFAULT_STAGES = [s for s in STAGES if s not in OPTIONAL_STAGES]
NEEDS = {  # stage → stages whose outputs it reads (eval: the policy it evaluates)
    "sft": ["revise"],
    "label": ["generate"],
    "agreement": ["label"],
    "pairs": ["label"],
    "train-rm": ["pairs"],
    "dpo": ["pairs"],
}
# once per run, whatever the seeds
SHARED_STAGES = ["revise", "sft", "generate", "label", "agreement", "pairs"]
# Settings a run directory is not checked against: adding a seed or a target is the same run.
NOT_COMPARED = {"stages", "seeds", "targets", "report_to"}
Seed = Annotated[int, Field(strict=True, ge=0)]


def _section_settings() -> dict[str, type[StageConfig]]:
    """The settings class of each stage section a pipeline keeps as a plain mapping."""
    from rlhfkit.eval.run import EvalConfig
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.reward_model import RMConfig
    from rlhfkit.train.sft import SFTConfig

    return {"sft": SFTConfig, "train-rm": RMConfig, "train_rm": RMConfig, "dpo": DPOConfig,
            "ppo": PPOConfig, "eval": EvalConfig}  # fmt: skip


def renew_sections(values: dict, quiet: bool = False) -> dict:
    """A pipeline's settings with the retired names in its stage sections put as the new ones
    (the sections kept as mappings; the others are settings classes that do it themselves)."""
    values = dict(values)
    for key, settings in _section_settings().items():
        if isinstance(values.get(key), dict):
            values[key] = settings.renew(values[key], quiet)
    return values


class PipelineConfig(StageConfig):
    """A run: which stages, the shared defaults, and each stage's own settings (PPO, reward
    model and eval settings are those of `rlhfkit ppo`, `train-rm` and `eval`)."""

    setting = "pipeline setting"
    renamed = {"model": "policy"}

    run_dir: str = Field(description="the run directory every stage writes into")
    stages: list[Stage] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        min_length=1,
        description="the stages to run, in the pipeline's order whatever the order listed",
    )
    policy: str = Field(
        "smollm2-135m-instruct",
        description="the model generate samples from and training starts from",
    )
    prompts: str = Field("builtin:rtp", description="the prompt source of every stage")
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="prompts held out for eval")
    seed: int = Field(0, description="of the shared stages; each stage's default seed")
    report_to: list[Tracker] | None = Field(
        None, description="trackers of every training stage (default: tensorboard if installed)"
    )
    seeds: list[Seed] | None = Field(
        None, min_length=1, description="run the stages after pairs once per seed, in seed-N/"
    )
    targets: list[TargetConfig] = Field(default_factory=list, description="checked over the seeds")
    revise: ReviseConfig = Field(
        default_factory=ReviseConfig,
        description="Constitutional AI's stage 1, when revise is listed",
    )
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of `rlhfkit sft` (SFTConfig), when sft is listed",
    )
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train_rm: dict[str, Any] = Field(
        default_factory=dict,
        alias="train-rm",
        description="settings of `rlhfkit train-rm` (RMConfig)",
    )
    dpo: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of `rlhfkit dpo` (DPOConfig), when dpo is listed",
    )
    ppo: dict[str, Any] = Field(
        default_factory=dict, description="settings of `rlhfkit ppo` (PPOConfig)"
    )
    eval: dict[str, Any] = Field(
        default_factory=dict, description="settings of `rlhfkit eval` (EvalConfig)"
    )
    # Set on one seed's config only: the run directory holding the shared stages' outputs.
    _shared_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _retired_names_of_stages(cls, values: Any) -> Any:
        return renew_sections(values) if isinstance(values, dict) else values

    @model_validator(mode="after")
    def _in_order(self) -> PipelineConfig:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("a stage is listed twice")
        self.stages = sorted(self.stages, key=STAGES.index)
        return self

    @model_validator(mode="after")
    def _seeds_apart(self) -> PipelineConfig:
        if self.seeds is None:
            return self
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seed {twice[0]} is listed twice")
        for section in ("train-rm", "dpo", "ppo", "eval"):
            if "seed" in getattr(self, section.replace("-", "_")):
                raise ValueError(f"with seeds, each seed sets {section}'s seed: remove it")
        return self

    @property
    def run(self) -> Path:
        return Path(self.run_dir)

    def stage_dir(self, stage: str) -> Path:
        """The run directory a stage's folder is in: a seed's own, or the shared one."""
        shared = self._shared_dir if stage in SHARED_STAGES else None
        return shared or self.run

    @property
    def own_stages(self) -> list[str]:
        """The stages that run in this run directory: with seeds, only the shared ones here
        (the rest run in each seed's); in a seed's, only the rest."""
        if self.seeds is not None:
            return [s for s in self.stages if s in SHARED_STAGES]
        return [s for s in self.stages if self.stage_dir(s) == self.run]

    @property
    def starting_policy(self) -> str:
        """What generate samples from and DPO starts from: the SFT policy of this run when it
        has an sft stage, else the run's policy."""
        if self.uses("sft"):
            return str(self.stage_dir("sft") / "sft" / "policy")
        return self.policy

    def uses(self, stage: str) -> bool:
        """The stage is in this run: listed, or done in its directory before."""
        return stage in self.stages or is_done(self.stage_dir(stage), stage)

    @property
    def evaluated_stage(self) -> str:
        """Whose policy eval evaluates: PPO's, or DPO's in a run without PPO."""
        return "dpo" if self.uses("dpo") and not self.uses("ppo") else "ppo"

    def sft_config(self):
        from rlhfkit.train.sft import SFTConfig

        defaults = {"policy": self.policy, "seed": self.seed, "report_to": self.report_to}
        return SFTConfig.make(**{**defaults, **self.sft})

    def rm_config(self):
        from rlhfkit.train.reward_model import RMConfig

        return RMConfig.make(**{"seed": self.seed, "report_to": self.report_to, **self.train_rm})

    def dpo_config(self):
        """DPO from the model generate sampled from, on the prompts as they were put to it,
        holding out the prompts the reward model holds out."""
        from rlhfkit.data.prompts import default_mode
        from rlhfkit.train.dpo import DPOConfig

        defaults = {
            "policy": self.starting_policy,
            "mode": default_mode(self.prompts),  # as the generate stage put them
            "held_out_fraction": self.rm_config().held_out_fraction,
            "seed": self.seed,
            "report_to": self.report_to,
        }
        return DPOConfig.make(**{**defaults, **self.dpo})

    def ppo_config(self):
        from rlhfkit.train.ppo.step import PPOConfig

        start = self.run / "dpo" / "policy" if self.uses("dpo") else self.starting_policy
        defaults = {
            "policy": str(start),
            "prompts": self.prompts,
            "split": "train",
            "eval_fraction": self.eval_fraction,
            "reward": f"rm:{self.run / 'rm'}",
            "seed": self.seed,
            "report_to": self.report_to,
        }
        return PPOConfig.make(**{**defaults, **self.ppo})

    def rewards_with_own_rm(self, ppo) -> bool:
        """Whether PPO's reward is this run's reward model (train-rm's RUN/rm)."""
        return ppo.reward == f"rm:{self.run / 'rm'}"

    def eval_config(self):
        from rlhfkit.eval.run import EvalConfig

        ppo = self.ppo_config()
        trained_before_ppo = self.uses("sft") or self.uses("dpo")  # shown as columns between
        own_rm_missing = self.rewards_with_own_rm(ppo) and not self.uses("train-rm")
        defaults = {
            "policy": str(self.run / self.evaluated_stage / "policy"),
            "reference": self.policy if trained_before_ppo else ppo.policy,
            "prompts": ppo.prompts,
            "eval_fraction": ppo.eval_fraction,
            # the run's reward model, if it has one (a run of DPO alone need not)
            "reward": None if own_rm_missing else ppo.reward,
            "max_new_tokens": ppo.max_new_tokens,
            "temperature": ppo.temperature,
            "mode": ppo.mode,
            "seed": self.seed,
        }
        judges = [labeler for labeler in self.label.labelers if labeler.judge]
        if judges:  # the run's AI judge compares the answers too
            defaults |= {
                "judge": judges[0].judge,
                "endpoint_model": judges[0].endpoint_model,
                "api_key_env": judges[0].api_key_env,
                "constitution": judges[0].constitution,
            }
        return EvalConfig.make(**{**defaults, **self.eval})


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline YAML; every stage's settings are checked now, so a typo in
    the last stage fails before the first one starts."""
    path = Path(path)
    values = read_yaml_settings(path, "pipeline settings")
    try:
        config = PipelineConfig.make(**values)
        config.sft_config(), config.rm_config(), config.dpo_config(), config.ppo_config()
        evaluation = config.eval_config()
        check_targets(config.targets, evaluation)
    except RlhfkitError as e:
        raise RlhfkitError(f"{path}: {e}") from None
    return config


def with_settings(config: PipelineConfig, **changes) -> PipelineConfig:
    """The config with these top-level settings changed (checked again, stages put in
    order), e.g. stages, seeds or report_to from the command line."""
    return PipelineConfig.make(**{**config.model_dump(by_alias=True), **changes})


def with_seeds(config: PipelineConfig, seeds: list[int]) -> PipelineConfig:
    """The config with another list of seeds (checked)."""
    return with_settings(config, seeds=seeds)


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` as a list of seeds; anything but whole numbers is a one-line error."""
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        raise RlhfkitError("--seeds: no seeds given (for example --seeds 0,1,2)")
    for part in parts:
        if not part.isdigit():
            raise RlhfkitError(f"--seeds: '{part}' is not a whole number (for example 0,1,2)")
    return [int(part) for part in parts]


def seed_config(config: PipelineConfig, seed: int) -> PipelineConfig:
    """One seed's run: the stages after the shared ones, in RUN/seed-N/, with seed N for the
    reward model, PPO and eval, reading the shared stages' outputs from RUN."""
    one = config.model_copy(
        update={"run_dir": str(config.run / f"seed-{seed}"), "seed": seed, "seeds": None}
    )
    one._shared_dir = config.run
    return one


def _parts(config: PipelineConfig) -> list[PipelineConfig]:
    """The run directories a run works in: its own, then each seed's."""
    return [config, *(seed_config(config, seed) for seed in config.seeds or [])]


# Stages whose folder is their domain function's output directory, which that function
# checks and claims itself (run_ppo: RUN/ppo), so the run loop leaves it to them.
CLAIM_THEIR_OWN = {"ppo", "sft", "dpo"}


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
        # A setting rlhfkit gained since the run was made counts as its default there.
        theirs = _saved_settings(config, json.loads(saved.read_text()))
        mine = _settings(config)
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise RlhfkitError(
                f"{config.run} holds a run of a different config (differs in "
                f"{', '.join(changed)}): use another run_dir, or delete {config.run}"
            )


def _saved_settings(config: PipelineConfig, saved: dict) -> dict:
    """The settings a run directory was saved with, under today's names (every settings
    class renews its own retired ones, silently here: the user wrote none of them) and with
    the settings rlhfkit gained since then at their defaults (which is what the run had)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RetiredName)
        try:
            return _settings(PipelineConfig(**{"run_dir": config.run_dir, **saved}))
        except ValidationError:  # no longer valid: compared as it was
            saved = renew_sections(PipelineConfig.renew(saved, quiet=True), quiet=True)
            return {**_settings(PipelineConfig(run_dir=config.run_dir)), **saved}


def _settings(config: PipelineConfig) -> dict:
    return config.model_dump(mode="json", by_alias=True, exclude=NOT_COMPARED)


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
    """Everything a stage needs exists or will be made earlier in this run, the models
    named load, and eval's prompts are in its split, before any heavy work."""
    from rlhfkit.eval.run import held_out_prompts
    from rlhfkit.models import resolve_model
    from rlhfkit.reward import load_reward

    todo = [s for s in config.own_stages if not is_done(config.run, s)]
    for stage in todo:
        needs = [config.evaluated_stage] if stage == "eval" else NEEDS.get(stage, [])
        for need in needs:
            where = config.stage_dir(need)
            if need not in config.stages and not is_done(where, need):
                raise RlhfkitError(
                    f"stage {stage} needs the output of {need}, which is neither in this run's "
                    f"stages nor done in {where}"
                )
    if "ppo" in todo:
        ppo = config.ppo_config()
        ppo.check_hardware()  # here, not when the config loads: eval may run elsewhere
        ours = config.rewards_with_own_rm(ppo)
        if ours and not config.uses("train-rm"):
            raise RlhfkitError(
                "stage ppo needs the reward model of train-rm: add train-rm to the stages, "
                "or set ppo.reward"
            )
        if not ours:
            load_reward(ppo.reward)
        if not config.uses("sft"):
            resolve_model(ppo.policy)
    if "eval" in todo:  # a limit beyond the split, refused now rather than after PPO
        held_out_prompts(config.eval_config())
    if "report" in todo and not (
        {"ppo", "eval"} & set(config.stages)
        or is_done(config.run, "ppo")
        or is_done(config.run, "eval")
    ):
        raise RlhfkitError("stage report needs ppo or eval: add one of them to the stages")
    if "dpo" in todo and not config.uses("sft"):
        resolve_model(config.dpo_config().policy)
    if {"generate", "revise", "sft"} & set(todo):
        resolve_model(config.policy)


def run_pipeline(
    config: PipelineConfig, config_path: str | None = None, progress: Progress | None = None
):
    """Run the config's stages in order, skipping those done; returns one row per stage:
    (stage, "ran" | "skipped", seconds, summary), a seed's stages named `seed-N/STAGE`. Each
    stage's start and end is a note and a `done` of `progress`, which the stages report
    their own work to. With seeds, the shared stages run first, then each seed's, then the
    summary over the seeds and its report."""
    progress = progress or Progress()
    parts = _parts(config)
    for part in parts:  # every directory is checked before any is written in
        check_run_dir(part)
    for part in parts:
        try:
            preflight(part)
        except RlhfkitError as e:
            raise RlhfkitError(f"{part.run.name}: {e}" if part is not config else str(e)) from None
    start_run_dir(config, config_path)  # nothing is written before the checks pass
    for part in parts[1:]:
        start_run_dir(part)
    rows, shared_ran = _run_stages(config, progress, upstream_ran=False)
    for part in parts[1:]:
        rows += _run_stages(part, progress, upstream_ran=shared_ran, prefix=f"{part.run.name}/")[0]
    if config.seeds is not None:
        rows += _over_seeds(config, progress)
    return rows


def _run_stages(
    config: PipelineConfig, progress: Progress, upstream_ran: bool, prefix: str = ""
) -> tuple[list, bool]:
    """The stages of one run directory; returns their rows and whether any of them ran.
    `upstream_ran`: a stage this directory reads from ran before, so its done stages are
    made from outputs now replaced."""
    run = config.run
    rows = []
    for stage in config.own_stages:
        name = prefix + stage
        if upstream_ran and is_done(run, stage):
            remove_ours(run / stage, stage)
        if is_done(run, stage):
            summary = json.loads(_done_file(run, stage).read_text())["summary"]
            progress.note(f"== {name}: done before, skipped")
            rows.append((name, "skipped", 0.0, summary))
            continue
        progress.note(f"== {name}")
        if stage not in CLAIM_THEIR_OWN:
            claim_directory(run / stage, stage)
        started = time.perf_counter()
        try:
            summary = run_stage(config, stage, progress)
        except BaseException:
            remove_if_unused(run / stage)  # a stage that failed at once leaves no folder
            raise
        seconds = time.perf_counter() - started
        atomic_write(
            _done_file(run, stage),
            json.dumps({"summary": summary, "seconds": round(seconds, 1)}),
        )
        progress.done(f"   {summary} ({seconds:.0f} s)")
        rows.append((name, "ran", seconds, summary))
        upstream_ran = True
    return rows, upstream_ran


def _over_seeds(config: PipelineConfig, progress: Progress) -> list:
    """RUN/summary.json over the seeds and, with the report stage, RUN/report/: made afresh
    each time (in seconds), so they always show the seeds listed now."""
    from rlhfkit.seeds import build_seeds_report, summary_line, write_summary

    progress.note("== summary over the seeds")
    summary = write_summary(config.run, config.seeds, config.targets)
    rows = [("summary", "ran", 0.0, summary_line(summary))]
    if "report" in config.stages:
        progress.note("== report over the seeds")
        # A report done here by a run without seeds is replaced: let such a run redo it.
        _done_file(config.run, "report").unlink(missing_ok=True)
        started = time.perf_counter()
        path = build_seeds_report(config.run, summary)
        rows.append(("report", "ran", time.perf_counter() - started, str(path)))
    return rows


def run_stage(config: PipelineConfig, stage: str, progress: Progress) -> str:
    """Run one stage's runner with its settings from the config; returns its summary."""
    run = config.run
    match stage:
        case "revise":
            return revise_stage(
                run, config.revise, config.policy, config.eval_fraction, config.seed, progress
            )
        case "sft":
            return sft_stage(run, config.sft_config(), progress)
        case "generate":
            return generate_stage(
                run,
                config.generate,
                config.starting_policy,
                config.prompts,
                config.eval_fraction,
                config.seed,
                progress,
            )
        case "label":
            return label_stage(run, config.label, progress)
        case "agreement":
            return agreement_stage(run, config.pairs, progress)
        case "pairs":
            return pairs_stage(run, config.pairs, progress)
        case "train-rm":  # a seed's reads the pairs its seeds share
            pairs = config.stage_dir("pairs") / "pairs" / "pairs.jsonl"
            return train_rm_stage(run, pairs, config.rm_config(), progress)
        case "dpo":
            pairs = config.stage_dir("pairs") / "pairs" / "pairs.jsonl"
            return dpo_stage(run, pairs, config.dpo_config(), progress)
        case "ppo":
            return ppo_stage(run, config.ppo_config(), progress)
        case "eval":
            return eval_stage(run, config.eval_config(), progress)
        case "report":
            return report_stage(run, progress)
    raise ValueError(f"unknown stage {stage}")
