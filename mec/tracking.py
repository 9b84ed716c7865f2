"""MLflow run records: where the store is, one experiment per campaign, and a run logger that loses nothing.

Every metric goes first to a local journal (``metrics.jsonl`` beside the checkpoints), synchronously: the journal
is the durable record. A daemon thread sends the metrics on to MLflow in batches, so a tracking server that is
slow or away never blocks a training step; what it cannot deliver stays in the journal and is sent at a later
flush, on resume or by the workflow rule (`replay_journal`). On resume, steps MLflow already holds are not sent
again: a run killed mid-epoch redoes those steps, and its history must not show them twice.

A new run needs the store (it is created there): an unreachable server stops it at once with
`TrackingUnavailableError`. A run that continues (its id from a checkpoint or from the rule) never waits for it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import platform
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_STORE_DIR = Path("results")
MAX_PARAM_LENGTH = 6000  # MLflow 3 limit on a parameter value
MAX_METRIC_BATCH = 1000  # MLflow's log_batch limit
PROBE_TIMEOUT_S = 5.0  # a tracking server that has not answered its health check by then counts as away
CLOSE_WAIT_S = 10.0  # close() waits this long for the sender, then leaves the rest in the journal
# MLflow's HTTP client retries a failed request 7 times with backoff and waits up to 120 s for each answer: about
# 4 minutes per call against a server that is down. The logger retries at the next flush instead, so a few
# seconds per call are enough. MLflow reads these at every request; values the user exported win.
HTTP_REQUEST_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingStoreError(ConnectionError):
    """The tracking store cannot be used as configured: a URI of the wrong form, a database driver that is not
    installed, a SQLite file that cannot be created or does not exist, a server that is not MLflow. The message is
    one line for the user, naming the URI and where it came from. A ConnectionError, as `TrackingUnavailableError`
    has always been, so that every caller that stops on an unreachable store stops on these too."""


class TrackingUnavailableError(TrackingStoreError):
    """A new run cannot start: its tracking server does not answer. The message is one line for the user."""

    def __init__(self, uri: str, reason: str, uri_source: str = "MLFLOW_TRACKING_URI"):
        self.uri, self.reason = uri, reason
        super().__init__(
            f"MLflow tracking server {_redacted(uri)} is not reachable ({reason}); start it, fix {uri_source}, "
            "or unset it to use the local SQLite store"
        )


def _redacted(uri: str) -> str:
    """The URI without its password (credentials may be written into it), for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def unreachable_reason(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the tracking server at ``uri`` does not answer (``"connection refused"``...), None if it does.

    Any answer counts (an HTTP error status, a TLS handshake): only a server that cannot be reached is away.
    Stores that are not HTTP (SQLite) are local and always reachable here.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    return _probe(uri, timeout_s)[1]


# An MLflow GET endpoint the client itself uses, so a reverse proxy's path prefix applies to it as to the client.
# A real server answers 200, or 404 with an MLflow JSON error; 401/403 is an authenticating proxy or MLflow's
# auth app (the client sends the credentials, the probe does not).
PROBE_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def _probe(uri: str, timeout_s: float) -> tuple[str | None, str | None]:
    """(None, None) for an MLflow server, (what it answered, None) for another server, (None, why) if none answers."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + PROBE_PATH, timeout=timeout_s):
            return None, None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403) or b'"error_code"' in _body(exc):
            return None, None
        return f"HTTP {exc.code} {exc.reason}", None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):  # it answered; the client's own TLS settings decide
            return None, None
        return None, _describe(exc.reason, timeout_s)
    except http.client.HTTPException as exc:  # something answered, not in HTTP (another service on the port)
        return f"not HTTP: {type(exc).__name__}", None
    except OSError as exc:  # a read timeout is raised as is
        return None, _describe(exc, timeout_s)


def _body(answer: urllib.error.HTTPError) -> bytes:
    try:
        return answer.read(4096)
    except OSError:
        return b""


def _describe(error: BaseException | str, timeout_s: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within {timeout_s:g} s"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    return str(error)


SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores (mlflow.store.db.db_types)
EXPECTED_URIS = ("expected http(s)://host:port, sqlite:///relative/path.db or sqlite:////absolute/path.db, or "
                 "postgresql:// (mysql://, mssql://) with its driver installed")


def tracking_uri_source(configured: str | None, option: str = "tracking.tracking_uri") -> str:
    """Where ``resolve_tracking_uri`` took the URI from, for messages: the user fixes it there."""
    if configured:
        return option
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return f"{option} / MLFLOW_TRACKING_URI (both unset: results/mlflow.db here)"


def check_tracking_store(uri: str, uri_source: str = "MLFLOW_TRACKING_URI", create: bool = True) -> None:
    """Raise `TrackingStoreError` (one line naming ``uri`` and ``uri_source``) unless MLflow can open this store.

    What needs no server: the URI's form, the database driver, a SQLite file that can be created (``create``) or
    already exists (a reader must not leave an empty store behind). MLflow's own errors for these come late and
    long: a malformed URI after seconds as an unrelated message, a SQLite file it cannot open after about
    2 minutes of retries, as a 200-line traceback.
    """
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower().partition("+")[0]
    if scheme in ("http", "https"):
        problem = None if parts.hostname else "no host"
    elif scheme in SQL_SCHEMES:
        problem = _sql_problem(uri)
    elif scheme == "":  # MLflow would take it for a folder of its retired file store
        problem = "no scheme"
    elif scheme == "file" or len(scheme) == 1:  # C:\... is a path too
        problem = "MLflow's file store (./mlruns), which this project does not use"
    else:
        problem = f"unsupported scheme {parts.scheme + ':'!r}"
    if problem:
        raise TrackingStoreError(f"MLflow tracking URI {_redacted(uri)} (from {uri_source}): {problem}; "
                                 f"{EXPECTED_URIS}")
    if scheme == "sqlite":
        _check_sqlite_file(uri, uri_source, create)


def _sql_problem(uri: str) -> str | None:
    """What SQLAlchemy would refuse in ``uri``, found before MLflow retries it: its form, or a missing driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if uri.lower().startswith("sqlite") and (not uri.partition(":")[2].startswith("///") or uri.endswith(":///")):
        # "sqlite://x.db" makes x.db a host; "sqlite://" is a database in memory, lost when the process ends
        return "a SQLite URI is sqlite:/// followed by the file's path"
    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as exc:
        return _first_line(exc)
    except ImportError as exc:
        return f"its database driver {exc.name or exc} is not installed"
    return None


def _check_sqlite_file(uri: str, uri_source: str, create: bool) -> None:
    from sqlalchemy.engine import make_url

    path = Path(make_url(uri).database)  # relative to the working directory, as SQLite reads it
    if not create:
        if not path.is_file():
            raise TrackingStoreError(f"MLflow store {uri}: {path.absolute()} does not exist (nothing was logged "
                                     f"there); fix {uri_source}")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):  # SQLite takes an empty file for an empty database; never removed (a racing job)
            pass
    except OSError as exc:
        raise TrackingStoreError(f"MLflow store {uri}: cannot create {path} ({why_not_created(path, exc)}); "
                                 f"fix {uri_source}") from None


