"""Start heavy work (pretraining, evaluations) through submitit: in this process, a local subprocess, or SLURM.

One entry point, `launch(fn, *args, spec=...)`, used by every heavy Snakemake rule:

- ``cluster="inline"``: call ``fn`` in this process (tests, debugging);
- ``cluster="debug"`` / ``"local"``: submitit's in-process / local-subprocess executors. They are named
  explicitly because ``submitit.AutoExecutor`` picks SLURM whenever ``srun`` is on PATH;
- ``cluster="slurm"``: a SLURM job with one task per GPU (``tasks_per_node = gpus_per_node``), so that
  `mec.distributed` builds the DDP group from ``SLURM_PROCID`` / ``SLURM_NTASKS`` on every node.

When this process already runs inside a SLURM allocation (Snakemake's own ``executor: slurm`` placed the rule
in a job), ``cluster="slurm"`` runs ``fn`` here instead of submitting a job from inside a job.

Jobs are `submitit.helpers.Checkpointable`: on preemption or at the time limit submitit requeues the same call,
and the work resumes from its own newest checkpoint (the training loops resume by themselves). The job id,
its stdout/stderr files and the submitit folder come back as a `LaunchRecord`, first through ``on_submit``
(so a rule can record them while the job runs) and then with the result.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

CLUSTERS = ("inline", "debug", "local", "slurm")


class LaunchError(RuntimeError):
    """The job failed; the message names the job id and where its log is."""


@dataclass(frozen=True)
class LaunchSpec:
    """Where and with what a job runs. Every field maps to one sbatch option (or a local equivalent)."""

    cluster: str = "local"
    folder: Path = Path("results/submitit")
    job_name: str = "mec"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # None: one per GPU, or 1 without GPUs
    cpus_per_task: int = 2
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_requeues: int = 3  # submitit's slurm_max_num_timeout: preemptions are not counted
    extra: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. {"constraint": "a100"}
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, conda activate)

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"launcher cluster {self.cluster!r} is not one of {list(CLUSTERS)}")
        for name in ("nodes", "cpus_per_task", "timeout_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"launcher {name} must be >= 1, got {getattr(self, name)!r}")
        if self.gpus_per_node < 0 or self.max_requeues < 0:
            raise ValueError("launcher gpus_per_node and max_requeues must be >= 0")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"launcher tasks_per_node must be >= 1, got {self.tasks_per_node!r}")
        if self.cluster != "slurm" and self.nodes > 1:
            raise ValueError(f"launcher cluster {self.cluster!r} runs on one node; nodes={self.nodes} needs slurm")

    @property
    def tasks(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(1, self.gpus_per_node)

    @classmethod
    def from_resources(cls, resources: Mapping[str, Any], **fields: Any) -> LaunchSpec:
        """Build a spec from a Snakemake rule's ``resources`` (the profile's default-resources included).

        Names follow snakemake-executor-plugin-slurm where it has one: ``slurm_partition``,
        ``slurm_account``, ``runtime`` (minutes), ``mem_mb``, ``cpus_per_task``, ``slurm_extra`` (a string of
        sbatch options such as ``"--qos=high --constraint=a100"``); plus ``nodes``, ``gpus_per_node`` and
        ``tasks_per_node``. Snakemake's own bookkeeping resources (``_cores``, ``tmpdir``, ...) are ignored.
        """
        def get(name: str, default: Any = None) -> Any:
            value = resources.get(name, default)
            return default if value in (None, "", "None") else value

        spec: dict[str, Any] = {
            "nodes": int(get("nodes", 1)),
            "gpus_per_node": int(get("gpus_per_node", 0)),
            "cpus_per_task": int(get("cpus_per_task", 2)),
            "timeout_min": int(get("runtime", 60)),
            "partition": get("slurm_partition"),
            "account": get("slurm_account"),
            "qos": get("slurm_qos"),
            "extra": parse_sbatch_options(str(get("slurm_extra", ""))),
        }
        if get("tasks_per_node") is not None:
            spec["tasks_per_node"] = int(get("tasks_per_node"))
        if get("mem_mb") is not None:
            spec["mem_gb"] = float(get("mem_mb")) / 1024
        spec.update(fields)
        return cls(**spec)


def parse_sbatch_options(text: str) -> dict[str, str]:
    """``"--qos=high --constraint a100 --exclusive"`` -> ``{"qos": "high", "constraint": "a100", "exclusive": ""}``."""
    options: dict[str, str] = {}
    tokens = shlex.split(text)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"slurm_extra: expected sbatch long options (--name=value), got {token!r} in {text!r}")
        name, sep, value = token[2:].partition("=")
        if not sep and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
            i += 1
        options[name.replace("-", "_")] = value
        i += 1
    return options


@dataclass(frozen=True)
class LaunchRecord:
    """Where a job ran: what a rule writes next to its result and into MLflow."""

    cluster: str
    job_id: str | None
    folder: str | None
    stdout: str | None
    stderr: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_tags(self) -> dict[str, str]:
        return {f"launcher.{key}": str(value) for key, value in asdict(self).items() if value is not None}


class ResumableCall(submitit.helpers.Checkpointable):
    """A submitit job that is resubmitted unchanged when preempted or timed out.

    The wrapped function must resume from its own checkpoints (pretraining and the evaluations do), so the
    state to carry across a requeue is just the call itself: Checkpointable's default ``checkpoint``.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def inside_slurm_allocation() -> bool:
    """True in a SLURM job that submitit did not start (e.g. a rule placed by Snakemake's slurm executor)."""
    return "SLURM_JOB_ID" in os.environ and "SUBMITIT_EXECUTOR" not in os.environ


