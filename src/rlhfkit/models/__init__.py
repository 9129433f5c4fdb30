"""Loading models by short name (packaged defaults), local directory or hub id."""

from rlhfkit.models.loading import (
    DEFAULT_ENCODER,
    DEFAULT_POLICY,
    cache_dir,
    is_causal,
    load_causal_lm,
    load_classifier,
    load_encoder,
    resolve_model,
)
from rlhfkit.models.lora import with_lora

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_POLICY",
    "cache_dir",
    "is_causal",
    "load_causal_lm",
    "load_classifier",
    "load_encoder",
    "resolve_model",
    "with_lora",
]
