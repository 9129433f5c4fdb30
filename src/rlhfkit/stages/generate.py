"""The generate stage: prompts -> N completions each -> the feedback store (and JSONL).

Each batch is saved as soon as it is sampled, so an interrupted run loses at most one batch;
running the same command again skips the prompts that already have samples from the same
model, sampling parameters and seed, and finishes the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from sqlalchemy import select

from rlhfkit.config import StageConfig
from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.data.prompts import load_prompts, resolve_mode, split_of
from rlhfkit.data.records import PromptRecord
from rlhfkit.feedback.store import (
    Completion,
    Project,
    Prompt,
    Registry,
    Store,
    get_project,
    text_key,
)
from rlhfkit.generation import Sample, SamplingParams, generate
from rlhfkit.progress import Progress
from rlhfkit.stages import PROJECT, run_store


@dataclass
class GenerateResult:
    prompts: int  # prompts asked for
    generated: int  # prompts sampled by this run (the rest were done before)
    tokens: int
    seconds: float
    completions_stored: int
    empty_skipped: int
    mode: str


def run_key(model: str, params: SamplingParams, seed: int) -> str:
    """Identifies samples made by one model with one set of sampling parameters and seed."""
    spec = json.dumps({"model": model, **params.as_dict(), "seed": seed}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _done(store: Store, project: str, key: str) -> set[str]:
    """Text keys of the project's prompts that already have samples made under `key`."""
    with store.session(read_only=True) as session:
        rows = session.execute(
            select(Prompt.text_key, Completion.params)
            .join(Completion, Completion.prompt_id == Prompt.id)
            .join(Project, Prompt.project_id == Project.id)
            .where(Project.name == project)
        ).all()
    return {prompt_key for prompt_key, params in rows if (params or {}).get("run") == key}


def _save(
    store: Store,
    project: str,
    prompts: list[PromptRecord],
    splits: list[str],
    samples: list[list[Sample]],
    model: str,
    params: SamplingParams,
    seed: int,
    key: str,
) -> tuple[int, int]:
    """One batch in one transaction: (completions stored, empty samples skipped). Empty
    samples are not stored (nobody can rank them); a text repeated for a prompt is stored once."""
    stored = empty = 0
    with store.session() as session:
        registry = Registry(session, get_project(session, project, create=True))
        for prompt, split, group in zip(prompts, splits, samples, strict=True):
            row = registry.prompt(prompt.prompt, prompt.id, split, prompt.messages)
            for sample in group:
                if not sample.text.strip():
                    empty += 1
                    continue
                registry.completion(
                    row,
                    sample.text,
                    model,
                    {
                        **params.as_dict(),
                        "seed": seed,
                        "run": key,
                        "tokens": sample.tokens,
                        "finished": sample.finished,
                    },
                )
        stored = registry.created_completions
    return stored, empty


def _export(
    store: Store, project: str, prompts: list[PromptRecord], splits: list[str], key: str, path: Path
) -> None:
    """JSONL of every requested prompt with its samples from this run key (earlier runs
    included), in the order the prompts were asked for."""
    keys = {text_key(p.prompt) for p in prompts}
    found: dict[str, list[str]] = {}
    with store.session(read_only=True) as session:
        rows = session.execute(
            select(Prompt.text_key, Completion.text, Completion.params)
            .join(Completion, Completion.prompt_id == Prompt.id)
            .join(Project, Prompt.project_id == Project.id)
            .where(Project.name == project)
            .order_by(Completion.id)
        ).all()
    for prompt_key, text, params in rows:
        if prompt_key in keys and (params or {}).get("run") == key:
            found.setdefault(prompt_key, []).append(text)
    write_jsonl(
        path,
        (
            {
                "id": p.id,
                "prompt": p.prompt,
                "split": split,
                "completions": found.get(text_key(p.prompt), []),
            }
            for p, split in zip(prompts, splits, strict=True)
        ),
    )


def run_generate(
    store: Store,
    project: str,
    prompts: str = "builtin:rtp",
    n: int = 4,
    model: str = "smollm2-135m-instruct",
    params: SamplingParams | None = None,
    split: str = "all",
    eval_fraction: float = 0.2,
    limit: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    out: Path | None = None,
    progress: Progress | None = None,
    fields: dict[str, str] | None = None,
) -> GenerateResult:
    """Sample `n` completions for each prompt of `prompts` (builtin:NAME or any source of
    data/sources.py, its columns renamed by `fields`) into `project`; `progress` counts the
    prompts left to sample. `params.mode` "auto" picks the prompt set's natural mode."""
    from rlhfkit.models.stack import load_policy_model

    params = params or SamplingParams(mode="auto")
    records = load_prompts(prompts, split, eval_fraction, limit, fields)
    mode = resolve_mode(params.mode, prompts, records)
    params = SamplingParams(**{**params.as_dict(), "mode": mode})
    splits = [split_of(r.prompt, eval_fraction) for r in records]
    key = run_key(model, params, seed)
    done = _done(store, project, key)
    todo = [i for i, r in enumerate(records) if text_key(r.prompt) not in done]
    progress = progress or Progress()
    progress.start(f"generating ×{n}", len(todo))
    tokens = stored = empty = 0
    started = time.perf_counter()
    if todo:
        lm, tokenizer = load_policy_model(model)  # a policy directory too

        def save(indices: list[int], samples: list[list[Sample]]) -> None:
            nonlocal tokens, stored, empty
            chosen = [todo[i] for i in indices]
            made, skipped = _save(
                store,
                project,
                [records[i] for i in chosen],
                [splits[i] for i in chosen],
                samples,
                model,
                params,
                seed,
                key,
            )
            tokens += sum(s.tokens for group in samples for s in group)
            stored, empty = stored + made, empty + skipped
            progress.advance(len(indices))

        generate(
            lm,
            tokenizer,
            [records[i].prompt for i in todo],
            n,
            params,
            batch_size,
            seed,
            on_batch=save,
        )
    if out:
        _export(store, project, records, splits, key, out)
    return GenerateResult(
        len(records), len(todo), tokens, time.perf_counter() - started, stored, empty, params.mode
    )


class GenerateConfig(StageConfig):
    """A pipeline's `generate:` section: the completions to be ranked."""

    setting = "generate setting"
    renamed = {"n": "samples_per_prompt"}
    limit: int | None = Field(200, ge=1, description="training prompts to sample for")
    samples_per_prompt: int = Field(4, ge=2, description="completions per prompt, to be ranked")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1, description="sequences sampled at once")


def generate_stage(
    run: Path,
    settings: GenerateConfig,
    model: str,
    prompts: str,
    eval_fraction: float,
    seed: int,
    progress: Progress,
) -> str:
    """The pipeline's generate stage: training prompts' completions into the run's store."""
    result = run_generate(
        run_store(run),
        PROJECT,
        prompts=prompts,
        n=settings.samples_per_prompt,
        model=model,
        params=SamplingParams(
            temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, mode="auto"
        ),
        split="train",
        eval_fraction=eval_fraction,
        limit=settings.limit,
        batch_size=settings.batch_size,
        seed=seed,
        out=run / "generate" / "completions.jsonl",
        progress=progress,
    )
    return (
        f"{result.prompts} prompts × {settings.samples_per_prompt} completions "
        f"({result.completions_stored} stored)"
    )
