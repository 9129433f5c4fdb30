"""rlhfkit: align language models with human and AI feedback."""

from rlhfkit.errors import RlhfkitError

__version__ = "0.1.0"
__all__ = ["RlhfkitError", "__version__"]
