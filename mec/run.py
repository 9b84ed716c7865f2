"""What every training job shares: process group, device and seeds; the rank-0 run logger; resuming.

Pretraining (`mec.train`) and the supervised evaluations (`evals.supervised`) are both written as

    with job_process(device, seed) as proc:          # DDP init (torchrun / SLURM), device, seeds; teardown
        ...build data, model, optimizer...
        resumed = resume_latest(ckpt_dir, model=model, optimizer=optimizer)   # newest checkpoint that loads
        with logged_run(opener if proc.main else None) as logger:   # FINISHED, or FAILED on any error
            ...epochs...

so that a failed job always ends its MLflow run FAILED and the process group is always destroyed.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mec import checkpoint as ckpt
from mec import distributed as dist_env
from mec.config import ConfigError
from mec.tracking import RunLogger

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """``cuda`` (this process' current GPU) when asked or, with ``auto``, when one is available; else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class JobProcess:
    """This process' place in the job: whether DDP runs, its rank among ``world`` and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int, key: str) -> int:
        """This rank's share of a global batch; ``key`` names the setting when it does not divide."""
        if global_batch % self.world:
            raise ConfigError(f"{key}={global_batch} must be divisible by the world size {self.world}")
        return global_batch // self.world

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


@contextmanager
def job_process(device: str = "auto", seed: int = 0, deterministic: bool = False) -> Iterator[JobProcess]:
    """Start DDP when the launcher asked for it, pick the device, seed with ``seed + rank``; tear down at exit."""
    distributed = dist_env.init_distributed("gloo" if device == "cpu" else None)
    try:
        proc = JobProcess(distributed, dist_env.rank(), dist_env.world_size(), select_device(device))
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif proc.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(seed + proc.rank)
        yield proc
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


@contextmanager
def logged_run(open_logger: Callable[[], RunLogger] | None) -> Iterator[RunLogger | None]:
    """The run logger of rank 0 (``open_logger`` given) or None; closed FINISHED, KILLED on Ctrl-C, or FAILED on
    any other error.

    The journal is the durable record: closing flushes what it can and never loses a metric.
    """
    logger = open_logger() if open_logger is not None else None
    try:
        yield logger
    except BaseException as exc:
        if logger is not None:
            logger.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if logger is not None:
        logger.close("FINISHED")


def resume_latest(ckpt_dir: Path, **stateful: Any) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that loads into each ``name=object`` (its ``load_state_dict(state[name])``).

    Restores the RNG state saved with it; returns (path, state) for the caller's own keys, or None when there
    is nothing to resume.
    """
    resumed = ckpt.find_resumable(Path(ckpt_dir))
    if resumed is None:
        return None
    path, state = resumed
    for name, target in stateful.items():
        target.load_state_dict(state[name])
    ckpt.restore_rng_state(state["rng"])
    return path, state
