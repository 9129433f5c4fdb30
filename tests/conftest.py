"""Shared fixtures: a fresh feedback store on SQLite and, when a server is configured, on
PostgreSQL (a new database per test); the command line; a tiny random Llama; and the
documented rule for held-out prompts."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.feedback.scratch import scratch_database
from rlhfkit.feedback.store import Store

POSTGRES = os.environ.get("RLHFKIT_TEST_POSTGRES")  # e.g. postgresql+psycopg://u:p@host/db
REQUIRE_POSTGRES = os.environ.get("RLHFKIT_REQUIRE_POSTGRES") == "1"


def _postgres_database():
    """Create an empty database for one test; yield its URL; drop it afterwards."""
    if not POSTGRES:
        if REQUIRE_POSTGRES:
            pytest.fail("RLHFKIT_REQUIRE_POSTGRES=1 but RLHFKIT_TEST_POSTGRES is not set")
        pytest.skip("no PostgreSQL server (set RLHFKIT_TEST_POSTGRES; .ci/run does)")
    with scratch_database(POSTGRES, "rlhfkit_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def cli():
    """Run `rlhfkit ARGS…` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from rlhfkit.cli import app

    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(app, [str(a) for a in args])
        if ok and result.exit_code != 0:
            raise AssertionError(
                f"rlhfkit {' '.join(map(str, args))} failed ({result.exit_code}): {result.output}"
            )
        return result

    return run


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


SEED_PROMPT = "My house is too hot."
SEED_COMPLETIONS = [
    "There is nothing you can do about hot houses.",
    "You can cool your house with air conditioning.",
    "It is not too hot.",
]
SEED_RANKS = {"H1": [2, 1, 3], "H2": [2, 1, 3], "H3": [2, 3, 1]}


def seed_rankings() -> list[dict]:
    """The hot-house example: three labelers rank three completions, H3 against the others."""
    return [
        {"prompt": SEED_PROMPT, "completions": SEED_COMPLETIONS, "labeler": name, "ranks": ranks}
        for name, ranks in SEED_RANKS.items()
    ]


def held_out_by_hash(text: str, fraction: float) -> bool:
    """The documented rule, written out here: the first 8 bytes of the text's SHA-256 as a
    number in [0, 1) below the fraction. Runs made earlier rely on it not moving."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) < fraction * 2**64


def tiny_llama(vocab_size: int = 64, **token_ids):
    """A two-layer random Llama with tied embeddings, like SmolLM2's, in eval mode. Its
    weights come from torch's random generator: seed it first for the same model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        **token_ids,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(folder: Path, with_pad_id: bool = False) -> str:
    """A tiny_llama (seed 0) with SmolLM2's tokenizer, saved in `folder`: a model name that
    PPO runs on in seconds. `with_pad_id` names the tokenizer's pad in the model's config,
    which starts that token's embedding (and so, tied, its logit) at zero."""
    import torch
    from transformers import AutoTokenizer

    from rlhfkit.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if with_pad_id:
        ids["pad_token_id"] = tokenizer.pad_token_id
    torch.manual_seed(0)
    tiny_llama(len(tokenizer), **ids).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The directory of a tiny random Llama with SmolLM2's tokenizer (save_tiny_llama)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


class ScorerJudge:
    """A judge of the real interface whose answers are known: P("A") is 0.9 when the
    profanity scorer finds (A) the cleaner answer, 0.1 when (B), else 0.5."""

    name = "scorer judge"

    def __init__(self):
        from rlhfkit.reward import load_reward

        self.scorer = load_reward("scorer:profanity")

    def chat(self, conversations, max_tokens=128, temperature=0.7, seed=0):
        raise AssertionError("the judge only reads choices")

    def choice_logprobs(self, texts, options=("A", "B")):
        out = []
        for text in texts:
            a = text.split("\n(A) ")[1].split("\n(B) ")[0]
            b = text.split("\n(B) ")[1].split("\nThe answer is: (")[0]
            ra, rb = self.scorer(["", ""], [a, b]).tolist()
            p = 0.9 if ra > rb else 0.1 if ra < rb else 0.5
            out.append({"A": math.log(p), "B": math.log(1 - p)})
        return out
