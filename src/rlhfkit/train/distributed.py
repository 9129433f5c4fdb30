"""Data parallelism for PPO: processes started by `accelerate launch --config_file
configs/accelerate/cpu.yaml` (or any torchrun-style launcher that sets RANK and WORLD_SIZE)
that each hold a full replica of the weights — or, under an FSDP config (fsdp-cpu.yaml,
fsdp.yaml), a shard of them (Policy.shard).

Every process samples its own share of a step's prompts and computes gradients on its own
rollouts; the gradients are averaged across processes before each optimiser step, so the
replicas stay identical. Statistics are averaged too, so that every process takes the same
decisions (KL controller, stops) and the main process logs what the whole batch did.
A single process (no launcher) pays nothing: every operation is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rlhfkit.errors import RlhfkitError


def resolve_device(device: str) -> torch.device:
    """`device` as torch names it, with auto meaning cuda where there is one, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class Processes:
    """The processes of a run: `rank`, `world_size`, `is_main` and their collectives."""

    def __init__(self, device: str = "cpu") -> None:
        """`device`: cpu, cuda, cuda:N, or auto (cuda where there is one). Several processes
        on CUDA take one GPU each (LOCAL_RANK) and talk over NCCL; on CPUs over gloo."""
        self.device = resolve_device(device)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        # `accelerate launch` with an FSDP config says so in the environment.
        self.sharded = self.world_size > 1 and os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if self.sharded and os.environ.get("FSDP_VERSION", "1") != "2":
            raise RlhfkitError("rlhfkit shards with FSDP2: set fsdp_version: 2 in the config")
        if self.world_size > 1:
            if not dist.is_initialized():
                # accelerate sets up the process group from the launcher's environment.
                from accelerate import PartialState

                PartialState(cpu=self.device.type == "cpu")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # where its random state and collectives live
        self.rank = dist.get_rank() if self.world_size > 1 else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's share of a step's items: a contiguous block, so that the samples
        of one prompt stay together."""
        share = len(items) // self.world_size
        return items[self.rank * share : (self.rank + 1) * share]

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """∇ ← mean over processes, in one collective over the flattened gradients. (Sharded
        weights had theirs averaged in the backward pass, by FSDP's reduce-scatter.)"""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None and not is_shard(p)]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over the processes (they hold equal shares)."""
        if self.world_size == 1:
            return stats
        keys = sorted(stats)
        values = torch.tensor(
            [float(stats[k]) for k in keys], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist(), strict=True))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensors of all processes, concatenated in rank order (equal shapes)."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def same_everywhere(self, tensors: list[torch.Tensor]) -> bool:
        """Whether every process holds the same values (a checksum compared across ranks)."""
        if self.world_size == 1:
            return True
        checksum = torch.stack([t.detach().double().sum() for t in tensors]).sum().reshape(1)
        sums = self.gather(checksum)
        return bool((sums == sums[0]).all())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def is_shard(parameter: torch.Tensor) -> bool:
    """Whether this is a process's shard of a weight (a DTensor), not the whole of it."""
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def shards_and_whole(parameters: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """The sharded weights and the whole ones, apart (leaving out an empty kind): a fused
    kernel (the gradient norm's, the optimiser's) takes one kind at a time."""
    kinds = ([p for p in parameters if is_shard(p)], [p for p in parameters if not is_shard(p)])
    return [kind for kind in kinds if kind]


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ (scale ∇ by min(1, max_norm / ‖∇‖)) over a mix of sharded and
    whole weights, which its one fused norm cannot take together."""
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    groups = shards_and_whole([p for p in parameters if p.grad is not None])
    norms = [get_total_norm([p.grad for p in group]) for group in groups]
    total = torch.linalg.vector_norm(
        torch.stack([n.full_tensor() if is_shard(n) else n for n in norms])
    )
    for group in groups:
        clip_grads_with_norm_(group, max_norm, total)
    return total


def full_state(
    module: torch.nn.Module, trainable_only: bool = True, keep: bool = True
) -> dict[str, torch.Tensor]:
    """A module's (trainable) weights by name, on the CPU, whole even when sharded. Every
    process of a sharded run must call it, since it gathers; those that will not write
    pass keep=False and hold each gathered weight only for a moment."""
    state = {}
    for name, p in module.named_parameters():
        if p.requires_grad or not trainable_only:
            whole = p.full_tensor() if is_shard(p) else p
            if keep:
                state[name] = whole.detach().cpu().clone()
    return state


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy whole weights in by name; a sharded weight takes its own shard of them."""
    from torch.distributed.tensor import distribute_tensor

    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            p = parameters[name]
            if is_shard(p):
                tensor = distribute_tensor(tensor.to(p.device), p.device_mesh, p.placements)
            p.copy_(tensor)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state keyed by weight name, whole even when sharded (every process
    must call it), so that a checkpoint resumes with or without sharding."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, state, options=options)
