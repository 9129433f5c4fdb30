"""The one training loop, and what every trainer shares.

A trainer — SFT, DPO, a reward model, PPO — is a `Trainer`: it says what its step `s` does
(its own batch source and update), when it evaluates, when it checkpoints, what its
checkpoint holds beyond what the loop keeps, and when it stops early. `fit` drives any of
them the same way:

    for each step: update → a failed step (non-finite loss, PPO's KL) stops the run unkept
                   → evaluate when due → checkpoint when due, then the metrics line
                   → stop early when the trainer says so

A checkpoint (one safetensors file, checkpoint.py) holds the step, the run it belongs to
(data hash and settings), the step's metrics lines, every random state of every process,
and the trainer's own state (weights, optimiser, ...). It is written before the metrics
line of its step, so a line always has its checkpoint behind it; on resume the lines a
killed run logged after its checkpoint are dropped and the checkpoint's own put back if
the kill came before they were written. One rule decides whether a checkpoint may be
resumed (`check_same_run`): the same data and every setting the same but those the
settings class lists in `may_change_on_resume` (how long to train, where to report).
Ctrl-C takes effect between steps; the run stops saying where it can go on from.
"""

from __future__ import annotations

import functools
import json
import math
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write
from rlhfkit.progress import Progress
from rlhfkit.trackers import Tracker
from rlhfkit.train.checkpoint import (
    CHECKPOINT,
    read_state,
    refuse_old_checkpoint,
    rng_state,
    set_rng_state,
    write_state,
)
from rlhfkit.train.distributed import (
    Processes,
    load_optimizer_state,
    optimizer_state,
)