def why_not_created(path: Path, exc: OSError) -> str:
    """Why creating ``path`` (a file or folder, its parents with it) raised ``exc``, naming the path it concerns
    when that is not ``path`` itself: mkdir's "File exists" or "Not a directory" for a parent that is a file
    says nothing on its own."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if exc.filename and Path(exc.filename) != path:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


def require_tracking_store(uri: str, uri_source: str = "MLFLOW_TRACKING_URI", create: bool = True) -> None:
    """`check_tracking_store`, then, for a tracking server, within seconds: `TrackingUnavailableError` unless it
    answers, `TrackingStoreError` unless it answers as MLflow. One line naming ``uri`` either way.

    Also bounds MLflow's HTTP calls in this process (`bound_http_requests`). For code that creates runs, or reads
    a store it needs (the tables).
    """
    check_tracking_store(uri, uri_source, create)
    if not uri.startswith(("http://", "https://")):
        return
    bound_http_requests()
    answer, reason = _probe(uri, PROBE_TIMEOUT_S)
    if reason:
        raise TrackingUnavailableError(uri, reason, uri_source)
    if answer:
        raise TrackingStoreError(f"{_redacted(uri)} (from {uri_source}) answered but is not an MLflow tracking "
                                 f"server ({answer}); fix {uri_source}, or unset it to use the local SQLite store")


def bound_http_requests() -> None:
    """Bound MLflow's HTTP retries and timeouts in this process (and its children), unless the user set them."""
    for name, value in HTTP_REQUEST_BOUNDS.items():
        os.environ.setdefault(name, value)


