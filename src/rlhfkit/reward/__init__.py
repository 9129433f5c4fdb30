"""Rewards: trained reward models, classifier logits, packaged scorers, your own function."""

from rlhfkit.reward.specs import Reward, load_reward

__all__ = ["Reward", "load_reward"]
