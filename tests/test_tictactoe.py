"""Tic-tac-toe, RL in miniature, must be learned by the PPO core."""

import math
from fractions import Fraction

import pytest
import torch

from rlhfkit.train.tictactoe import Agent, TicTacToeConfig, evaluate, play, train, winner


def test_rules():
    boards = torch.tensor(
        [
            [1, 1, 1, -1, -1, 0, 0, 0, 0],
            [-1, 1, 0, 1, -1, 0, 0, 1, -1],
            [1, -1, 1, 1, -1, -1, -1, 1, 1],
        ]
    )
    assert winner(boards).tolist() == [1, -1, 0]  # a row, a diagonal, a draw


def test_games_are_legal_padded_move_sequences():
    games = play(Agent(), 64, torch.Generator().manual_seed(0))
    moves = games.mask.sum(dim=1)
    assert ((moves >= 3) & (moves <= 5)).all()  # X needs 3 moves to win, has at most 5
    for boards, actions, mask in zip(games.boards, games.actions, games.mask, strict=True):
        for board, action, real in zip(boards, actions, mask, strict=True):
            if real:
                assert board[action] == 0  # never plays on a taken square


def exact_random_play_odds(board=(0,) * 9, player=1) -> dict[int, Fraction]:
    """P(X wins), P(draw), P(O wins) when both sides move uniformly at random, by walking the
    whole game tree: X wins 737/1260 = 58.5% of such games, O 121/420, and 8/63 are drawn."""
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
    for a, b, c in lines:
        if board[a] != 0 and board[a] == board[b] == board[c]:
            return {board[a]: Fraction(1), -board[a]: Fraction(0), 0: Fraction(0)}
    empty = [i for i, square in enumerate(board) if square == 0]
    if not empty:
        return {1: Fraction(0), 0: Fraction(1), -1: Fraction(0)}
    odds = {1: Fraction(0), 0: Fraction(0), -1: Fraction(0)}
    for i in empty:
        after = exact_random_play_odds(board[:i] + (player,) + board[i + 1 :], -player)
        for outcome in odds:
            odds[outcome] += after[outcome] / len(empty)
    return odds


def test_random_play_wins_as_often_as_the_game_tree_says():
    """The baseline a trained agent must beat: an agent with a zero policy layer plays every
    empty square with equal probability, like its random opponent. Over 20,000 seeded games
    each rate is within 4 binomial std (at most 0.0035) of the exact odds."""
    agent = Agent()
    with torch.no_grad():
        agent.policy.weight.zero_()
        agent.policy.bias.zero_()
    n = 20_000
    outcome = play(agent, n, torch.Generator().manual_seed(0)).outcome
    exact = exact_random_play_odds()
    assert exact[1] == Fraction(737, 1260)
    for result, p in exact.items():
        rate = (outcome == result).float().mean().item()
        assert rate == pytest.approx(float(p), abs=4 * math.sqrt(p * (1 - p) / n)), result


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["gae", "rloo", "grpo"])
def test_ppo_learns_to_beat_the_random_player(advantage):
    agent, history = train(TicTacToeConfig(seed=0, advantage=advantage))
    rates = evaluate(agent, games=1000)
    assert rates["win"] + rates["draw"] >= 0.95
    assert rates["win"] >= 0.85
    assert history[-1]["entropy"] < history[0]["entropy"]  # it settled on a strategy


def test_tictactoe_command(cli, tmp_path):
    result = cli("examples", "tictactoe", "--steps", "3", "--plot", tmp_path / "curve.png")
    assert "greedy play over 1,000 games against the random player: win" in result.stdout
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    result = cli("examples", "tictactoe", "--steps", "2", "--advantage", "grpo")
    assert "greedy play over 1,000 games" in result.stdout
    bad = cli("examples", "tictactoe", "--advantage", "a2c", ok=False)
    assert "gae, rloo or grpo" in bad.stdout + bad.stderr
    assert cli("examples", "tictactoe", "--steps", "0", ok=False).exit_code == 1
