"""The PPO run: prompts in a seeded order, a step at a time, with metrics, checkpoints that
resume exactly, and the stopping rules (steps, a reward threshold, an exploding KL or a
non-finite loss, Ctrl-C).

A checkpoint holds the trainable weights (adapter and value head), the optimiser, the KL
controller, the step (which fixes the data position) and every random state of every
process, written atomically after each step as safetensors and JSON (checkpoint.py: nothing
is unpickled on resume); `resume=True` continues from it as if never stopped. Under
`accelerate launch` each process trains on its share of every step's prompts
(distributed.py); the main process alone logs, checkpoints and saves the policy.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_directory, atomic_write, check_ours, claim_directory
from rlhfkit.models.stack import POLICY_INFO
from rlhfkit.progress import Progress
from rlhfkit.rl.checkpoint import (
    CHECKPOINT,
    read_state,
    read_tensors,
    refuse_old_checkpoint,
    rng_state,
    set_rng_state,
    write_state,
    write_tensors,
)
from rlhfkit.rl.distributed import (
    Processes,
    full_state,
    is_shard,
    load_full_state,
    load_optimizer_state,
    optimizer_state,
)
from rlhfkit.rl.policy import Policy
from rlhfkit.rl.ppo import AdaptiveKL, FixedKL, PPOConfig, RewardScale, train_step
from rlhfkit.training import MetricsLog, adamw

VALUE_HEAD = "value_head.safetensors"


def batch_prompts(
    prompts: list[str], step: int, batch_size: int, seed: int, repeat: int = 1
) -> list[str]:
    """The prompts of a step, each `repeat` times in a row: a fresh seeded permutation per
    pass over the data, so the data position is a function of the step alone."""
    if repeat > 1:
        once = batch_prompts(prompts, step, batch_size // repeat, seed)
        return [p for p in once for _ in range(repeat)]
    per_pass = max(1, len(prompts) // batch_size)
    epoch, index = divmod(step, per_pass)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed + epoch))
    rows = order[index * batch_size : (index + 1) * batch_size].tolist()
    if len(rows) < batch_size:  # fewer prompts than a batch: cycle them
        rows = (rows * (batch_size // max(1, len(rows)) + 1))[:batch_size]
    return [prompts[i] for i in rows]


def save_checkpoint(
    path: Path,
    policy: Policy,
    optimizer,
    kl_controller,
    reward_scale,
    step: int,
    generator: torch.Generator,
    config: PPOConfig,
    processes: Processes,
    record: dict | None = None,
) -> None:
    """Called by every process (the weights may have to be gathered); the main one writes."""
    state = {
        "step": step,
        "record": record,  # this step's metrics, restored if the kill came before they were logged
        "config": config.model_dump(),
        "trainable": full_state(policy, keep=processes.is_main),
        "optimizer": optimizer_state(policy, optimizer),
        "kl": kl_controller.state_dict(),
        "reward_scale": reward_scale.state_dict(),
        "rng": processes.gather_objects(rng_state(generator)),  # in rank order
    }
    if processes.is_main:
        write_state(path, state)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as the nested dict `save_checkpoint` was given (tensors and values)."""
    return read_state(path)


def check_resumable(state: dict, path: Path, config: PPOConfig, world_size: int) -> None:
    """The checkpoint continues this run: as many processes, the same settings."""
    if len(state["rng"]) != world_size:
        raise RlhfkitError(
            f"{path} was written by {len(state['rng'])} processes, not "
            f"{world_size}: resume with as many"
        )
    # How long to train may change on resume; anything else would make it another run.
    extendable = {"steps", "target_reward", "report_to"}
    changed = sorted(
        k
        for k, v in config.model_dump().items()
        if k not in extendable and state["config"].get(k) != v
    )
    if changed:
        raise RlhfkitError(
            f"{path} was written with other settings ({', '.join(changed)}); "
            "resume with the same settings or start a new run directory"
        )


