"""Record types, JSONL io and the built-in prompt sets."""

from rlhfkit.data.jsonl import read_jsonl, write_jsonl
from rlhfkit.data.records import Pair, PromptRecord, RankingRecord, ThumbsRecord

__all__ = ["Pair", "PromptRecord", "RankingRecord", "ThumbsRecord", "read_jsonl", "write_jsonl"]
