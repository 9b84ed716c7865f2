"""The run logger keeps metrics when the store is away and never logs a step twice."""

import json

from mlflow.tracking import MlflowClient

from mec.tracking import RunLogger, resolve_tracking_uri


def test_metrics_survive_an_unreachable_store_and_are_sent_later(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "metrics.jsonl", tracking_uri=uri)
    real_log_batch = logger.client.log_batch

    def down(*args, **kwargs):
        raise ConnectionError("tracking server away")

    monkeypatch.setattr(logger.client, "log_batch", down)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    logger.log_metrics({"train/loss": 1.25}, step=2)
    assert logger.flush() is False
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
    first.flush()  # killed here: the run is never closed

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