def resolve_tracking_uri(configured: str | None = None, store_dir: Path = DEFAULT_STORE_DIR,
                         create: bool = True) -> str:
    """The config's URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:////<abs>/results/mlflow.db``.

    ``create=False`` for a reader: the default store's folder is not made where no store is.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store_dir = store_dir.resolve()
    if create:
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


@dataclass
class _Resume:
    """What a continued run owes the store before its new metrics: RUNNING status, tags, earlier journal steps."""

    running: bool
    tags: dict[str, str]
    journaled_upto: dict[str, int]  # the journal's newest step per key at open; later steps are this process's


class RunLogger:
    """One MLflow run of one rank-0 process; see the module docstring for the delivery guarantees.

    The training thread appends to the journal and to ``_pending``; the sender thread alone sends, and removes
    what the store took from the front of ``_pending``. ``_cond`` guards what both threads share. A process forked
    from this one (a DataLoader worker) has no sender thread and must not use the logger.
    """

    def __init__(self, client: MlflowClient, run_id: str, journal: Path, flush_every_s: float = 15.0,
                 close_wait_s: float = CLOSE_WAIT_S):
        self.client = client
        self.run_id = run_id
        self.journal = journal
        self.flush_every_s = flush_every_s
        self.close_wait_s = close_wait_s
        self.away: str | None = None  # why the store failed last; None while it answers
        self._logged_upto: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._cond = threading.Condition()
        self._pending: list[Metric] = []
        self._resume: _Resume | None = None
        self._final_status: str | None = None
        self._asked = self._answered = 0  # flush requests made, and answered by the sender
        self._closing = False
        self._sender: threading.Thread | None = None
        self._owner_pid = os.getpid()
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

        A new run is created in the store, so the store must answer: `TrackingUnavailableError` within seconds
        if it does not. Continuing a run needs no store: if it cannot be reached, training goes on and every
        metric waits in the journal until it answers. A store that answers but lacks the run is an error: better
        than a silent new run.
        """
        uri = resolve_tracking_uri(tracking_uri)
        uri_source = tracking_uri_source(tracking_uri)
        # Before the client: constructing one opens a SQLite store (about 2 minutes of retries on a file it
        # cannot create), and a malformed URI fails there in an unrelated message.
        if resume_run_id:
            check_tracking_store(uri, uri_source)  # the server may be away: the run trains on regardless
        else:
            require_tracking_store(uri, uri_source)
        if uri.startswith(("http://", "https://")):
            bound_http_requests()
        client = MlflowClient(tracking_uri=uri)
        _end_torn_line(journal)
        if resume_run_id:
            return cls._continue(client, resume_run_id, journal, tags or {})
        return cls(client, _create_run(client, experiment, run_name, tags or {}, uri_source), journal)

    @classmethod
    def _continue(cls, client: MlflowClient, run_id: str, journal: Path, tags: dict[str, str]) -> RunLogger:
        logger = cls(client, run_id, journal)
        # Steps already journaled were logged by an earlier process (or wait to be sent): never twice.
        logger._logged_upto = journal_max_steps(journal, run_id)
        logger._resume = _Resume(running=False, tags=tags, journaled_upto=dict(logger._logged_upto))
        logger.away = unreachable_reason(client.tracking_uri)
        if logger.away is None:
            try:
                client.update_run(run_id, status="RUNNING")  # also asks whether the store holds the run
                logger._resume.running = True
            except Exception as exc:  # transport or store errors; a missing run is not one of them
                if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.away = _first_line(exc)
        if logger.away is not None:
            log.warning("MLflow at %s is away (%s); run %s continues, its metrics wait in %s until it answers",
                        _redacted(client.tracking_uri), logger.away, run_id, journal)
        logger.flush()  # the sender sends what earlier processes journaled and the store lacks
        return logger

    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters once per run; a resumed run skips the ones already there (MLflow forbids changes)."""
        log_params(self.client, self.run_id, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def try_(self, what: str, call: Any, *args: Any) -> bool:
        """Run a non-metric store call (params, tags, artifacts); a store that is away only costs a warning.

        The rule that launched the job logs params and tags before and artifacts after it, so nothing is lost.
        A store already known to be away is not asked (each call would wait for its timeouts).
        """
        if self.away is not None:
            log.warning("MLflow: could not %s for run %s: the store is away (%s)", what, self.run_id, self.away)
            return False
        try:
            call(*args)
        except Exception as exc:
            log.warning("MLflow: could not %s for run %s: %s", what, self.run_id, _first_line(exc))
            return False
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Journal the metrics (steps this run already logged are skipped) and queue them for the sender."""
        now = int(time.time() * 1000)
        fresh = {k: float(v) for k, v in metrics.items() if step > self._logged_upto.get(k, -1)}
        if not fresh:
            return
        with self.journal.open("a") as fh:
            for key, value in fresh.items():
                fh.write(json.dumps({"run_id": self.run_id, "key": key, "value": value, "step": step,
                                    "timestamp": now}) + "\n")
        with self._cond:
            self._pending.extend(Metric(key, value, now, step) for key, value in fresh.items())
        for key in fresh:
            self._logged_upto[key] = step
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Wake the sender and wait up to ``wait_s`` for it; True once the store holds everything logged.

        A training step need not wait: the journal already holds every metric.
        """
        self._last_flush = time.monotonic()
        with self._cond:
            self._asked += 1
            ticket = self._asked
            if self._sender is None and os.getpid() == self._owner_pid:
                self._sender = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
                self._sender.start()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._answered >= ticket, timeout=wait_s)
            return not self._pending and self._resume is None and self._final_status is None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        """Deliver what is pending and mark the run ``status``, waiting at most ``close_wait_s`` for the store.

        What the store has not taken by then stays in the journal: the workflow rule or the next resume sends it.
        """
        with self._cond:
            self._final_status = status
        delivered = self.flush(wait_s=self.close_wait_s)
        with self._cond:
            self._closing = True  # the sender stops, even in the middle of what it was sending
            self._cond.notify_all()
            waiting = len(self._pending)
        if not delivered:
            log.error("MLflow at %s did not take run %s's last records within %g s (%s): %d metrics wait in %s "
                      "(the workflow rule or the next resume sends them); the run is not marked %s",
                      _redacted(self.client.tracking_uri), self.run_id, self.close_wait_s,
                      self.away or "still sending", waiting, self.journal, status)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked > self._answered or self._closing)
                if self._closing:
                    return
                ticket = self._asked
            self._send_round()
            with self._cond:
                self._answered = ticket
                self._cond.notify_all()

    def _send_round(self) -> None:
        """What a continued run owes, then the pending metrics in order, then the final status; stop at a failure."""
        try:
            if self._resume is not None:
                self._settle_resume()
            while not self._closing:
                with self._cond:
                    batch = self._pending[:MAX_METRIC_BATCH]
                if not batch:
                    break
                self.client.log_batch(self.run_id, metrics=batch)
                with self._cond:
                    del self._pending[: len(batch)]
            with self._cond:
                status = self._final_status if not self._pending and not self._closing else None
            if status is not None:
                self.client.set_terminated(self.run_id, status=status)
                with self._cond:
                    self._final_status = None
        except Exception as exc:  # any transport or store error: keep everything and retry at the next flush
            if self._closing:  # close() has already said what was left
                return
            reason = unreachable_reason(self.client.tracking_uri) or _first_line(exc)
            if self.away is None:
                log.warning("MLflow at %s is away (%s); run %s keeps training, its metrics wait in %s",
                            _redacted(self.client.tracking_uri), reason, self.run_id, self.journal)
            self.away = reason
            return
        if self._closing:
            return
        if self.away is not None:
            log.info("MLflow at %s answers again; run %s is up to date", _redacted(self.client.tracking_uri),
                     self.run_id)
        self.away = None

    def _settle_resume(self) -> None:
        owed = self._resume
        if not owed.running:
            self.client.update_run(self.run_id, status="RUNNING")
            owed.running = True
        if owed.tags:
            self.set_tags(owed.tags)
            owed.tags = {}
        earlier = [r for r in read_journal(self.journal, self.run_id)
                   if int(r["step"]) <= owed.journaled_upto.get(r["key"], -1)]
        sent = _send_missing(self.client, self.run_id, earlier)
        with self._cond:
            self._resume = None
        log.info("continuing MLflow run %s (%d journaled metrics re-sent)", self.run_id, sent)


def _create_run(client: MlflowClient, experiment: str, run_name: str | None, tags: dict[str, str],
                uri_source: str) -> str:
    uri = client.tracking_uri  # `RunLogger.open` required the store just before
    try:
        run = client.create_run(ensure_experiment(client, experiment), run_name=run_name, tags=tags)
    except mlflow.exceptions.MlflowException as exc:
        if reason := unreachable_reason(uri):  # it went away after the check
            raise TrackingUnavailableError(uri, reason, uri_source) from exc
        raise
    log.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, _redacted(uri))
    return run.info.run_id


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _end_torn_line(journal: Path) -> None:
    """Finish a last line torn by a killed writer, so that the next record starts a line of its own."""
    if journal.exists() and journal.stat().st_size:
        with journal.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


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
    return _send_missing(client, run_id, read_journal(journal, run_id))


def _send_missing(client: MlflowClient, run_id: str, records: list[dict[str, Any]]) -> int:
    """Send the records whose step is above the store's newest for their key; each (key, step) once."""
    stored = {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
              for key in {r["key"] for r in records}}
    missing, seen = [], set()
    for r in records:
        ident = (r["key"], int(r["step"]))
        if int(r["step"]) > stored[r["key"]] and ident not in seen:
            seen.add(ident)
            missing.append(Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])))
    for start in range(0, len(missing), MAX_METRIC_BATCH):
        client.log_batch(run_id, metrics=missing[start : start + MAX_METRIC_BATCH])
    return len(missing)