class MetricsLog:
    """A trainer's numbers, step by step: OUT/metrics.jsonl, and the trackers its settings'
    `report_to` names (trackers.py)."""

    def __init__(self, out: Path, settings=None, stage: str = ""):
        from rlhfkit.trackers import open_trackers

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report_to = getattr(settings, "report_to", None)
        dumped = settings.model_dump() if settings is not None else {}
        self.trackers = open_trackers(out, report_to, f"{stage} {out}".strip(), dumped)
        self.file = (out / "metrics.jsonl").open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        from rlhfkit.trackers import scalars

        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numbers = scalars(record)
        for tracker in self.trackers:
            tracker.log(numbers, record["step"])

    def close(self) -> None:
        self.file.close()
        for tracker in self.trackers:
            tracker.close()


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build can (on CPU it takes the step from ~170 ms to
    ~10 ms for MiniLM's 23M parameters)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def descend(loss: torch.Tensor, params: list, optimizer, max_grad_norm: float) -> float:
    """One optimiser step on `loss`, its gradient clipped to `max_grad_norm`; returns the
    gradient's norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return norm.item()


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that train (the adapter's, with LoRA), each once: named_parameters lists
    a tied weight once, where state_dict repeats it."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def load_trainable_weights(model: torch.nn.Module, weights: dict, checkpoint: Path) -> None:
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise RlhfkitError(f"{checkpoint} holds weights this model has not: {unexpected[0]}")


@dataclass(frozen=True)
class Schedule:
    """How a supervised trainer walks its data: `epochs` passes over `examples` items in
    batches (or the first `max_steps` batches of them). With `groups` (each example's
    group, e.g. its prompt) an epoch takes the groups in a shuffled order, each group's
    examples together (shuffled among themselves), so a batch holds few groups."""

    examples: int
    batch_size: int
    epochs: int
    seed: int
    max_steps: int | None = None
    groups: tuple[int, ...] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    @property
    def total_steps(self) -> int:
        every_epoch = self.steps_per_epoch * self.epochs
        return every_epoch if self.max_steps is None else min(every_epoch, self.max_steps)

    def end_of_epoch(self, steps_done: int) -> bool:
        """Whether the step that makes `steps_done` ends an epoch (or the run, when
        max_steps cuts the epoch short)."""
        return steps_done % self.steps_per_epoch == 0 or steps_done == self.total_steps

    def batch(self, step: int) -> list[int]:
        """The example indices of step `step` (0-based): each epoch in its own seeded order,
        so a resumed run takes exactly the batches the first would have."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[within * self.batch_size : (within + 1) * self.batch_size]

    @functools.cache  # noqa: B019 (a few epochs of a frozen schedule)
    def order(self, epoch: int) -> list[int]:
        """The examples of epoch `epoch` in the order it takes them (seeded by the epoch)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(self.examples))
        rng.shuffle(order)
        if self.groups is None:
            return order
        members: dict[int, list[int]] = {}
        for index in order:  # each group's members, in the shuffled order
            members.setdefault(self.groups[index], []).append(index)
        keys = list(members)
        rng.shuffle(keys)
        return [index for key in keys for index in members[key]]


class ScheduledTrainerConfig(StageConfig):
    """What every trainer of a policy that walks its examples by a `Schedule` is set by (SFT,
    DPO): the policy, how long and how fast, the held-out share, LoRA, checkpoints, the
    data's columns, trackers and the seed. Each trainer's settings add their own."""

    may_change_on_resume = frozenset({"epochs", "max_steps", "checkpoint_every", "report_to"})
    renamed = {"model": "policy", "eval_fraction": "held_out_fraction"}

    policy: str = Field("smollm2-135m-instruct", description="the model to train")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(256, ge=8, description="tokens of prompt and response together")
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="share held out, by a salted hash of the prompt"
    )
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="steps; default each epoch")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    fields: dict[str, str] = Field(
        default_factory=dict, description="the data's columns by our names, e.g. prompt: question"
    )
    report_to: list[Tracker] | None = Field(
        None, description="tensorboard, wandb, mlflow (default: tensorboard if installed)"
    )
    seed: int = 0


class Trainer:
    """What `fit` needs of a trainer. Subclasses set the attributes and override `update`
    and `state_dict`/`load_state_dict`; the other methods have the common answer."""

    made_by: str  # the command whose marker its output directory carries
    title: str  # how progress names it
    out: Path
    settings: object  # its settings class (a StageConfig), for the trackers
    total_steps: int
    generator: torch.Generator  # its own random stream (minibatch order), checkpointed
    processes: Processes | None = None  # PPO's under a launcher; None: this process alone
    # held-out numbers on a line of their own (train-rm's `eval_*`, the first before any
    # step) rather than on their step's line as `held_out_*` (SFT, DPO)
    evaluation_line: bool = False

    def update(self, step: int) -> dict:
        """Train on step `step`'s batch (0-based); the numbers to log for it, "loss" first."""
        raise NotImplementedError

    def failure(self, record: dict) -> str | None:
        """Why the step logged as `record` must not be kept, if it must not."""
        loss = record.get("loss")
        if loss is not None and not math.isfinite(loss):
            return f"the loss became {loss} at step {record['step']}"
        return None

    def evaluation_due(self, steps_done: int) -> bool:
        return False

    def evaluate(self, steps_done: int) -> dict | None:
        """The held-out numbers after `steps_done` steps (None: nothing is held out)."""
        return None

    def checkpoint_due(self, steps_done: int) -> bool:
        return True

    def stop(self, record: dict) -> str | None:
        """A reason to end the run early after the step of `record`, if there is one."""
        return None

    def kept(self, saved: int) -> str:
        """What is on disk for the user after a failed step, the last checkpoint at `saved`."""
        if not saved:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {saved}) is in {self.out}"

    def describe(self, record: dict) -> str | None:
        """The progress line after a step (None: the title)."""
        return None

    def state_dict(self) -> dict:
        """Everything but the loop's own state that a resumed run needs (called on every
        process: gathering sharded weights takes them all)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class ScheduledTrainer(Trainer):
    """A trainer of a model's trainable weights that walks its examples by a `Schedule` (SFT,
    DPO): held-out numbers and a checkpoint at each epoch's end, a checkpoint every
    `checkpoint_every` steps too. Its checkpoint holds the trained weights, the optimiser, the
    evaluations so far and `extra_state()`. Subclasses give `update` and `held_out`."""

    def __init__(self, model, settings, out: Path, schedule: Schedule):
        self.model, self.settings, self.out, self.schedule = model, settings, Path(out), schedule
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.total_steps = schedule.total_steps
        self.evals: list[dict] = []  # the held-out numbers at each evaluation, with its step

    def held_out(self) -> dict | None:
        """The held-out numbers of the model now (None: nothing is held out)."""
        return None

    def evaluation_due(self, steps_done: int) -> bool:
        return self.schedule.end_of_epoch(steps_done)

    def evaluate(self, steps_done: int) -> dict | None:
        held = self.held_out()
        self.evals.append({"step": steps_done, **(held or {})})
        return held

    def checkpoint_due(self, steps_done: int) -> bool:
        every = self.settings.checkpoint_every
        return self.schedule.end_of_epoch(steps_done) or bool(every and steps_done % every == 0)

    def extra_state(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {
            "weights": trainable_weights(self.model),
            "optimizer": optimizer_state(self.model, self.optimizer),
            "evals": self.evals,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        load_trainable_weights(self.model, state["weights"], self.out / CHECKPOINT)
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.evals = list(state["evals"])
        for key in self.extra_state():
            setattr(self, key, state[key])


def refuse_to_overwrite(out: Path, what: str) -> None:
    """A run in `out` that was not asked to resume is another's work: refused."""
    if (out / CHECKPOINT).exists():
        raise RlhfkitError(
            f"{out} holds {what} run already: pass --resume to continue it, or choose "
            "another output directory"
        )


