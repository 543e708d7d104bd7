"""Data-parallel training on several processes (``torchrun``), with one result.

``torchrun --nproc_per_node=N -m nas search|supernet|retrain ...`` starts N processes;
:func:`init` joins them into one process group (NCCL on CUDA, gloo on the CPU). Every step then:

* draws the same random decisions on every rank (paths, Gumbel samples, ACLA masks): every rank
  seeds the global torch RNG alike and consumes it alike;
* builds the same *global* batch on every rank and keeps the rank's disjoint shard of it
  (:func:`shard`: rank ``r`` of ``W`` takes rows ``r*B/W .. (r+1)*B/W``), so N processes see
  exactly the batch one process would;
* averages the gradients over the ranks before the optimiser step (:func:`average_gradients`) -
  the gradient of the mean loss over the union of the shards, as one process computes it on the
  whole batch (tested to 1e-6);
* lets rank 0 alone write checkpoints, logs and exports, and own the Optuna trial
  (:mod:`nas.study.run`); the other ranks follow it.

Gradients are all-reduced explicitly rather than through ``DistributedDataParallel``: a supernet
step runs one path of many, so DDP's bucketed reducer would need ``find_unused_parameters`` and
its hooks; every rank here runs the same path, so every rank has gradients for the same
parameters. A rank that dies breaks the group: the other ranks stop with an error, the running
trial is re-queued, and ``torchrun --max-restarts`` (or the user) restarts the group, which
resumes the trial from its last checkpoint.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist

from nas.errors import UsageError


def is_distributed() -> bool:
    """Whether this process belongs to an initialised group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and owns the Optuna trial."""
    return rank() == 0


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` (no-op otherwise).

    Args:
        device: the device asked for (``cuda`` becomes ``cuda:<LOCAL_RANK>``).

    Returns:
        This rank's device.

    Raises:
        UsageError: the launcher's environment is incomplete.
    """
    if not launched() or is_distributed():
        return device
    for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            raise UsageError(f"WORLD_SIZE is set but {k} is not: start several processes with "
                             "torchrun --nproc_per_node=N -m nas ...")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=int(os.environ.get("ACLA_NAS_DIST_TIMEOUT", "600")))
    rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # the launcher's key-value store, with the keys of this round of workers under their own
    # prefix: after `torchrun --max-restarts` restarts a group, no rank may read an address a
    # dead rank of the previous round left there
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank_ == 0, timeout=timeout)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"acla-nas/round{restart}", store),
                            rank=rank_, world_size=world, timeout=timeout)
    return device


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch ``(B, ...)`` (all of it without a group).

    Raises:
        UsageError: ``B`` is not a multiple of the number of processes.
    """
    w = world_size()
    if w == 1:
        return t
    b = t.shape[0]
    if b % w:
        raise UsageError(f"batch size {b} is not a multiple of the {w} processes; use a batch "
                         f"size divisible by --nproc_per_node")
    n = b // w
    r = rank()
    return t[r * n:(r + 1) * n]


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n


def mean_over_ranks(x: float) -> float:
    """The mean of a number over the ranks (e.g. a shard's loss -> the global batch's loss)."""
    if not is_distributed():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0]) / world_size()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (every rank learns the same answer)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t[0] > 0)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; small objects: plans, resume states)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        dist.barrier()


def all_equal(value: float) -> bool:
    """Whether every rank holds the same number (a check that the ranks did not drift)."""
    if not is_distributed():
        return True
    t = torch.tensor([value, -value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0] == value and -t[1] == value)
