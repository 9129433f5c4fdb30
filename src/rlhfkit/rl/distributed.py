"""Data parallelism for PPO: processes that each hold a full replica of the trainable
weights, started by `accelerate launch --config_file configs/accelerate/cpu.yaml` (or any
torchrun-style launcher that sets RANK and WORLD_SIZE).

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


class Processes:
    """The processes of a run: `rank`, `world_size`, `is_main` and their collectives."""

    def __init__(self, device: str = "cpu") -> None:
        """`device`: cpu, cuda, cuda:N, or auto (cuda where there is one). Several processes
        on CUDA take one GPU each (LOCAL_RANK) and talk over NCCL; on CPUs over gloo."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
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
        """∇ ← mean over processes, in one collective over the flattened gradients."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
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
