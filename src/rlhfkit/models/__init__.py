"""Loading models by short name (packaged defaults), local directory or hub id."""

from rlhfkit.models.loading import (
    DEFAULT_ENCODER,
    DEFAULT_POLICY,
    cache_dir,
    load_causal_lm,
    load_encoder,
    resolve_model,
)

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_POLICY",
    "cache_dir",
    "load_causal_lm",
    "load_encoder",
    "resolve_model",
]
