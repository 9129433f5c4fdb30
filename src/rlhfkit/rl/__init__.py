"""Reinforcement learning: pure loss functions (losses.py) and the trainers built on them."""
