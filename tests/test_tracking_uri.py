"""A tracking URI MLflow cannot use stops a command at once, in one line naming the URI, where it came from and
what is expected: never MLflow's unrelated message after seconds, nor its 2 minutes of SQLite retries."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_mec_config

from mec.tracking import RunLogger, TrackingStoreError, check_tracking_store

REPO = Path(__file__).resolve().parents[1]
EXPECTED = "expected http(s)://host:port, sqlite:///relative/path.db or sqlite:////absolute/path.db"


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.parametrize(("uri", "problem"), [
    ("htp://127.0.0.1:5000", "unsupported scheme 'htp:'"),  # MLflow: "Model registry functionality is unavailable"
    ("127.0.0.1:5000", "no scheme"),  # MLflow: "the filesystem tracking backend is in maintenance mode"
    ("file:///tmp/mlruns", "MLflow's file store (./mlruns), which this project does not use"),
    ("sqlite://tmp/x.db", "a SQLite URI is sqlite:/// followed by the file's path"),  # tmp would be a host
    ("sqlite://", "a SQLite URI is sqlite:/// followed by the file's path"),  # in memory: lost at exit
    ("http:///x", "no host"),
])
def test_a_new_run_on_a_malformed_uri_stops_in_one_line_before_mlflow(tmp_path, monkeypatch, uri, problem):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(TrackingStoreError) as raised:
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl")
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"MLflow tracking URI {uri} (from MLFLOW_TRACKING_URI): {problem}; {EXPECTED}"), message


def test_a_continued_run_on_a_malformed_uri_stops_too(tmp_path):
    # Continuing needs no server, but a URI of the wrong form never becomes one.
    with pytest.raises(TrackingStoreError, match=r"^MLflow tracking URI htp://x:1 \(from tracking.tracking_uri\)"):
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl", resume_run_id="0" * 32,
                       tracking_uri="htp://x:1")


def test_a_database_uri_whose_driver_is_missing_is_named_with_its_driver():
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(TrackingStoreError) as raised:
        check_tracking_store("postgresql://u:secret@127.0.0.1:9/db", "tracking.tracking_uri")
    message = str(raised.value)
    assert message.startswith("MLflow tracking URI postgresql://u:***@127.0.0.1:9/db (from tracking.tracking_uri): "
                              "its database driver psycopg2 is not installed;"), message
    assert "secret" not in message


def test_a_sqlite_store_that_cannot_be_created_is_said_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker / 'm.db'}"
    started = time.monotonic()
    with pytest.raises(TrackingStoreError) as raised:
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl", tracking_uri=uri)
    # Before the fix MLflow retried for about 2 minutes and raised a 200-line traceback.
    assert time.monotonic() - started < 5
    assert str(raised.value) == (f"MLflow store {uri}: cannot create {blocker / 'm.db'} ({blocker} is not a folder); "
                                 "fix tracking.tracking_uri")


def test_a_reader_never_creates_the_store_it_reads(tmp_path):
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    with pytest.raises(TrackingStoreError, match=r"mlflow.db does not exist \(nothing was logged there\); fix X$"):
        check_tracking_store(uri, "X", create=False)
    assert not (tmp_path / "results").exists()
    check_tracking_store(uri, "X")  # a writer makes it (SQLite takes the empty file for an empty database)
    assert (tmp_path / "results" / "mlflow.db").is_file()
    check_tracking_store(uri, "X", create=False)


@pytest.mark.parametrize(("override", "env", "line"), [
    ([], {"MLFLOW_TRACKING_URI": "htp://127.0.0.1:5000"},
     "mec: error: MLflow tracking URI htp://127.0.0.1:5000 (from MLFLOW_TRACKING_URI): unsupported scheme 'htp:'; "),
    (["tracking.tracking_uri=sqlite:////proc/m.db"], {},
     "mec: error: MLflow store sqlite:////proc/m.db: cannot create /proc/m.db ("),
])
def test_mec_pretrain_on_a_store_it_cannot_use_prints_one_line_and_exits_2(tmp_path, override, env, line):
    config = write_tiny_mec_config(tmp_path)
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "workflow.cli", "pretrain", "--config", str(config),
         f"train.output_dir={tmp_path / 'run'}", *override],
        cwd=REPO, env=base | env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [error for error in done.stderr.splitlines() if error.startswith("mec: ")]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr
    assert not (tmp_path / "run").exists()  # stopped before anything was built
    assert time.monotonic() - started < 100  # imports on a loaded machine; MLflow's SQLite retries took 2 minutes
