"""MLflow run records: where the store is, one experiment per campaign, and a run logger that loses nothing.

Every metric goes first to a local journal (``metrics.jsonl`` beside the checkpoints) and then to MLflow in
batches. A failed send (tracking server down, SQLite locked) keeps the batch and retries at the next flush,
so a job keeps training while the store is away. On resume, steps MLflow already holds are not sent again:
a run killed mid-epoch redoes those steps, and its history must not show them twice.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_STORE_DIR = Path("results")
MAX_PARAM_LENGTH = 6000  # MLflow 3 limit on a parameter value


def resolve_tracking_uri(configured: str | None = None, store_dir: Path = DEFAULT_STORE_DIR) -> str:
    """The config's URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:////<abs>/results/mlflow.db``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store_dir = store_dir.resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    # An absolute path after "sqlite:///" gives the four slashes SQLAlchemy needs.
    return f"sqlite:///{store_dir / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts in `artifacts/<experiment>` beside a SQLite store's file; a tracking server decides (None).

    Without it MLflow puts a SQLite store's artifacts under `./mlruns` of whatever directory the process
    runs in.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = tracking_uri.removeprefix("sqlite:").removeprefix("///")
    store_dir = Path(database).parent if database and database != ":memory:" else DEFAULT_STORE_DIR
    return (store_dir.resolve() / "artifacts" / experiment).as_uri()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id for ``name``, created if missing; safe when several jobs race to create it.

    A new experiment on a SQLite store keeps its artifacts beside the store (`default_artifact_location`).
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(client.tracking_uri, name))
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_commit(path: Path = Path(__file__).resolve().parent) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def environment_tags(world_size: int, device: str) -> dict[str, str]:
    import torch

    tags = {
        "env.git_commit": git_commit(),
        "env.torch": torch.__version__,
        "env.python": platform.python_version(),
        "env.host": socket.gethostname(),
        "env.world_size": str(world_size),
        "env.device": device,
    }
    if torch.cuda.is_available():
        tags["env.cuda"] = str(torch.version.cuda)
        tags["env.gpu"] = torch.cuda.get_device_name(0)
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_ARRAY_TASK_ID"):
        if var in os.environ:
            tags[f"env.{var.lower()}"] = os.environ[var]
    return tags


class RunLogger:
    """One MLflow run of one rank-0 process; see the module docstring for the delivery guarantees."""

    def __init__(self, client: MlflowClient, run_id: str, journal: Path, flush_every_s: float = 15.0):
        self.client = client
        self.run_id = run_id
        self.journal = journal
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._logged_upto: dict[str, int] = {}
        self._warned = False
        journal.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(
        cls,
        *,
        experiment: str,
        run_name: str | None,
        journal: Path,
        resume_run_id: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunLogger:
        """Continue ``resume_run_id`` (from a checkpoint, or created by the rule) or start a new run.

        Continuing a run needs no store: if it cannot be reached, training goes on and every metric waits in
        the journal (`replay_journal` sends it later). A store that answers but lacks the run is an error:
        better than a silent new run.
        """
        uri = resolve_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        if not resume_run_id:
            exp_id = ensure_experiment(client, experiment)
            run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
            log.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, uri)
            return cls(client, run.info.run_id, journal)
        logger = cls(client, resume_run_id, journal)
        # Steps already journaled were logged by an earlier process (or wait to be sent): never twice.
        logger._logged_upto = journal_max_steps(journal, resume_run_id)
        try:
            client.update_run(resume_run_id, status="RUNNING")
            if tags:
                logger.set_tags(tags)
            sent = replay_journal(client, resume_run_id, journal)
        except Exception as exc:  # transport or store errors; a missing run is not one of them
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("MLflow unreachable (%s); run %s continues, metrics kept in %s", exc, resume_run_id, journal)
            return logger
        log.info("continuing MLflow run %s (%d journaled metrics re-sent)", resume_run_id, sent)
        return logger

    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters once per run; a resumed run skips the ones already there (MLflow forbids changes)."""
        log_params(self.client, self.run_id, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def try_(self, what: str, call: Any, *args: Any) -> bool:
        """Run a non-metric store call (params, tags, artifacts); a store that is away only costs a warning.

        The rule that launched the job logs params and tags before and artifacts after it, so nothing is lost.
        """
        try:
            call(*args)
        except Exception as exc:
            log.warning("MLflow: could not %s for run %s: %s", what, self.run_id, exc)
            return False
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = {k: float(v) for k, v in metrics.items() if step > self._logged_upto.get(k, -1)}
        if not fresh:
            return
        with self.journal.open("a") as fh:
            for key, value in fresh.items():
                fh.write(json.dumps({"run_id": self.run_id, "key": key, "value": value, "step": step,
                                    "timestamp": now}) + "\n")
        self._pending.extend(Metric(key, value, now, step) for key, value in fresh.items())
        for key in fresh:
            self._logged_upto[key] = step
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> bool:
        """Send pending metrics; False (and keep them) if the store cannot be reached."""
        self._last_flush = time.monotonic()
        while self._pending:
            batch = self._pending[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # any transport/store error: keep training, retry later
                if not self._warned:
                    log.warning("MLflow unreachable (%s); metrics kept in %s and retried", exc, self.journal)
                    self._warned = True
                return False
            del self._pending[: len(batch)]
        self._warned = False
        return True

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        delivered = self.flush()
        if not delivered:
            log.error("%d metrics could not reach MLflow; they are in %s", len(self._pending), self.journal)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # a store that is away must not mask the run's own outcome
            log.error("could not mark MLflow run %s as %s: %s", self.run_id, status, exc)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the parameters the run does not hold yet (MLflow forbids changing a logged value)."""
    existing = client.get_run(run_id).data.params
    batch = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items() if key not in existing]
    for start in range(0, len(batch), 100):  # log_batch accepts at most 100 params per call
        client.log_batch(run_id, params=batch[start : start + 100])


def read_journal(journal: Path, run_id: str) -> list[dict[str, Any]]:
    """The journal's records of ``run_id``; a torn last line (the writer was killed mid-write) is skipped."""
    if not journal.exists():
        return []
    records = []
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("run_id") == run_id:
            records.append(record)
    return records


def journal_max_steps(journal: Path, run_id: str) -> dict[str, int]:
    upto: dict[str, int] = {}
    for record in read_journal(journal, run_id):
        upto[record["key"]] = max(upto.get(record["key"], -1), int(record["step"]))
    return upto


def replay_journal(client: MlflowClient, run_id: str, journal: Path) -> int:
    """Send the journal's metrics that the store lacks (steps above its newest per key); returns how many.

    The journal is written before every send, so it holds everything the store holds and possibly more:
    what a killed process or an unreachable store never delivered.
    """
    records = read_journal(journal, run_id)
    if not records:
        return 0
    stored: dict[str, int] = {}
    for key in {r["key"] for r in records}:
        history = client.get_metric_history(run_id, key)
        stored[key] = max((m.step for m in history), default=-1)
    missing, seen = [], set()
    for r in records:
        ident = (r["key"], int(r["step"]))
        if int(r["step"]) > stored[r["key"]] and ident not in seen:
            seen.add(ident)
            missing.append(Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])))
    for start in range(0, len(missing), 1000):
        client.log_batch(run_id, metrics=missing[start : start + 1000])
    return len(missing)