def _executor(spec: LaunchSpec) -> submitit.Executor:
    folder = Path(spec.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # How often a job may be requeued after hitting its time limit (preemptions are not counted).
    extra_init = {"slurm_max_num_timeout": spec.max_requeues} if spec.cluster == "slurm" else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=spec.cluster, **extra_init)
    params: dict[str, Any] = {
        "name": spec.job_name,
        "timeout_min": spec.timeout_min,
        "nodes": spec.nodes,
        "tasks_per_node": spec.tasks,
        "gpus_per_node": spec.gpus_per_node,
        "cpus_per_task": spec.cpus_per_task,
    }
    if spec.mem_gb is not None:
        params["mem_gb"] = spec.mem_gb
    if spec.cluster == "slurm":
        if spec.partition:
            params["slurm_partition"] = spec.partition
        if spec.account:
            params["slurm_account"] = spec.account
        if spec.qos:
            params["slurm_qos"] = spec.qos
        if spec.extra:
            params["slurm_additional_parameters"] = dict(spec.extra)
        if spec.setup:
            params["slurm_setup"] = list(spec.setup)
    executor.update_parameters(**params)
    return executor


SLURM_FAILED_STATES = {"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
RESULT_GRACE_S = 30.0  # a finished job's result file may reach a shared file system a little late


def _squeue_state(job_id: str | None) -> str | None:
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id.split("_")[0], "-o", "%T"],
                             capture_output=True, text=True, timeout=30, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[0] if out else None


class _Interrupted(BaseException):
    pass


@contextlib.contextmanager
def _cancel_on_interrupt(job: submitit.Job) -> Iterator[None]:
    """A rule that is interrupted (Ctrl-C, or SIGTERM from Snakemake) cancels its job instead of orphaning it.

    The job's checkpoints stay: the rerun resumes from them.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: Any) -> None:
            raise _Interrupted(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except (KeyboardInterrupt, _Interrupted):
        job.cancel(check=False)
        raise LaunchError(f"interrupted: cancelled job {job.job_id}; its checkpoints are kept") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def launch(
    fn: Callable[..., Any],
    *args: Any,
    spec: LaunchSpec,
    on_submit: Callable[[LaunchRecord], None] | None = None,
    poll_s: float = 2.0,
    **kwargs: Any,
) -> tuple[Any, LaunchRecord]:
    """Run ``fn(*args, **kwargs)`` as ``spec`` says and wait for it; returns (result of rank 0, record)."""
    if spec.cluster == "inline" or (spec.cluster == "slurm" and inside_slurm_allocation()):
        record = LaunchRecord(
            cluster="slurm-allocation" if spec.cluster == "slurm" else "inline",
            job_id=os.environ.get("SLURM_JOB_ID"),
            folder=None,
            stdout=None,
            stderr=None,
        )
        if on_submit is not None:
            on_submit(record)
        return fn(*args, **kwargs), record

    job = _executor(spec).submit(ResumableCall(fn), *args, **kwargs)
    record = LaunchRecord(
        cluster=spec.cluster,
        job_id=str(job.job_id),
        folder=str(job.paths.folder),
        stdout=str(job.paths.stdout),
        stderr=str(job.paths.stderr),
    )
    if on_submit is not None:
        on_submit(record)
    with _cancel_on_interrupt(job):
        ended_at = None
        while not job.done():
            time.sleep(poll_s)
            # submitit learns of a job killed outside Python (scancel, OOM, node failure) only from sacct,
            # which clusters without accounting lack: ask squeue too, and give up once the job is over and
            # has left no result behind.
            if spec.cluster == "slurm" and _squeue_state(record.job_id) in SLURM_FAILED_STATES:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > RESULT_GRACE_S:
                    break
    try:
        return job.results()[0], record  # rank 0's result; every task of a DDP job returns one
    except Exception as exc:  # submitit wraps the job's traceback in FailedJobError / UncompletedJobError
        raise LaunchError(
            f"{spec.cluster} job {record.job_id} ({spec.job_name}) failed; its log is {record.stderr}:\n{exc}"
        ) from exc
