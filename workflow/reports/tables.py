"""The summary table read back from MLflow (any tracking URI): every number in it comes from a logged run.

`summary.md` is laid out as people read results: one row per protocol and metric ("kNN top-1 (k=20)",
"linear top-1", "fine-tune 1% top-1", the end-of-training monitor), one column per pretraining run
(digits_s0, random_init_s0, ...), a section per MLflow experiment. `summary.csv` holds the same numbers and
every other final metric in long form, one line per value, with the run ids behind it. Nothing is averaged
here: each evaluation is its own row, each pretraining run its own column. Missing cells stay empty in the
CSV and print as "n/a", never as zero.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from mec.tracking import resolve_tracking_uri

MISSING = "n/a"
RUN_COLUMNS = ("run_id", "run_name", "status", "start_time", "experiment")
# What an evaluation contributes to the summary: its final numbers, not per-epoch series (those are in MLflow).
FINAL_SUFFIXES = ("_best", "_last")
FINAL_PREFIXES = ("knn/top1_k", "transfer/score", "transfer_finetune/score", "tsne/points", "tsne/knn_top1",
                  "tsne/uniformity", "detection/AP", "detection/mask_AP", "tracking/")
# The end-of-training monitor of a pretraining run, and how its rows read.
MONITOR_ROWS = {
    "monitor/knn_top1": "monitor: kNN top-1",
    "monitor/linear_5shot_top1": "monitor: logistic regression, 5 labels per class",
    "monitor/linear_top1": "monitor: logistic regression, all labels",
    "monitor/random_init/knn_top1": "monitor: kNN top-1, random init",
    "monitor/random_init/linear_5shot_top1": "monitor: 5 labels per class, random init",
    "monitor/random_init/linear_top1": "monitor: all labels, random init",
}
PROTOCOL_ORDER = ("knn", "linear_probe", "finetune", "transfer", "transfer_finetune", "detection", "tracking",
                  "tsne")
PROTOCOL_LABELS = {"knn": "kNN", "linear_probe": "linear", "finetune": "fine-tune", "transfer": "transfer",
                   "transfer_finetune": "fine-tuned transfer", "detection": "detection", "tracking": "tracking",
                   "tsne": "t-SNE"}
# The headline metric(s) of each protocol: the rows of summary.md (the CSV keeps every final metric).
HEADLINE = {
    "knn": re.compile(r"^knn/top1_k(?P<k>\d+)$"),
    "linear_probe": re.compile(r"^linear/top1_best$"),
    "finetune": re.compile(r"^finetune/top1_best$"),
    "transfer": re.compile(r"^transfer/score$"),
    "transfer_finetune": re.compile(r"^transfer_finetune/score$"),
    "detection": re.compile(r"^detection/(?P<ap>AP50|AP|mask_AP)$"),
    # Table 4's columns: each task logs only its own (VOS J/F, SOT AUC, MOT/MOTS/PoseTrack IDF1 and HOTA)
    "tracking": re.compile(r"^tracking/(?P<score>J_mean|F_mean|AUC|IDF1|HOTA)$"),
}


def experiment_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """All runs of ``experiment`` with their params, tags and latest metrics (one row per run)."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}; it holds {known}")
    rows = []
    for run in _all_runs(client, found.experiment_id):
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
               "start_time": run.info.start_time, "experiment": experiment}
        row |= {f"tag:{k}": v for k, v in run.data.tags.items()}
        row |= {f"param:{k}": v for k, v in run.data.params.items()}
        row |= dict(run.data.metrics)
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(RUN_COLUMNS)) if not rows else pd.DataFrame(rows)
    # Columns by name, not in the order the runs finished: a rerun gives the same table.
    return table[list(RUN_COLUMNS) + sorted(c for c in table.columns if c not in RUN_COLUMNS)]


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_evaluations(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished evaluation runs, the newest per (pretraining run, evaluation): a rerun replaces, never adds a seed."""
    if "tag:mec.pretrain_run_id" not in runs or "tag:mec.evaluation" not in runs:
        return runs.iloc[0:0]
    evals = runs[(runs["tag:mec.stage"] == "evaluate") & (runs["status"] == "FINISHED")]
    return evals.sort_values("start_time").drop_duplicates(["tag:mec.pretrain_run_id", "tag:mec.evaluation"],
                                                           keep="last")


def pretraining_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "tag:mec.stage" not in runs:
        return runs.iloc[0:0]
    pre = runs[runs["tag:mec.stage"] == "pretrain"].copy()
    pre["run"] = pre["tag:mec.run"].fillna(pre["run_name"]) if "tag:mec.run" in pre else pre["run_name"]
    # A run name pretrained again (its records deleted) is the newest run of that name.
    pre = pre.sort_values("start_time").drop_duplicates(["experiment", "run"], keep="last")
    return pre.sort_values("run")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def summary_values(runs: pd.DataFrame) -> pd.DataFrame:
    """Every final number of every pretraining run, one line each (long form: what summary.csv holds).

    Columns: experiment, run, pretrain_run_id, key (``<evaluation>:<metric>``, or the monitor metric),
    evaluation, protocol, metric, value, run_id (the MLflow run that logged the value), label (the row of
    summary.md, empty for metrics the Markdown leaves out).
    """
    columns = ["experiment", "run", "pretrain_run_id", "key", "evaluation", "protocol", "metric", "value",
               "run_id", "label"]
    pre = pretraining_runs(runs)
    evals = latest_evaluations(runs)
    metric_columns = [c for c in runs.columns if not c.startswith(("tag:", "param:")) and c not in RUN_COLUMNS]
    lines = []
    for _, run in pre.iterrows():
        base = {"experiment": run["experiment"], "run": run["run"], "pretrain_run_id": run["run_id"]}
        for metric, label in MONITOR_ROWS.items():
            if _present(run.get(metric)):
                lines.append(base | {"key": metric, "evaluation": "", "protocol": "monitor", "metric": metric,
                                     "value": run[metric], "run_id": run["run_id"], "label": label})
        for _, ev in evals[evals["tag:mec.pretrain_run_id"] == run["run_id"]].iterrows():
            for metric in metric_columns:
                if _present(ev.get(metric)) and (metric.endswith(FINAL_SUFFIXES) or metric.startswith(FINAL_PREFIXES)):
                    lines.append(base | {"key": f"{ev['tag:mec.evaluation']}:{metric}",
                                         "evaluation": ev["tag:mec.evaluation"], "protocol": ev["tag:mec.protocol"],
                                         "metric": metric, "value": ev[metric], "run_id": ev["run_id"],
                                         "label": row_label(ev, metric)})
    return _disambiguate(pd.DataFrame(lines, columns=columns))


def row_label(evaluation: pd.Series, metric: str) -> str:
    """How summary.md names an evaluation's headline metric ("kNN top-1 (k=20)", "linear 1% top-1"); "" otherwise."""
    protocol = evaluation.get("tag:mec.protocol")
    match = HEADLINE.get(protocol, re.compile("$^")).match(metric)
    if not match:
        return ""
    name = PROTOCOL_LABELS[protocol]
    subset = label_subset(evaluation)
    dataset = evaluation.get("param:eval.dataset")
    words = [name, *([subset] if subset else []), *([str(dataset)] if _present(dataset) else [])]
    if protocol == "knn":
        return " ".join(words) + f" top-1 (k={match['k']})"
    if protocol == "detection":
        recipe = evaluation.get("param:eval.recipe")
        return " ".join([*words, *([str(recipe)] if _present(recipe) else [])]) + f" {match['ap'].replace('_', ' ')}"
    if protocol == "tracking":
        task = evaluation.get("param:eval.task")
        return " ".join([*words, *([str(task).upper()] if _present(task) else [])]) + f" {match['score']}"
    return " ".join(words) + (" score" if protocol in ("transfer", "transfer_finetune") else " top-1")


def label_subset(evaluation: pd.Series) -> str:
    """The label subset an evaluation trained on ("1%"), from its ``eval.fraction`` or split file; "" for all."""
    fraction = evaluation.get("param:eval.fraction")
    if _present(fraction):
        return f"{100 * float(fraction):g}%"
    split = evaluation.get("param:eval.split")
    if not _present(split):
        return ""
    name = Path(str(split)).name
    # SimCLR's lists (1percent.txt), and the workflow's generated subsets (<data>-<hash>-<fraction>-seed<n>.txt).
    if found := re.match(r"^(\d+)percent\.txt$", name):
        return f"{found[1]}%"
    if found := re.search(r"-(\d*\.?\d+(?:e-?\d+)?)-seed\d+\.txt$", name):
        return f"{100 * float(found[1]):g}%"
    return f"split {name}"


def _disambiguate(values: pd.DataFrame) -> pd.DataFrame:
    """Two evaluations whose rows would read alike (same protocol and subset, other options) get their names."""
    labelled = values[values["label"] != ""]
    keys_per_label = labelled.groupby(["experiment", "label"])["key"].nunique()
    for experiment, label in keys_per_label[keys_per_label > 1].index:
        rows = (values["experiment"] == experiment) & (values["label"] == label)
        values.loc[rows, "label"] = values.loc[rows, "label"] + " [" + values.loc[rows, "evaluation"] + "]"
    return values


def _row_order(group: pd.DataFrame) -> tuple:
    first = group.iloc[0]
    protocol = first["protocol"]
    rank = PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    if protocol == "monitor":
        return (len(PROTOCOL_ORDER) + 1, list(MONITOR_ROWS).index(first["metric"]), "")
    subset = re.search(r"(\d*\.?\d+)%", first["label"])
    return (rank, float(subset[1]) if subset else 0.0, first["label"])


def summary_layout(values: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per experiment: rows = protocol / metric labels, columns = pretraining runs, cells = values or NaN."""
    layouts = {}
    for experiment, part in values.groupby("experiment", sort=True):
        runs = sorted(part["run"].unique())
        shown = part[part["label"] != ""]
        groups = sorted((group for _, group in shown.groupby("label")), key=_row_order)
        table = pd.DataFrame([{"protocol": g.iloc[0]["label"]} | dict(zip(g["run"], g["value"], strict=True))
                              for g in groups], columns=["protocol", *runs])
        layouts[str(experiment)] = table
    return layouts


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table; missing cells print n/a."""
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for _, row in table.iterrows():
        cells = []
        for column in header:
            value = row[column]
            if not _present(value):
                cells.append(MISSING)
            elif isinstance(value, float):
                cells.append(f"{value:.{digits}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(runs: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write ``summary.md`` (protocol x run, a section per experiment) and ``summary.csv`` (long form, run ids)."""
    values = summary_values(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary:csv": out_dir / "summary.csv", "summary": out_dir / "summary.md"}
    values.to_csv(paths["summary:csv"], index=False)
    sections = [f"# {experiment}\n\n" + to_markdown(table) for experiment, table in summary_layout(values).items()]
    note = ("Final metrics (fractions) of each pretraining run's evaluations, read back from MLflow; "
            "summary.csv has every final metric with its run id.\n\n")
    paths["summary"].write_text(note + ("\n".join(sections) if sections else "No pretraining runs yet.\n"))
    return paths
