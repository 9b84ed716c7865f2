"""Tables and figures of one or more MLflow experiments, regenerated in one call: what `mec tables` and the
DAG's last rule both run.

Everything is read back from the tracking store (any URI), so the same call on another machine, or after
more runs finished, writes the same files from the same runs:

- ``<tables>/summary.md`` / ``summary.csv``: protocol x pretraining run, a section per experiment;
- ``<tables>/paper/``: the paper's tables beside the published numbers (Markdown, LaTeX, CSV);
- ``<figures>/``: pretraining curves, linear-probe curves, one t-SNE figure per t-SNE evaluation;
- one MLflow run "tables" (tag ``mec.stage=tables``) holding the tables and every PNG of ``<figures>``
  (Figure 6 included when it is there) as artifacts; its id is kept in ``<tables>/mlflow_run_id`` so that
  regenerating updates the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from mec.tracking import ensure_experiment, require_tracking_store, resolve_tracking_uri, tracking_uri_source
from workflow.reports.figures import probe_curves, training_curves, tsne_panels
from workflow.reports.paper_tables import write_tables
from workflow.reports.tables import experiment_runs, write_summary

log = logging.getLogger(__name__)

REPORT_EXPERIMENT = "mec-tables"  # where `mec tables` records a report across experiments by default
RUN_ID_FILE = "mlflow_run_id"


def regenerate(experiments: list[str] | None, tracking_uri: str | None, tables: Path, figures: Path,
               log_experiment: str | None = REPORT_EXPERIMENT) -> dict[str, Path]:
    """Write the summary, the paper's tables and the figures of ``experiments`` (None: every experiment of the
    store but reports); record them as a run of ``log_experiment`` unless it is None. Returns label -> path."""
    uri = report_store(tracking_uri)
    client = MlflowClient(uri)
    names = experiments or [e.name for e in client.search_experiments()
                            if e.name not in ("Default", REPORT_EXPERIMENT)]
    if not names:
        raise FileNotFoundError(f"no MLflow experiments at {uri}")
    runs = pd.concat([experiment_runs(name, uri) for name in names], ignore_index=True)
    unfinished = runs[runs["status"] != "FINISHED"]
    if not unfinished.empty:  # the tables read finished runs only: say what they leave out
        counts = ", ".join(f"{n} {status}" for status, n in unfinished["status"].value_counts().sort_index().items())
        log.warning("left out of the tables: %s run(s) (%s)", len(unfinished), counts)
    written = write_summary(runs, tables)
    written |= {f"paper:{k}": v for k, v in write_tables(runs, tables / "paper").items()}
    drawn = {"figure:pretraining": training_curves(runs, client, figures / "pretraining_curves.png"),
             "figure:linear_probe": probe_curves(runs, client, figures / "linear_probe_curves.png")}
    written |= {label: path for label, path in drawn.items() if path is not None}
    written |= tsne_panels(runs, client, figures)
    if log_experiment:
        written["mlflow"] = Path(log_report_run(client, log_experiment, tables, figures, names))
    return written


def report_store(tracking_uri: str | None) -> str:
    """The store to read (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else results/mlflow.db), checked
    first: a store that is not there is said in one line, never created empty; a server that is away or is not
    MLflow stops it within seconds instead of MLflow's minutes of retries."""
    uri = resolve_tracking_uri(tracking_uri, create=False)
    require_tracking_store(uri, tracking_uri_source(tracking_uri, "--tracking-uri"), create=False)
    return uri


def log_report_run(client: MlflowClient, experiment: str, tables: Path, figures: Path, sources: list[str]) -> str:
    """Record the tables and figures as the artifacts of one run (the same one at each regeneration)."""
    experiment_id = ensure_experiment(client, experiment)
    id_file = tables / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is not None and not _run_in(client, run_id, experiment_id):
        run_id = None  # the file is from another store or experiment
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name="tables", tags={"mec.stage": "tables"}).info.run_id
        id_file.write_text(run_id + "\n")
    client.set_tag(run_id, "mec.source_experiments", ",".join(sources))
    for path in sorted(tables.rglob("*")):
        if path.suffix in (".md", ".csv", ".tex"):
            folder = path.parent.relative_to(tables)
            client.log_artifact(run_id, str(path), "tables" if folder == Path(".") else f"tables/{folder}")
    for path in sorted(figures.glob("*.png")) + sorted(figures.glob("*.csv")):
        client.log_artifact(run_id, str(path), "figures")
    client.set_terminated(run_id, "FINISHED")
    return f"runs:/{run_id}"


def _run_in(client: MlflowClient, run_id: str, experiment_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        return False
