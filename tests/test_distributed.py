"""Data-parallel PPO: two processes over gloo average their gradients into the full batch's
gradient, and `accelerate launch --num_processes 2 --cpu` runs the trainer with one log,
one checkpoint holding both processes' random states, and replicas that stay identical.
Under an FSDP config the same run shards the weights and trains to the same numbers."""

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

from conftest import tiny_llama
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.distributed import Processes, full_state, is_shard
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.trainer import CHECKPOINT, read_checkpoint
from test_ppo import TINY, _rlhfkit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, body) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = body(rank)
    if rank == 0:
        torch.save(result, out)
    # Both done before either tears its gloo threads down: a process that destroyed its group
    # while the other still talked to it once died at exit (SIGABRT, "terminate called").
    dist.barrier()
    dist.destroy_process_group()
    # Even so, a worker now and then aborts in its C++ destructors at exit ("terminate called
    # without an active exception"), after its work is done: skip them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def on_two_processes(body, tmp_path) -> dict:
    """Run `body(rank)` in two processes joined over gloo; return what rank 0 returned."""
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out, body), nprocs=2)
    return torch.load(out, weights_only=False)


def _average_half_batch(rank: int) -> dict:
    processes = Processes()
    torch.manual_seed(0)  # the same model and data in both processes
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    share = processes.shard(list(range(8)))
    torch.nn.functional.mse_loss(model(x[share]), y[share]).backward()
    processes.average_gradients(list(model.parameters()))
    return {
        "grads": [p.grad for p in model.parameters()],
        "stats": processes.mean({"rank": float(rank), "one": 1.0}),
        "gathered": processes.gather(torch.tensor([float(rank)])),
        "share": share,
    }


def test_averaged_gradients_of_two_halves_equal_the_full_batch_gradient(tmp_path):
    result = on_two_processes(_average_half_batch, tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    for averaged, full in zip(result["grads"], model.parameters(), strict=True):
        torch.testing.assert_close(averaged, full.grad)
    assert result["share"] == [0, 1, 2, 3]  # a contiguous block: a prompt's samples together
    assert result["stats"] == {"one": 1.0, "rank": 0.5}
    assert result["gathered"].tolist() == [0.0, 1.0]


def test_an_fsdp1_config_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(RlhfkitError, match="set fsdp_version: 2"):
        Processes()


def test_a_single_process_needs_no_launcher():
    processes = Processes()
    assert (processes.rank, processes.world_size, processes.is_main) == (0, 1, True)
    assert processes.shard([1, 2, 3]) == [1, 2, 3]
    assert processes.mean({"a": 2.0}) == {"a": 2.0}


def _launch(accelerate_config: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    config = Path(__file__).parent.parent / "configs" / "accelerate" / accelerate_config
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    return subprocess.run(
        [*launch, "--main_process_port", str(_free_port()), "-m", "rlhfkit"]
        + ["ppo", "--out", str(out), "--steps", "2", *TINY, *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def data_parallel_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("dp") / "run"
    return _launch("cpu.yaml", out), out


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_processes_with_one_log_and_checkpoint(
    data_parallel_run,
):
    run, out = data_parallel_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("2 steps (steps)") == 1  # one process reports
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # logged once, not per process
    state = read_checkpoint(out / CHECKPOINT)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # own samples
    assert (out / "policy" / "adapter_model.safetensors").exists()

    alone = subprocess.run(
        _rlhfkit("ppo", "--out", str(out), "--steps", "3", "--resume", *TINY),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 1
    assert "written by 2 processes, not 1" in alone.stderr and "Traceback" not in alone.stderr


@pytest.mark.slow
def test_fsdp_shards_the_weights_and_trains_as_data_parallel_does(data_parallel_run, tmp_path):
    """Same seeds, so the same samples: sharding must change where the weights live, not
    what the run computes (up to the order of floating-point sums)."""
    replicated, dp = data_parallel_run
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    sharded = _launch("fsdp-cpu.yaml", tmp_path / "fsdp")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stderr.count("2 steps (steps)") == 1

    def metrics(out):
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(metrics(dp), metrics(tmp_path / "fsdp"), strict=True):
        assert a["reward_mean"] == b["reward_mean"]  # the same responses were sampled
        # KL near 0 is a difference of log-probabilities near −5 summed over tokens, so the
        # ~1e-6 rounding of the weights after step 1 shows in it at about that size.
        for key in ("policy_loss", "value_loss", "kl", "approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    a = read_checkpoint(dp / CHECKPOINT)
    b = read_checkpoint(tmp_path / "fsdp" / CHECKPOINT)
    a, b = a["trainer"], b["trainer"]
    assert a["trainable"].keys() == b["trainable"].keys()  # whole weights, not shards
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, weight in a["trainable"].items():
        torch.testing.assert_close(b["trainable"][name], weight, rtol=0, atol=1e-5)
    for name in ("policy/adapter_model.safetensors", "policy/value_head.safetensors"):
        assert (tmp_path / "fsdp" / name).exists()

    # The checkpoints are interchangeable: the sharded run goes on replicated.
    onwards = _launch("cpu.yaml", tmp_path / "fsdp", "--steps", "3", "--resume")
    assert onwards.returncode == 0, onwards.stderr[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "fsdp")] == [1, 2, 3]


def _shard_policy(rank: int) -> dict:
    torch.manual_seed(0)
    policy = Policy(tiny_llama(), None, lora=None)  # full fine-tune: a reference copy too
    whole = full_state(policy, trainable_only=False)
    policy.shard()

    def shards():  # FSDP swaps a gathered weight's shard for the whole tensor
        return [p for p in policy.parameters() if is_shard(p)]

    sharded_before = len(shards())
    local = sum(p.to_local().numel() for p in shards())
    total = sum(p.numel() for p in shards())
    ids = torch.tensor([[1, 2, 3, 4]])
    with policy.gathered():
        sampled = policy.model.generate(ids, max_new_tokens=3, do_sample=False)
        gathered_while_sampling = len(shards())
    sharded_after = len(shards())
    logits, _ = policy(ids, torch.ones_like(ids))
    return {
        "local": local,
        "total": total,
        "shard_counts": (sharded_before, gathered_while_sampling, sharded_after),
        "whole": whole,
        "again": full_state(policy, trainable_only=False, keep=rank == 0),
        "logits": logits,
        "sampled": sampled,
    }


def test_a_sharded_policy_keeps_half_of_each_weight_and_computes_the_same(tmp_path):
    result = on_two_processes(_shard_policy, tmp_path)
    assert result["local"] == pytest.approx(result["total"] / 2, rel=0.01)
    before, while_sampling, after = result["shard_counts"]
    # Sampling gathered the policy's weights (not the reference's), then let them go.
    assert (while_sampling, after) == (before // 2, before)
    assert result["again"].keys() == result["whole"].keys()
    for name, weight in result["whole"].items():
        assert torch.equal(result["again"][name], weight), name
    torch.manual_seed(0)
    policy = Policy(tiny_llama(), None, lora=None)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(result["logits"], policy(ids, torch.ones_like(ids))[0])
    assert torch.equal(
        result["sampled"], policy.model.generate(ids, max_new_tokens=3, do_sample=False)
    )


@pytest.mark.parametrize("name", ["cpu.yaml", "fsdp-cpu.yaml", "fsdp.yaml"])
def test_the_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(
        str(Path(__file__).parent.parent / "configs" / "accelerate" / name)
    )
    assert config.num_processes >= 2
    if name.startswith("fsdp"):
        assert config.distributed_type == "FSDP"
        assert str(config.fsdp_config["fsdp_version"]) == "2"  # what Processes asks for
