"""Sampling completions from the packaged SmolLM2: batching, padding, seeds, the CLI stage."""

import json

import pytest
import torch
from sqlalchemy import select

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import Completion, Prompt, Store
from rlhfkit.generation import SamplingParams, format_prompt, generate
from rlhfkit.models import load_causal_lm
from rlhfkit.progress import Progress

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("smollm2-135m-instruct")


def test_left_padding_does_not_change_what_a_prompt_generates(lm):
    model, tokenizer = lm
    greedy = SamplingParams(temperature=0, max_new_tokens=12, mode="raw")
    short, long = "The cat sat on the", "Once upon a time, in a small village by the sea, there"
    alone = generate(model, tokenizer, [short], n=1, params=greedy)
    batched = generate(model, tokenizer, [short, long], n=1, params=greedy)
    assert len(tokenizer(long).input_ids) > len(tokenizer(short).input_ids) + 5  # real padding
    assert batched[0] == alone[0]
    assert batched[1] == generate(model, tokenizer, [long], n=1, params=greedy)[0]


def test_n_samples_per_prompt_in_order_and_reproducible_by_seed(lm):
    model, tokenizer = lm
    params = SamplingParams(temperature=1.0, max_new_tokens=8, mode="raw")
    prompts = ["I think that", "My favourite food is", "Yesterday we went to the"]
    first = generate(model, tokenizer, prompts, n=3, params=params, batch_size=4, seed=1)
    assert [len(s) for s in first] == [3, 3, 3]
    assert first == generate(model, tokenizer, prompts, n=3, params=params, batch_size=4, seed=1)
    assert first != generate(model, tokenizer, prompts, n=3, params=params, batch_size=4, seed=2)
    assert all(1 <= s.tokens <= 8 for samples in first for s in samples)


def test_ppo_samples_as_generate_does(lm):
    """One sampler: under the same seed, the rollout's responses are generate's, with the same
    lengths and ends."""
    from rlhfkit.train.ppo.rollout import sample_responses

    model, tokenizer = lm
    prompts = ["I think that", "My favourite food is", "Yesterday we went to the"]
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    assert lengths == sorted(lengths)  # generate's length order is the prompts' order
    params = SamplingParams(temperature=1.0, max_new_tokens=8, mode="raw")
    samples = [s for [s] in generate(model, tokenizer, prompts, n=1, params=params, seed=4)]
    torch.manual_seed(4)
    responses = sample_responses(model, tokenizer, prompts, "raw", max_new_tokens=8)
    texts = tokenizer.batch_decode(responses.response_ids, skip_special_tokens=True)
    assert texts == [s.text for s in samples]
    assert responses.response_mask.sum(dim=1).tolist() == [s.tokens for s in samples]
    assert responses.finished.tolist() == [s.finished for s in samples]


def test_chat_mode_answers_and_stops_at_eos(lm):
    model, tokenizer = lm
    text = format_prompt(tokenizer, "Say hello.", "chat")
    assert text.rstrip().endswith("<|im_start|>assistant")
    [[sample]] = generate(
        model,
        tokenizer,
        ["Say hello."],
        n=1,
        params=SamplingParams(temperature=0, max_new_tokens=48, mode="chat"),
    )
    assert sample.finished and "<|im_end|>" not in sample.text and sample.text.strip()


def test_sampling_parameters_are_checked():
    with pytest.raises(RlhfkitError, match="top-p"):
        SamplingParams(top_p=0)
    with pytest.raises(RlhfkitError, match="mode"):
        SamplingParams(mode="poetry")


def test_generate_command_on_builtin_rtp_stores_completions(cli, tmp_path, sqlite_url):
    out = tmp_path / "gen.jsonl"
    result = cli(
        "generate",
        "--prompts",
        "builtin:rtp",
        "--samples-per-prompt",
        "4",
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--split",
        "train",
        "--project",
        "rtp",
        "--out",
        out,
        "--store",
        sqlite_url,
    )
    assert "3 prompts × 4" in result.output and "mode raw" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [len(x["completions"]) for x in lines] == [4, 4, 4]
    assert {x["split"] for x in lines} == {"train"}
    store = Store(sqlite_url)
    with store.session() as session:
        prompts = session.scalars(select(Prompt)).all()
        completions = session.scalars(select(Completion)).all()
    assert [p.external_id for p in prompts] == [x["id"] for x in lines]
    assert 1 <= len(completions) <= 12  # identical or empty samples are stored once / not at all
    c = completions[0]
    assert c.model == "smollm2-135m-instruct"
    assert c.params["max_new_tokens"] == 8 and c.params["seed"] == 0 and c.params["mode"] == "raw"


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, sqlite_url):
    from rlhfkit.stages.generate import run_generate

    store = Store(sqlite_url)
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    kwargs = dict(prompts="builtin:dialogues", n=2, params=params, limit=4, batch_size=2)

    class InterruptAfterTwoBatches(Progress):
        batches = 0

        def advance(self, n=1, description=None):
            self.batches += 1
            if self.batches == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generate(store, "chat", progress=InterruptAfterTwoBatches(), **kwargs)
    with store.session() as session:
        assert len(session.scalars(select(Prompt)).all()) == 2  # two finished batches were kept

    out = tmp_path / "all.jsonl"
    resumed = run_generate(store, "chat", out=out, **kwargs)
    assert (resumed.prompts, resumed.generated, resumed.mode) == (4, 2, "chat")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and all(1 <= len(x["completions"]) <= 2 for x in lines)
    again = run_generate(store, "chat", **kwargs)  # all done: nothing to sample, no model loaded
    assert again.generated == 0 and again.tokens == 0
    # Another seed is another run: it samples everything again.
    assert run_generate(store, "chat", seed=1, **kwargs).generated == 4
