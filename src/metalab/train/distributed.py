"""Data-parallel meta-training over processes (``torchrun``), on torch.distributed.

Every process draws the same full meta-batch (same seed), keeps its contiguous shard of
the tasks, and back-propagates its share of the mean loss, ``(T_r / T) * mean_r``; a sum
all-reduce of the gradients then gives every process exactly the single-process
meta-gradient, so the optimizers stay in lockstep. Rank 0 alone logs, validates and writes
checkpoints; every rank reads the checkpoint when resuming (for several nodes, put the run
directory on storage all nodes share). State a learner fits by itself outside the
meta-gradient synchronises itself in training mode (`metalab.rl.ValueFunctionBaseline`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

from metalab.tasks import TaskBatch


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL for CUDA devices and gloo otherwise. Returns whether training is distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return world_size() > 1
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


@contextmanager
def process_group(device: str = "cpu") -> Iterator[bool]:
    """`init_from_environment` for the block; a group it joined is destroyed on leaving.

    Without ``destroy_process_group`` the backend's threads are torn down at interpreter
    exit, which PyTorch warns against (a gloo worker can then die with "terminate called
    without an active exception" after its work is done). A group the caller had already
    initialised is left alone.
    """
    joined = (dist.is_available() and not dist.is_initialized()
              and init_from_environment(device))
    try:
        yield world_size() > 1
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def shard(batch: TaskBatch) -> tuple[TaskBatch, float]:
    """This process's tasks of ``batch`` and their share ``T_r / T`` of the meta-batch."""
    world = world_size()
    if world == 1:
        return batch, 1.0
    if len(batch) < world:
        raise ValueError(f"train.meta_batch={len(batch)} is smaller than the {world} "
                         f"processes; every process needs at least one task")
    bounds = torch.linspace(0, len(batch), world + 1).round().long().tolist()
    start, stop = bounds[rank()], bounds[rank() + 1]
    return batch[start:stop], (stop - start) / len(batch)


def all_reduce_gradients(parameters) -> None:
    """Sum every parameter's ``.grad`` over processes, in one flat buffer. A parameter that
    no process has a ``.grad`` for keeps ``None``, as in one process, so that the optimizer
    skips it (AdamW would decay it otherwise): e.g. a learned value baseline, fitted by its
    own optimizer."""
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    had_grad = [float(p.grad is not None) for p in params]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([*(p.grad.reshape(-1) for p in params),
                      params[0].new_tensor(had_grad)])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset: offset + p.numel()].view_as(p))
        offset += p.numel()
    for p, processes in zip(params, flat[offset:].tolist(), strict=True):
        if processes == 0:
            p.grad = None


def all_gather_tasks(values: Tensor) -> Tensor:
    """Concatenate every process's ``values`` (one row per task) in rank order."""
    if world_size() == 1:
        return values
    count = torch.tensor([values.shape[0]], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = values.new_zeros((max(sizes), *values.shape[1:]))
    padded[: values.shape[0]] = values
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def all_reduce_metrics(metrics: dict[str, float], share: float) -> dict[str, float]:
    """Task-weighted mean of each metric over processes."""
    if world_size() == 1:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([metrics[n] * share for n in names], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(names, values.tolist(), strict=True))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
