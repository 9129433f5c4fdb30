"""Reinforcement learning in miniature: an agent learns tic-tac-toe against a random opponent
with PPO.

Agent, environment, states and actions in the usual RL sense: the agent is a policy
network over the board, the environment is the game, a state is the board, the actions are
the empty squares. It is trained with the very same GAE and loss functions the language
model trainer uses (train/ppo/losses.py): a game is a padded sequence of the agent's moves,
as a response is a padded sequence of tokens, and the outcome (+1 win, 0 draw, −1 loss) is
the reward on its last move, as a reward model's score is on a response's last token. Every
game starts from the empty board, as every sample of a group starts from its prompt, so the
critic-free advantages (rloo, grpo) compare consecutive games in groups of
`samples_per_prompt`.

It keeps a loop of its own rather than the trainers' (train/loop.py): it trains in seconds,
reads nothing from disk and writes no checkpoint, so resuming, metrics files and trackers
would be all the loop added; as one short function it reads as the example it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rlhfkit.progress import Progress
from rlhfkit.train.ppo.losses import (
    entropy_from_logits,
    gae,
    group_advantages,
    masked_mean,
    masked_whiten,
    policy_loss,
    ppo_loss,
    value_loss,
)

LINES = torch.tensor(
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]]
)
MAX_MOVES = 5  # the first player moves at most five times


def winner(boards: torch.Tensor) -> torch.Tensor:
    """+1 where the agent (1) has three in a row, −1 where the opponent (−1) has, else 0."""
    sums = boards[:, LINES].sum(dim=2)  # [n, 8]
    return (sums == 3).any(dim=1).long() - (sums == -3).any(dim=1).long()


def observe(boards: torch.Tensor) -> torch.Tensor:
    """The state as two planes: the agent's squares, the opponent's squares."""
    return torch.cat([(boards == 1).float(), (boards == -1).float()], dim=1)


class Agent(nn.Module):
    """Policy logits over the nine squares and a value estimate, from one shared body."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(18, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.policy = nn.Linear(hidden, 9)
        self.value = nn.Linear(hidden, 1)

    def forward(self, boards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(observe(boards))
        illegal = boards != 0  # only empty squares are actions
        logits = self.policy(h).masked_fill(illegal, -1e9)
        return logits, self.value(h).squeeze(-1)


@dataclass
class Games:
    """A batch of games as padded move sequences: [n, MAX_MOVES] each, `mask` 1 on real moves."""

    boards: torch.Tensor  # board before each agent move, [n, T, 9]
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    outcome: torch.Tensor  # [n]: +1 win, 0 draw, −1 loss


def random_move(boards: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    scores = torch.rand(boards.shape, generator=generator).masked_fill(boards != 0, -1.0)
    return scores.argmax(dim=1)


@torch.no_grad()
def play(agent: Agent, n: int, generator: torch.Generator, greedy: bool = False) -> Games:
    """n games, the agent first (X) against a uniformly random opponent (O)."""
    boards = torch.zeros(n, 9, dtype=torch.long)
    record = Games(
        torch.zeros(n, MAX_MOVES, 9, dtype=torch.long),
        torch.zeros(n, MAX_MOVES, dtype=torch.long),
        torch.zeros(n, MAX_MOVES),
        torch.zeros(n, MAX_MOVES),
        torch.zeros(n, MAX_MOVES),
        torch.zeros(n, dtype=torch.long),
    )
    active = torch.ones(n, dtype=torch.bool)
    rows = torch.arange(n)
    for t in range(MAX_MOVES):
        logits, values = agent(boards)
        if greedy:
            actions = logits.argmax(dim=1)
        else:
            actions = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator)[:, 0]
        logp = torch.log_softmax(logits, dim=1)[rows, actions]
        record.boards[active, t] = boards[active]
        record.actions[active, t], record.logp[active, t] = actions[active], logp[active]
        record.values[active, t], record.mask[active, t] = values[active], 1.0
        boards[active, actions[active]] = 1
        result = winner(boards)
        full = (boards != 0).all(dim=1)
        record.outcome[active] = result[active]
        active = active & (result == 0) & ~full
        if not active.any():
            break
        replies = random_move(boards, generator)
        boards[active, replies[active]] = -1
        result = winner(boards)
        record.outcome[active] = result[active]
        active = active & (result == 0)
    return record


@dataclass
class TicTacToeConfig:
    steps: int = 120
    games: int = 256  # games per step (the rollout batch)
    epochs: int = 4
    minibatches: int = 4
    lr: float = 3e-3
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    samples_per_prompt: int = 8  # games compared with each other, for rloo and grpo
    seed: int = 0


def evaluate(agent: Agent, games: int = 1000, seed: int = 1234) -> dict[str, float]:
    """Greedy play against the random opponent: win, draw and loss rates."""
    outcome = play(agent, games, torch.Generator().manual_seed(seed), greedy=True).outcome
    return {
        "win": (outcome == 1).float().mean().item(),
        "draw": (outcome == 0).float().mean().item(),
        "loss": (outcome == -1).float().mean().item(),
    }


def game_advantages(
    games: Games, config: TicTacToeConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages of every move, and returns for the value head (gae only). gae: the outcome
    as the last move's reward, through GAE, whitened; rloo and grpo: the game's outcome
    against its group's, the same for every move of the game (rloo's whitened too)."""
    if config.advantage == "gae":
        last = games.mask.sum(dim=1).long() - 1
        rewards = torch.zeros_like(games.logp)
        rewards[torch.arange(len(last)), last] = games.outcome.float()
        advantages, returns = gae(rewards, games.values, games.mask, config.gamma, config.lam)
        return masked_whiten(advantages, games.mask), returns
    per_game = group_advantages(games.outcome.float(), config.samples_per_prompt, config.advantage)
    advantages = per_game[:, None] * games.mask
    if config.advantage == "rloo":
        advantages = masked_whiten(advantages, games.mask)
    return advantages, None


def train(
    config: TicTacToeConfig = TicTacToeConfig(),
    progress: Progress | None = None,
) -> tuple[Agent, list[dict]]:
    """PPO against the random opponent; returns the agent and per-iteration statistics."""
    progress = progress or Progress()
    progress.start("training", config.steps)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr)
    history = []
    for iteration in range(1, config.steps + 1):
        # Phase 1: play; the advantages of every move from the outcomes.
        games = play(agent, config.games, generator)
        advantages, returns = game_advantages(games, config)

        # Phase 2: several epochs of clipped updates over shuffled minibatches of games.
        size = config.games // config.minibatches
        for _ in range(config.epochs):
            for chosen in torch.randperm(config.games, generator=generator).split(size):
                mask = games.mask[chosen]
                boards = games.boards[chosen].reshape(-1, 9)
                logits, values = agent(boards)
                logits = logits.reshape(len(chosen), MAX_MOVES, 9)
                logp = torch.log_softmax(logits, dim=-1).gather(
                    2, games.actions[chosen][..., None]
                )[..., 0]
                pg, stats = policy_loss(
                    logp, games.logp[chosen], advantages[chosen], mask, config.clip_eps
                )
                vf = torch.zeros(())
                if returns is not None:
                    vf = value_loss(
                        values.reshape(len(chosen), MAX_MOVES),
                        games.values[chosen],
                        returns[chosen],
                        mask,
                        clip=None,
                    )
                entropy = masked_mean(entropy_from_logits(logits), mask)
                loss = ppo_loss(pg, vf, entropy, config.vf_coef, config.ent_coef)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        record = {
            "iteration": iteration,
            "win": (games.outcome == 1).float().mean().item(),
            "loss": (games.outcome == -1).float().mean().item(),
            "entropy": entropy.item(),
            "clipfrac": stats["clipfrac"].item(),
        }
        history.append(record)
        progress.advance(1, f"training: win {record['win']:.2f}, loss {record['loss']:.2f}")
    return agent, history


def plot_history(history: list[dict], path) -> None:
    """Win and loss rate of the training games, and policy entropy, over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h["iteration"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(x, [h["win"] for h in history], label="win")
    left.plot(x, [h["loss"] for h in history], label="loss")
    left.set(
        xlabel="PPO iteration (256 games)",
        ylabel="rate",
        ylim=(0, 1),
        title="Against the random player (sampling)",
    )
    left.legend()
    right.plot(x, [h["entropy"] for h in history], color="tab:green")
    right.set(xlabel="PPO iteration", ylabel="nats", title="Policy entropy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
