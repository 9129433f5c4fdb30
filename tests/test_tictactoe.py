"""The seed's tic-tac-toe example must be learned by the PPO core."""

import pytest
import torch

from rlhfkit.rl.tictactoe import Agent, TicTacToeConfig, evaluate, play, train, winner


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


def test_random_play_is_the_baseline():
    rates = evaluate(Agent(), games=1000)  # untrained: about as good as random
    assert rates["win"] < 0.85


@pytest.mark.slow
def test_ppo_learns_to_beat_the_random_player():
    agent, history = train(TicTacToeConfig(seed=0))
    rates = evaluate(agent, games=1000)
    assert rates["win"] + rates["draw"] >= 0.95
    assert rates["win"] >= 0.85
    assert history[-1]["entropy"] < history[0]["entropy"]  # it settled on a strategy


def test_tictactoe_command(cli, tmp_path):
    result = cli("examples", "tictactoe", "--iterations", "3", "--plot", tmp_path / "curve.png")
    assert "greedy play over 1,000 games against the random player: win" in result.stdout
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert cli("examples", "tictactoe", "--iterations", "0", ok=False).exit_code == 1
