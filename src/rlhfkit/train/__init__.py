"""Training: SFT, DPO, reward models and PPO, each a `Trainer` driven by the one loop in
loop.py (schedule, step, evaluate, checkpoint, resume, metrics).

    sft.py           supervised fine-tuning on (prompt, response) examples
    dpo.py           direct preference optimisation on pairs
    reward_model.py  a reward model on pairs (the pairwise loss)
    ppo/             PPO and its critic-free variants (RLOO, GRPO) against a reward
    tictactoe.py     the PPO core learning tic-tac-toe, a check that it learns at all

The math is pure and lives in one place per family: the preference losses (the reward
model's and DPO's) in reward/losses.py, PPO's in ppo/losses.py.
"""
