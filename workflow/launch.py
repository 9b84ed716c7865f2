"""Start heavy work (pretraining, evaluations) through submitit: in this process, a local subprocess, or SLURM.

`submit` starts a job, `attach` finds a SLURM job submitted earlier, `follow` waits for one; `launch` does all
three in one call. The heavy rules use them through `workflow.stage`, whose waiting process imports only this
module's light dependencies (submitit): a job's function may be named ``"module:function"``, imported in the job.

- ``cluster="inline"``: call ``fn`` in this process (tests, debugging);
- ``cluster="debug"`` / ``"local"``: submitit's in-process / local-subprocess executors. They are named
  explicitly because ``submitit.AutoExecutor`` picks SLURM whenever ``srun`` is on PATH;
- ``cluster="slurm"``: a SLURM job with one task per GPU (``tasks_per_node = gpus_per_node``), so that
  `mec.distributed` builds the DDP group from ``SLURM_PROCID`` / ``SLURM_NTASKS`` on every node.

When this process already runs inside a SLURM allocation (Snakemake's own ``executor: slurm`` placed the rule
in a job), ``cluster="slurm"`` runs ``fn`` here instead of submitting a job from inside a job.

Jobs are `submitit.helpers.Checkpointable`: on preemption or at the time limit submitit requeues the same call
(SLURM restarts it under the same id), and the work resumes from its own newest checkpoint. `follow` follows a
requeued job to its last attempt (`scontrol show job`: its restarts and the running attempt's start; a result
file older than that is stale), and sees a job killed outside Python end without sacct.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
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
JOB_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every launched job's log lines


class LaunchError(RuntimeError):
    """The job failed; the message names the job id and where its log is (also in ``log``)."""

    def __init__(self, message: str, log: str | None = None) -> None:
        super().__init__(message)
        self.log = log


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
    ``fn`` may be a ``"module:function"`` name, imported only in the job: the process that submits and waits
    then never imports what the job needs (torch, MLflow).
    """

    def __init__(self, fn: Callable[..., Any] | str, cpus_per_task: int | None = None) -> None:
        self.fn = fn
        self.cpus_per_task = cpus_per_task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format=JOB_LOG_FORMAT)
        from mec.threads import use_cpu_budget

        use_cpu_budget(getattr(self, "cpus_per_task", None))  # a job pickled before the field: all usable CPUs
        return resolve(self.fn)(*args, **kwargs)


def resolve(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the function a ``"module:function"`` name points to."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


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


# A job in one of these states may still write its result (a requeued job is PENDING or REQUEUED again).
SLURM_ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED",
                       "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT", "PREEMPTED"}
RESULT_GRACE_S = 30.0  # a finished job's result file may reach a shared file system a little late
CLOCK_SKEW_S = 2.0  # result files are stamped by the compute node's clock, start times by slurmctld's


def slurm_job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Restarts, StartTime, ...); {} once SLURM has forgotten the job.

    scontrol, not sacct: clusters without accounting have no sacct, and submitit then never sees a job that was
    killed outside Python (scancel, OOM, node failure) end.
    """
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id.split("_")[0]], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def _start_time(info: Mapping[str, str]) -> float | None:
    try:
        return time.mktime(time.strptime(info.get("StartTime", ""), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class LogTail:
    """New lines of a job's stdout and stderr since the last call (the files grow as the job runs)."""

    def __init__(self, *paths: str | None) -> None:
        self.offsets = {Path(p): 0 for p in paths if p}

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        for path, offset in self.offsets.items():
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written line waits for the next call
            self.offsets[path] = offset + len(complete)
            lines += complete.decode(errors="replace").splitlines()
        return lines


