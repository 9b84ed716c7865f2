"""Result tables read back from MLflow (any tracking URI): every number in them comes from a logged run.

`experiment_summary` is the table the default experiment ends with: one row per pretraining run, its end-of-
training monitor metrics (learned backbone and random-init baseline) and the final metric of every
evaluation nested under it. Missing cells stay empty in the CSV and print as "n/a", never as zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from mec.tracking import resolve_tracking_uri

MISSING = "n/a"
# What an evaluation's row shows: its final numbers, not per-epoch series (those are in MLflow).
FINAL_SUFFIXES = ("_best", "_last")
FINAL_PREFIXES = ("knn/top1_k", "transfer/score", "tsne/points")
PRETRAIN_COLUMNS = (
    "monitor/knn_top1",
    "monitor/random_init/knn_top1",
    "monitor/linear_5shot_top1",
    "monitor/random_init/linear_5shot_top1",
    "monitor/linear_top1",
    "monitor/random_init/linear_top1",
)


def experiment_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """All finished runs of ``experiment`` with their params, tags and latest metrics (one row per run)."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}")
    rows = []
    for run in _all_runs(client, found.experiment_id):
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
               "start_time": run.info.start_time}
        row |= {f"tag:{k}": v for k, v in run.data.tags.items()}
        row |= {f"param:{k}": v for k, v in run.data.params.items()}
        row |= dict(run.data.metrics)
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = [c for c in ("run", "run_id", *PRETRAIN_COLUMNS) if c in table]
    # Evaluation columns by name, not in the order the evaluations finished: a rerun gives the same table.
    return table[fixed + sorted(c for c in table.columns if c not in fixed)]


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per pretraining run: monitor metrics, then ``<evaluation>:<metric>`` of its nested evaluations."""
    if runs.empty or "tag:mec.stage" not in runs:
        return pd.DataFrame(columns=["run", "run_id"])
    pretrain = runs[runs["tag:mec.stage"] == "pretrain"]
    evals = latest_evaluations(runs)
    metric_columns = [c for c in runs.columns if not c.startswith(("tag:", "param:")) and c not in
                      ("run_id", "run_name", "status", "start_time")]
    rows = []
    for _, pre in pretrain.sort_values("run_name").iterrows():
        row = {"run": pre.get("tag:mec.run", pre["run_name"]), "run_id": pre["run_id"]}
        row |= {column: pre.get(column) for column in PRETRAIN_COLUMNS}
        for _, ev in evals[evals["tag:mec.pretrain_run_id"] == pre["run_id"]].iterrows():
            for column in metric_columns:
                value = ev.get(column)
                if _present(value) and (column.endswith(FINAL_SUFFIXES) or column.startswith(FINAL_PREFIXES)):
                    row[f"{ev['tag:mec.evaluation']}:{column}"] = value
            row[f"{ev['tag:mec.evaluation']}:run_id"] = ev["run_id"]
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = [c for c in ("run", "run_id", *PRETRAIN_COLUMNS) if c in table]
    # Evaluation columns by name, not in the order the evaluations finished: a rerun gives the same table.
    return table[fixed + sorted(c for c in table.columns if c not in fixed)]


def latest_evaluations(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished evaluation runs, the newest per (pretraining run, evaluation): a rerun replaces, never adds a seed."""
    if "tag:mec.pretrain_run_id" not in runs or "tag:mec.evaluation" not in runs:
        return runs.iloc[0:0]
    evals = runs[(runs["tag:mec.stage"] == "evaluate") & (runs["status"] == "FINISHED")]
    return evals.sort_values("start_time").drop_duplicates(["tag:mec.pretrain_run_id", "tag:mec.evaluation"],
                                                           keep="last")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table; run-id columns are left out (they are in the CSV), missing cells print n/a."""
    shown = [c for c in table.columns if not c.endswith("run_id")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in table.iterrows():
        cells = []
        for column in shown:
            value = row[column]
            if not _present(value):
                cells.append(MISSING)
            elif isinstance(value, float):
                cells.append(f"{value:.{digits}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(experiment: str, out_dir: Path, tracking_uri: str | None = None) -> dict[str, Path]:
    """Write ``summary.csv`` (with run ids) and ``summary.md`` for ``experiment`` into ``out_dir``."""
    table = experiment_summary(experiment_runs(experiment, tracking_uri))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "summary.csv", "md": out_dir / "summary.md"}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(f"# {experiment}\n\n" + to_markdown(table))
    return paths
