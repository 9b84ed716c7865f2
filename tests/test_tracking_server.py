"""A tracking server that is away never blocks training: a new run stops at once, a continued one trains on.

The servers here are real sockets on the loopback interface: a port nobody listens on (connection refused), a
server that accepts connections and never answers, and a real `mlflow server` stopped in the middle of a job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import write_tiny_mec_config
from mlflow.tracking import MlflowClient

from mec.tracking import (
    CLOSE_WAIT_S,
    HTTP_REQUEST_BOUNDS,
    PROBE_TIMEOUT_S,
    RunLogger,
    TrackingStoreError,
    TrackingUnavailableError,
    read_journal,
    replay_journal,
    require_tracking_store,
)

REPO = Path(__file__).resolve().parents[1]
KEYS = ("train/loss", "train/lr", "train/lambda")


@pytest.fixture(autouse=True)
def _mlflow_http_defaults(monkeypatch):
    """Each test starts with MLflow's own HTTP settings; what the logger sets is undone afterwards."""
    for name in HTTP_REQUEST_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def refusing_uri() -> str:
    return f"http://127.0.0.1:{_free_port()}"


@pytest.fixture
def silent_uri():
    """An HTTP endpoint that accepts every connection and never answers (a hung server)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture(params=["refusing", "silent"])
def away_uri(request) -> str:
    return request.getfixturevalue(f"{request.param}_uri")


def test_a_continued_run_logs_and_closes_without_waiting_for_a_server_that_is_away(tmp_path, away_uri):
    journal = tmp_path / "metrics.jsonl"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=store).run_id
    logger = RunLogger.open(experiment="e", run_name="r", journal=journal, resume_run_id=run_id,
                            tracking_uri=away_uri)

    started = time.monotonic()
    for step in range(1, 101):
        logger.log_metrics({key: step / 10 for key in KEYS}, step)
        logger.flush()
    logging_s = time.monotonic() - started
    started = time.monotonic()
    logger.close("FINISHED")
    closing_s = time.monotonic() - started

    # Before the fix each flush waited through MLflow's retries: about 250 s against a server that is down.
    assert logging_s < 5, f"100 steps took {logging_s:.1f} s against {away_uri}"
    assert closing_s < CLOSE_WAIT_S + 5, f"close took {closing_s:.1f} s"
    records = read_journal(journal, run_id)
    assert sorted((r["key"], r["step"]) for r in records) == sorted((k, s) for k in KEYS for s in range(1, 101))
    client = MlflowClient(store)
    assert replay_journal(client, run_id, journal) == 300  # what the rule does after the job
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 101))


def test_a_new_run_against_a_server_that_is_away_stops_within_seconds_naming_it(tmp_path, away_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", away_uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised:
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl")
    assert time.monotonic() - started < PROBE_TIMEOUT_S + 10
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(rf"MLflow tracking server {re.escape(away_uri)} is not reachable \((connection refused|no "
                     rf"answer within {PROBE_TIMEOUT_S:g} s)\); start it, fix MLFLOW_TRACKING_URI", message), message
    assert not (tmp_path / "metrics.jsonl").exists()


def test_mec_pretrain_against_a_server_that_refuses_prints_one_line_and_exits_2(tmp_path, refusing_uri):
    config = write_tiny_mec_config(tmp_path)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "workflow.cli", "pretrain", "--config", str(config),
         f"train.output_dir={tmp_path / 'run'}"],
        cwd=REPO, env=os.environ | {"MLFLOW_TRACKING_URI": refusing_uri}, capture_output=True, text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mec: ")]
    assert errors == [f"mec: error: MLflow tracking server {refusing_uri} is not reachable (connection refused); "
                      "start it, fix MLFLOW_TRACKING_URI, or unset it to use the local SQLite store"], done.stderr
    assert elapsed < 120, f"took {elapsed:.0f} s (MLflow's own retries took about 258 s)"


def _mec(*args: str, uri: str, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "workflow.cli", *args], cwd=cwd,
                          env=os.environ | {"MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


def test_mec_tables_against_a_server_that_is_away_prints_one_line_within_seconds(tmp_path, away_uri):
    done, elapsed = _mec("tables", "--out", str(tmp_path / "t"), "--figures", str(tmp_path / "f"), uri=away_uri)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mec: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"mec: error: MLflow tracking server {away_uri} is not reachable ("), done.stderr
    # Before the fix MLflow's own retries took over 4 minutes, then printed a traceback.
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()


@pytest.fixture
def foreign_uri():
    """A web server that is not MLflow (`python -m http.server`): it answers 404 to GETs and 501 to POSTs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


NOT_MLFLOW = ("{uri} (from MLFLOW_TRACKING_URI) answered but is not an MLflow tracking server (HTTP 404 File not "
              "found); fix MLFLOW_TRACKING_URI, or unset it to use the local SQLite store")


