"""How many CPU threads a job's process computes with: the CPUs its launcher gave it, not all the machine has.

PyTorch starts as many intra-op (OpenMP) threads as the process may run on. Two jobs sharing a machine then
each start that many, and OpenMP's waiting threads spin on the cores the other job needs: two digits pretraining
jobs on a 2-core machine ran 11-44 s per epoch against 1.3 s alone, far worse than half speed. Each launched
process therefore sizes its thread pool from its allocation (SLURM's ``SLURM_CPUS_PER_TASK``, else the
``cpus_per_task`` its launcher was given), never above the CPUs it may run on, and says so in its log.
DataLoader workers run one thread each (PyTorch sets that in every worker); ``data.num_workers: auto`` gives a
job one fewer worker than its CPUs (`loader_workers`), the main process keeping one for the training loop.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

SLURM_CPUS = "SLURM_CPUS_PER_TASK"
# The budget `use_cpu_budget` set in this process (None: never set, e.g. a bare `mec pretrain`).
_job_cpus: int | None = None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a cgroup or taskset shrinks it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_budget(cpus_per_task: int | None = None) -> tuple[int, str]:
    """(threads, where the number comes from): SLURM's allocation inside a SLURM job, else ``cpus_per_task``,
    else every usable CPU; capped at the usable CPUs."""
    usable = usable_cpus()
    slurm = os.environ.get(SLURM_CPUS, "")
    if slurm.isdigit() and int(slurm) > 0:
        wanted, source = int(slurm), f"{SLURM_CPUS}={slurm}"
    elif cpus_per_task:
        wanted, source = int(cpus_per_task), f"cpus_per_task={cpus_per_task}"
    else:
        wanted, source = usable, "all usable CPUs"
    if wanted > usable:
        return usable, f"{source}, capped at the {usable} usable CPUs"
    return wanted, source


def use_cpu_budget(cpus_per_task: int | None = None) -> int:
    """Size this process' intra-op thread pool from its CPU budget (`cpu_budget`), log it, return the count."""
    global _job_cpus
    threads, source = cpu_budget(cpus_per_task)
    torch.set_num_threads(threads)
    _job_cpus = threads
    log.info("CPU budget: %d intra-op thread%s (%s)", threads, "" if threads == 1 else "s", source)
    return threads


def job_cpus() -> int:
    """The CPUs this job was given: the budget `use_cpu_budget` set, else `cpu_budget()`'s answer."""
    return _job_cpus if _job_cpus is not None else cpu_budget()[0]


def loader_workers(configured: int | str, what: str = "data.num_workers") -> int:
    """DataLoader workers for ``configured`` (an int, or "auto": the job's CPUs less one for the main process,
    0 on a single CPU, where the main process loads in between steps); "auto" logs what it chose."""
    if configured != "auto":
        return int(configured)
    workers = max(0, job_cpus() - 1)
    log.info("%s=auto: %d loader worker%s (%d CPUs for this job)", what, workers, "" if workers == 1 else "s",
             job_cpus())
    return workers