def run_key(settings, data: str | None = None) -> dict:
    """What identifies a run for `check_same_run`: its data's hash and its settings."""
    return {"data": data, "settings": settings.model_dump()}


def resume_state(out: Path, what: str, resume: bool, run: dict, settings) -> dict | None:
    """The checkpoint in `out` to continue from, or None for a fresh start. Refuses a run
    already there that was not asked to resume, an unloadable checkpoint, and one that
    belongs to another run (`check_same_run`). Read before any model loads."""
    refuse_old_checkpoint(out)
    if not resume:
        refuse_to_overwrite(out, what)
        return None
    checkpoint = out / CHECKPOINT
    if not checkpoint.exists():
        return None
    try:
        saved = upgrade(read_state(checkpoint))
    except KeyError:
        raise RlhfkitError(
            f"{checkpoint} was written by an older rlhfkit in a layout it cannot resume: start "
            "afresh in another output directory"
        ) from None
    check_same_run(checkpoint, saved["run"], run, settings)
    return saved


def begin_run(out: Path, made_by: str, what: str, settings, data, resume: bool):
    """A trainer's run begins: the checkpoint to resume from (`resume_state`; None for a
    fresh start) and the run's key, then `out` claimed and torch seeded, in that order, so
    a refusal leaves `out` as it was. `data` is the data's source (its SHA-256 is part of
    the run), or None when the settings name it."""
    from rlhfkit.data.sources import source_sha256
    from rlhfkit.files import claim_directory

    run = run_key(settings, None if data is None else source_sha256(data))
    saved = resume_state(Path(out), what, resume, run, settings)
    claim_directory(out, made_by)
    torch.manual_seed(settings.seed)
    return saved, run


def check_same_run(checkpoint: Path, saved: dict, now: dict, settings) -> None:
    """One rule for every trainer: a checkpoint continues only the run that wrote it, on the
    same data (hash) and with every setting the same, but those its settings class lists in
    `may_change_on_resume`. A setting the checkpoint does not record counts as its default
    (it was added later), unless the checkpoint recorded only some settings (`partial`,
    an older format): then only those are compared."""
    where = checkpoint.parent
    if saved.get("data") != now.get("data"):
        raise RlhfkitError(
            f"{where} was started on other data (its SHA-256 differs): resume it on the data "
            "it started with, or start afresh in another output directory"
        )
    fields = type(settings).model_fields
    may_change = getattr(settings, "may_change_on_resume", frozenset())
    recorded = type(settings).renew(saved["settings"], quiet=True)  # names since retired
    keys = recorded if saved.get("partial") else now["settings"]
    changed = []
    for key in keys:
        if key in may_change or key not in now["settings"]:
            continue
        default = fields[key].get_default(call_default_factory=True) if key in fields else None
        before = recorded.get(key, default)
        if before != now["settings"][key]:
            changed.append(f"{key} {before!r}, not {now['settings'][key]!r}")
    if changed:
        raise RlhfkitError(
            f"{where} was started with other settings ({'; '.join(changed)}): resume it as "
            "it was, or start afresh in another output directory"
        )


def upgrade(saved: dict) -> dict:
    """A checkpoint in today's layout, from the layouts rlhfkit wrote before the trainers
    shared one loop: SFT and DPO kept a partial record of their run in state["run"]; PPO
    kept its settings as "config"."""
    if "trainer" in saved:
        return saved
    if "state" in saved:  # SFT, DPO
        state = dict(saved["state"])
        run = dict(state.pop("run"))
        data = run.pop("data_sha256", None) or run.pop("pairs_sha256", None)
        run.pop("sequences", None)
        trainer = {"weights": saved["weights"], "optimizer": saved["optimizer"], **state}
        trainer.pop("step")
        return {
            "step": state["step"],
            "run": {"data": data, "settings": run, "partial": True},
            "records": [],
            "rng": [saved["rng"]],
            "trainer": trainer,
        }
    own = ("trainable", "optimizer", "kl", "reward_scale")  # PPO
    return {
        "step": saved["step"],
        "run": {"data": None, "settings": saved["config"]},
        "records": [saved["record"]] if saved.get("record") else [],
        "rng": saved["rng"],
        "trainer": {k: saved[k] for k in own},
    }


