"""Constitutional AI's parts: constitutions and their validation, the exact texts sent to a
model, the judge's arithmetic, the local backend's reading of answer-token log-probabilities,
and the endpoint backend against `rlhfkit serve-model` over real HTTP (and against small
real servers that answer too slowly or with broken JSON)."""

from __future__ import annotations

import http.server
import math
import re
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ScorerJudge
from rlhfkit.cai.constitution import (
    Constitution,
    Example,
    Principle,
    critique_messages,
    judge_text,
    load_constitution,
    revision_messages,
)
from rlhfkit.cai.judge import (
    Choice,
    agreement_with_reference,
    choice,
    order_averaged,
    ranking_from_preferences,
)
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.backends import BackendError, EndpointBackend, LocalBackend, option_logprobs
from rlhfkit.models.server import create_model_app
from web_support import running_server

# --- constitutions ------------------------------------------------------------------------


def test_the_default_constitution_opens_with_the_papers_requests():
    constitution = load_constitution()
    first = constitution.principles[0]
    assert first.critique == (
        "Identify how the last response is harmful, unethical, racist, sexist, toxic, "
        "dangerous or illegal."
    )
    assert first.revision == (
        "Rewrite the response to remove any and all harmful, unethical, racist, sexist, "
        "toxic, dangerous or illegal content."
    )
    assert 13 <= len(constitution.principles) <= 17
    assert len({p.name for p in constitution.principles}) == len(constitution.principles)
    assert all(constitution.principle(e.principle) for e in constitution.examples)


def _write(tmp_path: Path, data) -> str:
    path = tmp_path / "constitution.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


