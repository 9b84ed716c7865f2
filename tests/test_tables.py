"""Tables from an MLflow store: values, mean +- std over seeds, n/a cells, run ids, published numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from workflow.reports.paper_tables import load_published, write_tables
from workflow.reports.tables import experiment_runs, experiment_summary


def _run(client, exp_id, stage, params=None, tags=None, metrics=None, parent=None):
    all_tags = {"mec.stage": stage} | (tags or {})
    if parent:
        all_tags |= {"mec.pretrain_run_id": parent, "mlflow.parentRunId": parent}
    run_id = client.create_run(exp_id, tags=all_tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in (params or {}).items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()])
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("campaign")
    ids = {}
    # Table 1: two seeds at 100 epochs, one at 800, nothing at 200 / 400.
    for seed, top1 in ((0, 0.70), (1, 0.72)):
        pre = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder",
                                                "optim.epochs": 100, "train.seed": seed,
                                                "model.projector_hidden": 2048}, {"mec.run": f"in100_s{seed}"})
        ids[f"lin100_{seed}"] = _run(client, exp_id, "evaluate", {"eval.protocol": "linear_probe"},
                                     {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
                                     {"linear/top1_best": top1}, parent=pre)
        # Table 2: fine-tuning on SimCLR's 1% list
        _run(client, exp_id, "evaluate", {"eval.split": "/data/splits/1percent.txt"},
             {"mec.protocol": "finetune", "mec.evaluation": "semi1"},
             {"finetune/top1_last": 0.5 + seed / 100, "finetune/top5_last": 0.75}, parent=pre)
    pre800 = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder",
                                               "optim.epochs": 800, "model.projector_hidden": 2048})
    client.log_batch(pre800, metrics=[Metric(key, -float(step), 0, step) for step in range(1, 6)
                                      for key in ("train/loss", "train/coding_length")])
    ids["lin800"] = _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
                         {"linear/top1_best": 0.745}, parent=pre800)
    # Tables 3, 4, 8, 9: one run each, logged under the protocol names those tables read.
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "detection_voc0712", "mec.evaluation": "voc"},
         {"detection/AP50": 0.82, "detection/AP": 0.57, "detection/AP75": 0.64}, parent=pre800)
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "tracking_sot", "mec.evaluation": "sot"},
         {"tracking/AUC": 0.625}, parent=pre800)
    _run(client, exp_id, "evaluate", {"eval.dataset": "Food101"}, {"mec.protocol": "transfer",
                                                                   "mec.evaluation": "food"},
         {"transfer/score": 0.756}, parent=pre800)
    places = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "places365",
                                               "optim.epochs": 100})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.538}, parent=places)
    # Table 5: a Taylor-order grid on CIFAR with kNN only.
    for order, knn in ((2, 0.80), (4, 0.85)):
        pre = _run(client, exp_id, "pretrain", {"data.augment": "cifar", "data.name": "cifar10", "loss.order": order,
                                                "optim.epochs": 200})
        _run(client, exp_id, "evaluate", {}, {"mec.protocol": "knn", "mec.evaluation": "knn"},
             {"knn/top1_k20": knn}, parent=pre)
    return uri, ids


def _row(table: pd.DataFrame, row: str, column: str) -> pd.Series:
    match = table[(table["row"].astype(str) == row) & (table["column"] == column)]
    assert len(match) == 1, (row, column, table)
    return match.iloc[0]


def test_paper_tables_hold_values_spread_missing_cells_and_run_ids(store, tmp_path):
    uri, ids = store
    written = write_tables(experiment_runs("campaign", uri), tmp_path / "tables")
    t1 = pd.read_csv(tmp_path / "tables" / "table1_linear_by_epochs.csv", dtype={"row": str}, keep_default_na=False)
    first = _row(t1, "100", "top1")
    assert first["ours"] == "71.0 +- 1.4" and int(first["runs"]) == 2
    assert set(first["run_ids"].split()) == {ids["lin100_0"], ids["lin100_1"]}
    assert float(first["paper"]) == 70.8 and float(first["diff"]) == pytest.approx(0.2)
    assert _row(t1, "200", "top1")["ours"] == "n/a" and int(_row(t1, "200", "top1")["runs"]) == 0
    assert _row(t1, "800", "top1")["ours"] == "74.5"

    t2 = pd.read_csv(tmp_path / "tables" / "table2_semi_supervised.csv", keep_default_na=False)
    assert _row(t2, "1%", "top1")["ours"] == "50.5 +- 0.7" and _row(t2, "10%", "top1")["ours"] == "n/a"
    t5 = pd.read_csv(tmp_path / "tables" / "table5_ablations.csv", keep_default_na=False)
    assert _row(t5, "Taylor order = 2", "kNN top-1")["ours"] == "80.0"
    assert _row(t5, "Taylor order = 4", "kNN top-1")["ours"] == "85.0"
    t8 = pd.read_csv(tmp_path / "tables" / "table8_transfer.csv", keep_default_na=False)
    assert _row(t8, "linear", "Food101")["ours"] == "75.6" and float(_row(t8, "linear", "Food101")["diff"]) == 0
    assert _row(t8, "linear", "DTD")["ours"] == "n/a" and float(_row(t8, "linear", "DTD")["paper"]) == 75.8
    t3 = pd.read_csv(tmp_path / "tables" / "table3_detection.csv", keep_default_na=False)
    assert _row(t3, "VOC07+12", "AP50")["ours"] == "82.0" and _row(t3, "COCO", "AP")["ours"] == "n/a"
    t4 = pd.read_csv(tmp_path / "tables" / "table4_tracking.csv", keep_default_na=False)
    assert _row(t4, "SOT", "AUC")["ours"] == "62.5" and _row(t4, "MOT", "IDF1")["ours"] == "n/a"
    t7 = pd.read_csv(tmp_path / "tables" / "table7_strategies.csv", keep_default_na=False)
    assert _row(t7, "MEC", "top1")["ours"] == "74.5" and float(_row(t7, "MEC", "top1")["paper"]) == 74.5
    assert _row(t7, "MEC (multi-crop)", "top1")["ours"] == "n/a"
    t9 = pd.read_csv(tmp_path / "tables" / "table9_places365.csv", keep_default_na=False)
    assert _row(t9, "MEC", "Places365")["ours"] == "53.8"

    markdown = written["all"].read_text()
    assert "| 100 | top1 | 71.0 +- 1.4 | 70.8 | +0.2 | 2 |" in markdown
    assert "| 200 | top1 | n/a | n/a | n/a | 0 |" in markdown
    latex = (tmp_path / "tables" / "table1_linear_by_epochs.tex").read_text()
    assert r"\toprule" in latex and r"71.0 $\pm$ 1.4" in latex


def test_every_published_value_names_its_source(tmp_path):
    published = load_published()
    assert published[("table1_linear_by_epochs", "100", "top1")][0] == 70.8
    assert all(source for _, source in published.values())
    bad = tmp_path / "published.yaml"
    bad.write_text("table1_linear_by_epochs:\n  values:\n    - {row: '100', column: top1, value: 70.8}\n")
    with pytest.raises(ValueError, match="lacks \\['source'\\]"):
        load_published(bad)


def test_experiment_summary_prints_missing_as_na(store):
    uri, _ = store
    summary = experiment_summary(experiment_runs("campaign", uri))
    assert len(summary) == 6 and "linear:linear/top1_best" in summary.columns


def test_mec_tables_command_writes_every_table(store, tmp_path):
    uri, _ = store
    proc = subprocess.run([sys.executable, "-m", "workflow.cli", "tables", "--tracking-uri", uri, "--out",
                           str(tmp_path / "out"), "--figures", str(tmp_path / "out" / "figures")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {p.stem for p in (tmp_path / "out").glob("table*.md")}
    assert names == {"table1_linear_by_epochs", "table2_semi_supervised", "table3_detection", "table4_tracking",
                     "table5_ablations", "table7_strategies", "table8_transfer", "table9_places365"}
    assert (tmp_path / "out" / "experiments" / "campaign" / "summary.md").exists()
    from PIL import Image

    with Image.open(tmp_path / "out" / "figures" / "pretraining_curves.png") as image:
        assert image.size[0] > 500
    client = MlflowClient(uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("mec-tables").experiment_id])
    paths = {a.path for a in client.list_artifacts(logged.info.run_id, "tables")}
    # Artifacts live beside the SQLite store, not in ./mlruns of wherever the command ran.
    assert not (tmp_path / "mlruns").exists()
    assert logged.info.artifact_uri.startswith(f"file://{Path(uri.removeprefix('sqlite:///')).parent}/artifacts/")
    assert "tables/table1_linear_by_epochs.csv" in paths
    missing = subprocess.run([sys.executable, "-m", "workflow.cli", "tables", "--tracking-uri", uri, "--experiment",
                              "nope", "--out", str(tmp_path / "x"), "--no-log"], capture_output=True, text=True, timeout=300,
                             check=False)
    assert missing.returncode == 2 and "'nope' not found" in missing.stderr


def test_taylor_figure_errors_fall_with_the_order(tmp_path):
    from PIL import Image

    from workflow.reports.figures import taylor_error_figure, taylor_error_table

    table = taylor_error_table(dims=(32, 64), repeats=1)
    error = {(r.d, r.order): r.rel_error for r in table.itertuples()}
    for d in (32, 64):
        assert error[(d, "1")] > error[(d, "2")] > error[(d, "4")]
    with Image.open(taylor_error_figure(table, tmp_path / "fig6.png", device="cpu")) as image:
        assert image.size[0] > image.size[1]


def test_a_rerun_evaluation_replaces_the_older_run_instead_of_counting_as_a_seed(tmp_path):
    import time

    from workflow.reports.paper_tables import evaluation_rows

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("rerun")
    pre = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder", "optim.epochs": 100})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.10}, parent=pre)
    time.sleep(0.01)
    newer = _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
                 {"linear/top1_best": 0.70}, parent=pre)
    runs = experiment_runs("rerun", uri)
    assert list(evaluation_rows(runs)["run_id"]) == [newer]
    summary = experiment_summary(runs)
    assert summary.loc[0, "linear:linear/top1_best"] == 0.70 and summary.loc[0, "linear:run_id"] == newer
