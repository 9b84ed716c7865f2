"""`mec.run`'s job helpers: how a logged run ends."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from mlflow.tracking import MlflowClient

from mec.run import logged_run
from mec.tracking import RunLogger


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (KeyboardInterrupt, "KILLED"),
                                            (FloatingPointError, "FAILED")])
def test_a_logged_run_ends_finished_killed_on_ctrl_c_or_failed(tmp_path, raised, status):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opened = []

    def open_logger() -> RunLogger:
        opened.append(RunLogger.open(experiment="e", run_name="r", journal=tmp_path / "m.jsonl", tracking_uri=uri))
        return opened[-1]

    with pytest.raises(raised) if raised else nullcontext():
        with logged_run(open_logger) as logger:
            logger.log_metrics({"loss": 1.0}, step=1)
            if raised:
                raise raised()
    assert MlflowClient(uri).get_run(opened[0].run_id).info.status == status

