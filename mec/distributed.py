"""Process-group set-up and a differentiable all-gather for the global-batch MEC loss.

MEC's coding length is a function of the whole batch (the m x m cross-correlation matrix), so every rank
gathers all embeddings and computes the same full-batch loss. `gather_with_grad` makes that exact under
DistributedDataParallel: its backward sums the gathered gradient over ranks (every rank holds the same
loss, so the sum is world_size times the gradient of one copy), and DDP's averaging of parameter
gradients then divides by world_size again. Getting either half wrong scales the gradient by the world size.

Launchers understood by `init_distributed`: torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
`MASTER_PORT`) and SLURM / submitit (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`,
`SLURM_JOB_ID`).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# submitit draws its default rendezvous port from this range, seeded by the job id; the fallback below
# does the same so that a job gets the same port whichever path read its environment.
_MIN_MASTER_PORT, _MAX_MASTER_PORT = 20000, 60000
_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


def is_distributed() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes logs and checkpoints."""
    return rank() == 0


def local_rank() -> int:
    """Rank of this process on its node, from torchrun's `LOCAL_RANK` or SLURM's `SLURM_LOCALID`; else 0."""
    for variable in ("LOCAL_RANK", "SLURM_LOCALID"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns this rank's share of the summed gradient."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        ctx.rows = local.shape[0]
        local = local.contiguous()
        pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, local)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_gathered: Tensor) -> Tensor:
        # Each rank back-propagated its own copy of the same loss; the gradient reaching this rank's rows
        # is the sum of what every copy sends to them.
        grad_gathered = grad_gathered.contiguous().clone()
        dist.all_reduce(grad_gathered, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad_gathered[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all ranks along dim 0, in rank order, keeping the gradient path.

    Every rank must pass a tensor of the same shape. Returns `x` itself without a process group or with a
    world size of 1.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process sits in a multi-process job, as told by its launcher."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "submitit" or "slurm"


def _slurm_master_port(job_id: str) -> int:
    if "MASTER_PORT" in os.environ:
        return int(os.environ["MASTER_PORT"])
    return random.Random(job_id).randint(_MIN_MASTER_PORT, _MAX_MASTER_PORT)


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as `gpu[01-04],cpu7`."""
    if shutil.which("scontrol") is not None:
        listed = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=60
        )
        return listed.stdout.split()[0]
    if "[" in nodelist or "," in nodelist:
        raise RuntimeError(
            f"SLURM_JOB_NODELIST={nodelist!r} names several hosts and `scontrol` is not on PATH to expand it; "
            "set MASTER_ADDR to the first host of the job"
        )
    return nodelist


def _submitit_environment() -> LaunchEnvironment | None:
    """Values from submitit's own helper when this process was started by a submitit SLURM executor."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return None
    job = TorchDistributedEnvironment()
    return LaunchEnvironment(
        rank=job.rank,
        world_size=job.world_size,
        local_rank=job.local_rank,
        master_addr=os.environ.get("MASTER_ADDR", job.master_addr),
        master_port=job.master_port,
        launcher="submitit",
    )


def launch_environment() -> LaunchEnvironment | None:
    """Read the launcher's environment variables; None when no launcher set any.

    torchrun's variables win over SLURM's (torchrun started inside a SLURM allocation sets its own).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnvironment(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    from_submitit = _submitit_environment()
    if from_submitit is not None:
        return from_submitit
    world = int(env["SLURM_NTASKS"])
    job_id = env.get("SLURM_JOB_ID", "0")
    if "MASTER_ADDR" in env:
        master_addr = env["MASTER_ADDR"]
    elif world == 1:
        master_addr = "127.0.0.1"  # no peer will connect; avoid calling scontrol for nothing
    else:
        master_addr = _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    return LaunchEnvironment(
        rank=int(env["SLURM_PROCID"]),
        world_size=world,
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        master_addr=master_addr,
        master_port=_slurm_master_port(job_id),
        launcher="slurm",
    )


def init_distributed(backend: str | None = None) -> bool:
    """Create the default process group from the launcher's environment, when there is more than one process.

    Args:
        backend: a torch.distributed backend; None picks nccl when CUDA is available, else gloo.

    Returns:
        True when a process group of more than one process exists after the call (created now or before).

    Exports `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (the `env://` rendezvous
    reads them) and, with CUDA, makes the local rank's GPU the current device. A batch script that sets
    `--ntasks N` but starts python once (without srun) would wait for N-1 peers that never come: start one
    process per task.
    """
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not a torch.distributed backend; expected one of {_BACKENDS}")
    if is_distributed():
        return world_size() > 1
    launch = launch_environment()
    if launch is None or launch.world_size <= 1:
        return False
    os.environ.update(
        MASTER_ADDR=launch.master_addr,
        MASTER_PORT=str(launch.master_port),
        RANK=str(launch.rank),
        WORLD_SIZE=str(launch.world_size),
        LOCAL_RANK=str(launch.local_rank),
    )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # One GPU per task; a gloo (CPU) group needs none, so a CPU job on a GPU node may run more tasks than GPUs.
        visible = torch.cuda.device_count()
        if launch.local_rank >= visible:
            raise RuntimeError(
                f"rank {launch.rank} is task {launch.local_rank} of its node, which shows {visible} GPU(s): start one "
                "task per GPU (gpus_per_node = tasks per node), or train on the CPU (train.device=cpu uses gloo)"
            )
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return True