def load_checkpoint(
    state: dict,
    policy: Policy,
    optimizer,
    kl_controller,
    reward_scale,
    generator: torch.Generator,
    processes: Processes,
) -> int:
    """Put a checkpoint's weights and states into the run's objects; returns its step."""
    load_full_state(policy, state["trainable"])
    load_optimizer_state(policy, optimizer, state["optimizer"])
    kl_controller.load_state_dict(state["kl"])
    reward_scale.load_state_dict(state["reward_scale"])
    set_rng_state(state["rng"][processes.rank], generator)
    return state["step"]


@dataclass
class _Run:
    """What a PPO run trains, on what, and where it writes; fixed once it has started."""

    config: PPOConfig
    out: Path
    processes: Processes
    reward: Callable
    prompts: list[str]
    mode: str
    policy: Policy
    optimizer: torch.optim.Optimizer
    kl_controller: FixedKL | AdaptiveKL
    reward_scale: RewardScale
    generator: torch.Generator
    log: MetricsLog | None = None  # the main process's


@dataclass
class _Done:
    """How far a run has got. A step is trained, then checkpointed, then logged: `saved`
    and `logged` trail `step` while that happens, so an interrupt knows what is on disk."""

    step: int
    saved: int  # the step of the checkpoint on disk
    logged: int  # the last step in metrics.jsonl
    last: dict = field(default_factory=dict)  # the last finished step's metrics


def run_ppo(
    config: PPOConfig,
    out: str | Path,
    resume: bool = False,
    reward=None,
    progress: Progress | None = None,
) -> dict:
    """Train; write metrics.jsonl, TensorBoard logs, the checkpoint and the final adapter and
    value head to `out` (new, empty, or a PPO run's: see files.claim_directory). `reward`
    overrides `config.reward` with any callable reward. The main process alone reports
    each step to `progress`."""
    out = Path(out)
    progress = progress or Progress()
    config.check_hardware()
    processes = Processes(config.device)
    state = _checkpoint_to_resume(out, config, resume, processes)
    _check_split(config, processes.world_size)
    run = _set_up(config, out, processes, reward)
    step = 0
    if state is not None:
        step = load_checkpoint(
            state,
            run.policy,
            run.optimizer,
            run.kl_controller,
            run.reward_scale,
            run.generator,
            processes,
        )
    if processes.is_main:
        run.log = _open_log(out, config, step, state)
        progress.start("PPO" + (" (resumed)" if step else ""), config.steps, step)
    del state  # the checkpoint's copy of the weights is no longer needed
    done = _Done(step=step, saved=step, logged=step)
    reason = "steps"
    try:
        while done.step < config.steps:
            stats = _train(run, done.step)
            failed = _failure(stats, config, done.step + 1)
            if failed:
                reason = failed
                break
            with _ctrl_c_waits():
                _keep_step(run, done, stats)
                if run.log:
                    report_step(progress, config, done.step, stats)
            if config.target_reward is not None and stats["reward_mean"] >= config.target_reward:
                reason = f"mean reward {stats['reward_mean']:.3f} reached the target"
                break
    except KeyboardInterrupt:
        raise _interrupted(run, done) from None
    finally:
        if run.log:
            run.log.close()
    return _finish(run, done, reason)


def _checkpoint_to_resume(
    out: Path, config: PPOConfig, resume: bool, processes: Processes
) -> dict | None:
    """The checkpoint in `out` to continue from, if resuming; refuses a folder that is not a
    PPO run's, and a run there that was not asked to resume. Read before any model loads."""
    check_ours(out, "ppo")  # claimed (marked) in _open_log, once everything has loaded
    refuse_old_checkpoint(out)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise RlhfkitError(
            f"{out} holds a run already: pass --resume to continue it, or "
            "choose another output directory"
        )
    if not (resume and checkpoint.exists()):
        return None
    state = read_checkpoint(checkpoint)
    check_resumable(state, checkpoint, config, processes.world_size)
    return state