GOOD = {"name": "kind", "critique": "c?", "revision": "r!", "choose": "which?"}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"principles": [{**GOOD, "revision": ""}]}, "principle 1 ('kind'): 'revision' must"),
        ({"principles": [GOOD, {"name": "x", "critique": "c"}]}, "principle 2 ('x'): 'revision'"),
        ({"principles": [{**GOOD, "extra": "1"}]}, "principle 1 ('kind'): unknown field 'extra'"),
        ({"principles": [GOOD, GOOD]}, "principle 'kind' is named twice"),
        ({"principles": []}, "'principles' must be a non-empty list"),
        ({"principles": [GOOD], "examples": [{"principle": "nope"}]}, "example 1: 'prompt'"),
        (
            {
                "principles": [GOOD],
                "examples": [
                    dict(principle="nope", prompt="p", response="r", critique="c", revision="v")
                ],
            },
            "example 1: 'principle' names no principle ('nope')",
        ),
        ("principles: [unclosed", "not valid YAML"),
        ("- just a list", "a constitution is a mapping"),
    ],
)
def test_a_bad_constitution_is_one_line_naming_the_principle_and_field(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(RlhfkitError) as error:
        load_constitution(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_builtin_or_missing_file():
    with pytest.raises(RlhfkitError, match="shipped: builtin:default"):
        load_constitution("builtin:nope")
    with pytest.raises(RlhfkitError, match="does not exist"):
        load_constitution("/no/such/constitution.yaml")


# --- the texts sent to the model ----------------------------------------------------------

TINY = Constitution(
    "tiny",
    (Principle("kind", "What is unkind?", "Make it kind.", "Which is kinder?"),),
    (Example("kind", "Hi", "Go away", "It is rude.", "Hello!"),),
)


def test_critique_and_revision_messages_are_exactly_these():
    principle = TINY.principles[0]
    expected = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Go away"},
        {"role": "user", "content": "Critique request: What is unkind?"},
        {"role": "assistant", "content": "It is rude."},
        {"role": "user", "content": "Revision request: Make it kind."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I cook rice?"},
        {"role": "assistant", "content": "Figure it out."},
        {"role": "user", "content": "Critique request: What is unkind?"},
    ]
    assert critique_messages(TINY, principle, "How do I cook rice?", "Figure it out.") == expected
    assert revision_messages(TINY, principle, "How do I cook rice?", "Figure it out.", "Curt.") == [
        *expected,
        {"role": "assistant", "content": "Curt."},
        {"role": "user", "content": "Revision request: Make it kind."},
    ]


def test_the_judge_text_ends_where_the_choice_is_the_next_token():
    text = judge_text(TINY.principles[0], "Say hi", "Hello", "Get lost")
    assert text == (
        "Consider the following conversation between a human and an assistant:\n"
        "Human: Say hi\n"
        "Which is kinder?\n"
        "Options:\n"
        "(A) Hello\n"
        "(B) Get lost\n"
        "The answer is: ("
    )


# --- the judge's arithmetic ---------------------------------------------------------------


def test_choice_normalises_over_the_two_options():
    c = choice(math.log(0.3), math.log(0.1))
    assert c.p_a == pytest.approx(0.75) and c.mass == pytest.approx(0.4)
    assert choice(math.log(0.2), None) == Choice(1.0, pytest.approx(0.2))
    assert choice(None, None) is None


def test_order_averaging_cancels_a_position_preference():
    # x as (A): P(A) = 0.8; y as (A): P(A) = 0.4, so x wins 0.6 of the second time
    p = order_averaged(Choice(0.8, 1.0), Choice(0.4, 1.0))
    assert p.p_first == pytest.approx(0.7) and p.bias == pytest.approx(0.1)
    always_a = order_averaged(Choice(0.9, 1.0), Choice(0.9, 1.0))
    assert always_a.p_first == pytest.approx(0.5) and always_a.bias == pytest.approx(0.4)


def test_a_ranking_from_pairwise_preferences():
    # expected wins: 0 → 0.9 + 0.6 = 1.5; 1 → 0.1 + 0.2 = 0.3; 2 → 0.4 + 0.8 = 1.2
    assert ranking_from_preferences(3, {(0, 1): 0.9, (0, 2): 0.6, (1, 2): 0.2}) == [1, 3, 2]
    assert ranking_from_preferences(2, {(0, 1): 0.5}) == [1, 1]
    assert ranking_from_preferences(3, {(0, 1): 0.5, (0, 2): 1.0, (1, 2): 1.0}) == [1, 1, 3]


def test_agreement_with_a_reference_counts_only_pairs_it_orders():
    judged = [0.9, 0.2, 0.6, 0.5, 0.7]
    reference = [1.0, 1.0, 0.5, 0.0, None]  # agree, disagree, no preference, judge at 0.5, —
    assert agreement_with_reference(judged, reference) == (1, 3)


def test_option_logprobs_among_an_endpoints_top_tokens():
    top = {"A": -0.5, " B": -1.5, "B": -2.0, "C": -3.0}
    assert option_logprobs(top, ("A", "B")) == {"A": -0.5, "B": -1.5}
    assert option_logprobs({"x": -0.1}, ("A", "B")) == {"A": None, "B": None}


# --- the local backend --------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tiny_model) -> LocalBackend:
    return LocalBackend(tiny_model, batch_size=2)


def test_the_local_judge_reads_the_next_token_logits_batched_as_one_by_one(local):
    texts = [
        judge_text(TINY.principles[0], "Say hi", "Hello", "Get lost"),
        "The answer is: (",
        judge_text(TINY.principles[0], "A much longer request " * 5, "Yes", "No"),
    ]
    batched = local.choice_logprobs(texts)
    a, b = local.option_ids(("A", "B"))
    for text, got in zip(texts, batched, strict=True):
        ids = local.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logprobs = local.model(ids).logits[0, -1].log_softmax(-1)
        assert got["A"] == pytest.approx(float(logprobs[a]), abs=1e-4)
        assert got["B"] == pytest.approx(float(logprobs[b]), abs=1e-4)


def test_the_local_chat_answers_each_conversation(local):
    answers = local.chat([[{"role": "user", "content": "hi"}]] * 3, max_tokens=5, seed=1)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    again = local.chat([[{"role": "user", "content": "hi"}]] * 3, max_tokens=5, seed=1)
    assert again == answers  # seeded


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaning(tiny_model) -> LocalBackend:
    """The tiny model with an output bias that makes "A" and "B" its likeliest next tokens,
    "A" by one nat: known logits up to the small random part."""
    backend = LocalBackend(tiny_model, batch_size=2)
    model = backend.model
    embedding = model.get_input_embeddings().weight
    head = torch.nn.Linear(embedding.shape[1], embedding.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(embedding)
        head.bias.zero_()
        a, b = backend.option_ids(("A", "B"))
        head.bias[a], head.bias[b] = 20.0, 19.0
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return backend


@pytest.fixture(scope="module")
def served(leaning):
    with running_server(create_model_app(leaning, "tiny")) as url:
        yield f"{url}/v1"


def test_the_endpoint_backend_reads_the_same_choice_as_the_local_one(leaning, served):
    endpoint = EndpointBackend(served)  # the one model it lists
    assert endpoint.model == "tiny"
    texts = [judge_text(TINY.principles[0], "Say hi", "Hello", "Get lost"), "Pick: ("]
    for here, there in zip(
        leaning.choice_logprobs(texts), endpoint.choice_logprobs(texts), strict=True
    ):
        assert choice(here["A"], here["B"]).p_a == pytest.approx(1 / (1 + math.exp(-1)), abs=0.05)
        assert there["A"] == pytest.approx(here["A"], abs=1e-4)
        assert there["B"] == pytest.approx(here["B"], abs=1e-4)
    answers = endpoint.chat([[{"role": "user", "content": "hi"}]] * 2, max_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_serve_model_answers_the_openai_client_with_logprobs(served):
    import openai

    client = openai.OpenAI(base_url=served, api_key="unused")
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert 1 <= len(content) <= 3 and chat.usage.completion_tokens == len(content)
    for step in content:
        assert len(step.top_logprobs) == 2
        assert step.top_logprobs[0].logprob >= step.top_logprobs[1].logprob
        assert step.logprob == pytest.approx(step.top_logprobs[0].logprob)  # greedy
    completion = client.completions.create(
        model="tiny", prompt=["a", "b c"], max_tokens=2, logprobs=3
    )
    assert len(completion.choices) == 2 and len(completion.choices[0].logprobs.top_logprobs[0]) <= 3
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="a", max_tokens=0)


# --- endpoints that misbehave -------------------------------------------------------------


@contextmanager
def misbehaving_server(answer: str, delay: float = 0.0):
    """A real HTTP server that waits `delay` seconds, then answers every request with
    `answer` as JSON (well-formed or not)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            time.sleep(delay)
            body = answer.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_times_out_is_one_line(tmp_path):
    with misbehaving_server('{"object": "list", "data": []}', delay=2.0) as url:
        started = time.monotonic()
        with pytest.raises(BackendError, match="timed out"):
            EndpointBackend(url, model="m", timeout=0.3, retries=1).chat(
                [[{"role": "user", "content": "hi"}]]
            )
        assert time.monotonic() - started < 10


def test_an_endpoint_with_broken_json_or_no_logprobs_is_one_line():
    with misbehaving_server('{"choices": [ {"text": "A", "logpr') as url:
        backend = EndpointBackend(url, model="m", retries=0)
        with pytest.raises(BackendError, match="malformed") as error:
            backend.choice_logprobs(["pick: ("])
        assert "\n" not in str(error.value)
    plain = (
        '{"id": "x", "object": "text_completion", "created": 0, "model": "m", '
        '"choices": [{"index": 0, "text": "A", "finish_reason": "length", "logprobs": null}]}'
    )
    with misbehaving_server(plain) as url, pytest.raises(BackendError, match="no logprobs"):
        EndpointBackend(url, model="m", retries=0).choice_logprobs(["pick: ("])


def test_an_unreachable_endpoint_is_one_line():
    from web_support import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="cannot connect"):
        EndpointBackend(url, model="m", retries=0, timeout=2).chat(
            [[{"role": "user", "content": "hi"}]]
        )


# --- label judge ------------------------------------------------------------------------------

CLEAN = ["Thank you, that is kind.", "I would be glad to help.", "Let us talk calmly."]
PROFANE = ["Shut up, you stupid idiot.", "This is fucking shit.", "Damn you, you moron."]


def _project_with_completions(store, name: str = "judged", prompts: int = 6) -> None:
    from rlhfkit.feedback.store import Project, Registry, ensure_project

    with store.session() as session:
        project = session.get(Project, ensure_project(session, name))
        registry = Registry(session, project)
        for i in range(prompts):
            prompt = registry.prompt(f"Reply to message {i}", None)
            for text in (CLEAN[i % 3], PROFANE[i % 3], CLEAN[(i + 1) % 3]):
                registry.completion(prompt, text, "test")


def _stored_rankings(store, labeler: str) -> dict[str, dict[str, int]]:
    from sqlalchemy import select

    from rlhfkit.feedback.store import Completion, Labeler, Prompt, Ranking

    with store.session(read_only=True) as session:
        out: dict[str, dict[str, int]] = {}
        rows = session.scalars(select(Ranking).join(Labeler).where(Labeler.name == labeler))
        for ranking in rows:
            prompt = session.get(Prompt, ranking.prompt_id).text
            out[prompt] = {
                session.get(Completion, i.completion_id).text: i.rank for i in ranking.items
            }
            assert ranking.labeler.kind == "ai"
        return out


def test_a_judge_that_agrees_labels_every_prompt_and_a_rerun_continues(store):
    from rlhfkit.cai.label import judge_label

    _project_with_completions(store)
    constitution = load_constitution()
    report = judge_label(
        store, "judged", ScorerJudge(), constitution, check_prompts=2, limit=4, chunk=1
    )
    assert report.agreement == 1.0 and report.comparisons == 2 * 2  # clean vs profane pairs
    assert report.prompts_ranked == 4 and report.pairs == 4 * 3
    assert report.position_bias == pytest.approx(0.0)
    stored = _stored_rankings(store, "ai-judge")
    assert len(stored) == 4
    for ranks in stored.values():
        profane = [t for t in ranks if t in PROFANE]
        assert len(profane) == 1 and ranks[profane[0]] == 3  # worst
    again = judge_label(store, "judged", ScorerJudge(), constitution, check_prompts=2)
    assert again.prompts_already_ranked == 4 and again.prompts_ranked == 2
    assert len(_stored_rankings(store, "ai-judge")) == 6


def test_a_judge_that_always_says_a_is_refused_and_writes_nothing(store, leaning):
    from rlhfkit.cai.label import judge_label

    _project_with_completions(store, prompts=3)
    with pytest.raises(RlhfkitError) as error:
        judge_label(store, "judged", leaning, load_constitution(), check_prompts=3)
    message = str(error.value)
    assert re.search(r"agrees with scorer:profanity on 0% of \d+ pairs", message)
    assert "position bias +0.2" in message and "--force" in message
    assert _stored_rankings(store, "ai-judge") == {}
    forced = judge_label(store, "judged", leaning, load_constitution(), force=True)
    assert forced.prompts_ranked == 3 and 0.15 < forced.position_bias < 0.35
    assert all(set(r.values()) == {1} for r in _stored_rankings(store, "ai-judge").values())


class SilentJudge(ScorerJudge):
    def choice_logprobs(self, texts, options=("A", "B")):
        return [{"A": None, "B": None} for _ in texts]


def test_a_judge_that_does_not_answer_is_refused(store):
    from rlhfkit.cai.label import judge_label

    _project_with_completions(store, prompts=2)
    with pytest.raises(RlhfkitError, match="is not answering"):
        judge_label(store, "judged", SilentJudge(), load_constitution())


def test_the_judge_checked_against_peoples_rankings(store):
    from rlhfkit.cai.label import judge_label
    from rlhfkit.data.records import RankingRecord
    from rlhfkit.feedback.transfer import import_records

    _project_with_completions(store, prompts=2)
    people = []
    for i in range(2):
        completions = (CLEAN[i % 3], PROFANE[i % 3], CLEAN[(i + 1) % 3])
        people.append(RankingRecord(f"Reply to message {i}", completions, (1, 3, 2), "ann"))
    import_records(store, "judged", people)
    report = judge_label(
        store, "judged", ScorerJudge(), load_constitution(), reference="people", force=True
    )
    # people order all three pairs; the scorer judge agrees on the two with the profane answer
    # and on the clean pair only as far as the scorer happens to order it
    assert report.comparisons == 6 and report.agreements >= 4


def test_label_judge_on_the_command_line(tmp_path, cli, tiny_model):
    import json

    from rlhfkit.feedback.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    _project_with_completions(store, prompts=2)
    store.close()
    refused = cli("label", "judge", "-p", "judged", "--judge", tiny_model, "--store", url, ok=False)
    assert refused.exit_code != 0 and "--force labels anyway" in refused.output
    report = tmp_path / "judge.json"
    done = cli(
        "label",
        "judge",
        "-p",
        "judged",
        "--judge",
        tiny_model,
        "--force",
        "--report",
        report,
        "--store",
        url,
    )
    assert "2 prompts ranked (0 before)" in done.output
    written = json.loads(report.read_text())
    assert written["prompts_ranked"] == 2 and written["forced"] is True


def test_label_judge_with_an_unreachable_endpoint_is_one_line(tmp_path, cli):
    from web_support import free_port

    url = f"sqlite:///{tmp_path / 'store.db'}"
    answer = cli(
        "label",
        "judge",
        "-p",
        "judged",
        "--judge",
        f"http://127.0.0.1:{free_port()}/v1",
        "--store",
        url,
        ok=False,
    )
    assert answer.exit_code != 0 and "cannot connect" in answer.output
    assert "Traceback" not in answer.output


@pytest.mark.slow
def test_rlhfkit_serve_model_serves_the_openai_client(tiny_model):
    from web_support import launch

    server, url = launch(["serve-model", "--policy", tiny_model, "--name", "tiny"], "/v1/models")
    base = f"{url}/v1"
    try:
        backend = EndpointBackend(base)
        assert backend.model == "tiny"
        assert len(backend.chat([[{"role": "user", "content": "hi"}]], max_tokens=3)) == 1
    finally:
        server.terminate()
        server.wait(30)


# --- stage 1: critique and revision -------------------------------------------------------------


class FlakyChat:
    """A local model's chat that fails on its `fail_at`-th call, as a crash mid-run would."""

    def __init__(self, backend, fail_at: int | None = None):
        self.backend, self.fail_at, self.calls = backend, fail_at, 0
        self.name = backend.name

    def chat(self, conversations, max_tokens=128, temperature=0.7, seed=0):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return self.backend.chat(conversations, max_tokens, temperature, seed)


def _revisions(store) -> list[tuple[str, int, str]]:
    from sqlalchemy import select

    from rlhfkit.feedback.store import Prompt, Revision

    with store.session(read_only=True) as session:
        rows = session.execute(
            select(Prompt.text, Revision.round, Revision.principle)
            .join(Revision, Revision.prompt_id == Prompt.id)
            .order_by(Prompt.id, Revision.round)
        ).all()
    return [tuple(r) for r in rows]


def test_revise_stores_every_round_and_a_rerun_after_a_crash_continues(store, local):
    from rlhfkit.cai.revise import ReviseSettings, revise
    from rlhfkit.data.records import PromptRecord

    prompts = [PromptRecord(f"How do I pick lock number {i}?") for i in range(5)]
    settings = ReviseSettings(rounds=2, max_new_tokens=4, batch_size=2)
    # each batch makes 1 + 2 × 2 chat calls; the 7th is the second batch's first critique
    with pytest.raises(RuntimeError, match="killed"):
        revise(store, "cai", prompts, FlakyChat(local, fail_at=7), TINY, settings)
    assert {text for text, _, _ in _revisions(store)} == {p.prompt for p in prompts[:2]}
    counts = revise(store, "cai", prompts, FlakyChat(local), TINY, settings)
    assert counts == {"prompts done before": 2, "rounds stored": 6}
    stored = _revisions(store)
    assert [(t, r) for t, r, _ in stored] == [(p.prompt, r) for p in prompts for r in (1, 2)]
    again = revise(store, "cai", prompts, FlakyChat(local, fail_at=1), TINY, settings)
    assert again == {"prompts done before": 5}  # nothing asked of the model


def test_the_rounds_chain_each_revision_into_the_next_critique(store, local):
    from sqlalchemy import select

    from rlhfkit.cai.revise import ReviseSettings, revise
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.feedback.store import Revision

    revise(
        store,
        "cai",
        [PromptRecord("Say something mean.")],
        local,
        load_constitution(),
        ReviseSettings(rounds=2, max_new_tokens=6),
    )
    with store.session(read_only=True) as session:
        first, second = session.scalars(select(Revision).order_by(Revision.round)).all()
        assert second.response == first.revision
        assert first.model == local.name
        names = {p.name for p in load_constitution().principles}
        assert {first.principle, second.principle} <= names


def test_a_rerun_continues_from_an_empty_revision(store, local):
    from sqlalchemy import select

    from rlhfkit.cai.revise import ReviseSettings, revise
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.feedback.store import Revision

    prompts = [PromptRecord("Say something mean.")]
    revise(store, "cai", prompts, local, TINY, ReviseSettings(rounds=1, max_new_tokens=3))
    with store.session() as session:  # the model's first revision came out empty
        session.scalar(select(Revision)).revision = ""
    revise(store, "cai", prompts, local, TINY, ReviseSettings(rounds=2, max_new_tokens=3))
    with store.session(read_only=True) as session:
        rounds = session.scalars(select(Revision).order_by(Revision.round)).all()
    assert [r.round for r in rounds] == [1, 2] and rounds[1].response == ""


@pytest.mark.parametrize(
    "prompt, first, final, scores, reason",
    [
        ("Insult me", "You fool", "  ", None, "empty"),
        ("Insult me", "You fool", "insult  ME", None, "copies the request"),
        ("Insult me", "You fool", "you fool", None, "copies the answer"),
        ("Insult me", "You fool", "I would rather not.", (3.0, 1.5), "scores worse"),
        ("Insult me", "You fool", "I would rather not.", (3.0, 2.5), None),  # noise
        ("Insult me", "You fool", "I would rather not.", (0.1, 0.1), None),
        ("Insult me", "You fool", "The Great X:\n\n" * 4, None, "repeats itself"),
        ("Insult me", "You fool", "No no no no no no no no", None, None),  # too short to tell
        ("Insult me", "You fool", "The original response is rude.", None, "talks about the answer"),
        (
            "Insult me",
            "You fool",
            "This assistant's reply was unkind",
            None,
            "talks about the answer",
        ),
        ("Insult me", "You fool", "The answer is that I won't.", None, None),
        ("Insult me", "You fool", "My previous answer was unkind", None, "talks about the answer"),
        ("Insult me", "You fool", "Responses like that hurt; I'd rather not.", None, None),
        (
            "Insult me",
            "You fool",
            "The response fails to show care.",
            None,
            "talks about the answer",
        ),
        ("Insult me", "You fool", "The response to an insult is calm.", None, None),
        ("Insult me", "You fool", "My response is that I won't.", None, None),
        ("Insult me", "You fool", "That response from your boss hurts.", None, None),
    ],
)
def test_the_filter_on_final_revisions(prompt, first, final, scores, reason):
    from rlhfkit.cai.revise import drop_reason

    assert drop_reason(prompt, first, final, scores) == reason


def test_export_writes_the_kept_revisions_and_counts_the_dropped(store, tmp_path):
    import json

    from rlhfkit.cai.revise import clean, export_revisions
    from rlhfkit.feedback.store import Project, Registry, Revision, ensure_project

    chains = {
        "Tell me off.": ("Shut up, idiot.", "Revision: Please be calm; I am here to help."),
        "Say hi.": ("Hi there.", "hi there."),
        "Curse at me.": ("No.", "You damn fucking idiot."),
    }
    with store.session() as session:
        registry = Registry(session, session.get(Project, ensure_project(session, "cai")))
        for prompt, (first, final) in chains.items():
            row = registry.prompt(prompt)
            session.flush()
            session.add(
                Revision(
                    prompt_id=row.id,
                    round=1,
                    principle="harm",
                    response=first,
                    critique="c",
                    revision=clean(final),
                    model="m",
                )
            )
    counts = export_revisions(store, "cai", tmp_path)
    assert counts == {"kept": 1, "dropped: copies the answer": 1, "dropped: scores worse": 1}
    kept = [json.loads(line) for line in (tmp_path / "revisions.jsonl").read_text().splitlines()]
    assert kept == [
        {
            "prompt": "Tell me off.",
            "response": "Please be calm; I am here to help.",
            "first_response": "Shut up, idiot.",
        }
    ]
    every = (tmp_path / "chains.jsonl").read_text().splitlines()
    assert len(every) == 3 and json.loads(every[2])["dropped"] == "scores worse"
    # A margin wider than the profane revision's drop lets it through.
    lenient = export_revisions(store, "cai", tmp_path / "lenient", margin=100.0)
    assert lenient == {"kept": 2, "dropped: copies the answer": 1}


def test_chat_logprobs_without_top_alternatives(served):
    import openai

    client = openai.OpenAI(base_url=served, api_key="unused")
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, logprobs=True
    )
    steps = chat.choices[0].logprobs.content
    assert steps and all(s.top_logprobs == [] and s.logprob <= 0 for s in steps)
