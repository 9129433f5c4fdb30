"""Data-parallel PPO: two processes over gloo average their gradients into the full batch's
gradient, and `accelerate launch --num_processes 2 --cpu` runs the trainer with one log,
one checkpoint holding both processes' random states, and replicas that stay identical."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhfkit.rl.distributed import Processes
from test_ppo import TINY, _rlhfkit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average_half_batch(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    processes = Processes()
    torch.manual_seed(0)  # the same model and data in both processes
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    share = processes.shard(list(range(8)))
    torch.nn.functional.mse_loss(model(x[share]), y[share]).backward()
    processes.average_gradients(list(model.parameters()))
    stats = processes.mean({"rank": float(rank), "one": 1.0})
    gathered = processes.gather(torch.tensor([float(rank)]))
    if processes.is_main:
        torch.save(
            {
                "grads": [p.grad for p in model.parameters()],
                "stats": stats,
                "gathered": gathered,
                "share": share,
            },
            out,
        )
    dist.destroy_process_group()


def test_averaged_gradients_of_two_halves_equal_the_full_batch_gradient(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_average_half_batch, args=(_free_port(), out), nprocs=2)
    result = torch.load(out)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    for averaged, full in zip(result["grads"], model.parameters(), strict=True):
        torch.testing.assert_close(averaged, full.grad)
    assert result["share"] == [0, 1, 2, 3]  # a contiguous block: a prompt's samples together
    assert result["stats"] == {"one": 1.0, "rank": 0.5}
    assert result["gathered"].tolist() == [0.0, 1.0]


def test_a_single_process_needs_no_launcher():
    processes = Processes()
    assert (processes.rank, processes.world_size, processes.is_main) == (0, 1, True)
    assert processes.shard([1, 2, 3]) == [1, 2, 3]
    assert processes.mean({"a": 2.0}) == {"a": 2.0}


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_processes_with_one_log_and_checkpoint(tmp_path):
    config = Path(__file__).parent.parent / "configs" / "accelerate" / "cpu.yaml"
    port = str(_free_port())
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--main_process_port",
        port,
        "-m",
        "rlhfkit",
    ]
    run = subprocess.run(
        [*launch, "ppo", "--out", str(tmp_path / "dp"), "--steps", "2", *TINY],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("2 steps (steps)") == 1  # one process reports
    lines = (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # logged once, not per process
    state = torch.load(tmp_path / "dp" / "checkpoint.pt", weights_only=False)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # own samples
    assert (tmp_path / "dp" / "policy" / "adapter_model.safetensors").exists()

    alone = subprocess.run(
        _rlhfkit("ppo", "--out", str(tmp_path / "dp"), "--steps", "3", "--resume", *TINY),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 1
    assert "written by 2 processes, not 1" in alone.stderr and "Traceback" not in alone.stderr