def _set_up(config: PPOConfig, out: Path, processes: Processes, reward) -> _Run:
    """The reward, the prompts, and the seeded policy with its optimiser and controllers."""
    from rlhfkit.data.prompts import load_prompts, resolve_mode
    from rlhfkit.reward import load_reward

    reward = reward or load_reward(config.reward)  # a bad spec fails before the model loads
    records = load_prompts(config.prompts, config.split, config.eval_fraction)
    mode = resolve_mode(config.mode, config.prompts, records)
    prompts = [p.prompt for p in records]
    torch.manual_seed(config.seed)  # the same initial adapter in every process (and GPU)
    random.seed(config.seed)
    np.random.seed(config.seed)
    policy = Policy.load(
        config.model, config.lora_args(), processes.device, config.precision, config.has_critic
    )
    if processes.sharded:
        policy.shard()
    if processes.world_size > 1:  # but each process samples its own responses
        torch.manual_seed(config.seed + processes.rank)
    return _Run(
        config=config,
        out=out,
        processes=processes,
        reward=reward,
        prompts=prompts,
        mode=mode,
        policy=policy,
        optimizer=adamw(policy.parameter_groups(), config.lr, 0.0),
        kl_controller=config.kl_controller(),
        reward_scale=RewardScale(config.normalise_reward),
        generator=torch.Generator().manual_seed(config.seed),
    )


def _open_log(out: Path, config: PPOConfig, step: int, state: dict | None) -> MetricsLog:
    """Claim `out`, write the run's config and open its metrics, restoring the line of a
    step that was checkpointed but killed before it was logged."""
    claim_directory(out, "ppo")
    atomic_write(out / "config.json", json.dumps(config.model_dump(), indent=2))
    log = MetricsLog(out, config, "ppo")
    if step and _last_logged_step(out) < step:
        log.write(state["record"])
    return log


def _train(run: _Run, step: int) -> dict:
    """The step after `step`: this process's share of its prompts, sampled, scored and
    trained on; returns its statistics."""
    config = run.config
    batch = run.processes.shard(
        batch_prompts(run.prompts, step, config.batch_size, config.seed, config.samples_per_prompt)
    )
    stats, _ = train_step(
        run.policy,
        run.optimizer,
        run.reward,
        batch,
        run.kl_controller,
        config,
        run.mode,
        run.generator,
        run.processes,
        run.reward_scale,
    )
    return stats


def _failure(stats: dict, config: PPOConfig, step: int) -> str | None:
    """Why step `step` must not be kept (a non-finite loss, a KL past max_kl), if it must not."""
    losses = [stats[k] for k in ("policy_loss", "value_loss") if k in stats]
    if not all(math.isfinite(x) for x in losses):
        return f"non-finite loss at step {step}"
    if stats["kl"] > config.max_kl:
        return f"KL {stats['kl']:.1f} exceeded max_kl {config.max_kl} at step {step}"
    return None


@contextmanager
def _ctrl_c_waits() -> Iterator[None]:
    """Ctrl-C takes effect when the block ends, not inside it: a step's collectives,
    checkpoint, metrics line and TensorBoard scalars are kept whole (an interrupt inside a
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


def _keep_step(run: _Run, done: _Done, stats: dict) -> None:
    """Count a trained step: check every process holds the same weights, write its
    checkpoint, then its metrics line (so a line always has its checkpoint behind it)."""
    done.step += 1
    done.last = {"step": done.step, **stats}
    replicas = [p for p in run.policy.trainable_parameters() if not is_shard(p)]
    if not run.processes.same_everywhere(replicas):
        raise RlhfkitError(f"the processes' weights differ after step {done.step}")
    save_checkpoint(
        run.out / CHECKPOINT,
        run.policy,
        run.optimizer,
        run.kl_controller,
        run.reward_scale,
        done.step,
        run.generator,
        run.config,
        run.processes,
        done.last,
    )
    done.saved = done.step
    if run.log:
        run.log.write(done.last)
        done.logged = done.step


def _interrupted(run: _Run, done: _Done) -> RlhfkitError:
    """After Ctrl-C: log the step whose line the interrupt cut off after its checkpoint,
    and say where the run can continue from."""
    if run.log and done.saved > done.logged:
        run.log.write(done.last)
    where = (
        f"the checkpoint of step {done.saved} is in {run.out}: continue with --resume"
        if done.saved
        else "no step had finished"
    )
    return RlhfkitError(f"interrupted; {where}")


def _finish(run: _Run, done: _Done, reason: str) -> dict:
    """Save the policy unless the run failed; returns the run's summary and last metrics."""
    if reason.startswith(("non-finite", "KL")):
        raise RlhfkitError(
            f"stopped: {reason}; the last good checkpoint (step {done.step}) is in {run.out}"
        )
    save_policy(run.policy, run.out / "policy", run.config, run.processes.is_main)
    run.processes.barrier()  # the policy is on disk before any process reports success
    return {"steps": done.step, "stopped": reason, "main": run.processes.is_main, **done.last}