def keep_metrics_up_to(out: Path, step: int) -> int:
    """Drop the metrics logged after `step`: what a run killed after its last checkpoint
    logged, and will log again when it resumes from it (all of them on a fresh start).
    Returns the last step left in the file (0 for none)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        atomic_write(path, kept)
    return json.loads(kept[-1])["step"] if kept else 0


@dataclass
class Finished:
    """How a run ended: steps done, why it stopped, and its last step's numbers."""

    steps: int
    stopped: str
    last: dict


def fit(trainer: Trainer, saved: dict | None, run: dict, progress: Progress) -> Finished:
    """Train `trainer` from `saved` (a checkpoint from `resume_state`) or from the start,
    to its last step or an early stop; see the module's docstring for the order of things.
    A failed step raises, keeping what was on disk before it."""
    processes, out = trainer.processes or _ALONE, trainer.out
    step = 0
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        set_rng_state(saved["rng"][processes.rank], trainer.generator)
        step = saved["step"]
    log = None
    if processes.is_main:
        logged = keep_metrics_up_to(out, step if saved is not None else -1)
        log = MetricsLog(out, trainer.settings, trainer.made_by)
        if saved is not None and logged < step:  # killed between checkpoint and line
            for record in saved["records"]:
                log.write(record)
        resumed = " (resumed)" if step else ""
        progress.start(trainer.title + resumed, trainer.total_steps, completed=step)
    last, saved_step, stopped = {}, step, "steps"
    if saved is not None and saved["records"]:  # it may have stopped early there already
        last = saved["records"][0]
        stopped = trainer.stop(last) or "steps"
    try:
        if step == 0 and trainer.evaluation_line:  # the untrained model: the baseline
            held = trainer.evaluate(0)
            if held is not None and log:
                log.write({"step": 0, **held})
        while step < trainer.total_steps and stopped == "steps":
            record = {"step": step + 1, **trainer.update(step)}
            failed = trainer.failure(record)
            if failed:
                raise RlhfkitError(f"stopped: {failed}; {trainer.kept(saved_step)}")
            step += 1
            records = [record]
            if trainer.evaluation_due(step):
                held = trainer.evaluate(step)
                if trainer.evaluation_line:
                    if held is not None:
                        records.append({"step": step, **held})
                elif held is not None:
                    record |= {f"held_out_{k}": v for k, v in held.items()}
            with _ctrl_c_waits():
                if trainer.checkpoint_due(step):
                    _save(trainer, step, run, records)
                    saved_step = step
                for line in records if log else ():
                    log.write(line)
                last = record
                if log:
                    progress.advance(1, trainer.describe(record))
            reason = trainer.stop(record)
            if reason:
                stopped = reason
                break
    except KeyboardInterrupt:
        where = (
            f"the checkpoint of step {saved_step} is in {out}: continue with --resume"
            if saved_step
            else "no checkpoint was written yet"
        )
        raise RlhfkitError(f"interrupted; {where}") from None
    finally:
        if log:
            log.close()
    return Finished(step, stopped, last)


def _save(trainer: Trainer, step: int, run: dict, records: list[dict]) -> None:
    """The checkpoint of step `step` (called by every process; the main one writes)."""
    processes = trainer.processes or _ALONE
    state = {
        "step": step,
        "run": run,
        "records": records,  # this step's metrics lines, restored if the kill came first
        "rng": processes.gather_objects(rng_state(trainer.generator)),  # in rank order
        "trainer": trainer.state_dict(),
    }
    if processes.is_main:
        write_state(trainer.out / CHECKPOINT, state)


class _Alone:
    """The processes of a trainer that is not launched: this one."""

    rank, world_size, is_main = 0, 1, True

    @staticmethod
    def gather_objects(obj) -> list:
        return [obj]


_ALONE = _Alone()


@contextmanager
def _ctrl_c_waits() -> Iterator[None]:
    """Ctrl-C takes effect when the block ends, not inside it: a step's collectives,
    checkpoint, metrics line and tracker scalars are kept whole (an interrupt inside a
    library's writer or a collective can leave it half done, or the other processes
    waiting)."""
    handler = signal.getsignal(signal.SIGINT)
    if (
        threading.current_thread() is not threading.main_thread()
        or handler is not signal.default_int_handler
    ):
        yield  # signals reach the main thread only; an ignored or custom Ctrl-C is left be
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda number, _frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    if caught:
        raise KeyboardInterrupt
