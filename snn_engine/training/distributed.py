"""torch.distributed plumbing: process groups from torchrun or SLURM, samplers, reductions, SyncBatchNorm.

Launch several processes with ``torchrun --nproc_per_node=8 train.py ...`` (several nodes:
``--nnodes=N --node_rank=i --rdzv_endpoint=HOST:PORT``), or submit SLURM jobs through Hydra's submitit launcher
(``python train.py -m hydra/launcher=slurm ...``, the ``slurm`` extra): each SLURM task is one rank, and
:func:`setup` turns submitit's job environment into torchrun's variables. NCCL is used on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from snn_engine.errors import UserError


@dataclass
class DistEnv:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(accelerator: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda":
        if not torch.cuda.is_available():
            raise UserError("trainer.accelerator=cuda but no CUDA device is visible; use trainer=cpu or trainer.accelerator=auto")
        return torch.device("cuda", local_rank)
    if accelerator == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown trainer.accelerator={accelerator!r}; choose auto, cpu or cuda")


def export_submitit_env() -> bool:
    """Inside a multi-task submitit job (SLURM, or its local executor) without torchrun's variables, export
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from the job environment
    (the first node's host, a port derived from the job id). Returns whether it did."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    from submitit.helpers import TorchDistributedEnvironment

    job = TorchDistributedEnvironment()
    if job.world_size < 2:
        return False
    job.export(set_cuda_visible_devices=False)
    return True


def setup(accelerator: str) -> DistEnv:
    """Join the process group that torchrun (or a submitit job) describes in the environment, or run alone."""
    export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(accelerator, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def shared_run_dir(run_dir: Path, env: DistEnv) -> Path:
    """Rank 0's run directory on every rank (each rank's Hydra may have stamped another time into its own).

    Only rank 0 writes there; a rank whose Hydra made a different folder removes what Hydra put in it.
    """
    if not env.distributed:
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    if Path(shared[0]) != Path(run_dir):
        remove_hydra_leftovers(Path(run_dir))
    return Path(shared[0])


def remove_hydra_leftovers(folder: Path) -> None:
    """Delete what Hydra wrote into a run folder that holds nothing else of ours (and the folder if empty)."""
    if (folder / "checkpoints").exists() or (folder / "summary.json").exists():
        return
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    for log_file in folder.glob("*.log"):
        log_file.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def cleanup() -> None:
    """Leave the process group; the barrier first lets every rank finish its last collective (gloo aborts
    the process when a peer tears the group down under a pending operation). No barrier while an exception
    propagates: the other ranks may never arrive."""
    if dist.is_initialized():
        if dist.get_world_size() > 1 and sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (identity when running alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is set on any rank (used to stop every rank together on a signal)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def train_sampler(dataset, env: DistEnv, seed: int, repeated_aug: int) -> Sampler:
    """Shuffling sampler for this rank; repeated augmentation (DeiT RASampler via timm) when repeats > 1."""
    if repeated_aug and repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler  # timm imports in ~15 s: only when used

        return RepeatAugSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, num_repeats=repeated_aug)
    return DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=False)


def set_sampler_epoch(sampler: Sampler, epoch: int, seed: int) -> None:
    """Make the epoch's order a function of (seed, epoch); timm's RASampler seeds with its epoch only."""
    if not isinstance(sampler, DistributedSampler):  # timm's RepeatAugSampler
        sampler.set_epoch(seed * 100_003 + epoch)
    else:
        sampler.set_epoch(epoch)


class SkipSampler(Sampler):
    """Yield the indices of ``sampler`` after the first ``skip``: resumes an epoch part way through."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class ShardSampler(Sampler):
    """Evaluation shard ``rank::world_size`` without padding, so summed metrics count each item once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose batch statistics are summed over all ranks; works on CPU (gloo) and GPU.

    Input ``[N, C, *]`` (multi-step models flatten ``T`` into ``N``). Equals ``BatchNorm`` over the
    concatenation of every rank's batch, including the unbiased running-variance update.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)])
        stats = all_reduce(stats)  # differentiable sum over ranks
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels : 2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise every torch BatchNorm across ranks: torch's SyncBatchNorm on CUDA, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_gloo(model)


def _convert_gloo(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        sync = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        sync.to(next(iter(module.state_dict().values())).device)
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        setattr(module, name, _convert_gloo(child))
    return module
