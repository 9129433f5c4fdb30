"""PPO for language models: the policy with its value head (policy.py), sampling
(rollout.py), the math (losses.py, kl.py), one step (step.py) and the run (trainer.py).
`from rlhfkit.train.ppo import PPOConfig, run_ppo` is the API; importing the math alone
loads no model code."""


def __getattr__(name: str):
    if name == "PPOConfig":
        from rlhfkit.train.ppo.step import PPOConfig

        return PPOConfig
    if name == "run_ppo":
        from rlhfkit.train.ppo.trainer import run_ppo

        return run_ppo
    raise AttributeError(name)
