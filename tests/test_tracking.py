"""The run logger keeps metrics when the store is away and never logs a step twice."""

import json
import socket

import pytest
from mlflow.tracking import MlflowClient

from mec.tracking import (
    RunLogger,
    journal_max_steps,
    read_journal,
    replay_journal,
    resolve_tracking_uri,
)


def test_metrics_survive_an_unreachable_store_and_are_sent_later(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl", tracking_uri=uri)
    real_log_batch = logger.client.log_batch

    def down(*args, **kwargs):
        raise ConnectionError("tracking server away")

    monkeypatch.setattr(logger.client, "log_batch", down)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    logger.log_metrics({"train/loss": 1.25}, step=2)
    assert logger.flush(wait_s=30) is False
    journal = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["value"]) for r in journal] == [(1, 1.5), (2, 1.25)]

    monkeypatch.setattr(logger.client, "log_batch", real_log_batch)
    logger.log_metrics({"train/loss": 1.0}, step=3)
    logger.close()
    history = MlflowClient(uri).get_metric_history(logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.5), (2, 1.25), (3, 1.0)]


def test_resumed_logger_skips_steps_the_store_already_holds(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "j.jsonl", tracking_uri=uri)
    for step in (1, 2, 3):
        first.log_metrics({"train/loss": float(step)}, step)
    assert first.flush(wait_s=30)  # killed here: the run is never closed

    again = RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "j.jsonl", tracking_uri=uri,
                           resume_run_id=first.run_id)
    for step in (2, 3, 4):
        again.log_metrics({"train/loss": 10.0 * step}, step)
    again.close()
    history = MlflowClient(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert MlflowClient(uri).get_run(first.run_id).info.status == "FINISHED"


def test_default_store_is_sqlite_under_results_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path / "results") == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path / "results") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_metrics_a_killed_process_never_sent_are_replayed_when_the_run_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / "j.jsonl"
    first = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=uri)
    first.log_metrics({"train/loss": 1.0}, 1)
    assert first.flush(wait_s=30)
    first.log_metrics({"train/loss": 2.0}, 2)  # journaled, then the process dies before the next flush
    again = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=uri, resume_run_id=first.run_id)
    again.log_metrics({"train/loss": 20.0}, 2)  # the redone step is not logged a second time
    again.log_metrics({"train/loss": 3.0}, 3)
    again.close()
    history = MlflowClient(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_a_run_resumed_while_the_store_is_away_keeps_training_and_the_rule_replays_its_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / "j.jsonl"
    created = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=uri)
    run_id = created.run_id
    # The job starts while its tracking server is down (nothing listens on the port).
    away = RunLogger.open(experiment="e", run_name="r", journal=journal, resume_run_id=run_id,
                          tracking_uri=f"http://127.0.0.1:{_free_port()}")
    for step in (1, 2):
        away.log_metrics({"train/loss": float(step)}, step)
    assert away.try_("log params", away.log_params, {"a": 1}) is False
    away.close()
    client = MlflowClient(uri)
    assert client.get_metric_history(run_id, "train/loss") == []
    assert replay_journal(client, run_id, journal) == 2
    assert replay_journal(client, run_id, journal) == 0  # idempotent
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_resuming_a_run_the_store_does_not_hold_is_an_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "j.jsonl", tracking_uri=uri)
    with pytest.raises(Exception, match="(?i)not found|does not exist|no run"):
        RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "j.jsonl", tracking_uri=uri,
                       resume_run_id="0" * 32)


def test_the_journal_keeps_runs_apart_and_skips_a_torn_line(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text(
        json.dumps({"run_id": "a", "key": "k", "value": 1.0, "step": 1, "timestamp": 0}) + "\n"
        + json.dumps({"run_id": "b", "key": "k", "value": 2.0, "step": 5, "timestamp": 0}) + "\n"
        + '{"run_id": "a", "key": "k", "val'
    )
    assert [r["value"] for r in read_journal(journal, "a")] == [1.0]
    assert journal_max_steps(journal, "b") == {"k": 5}


def test_a_record_journaled_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / "j.jsonl"
    first = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=uri)
    first.log_metrics({"train/loss": 1.0}, 1)
    with journal.open("a") as fh:  # the writer was killed mid-line
        fh.write('{"run_id": "' + first.run_id + '", "key": "train/loss", "val')
    again = RunLogger.open(experiment="e", run_name="r", journal=journal, tracking_uri=uri,
                           resume_run_id=first.run_id)
    again.log_metrics({"train/loss": 2.0}, 2)
    again.close()
    assert [(r["step"], r["value"]) for r in read_journal(journal, first.run_id)] == [(1, 1.0), (2, 2.0)]
    history = MlflowClient(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0)]