def test_a_new_run_against_a_server_that_is_not_mlflow_stops_in_one_line(tmp_path, foreign_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", foreign_uri)
    with pytest.raises(TrackingStoreError) as raised:  # MLflow: a traceback ending in the server's HTML page
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl")
    assert str(raised.value) == NOT_MLFLOW.format(uri=foreign_uri)


def test_mec_tables_against_a_server_that_is_not_mlflow_prints_one_line(tmp_path, foreign_uri):
    done, _ = _mec("tables", "--out", str(tmp_path / "t"), "--figures", str(tmp_path / "f"), uri=foreign_uri)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mec: ")]
    assert errors == ["mec: error: " + NOT_MLFLOW.format(uri=foreign_uri)], done.stderr


def _start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.read().strip() == b"OK":
                    return server, uri
        except OSError:
            time.sleep(1)
    _stop(server)
    raise RuntimeError(f"mlflow server did not start in 120 s; see {root / 'server.log'}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _epoch_records(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    return [r for line in journal.read_text().splitlines() if line.endswith("}")
            for r in [json.loads(line)] if r["key"] == "epoch/seconds"]


@pytest.mark.slow
def test_a_tracking_server_stopped_mid_job_does_not_slow_the_epochs(tmp_path):
    epochs, stop_after = 16, 2  # enough epochs after the stop on a loaded machine
    config = write_tiny_mec_config(tmp_path, epochs=epochs)
    out = tmp_path / "run"
    journal = out / "metrics.jsonl"
    server, uri = _start_mlflow_server(tmp_path)
    job = None
    try:
        require_tracking_store(uri)  # a real server, before it holds any experiment, answers the probe as MLflow
        job = subprocess.Popen(
            [sys.executable, "-m", "workflow.cli", "pretrain", "--config", str(config), f"train.output_dir={out}"],
            cwd=REPO, env=os.environ | {"MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 300
        while len(_epoch_records(journal)) < stop_after and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, f"the job ended before the server was stopped:\n{job.communicate()[0]}"
        os.killpg(server.pid, signal.SIGKILL)  # the server dies at once (a graceful stop takes seconds here)
        server.wait()
        stopped_at = len(_epoch_records(journal))
        try:
            # Before the fix every epoch after this point waited about 250 s for the stopped server.
            output, _ = job.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            job.kill()
            pytest.fail(f"the job did not finish in 400 s after the server stopped:\n{job.communicate()[0]}")
    finally:
        if job is not None and job.poll() is None:
            job.kill()
            job.wait()
        _stop(server)

    assert job.returncode == 0, output
    seconds = [r["value"] for r in _epoch_records(journal)]
    assert len(seconds) == epochs, output
    assert stopped_at <= epochs - 4, "the server was stopped too late to test the epochs after it"
    assert "is away" in output, output  # the job saw the server go
    # Generous: an epoch takes seconds here on a loaded machine; the bug made each one last about 250 s.
    after = seconds[stopped_at:]
    assert max(after) < 60, f"epoch seconds before the server stopped: {seconds[:stopped_at]}, after: {after}"
    # Nothing lost, nothing twice: the store holds a prefix of the journal, and the rule's replay sends the rest.
    run_id = read_journal_run_id(journal)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    journaled = sorted(r["step"] for r in read_journal(journal, run_id) if r["key"] == "train/loss")
    delivered = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert 0 < len(delivered) < len(journaled) and delivered == journaled[: len(delivered)]
    replay_journal(client, run_id, journal)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == journaled


def read_journal_run_id(journal: Path) -> str:
    return json.loads(journal.read_text().splitlines()[0])["run_id"]


def test_an_interrupted_stage_ends_even_when_its_bookkeeping_hangs(tmp_path, silent_uri, monkeypatch, caplog):
    """Ctrl-C on a rule whose tracking server hangs: the rule still ends, in about the bounded wait, saying that
    the run may still say RUNNING (a CI run once saw a rule not end after Ctrl-C)."""
    from workflow import stage

    monkeypatch.setattr(stage, "INTERRUPTED_BOOKKEEPING_S", 3.0)

    def interrupted() -> dict:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(stage.Interrupted):
        stage.tracked(silent_uri, "0" * 32, tmp_path, interrupted)
    assert time.monotonic() - started < 30
    assert "MLflow bookkeeping (fail_run) did not finish within 3 s; the MLflow run " in caplog.text
    assert "may still say RUNNING" in caplog.text


def test_bookkeeping_on_a_locked_sqlite_store_fails_in_one_line_naming_the_lock(tmp_path):
    """Another process holding the SQLite store's write lock: SQLAlchemy's exception line, not its link."""
    import sqlite3

    from workflow import stage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("locked")).info.run_id
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(stage.StageError, match=r"^MLflow bookkeeping \(fail_run\) failed: .*database is locked$"):
            stage.bookkeeping("fail_run", timeout_s=120, tracking_uri=uri, run_id=run_id,
                              journal=str(tmp_path / "metrics.jsonl"), launches=[], status="KILLED", reason="test",
                              log_file=None)
    finally:
        holder.close()