def report_step(progress: Progress, config: PPOConfig, step: int, stats: dict) -> None:
    if stats["truncated_prompts"]:
        progress.warn(
            f"step {step}: {stats['truncated_prompts']} prompts longer than "
            f"{config.max_prompt_tokens} tokens lost their start"
        )
    progress.advance(
        1,
        f"PPO: reward {stats['reward_mean']:+.3f}, KL {stats['kl']:.2f}, "
        f"{stats['tokens_per_s']:.0f} tok/s",
    )


def _check_split(config: PPOConfig, world_size: int) -> None:
    """Each process takes an equal share of a step's rollouts and splits it the same way."""
    share, rest = divmod(config.batch_size, world_size)
    if rest or share % (config.minibatches * config.grad_accumulation):
        raise RlhfkitError(
            f"batch_size {config.batch_size} does not split into {world_size} processes × "
            f"{config.minibatches} minibatches × {config.grad_accumulation} micro-batches"
        )
    if share % config.samples_per_prompt:
        raise RlhfkitError(
            f"each of {world_size} processes gets {share} rollouts, not a whole number of "
            f"prompts × samples_per_prompt {config.samples_per_prompt}"
        )


def _last_logged_step(out: Path) -> int:
    lines = (
        (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    )
    return json.loads(lines[-1])["step"] if lines else 0


def save_policy(policy: Policy, path: Path, config: PPOConfig, write: bool = True) -> None:
    """The trained policy: the adapter (or full weights) with peft's layout, the value head
    (if it has one), the tokenizer, which base model it sits on and what it was trained on.
    Every process of a sharded run calls it (to gather the weights); those with `write`
    write. The directory appears whole or not at all: a crash mid-save leaves the previous
    one."""
    weights = full_state(policy.model, False, keep=write) if policy.sharded else None
    value_head = None
    if policy.value_head is not None:
        value_head = full_state(policy.value_head, keep=write)
    if not write:
        return
    with atomic_directory(path) as tmp:
        policy.model.save_pretrained(tmp, state_dict=weights)
        policy.tokenizer.save_pretrained(tmp)
        if value_head is not None:
            write_tensors(tmp / VALUE_HEAD, value_head)
        # What evaluation needs: the base model, and the prompts trained on, to keep them out.
        keys = ("lora", "mode", "prompts", "split", "eval_fraction", "reward")
        info = {"base": config.model, "stage": "ppo", **{k: getattr(config, k) for k in keys}}
        (tmp / POLICY_INFO).write_text(json.dumps(info, indent=2))


def read_value_head(policy_dir: Path) -> dict[str, torch.Tensor]:
    """The value head `save_policy` wrote (weight and bias), read without unpickling."""
    policy_dir = Path(policy_dir)
    if not (policy_dir / VALUE_HEAD).exists() and (policy_dir / "value_head.pt").exists():
        raise RlhfkitError(
            f"{policy_dir / 'value_head.pt'} was written by an older rlhfkit in a format that "
            "is no longer loaded (pickle can run code): train the policy again"
        )
    return read_tensors(policy_dir / VALUE_HEAD)