class Interrupted(BaseException):
    """SIGTERM reached the waiting process (Ctrl-C arrives as KeyboardInterrupt); ``log``: the job's, if any."""

    def __init__(self, message: str = "interrupted", log: str | None = None) -> None:
        super().__init__(message)
        self.log = log


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """In the main thread, SIGTERM raises `Interrupted` like Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def submit(fn: Callable[..., Any] | str, *args: Any, spec: LaunchSpec, **kwargs: Any) -> submitit.Job:
    """Submit ``fn(*args, **kwargs)`` as a resumable job (``spec.cluster`` is debug, local or slurm)."""
    return _executor(spec).submit(ResumableCall(fn, spec.cpus_per_task), *args, **kwargs)


def attach(spec: LaunchSpec, job_id: str) -> submitit.Job:
    """The submitit handle of a SLURM job submitted earlier (by a rule whose process has died) in ``spec.folder``."""
    return submitit.SlurmJob(folder=Path(spec.folder).resolve(), job_id=job_id)


def record_of(job: submitit.Job, cluster: str) -> LaunchRecord:
    return LaunchRecord(cluster=cluster, job_id=str(job.job_id), folder=str(job.paths.folder),
                        stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))


def follow(
    job: submitit.Job,
    spec: LaunchSpec,
    *,
    on_attempt: Callable[[int], None] | None = None,
    echo: Callable[[str], None] | None = None,
    poll_s: float = 2.0,
    echo_every_s: float = 5.0,
) -> Any:
    """Wait for ``job`` and return rank 0's result; a failure raises `LaunchError` naming the job and its log.

    A SLURM job is followed to its last attempt: a requeued job (preemption, time limit, `scontrol requeue`)
    restarts under the same id, and a result file older than the running attempt's start is stale.
    ``on_attempt(n)`` is called for each restart seen (n = 2, 3, ...); ``echo`` gets the job's new log
    lines, at most every ``echo_every_s`` seconds.
    """
    record = record_of(job, spec.cluster)
    rank0 = job.task(0) if getattr(job, "_sub_jobs", None) else job
    tail, echoed_at = LogTail(record.stdout, record.stderr), 0.0
    restarts, attempt_start, running_seen, ended_at = 0, 0.0, False, None
    while True:
        if echo is not None and time.monotonic() - echoed_at >= echo_every_s:
            echoed_at = time.monotonic()
            for line in tail.new_lines():
                echo(line)
        if spec.cluster != "slurm":
            if job.done():
                break
            time.sleep(poll_s)
            continue
        info = slurm_job_info(record.job_id)
        state = info.get("JobState", "")
        if int(info.get("Restarts", "0") or 0) > restarts:
            restarts = int(info["Restarts"])
            running_seen = False
            attempt_start = time.time()
            if on_attempt is not None:
                on_attempt(restarts + 1)
        if state == "RUNNING":
            attempt_start = max(attempt_start, (_start_time(info) or time.time()) - CLOCK_SKEW_S)
            if not running_seen and echo is not None:
                echo(f"{spec.cluster} job {record.job_id} running on {info.get('NodeList', '?')}; "
                     f"log {record.stdout}")
            running_seen = True
        result = rank0.paths.result_pickle
        fresh = result.exists() and result.stat().st_mtime >= attempt_start
        if state not in SLURM_ACTIVE_STATES and fresh:
            break
        if state not in SLURM_ACTIVE_STATES:  # over (or forgotten) and no result of its last attempt yet
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > RESULT_GRACE_S:
                raise LaunchError(f"slurm job {record.job_id} ({spec.job_name}) ended {state or 'unseen'} "
                                  f"without a result; its log is {record.stderr}", log=record.stderr)
        else:
            ended_at = None
        time.sleep(poll_s)
    if echo is not None:
        for line in tail.new_lines():
            echo(line)
    try:
        return rank0.result()  # rank 0's result; every task of a DDP job returns one
    except Exception as exc:  # submitit wraps the job's traceback in FailedJobError / UncompletedJobError
        raise LaunchError(
            f"{spec.cluster} job {record.job_id} ({spec.job_name}) failed; its log is {record.stderr}:\n{exc}",
            log=record.stderr,
        ) from exc


def launch(
    fn: Callable[..., Any] | str,
    *args: Any,
    spec: LaunchSpec,
    on_submit: Callable[[LaunchRecord], None] | None = None,
    poll_s: float = 2.0,
    **kwargs: Any,
) -> tuple[Any, LaunchRecord]:
    """Run ``fn(*args, **kwargs)`` as ``spec`` says and wait for it; returns (result of rank 0, record).

    Interrupted (Ctrl-C, SIGTERM), it cancels the job and raises `LaunchError`; the checkpoints stay.
    """
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
        return ResumableCall(fn, spec.cpus_per_task)(*args, **kwargs), record

    job = submit(fn, *args, spec=spec, **kwargs)
    record = record_of(job, spec.cluster)
    if on_submit is not None:
        on_submit(record)
    try:
        with interrupts_raise():
            return follow(job, spec, poll_s=poll_s), record
    except (KeyboardInterrupt, Interrupted):
        job.cancel(check=False)
        raise LaunchError(f"interrupted: cancelled job {job.job_id}; its checkpoints are kept", log=record.stderr) \
            from None
