"""Tables from an MLflow store: values, mean +- std over seeds only, conflicts between recipes, n/a cells, run ids,
published numbers, the protocol-by-run summary, the figures and the `mec tables` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from workflow.reports.paper_tables import load_published, write_tables
from workflow.reports.tables import experiment_runs, summary_values, write_summary


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
                                               "optim.epochs": 800, "model.projector_hidden": 2048},
                  {"mec.run": "in800_s0"})
    client.log_batch(pre800, metrics=[Metric(key, -float(step), 0, step) for step in range(1, 6)
                                      for key in ("train/loss", "train/coding_length")])
    ids["lin800"] = _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
                         {"linear/top1_best": 0.745}, parent=pre800)
    # Table 7: a multi-crop run (six local views) fills its own row, not the plain recipe's
    crops = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder",
                                              "optim.epochs": 800, "model.projector_hidden": 2048,
                                              "data.multi_crop.local_crops": 6}, {"mec.run": "mc800_s0"})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.752}, parent=crops)
    # Tables 3, 4, 8, 9: one run each, logged under the protocol names those tables read.
    # Table 3: VOC07+12 over two seeds at two learning rates (the search: the better lr's seeds fill the row).
    for lr, ap50 in ((0.02, 0.82), (0.05, 0.80)):
        for seed in (0, 1):
            _run(client, exp_id, "evaluate", {"eval.recipe": "voc0712", "eval.lr": lr, "eval.seed": seed},
                 {"mec.protocol": "detection", "mec.evaluation": f"voc_lr{lr}_s{seed}"},
                 {"detection/AP50": ap50 + seed / 100, "detection/AP": 0.57, "detection/AP75": 0.64}, parent=pre800)
    _run(client, exp_id, "evaluate", {"eval.task": "sot"}, {"mec.protocol": "tracking", "mec.evaluation": "sot"},
         {"tracking/AUC": 0.625}, parent=pre800)
    _run(client, exp_id, "evaluate", {"eval.task": "posetrack"},
         {"mec.protocol": "tracking", "mec.evaluation": "posetrack"}, {"tracking/IDF1": 0.7, "tracking/IDSW": 12.0},
         parent=pre800)
    _run(client, exp_id, "evaluate", {"eval.dataset": "Food101"}, {"mec.protocol": "transfer",
                                                                   "mec.evaluation": "food"},
         {"transfer/score": 0.756}, parent=pre800)
    _run(client, exp_id, "evaluate", {"eval.dataset": "Food101"}, {"mec.protocol": "transfer_finetune",
                                                                   "mec.evaluation": "food_ft"},
         {"transfer_finetune/score": 0.889}, parent=pre800)
    places = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "places365",
                                               "optim.epochs": 100}, {"mec.run": "places_s0"})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.538}, parent=places)
    # Table 5: a Taylor-order grid on CIFAR with kNN only.
    for order, knn in ((2, 0.80), (4, 0.85)):
        pre = _run(client, exp_id, "pretrain", {"data.augment": "cifar", "data.name": "cifar10", "loss.order": order,
                                                "optim.epochs": 200}, {"mec.run": f"c10_order{order}_s0"})
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
    assert _row(t8, "finetune", "Food101")["ours"] == "88.9" and float(_row(t8, "finetune", "Food101")["diff"]) == 0
    t3 = pd.read_csv(tmp_path / "tables" / "table3_detection.csv", keep_default_na=False)
    assert _row(t3, "VOC07+12", "AP50")["ours"] == "82.5 +- 0.7" and int(_row(t3, "VOC07+12", "AP50")["runs"]) == 2
    assert _row(t3, "VOC07+12", "AP")["ours"] == "57.0 +- 0.0" and _row(t3, "COCO", "AP")["ours"] == "n/a"
    assert _row(t3, "COCO", "mask AP")["ours"] == "n/a"
    t4 = pd.read_csv(tmp_path / "tables" / "table4_tracking.csv", keep_default_na=False)
    assert _row(t4, "SOT", "AUC")["ours"] == "62.5" and _row(t4, "MOT", "IDF1")["ours"] == "n/a"
    assert _row(t4, "PoseTrack", "IDF1")["ours"] == "70.0"
    assert _row(t4, "PoseTrack", "ID switches")["ours"] == "12.0"  # a count, not a percentage
    t7 = pd.read_csv(tmp_path / "tables" / "table7_strategies.csv", keep_default_na=False)
    assert _row(t7, "MEC", "top1")["ours"] == "74.5" and float(_row(t7, "MEC", "top1")["paper"]) == 74.5
    assert _row(t7, "MEC (multi-crop)", "top1")["ours"] == "75.2"
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


def test_experiment_summary_prints_missing_as_na(store, tmp_path):
    uri, ids = store
    paths = write_summary(experiment_runs("campaign", uri), tmp_path)
    lines = paths["summary"].read_text().splitlines()
    header = next(line for line in lines if line.startswith("| protocol |"))
    runs = [cell.strip() for cell in header.strip("|").split("|")][1:]
    assert runs == ["c10_order2_s0", "c10_order4_s0", "in100_s0", "in100_s1", "in800_s0", "mc800_s0", "places_s0"]

    def cells(label: str) -> dict[str, str]:
        (line,) = [line for line in lines if line.startswith(f"| {label} |")]
        return dict(zip(runs, [cell.strip() for cell in line.strip("|").split("|")][1:], strict=True))

    # kNN ran on the CIFAR runs only: every other run's cell is n/a, never 0 or empty.
    assert cells("kNN top-1 (k=20)") == {"c10_order2_s0": "0.800", "c10_order4_s0": "0.850", "in100_s0": "n/a",
                                         "in100_s1": "n/a", "in800_s0": "n/a", "mc800_s0": "n/a", "places_s0": "n/a"}
    assert cells("linear top-1") == {"c10_order2_s0": "n/a", "c10_order4_s0": "n/a", "in100_s0": "0.700",
                                     "in100_s1": "0.720", "in800_s0": "0.745", "mc800_s0": "0.752",
                                     "places_s0": "0.538"}
    assert cells("transfer Food101 score")["in800_s0"] == "0.756"
    # The CSV holds every final metric in long form with the run that logged it (fine-tuning's top-5 too).
    values = pd.read_csv(paths["summary:csv"])
    linear = values[(values["run"] == "in100_s1") & (values["key"] == "linear:linear/top1_best")]
    assert list(linear["run_id"]) == [ids["lin100_1"]] and list(linear["value"]) == [0.72]
    assert "semi1:finetune/top5_last" in set(values["key"])


def test_summary_rows_are_protocols_with_their_label_subsets_and_runs_are_columns(tmp_path):
    """The README's layout: "kNN top-1 (k=20)", "linear 1% top-1" ... by run, not one column per raw metric."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("digits")
    for run, knn in (("digits_s0", 0.82), ("random_init_s0", 0.47)):
        pre = _run(client, exp_id, "pretrain", {"train.seed": 0}, {"mec.run": run},
                   {"monitor/knn_top1": knn - 0.01})
        _run(client, exp_id, "evaluate", {"eval.k": "[20, 200]"}, {"mec.protocol": "knn", "mec.evaluation": "knn",
                                                                   "mec.run": run},
             {"knn/top1_k20": knn, "knn/top1_k200": knn - 0.05}, parent=pre)
        for evaluation, protocol, split, top1 in (
                ("linear", "linear_probe", None, 0.7),
                ("linear_1pct", "linear_probe", "digits-ab12-0.01-seed0.txt", 0.5),
                ("finetune_10pct", "finetune", "digits-ab12-0.1-seed0.txt", 0.9)):
            params = {"eval.split": f"/r/splits/{split}"} if split else {}
            _run(client, exp_id, "evaluate", params, {"mec.protocol": protocol, "mec.evaluation": evaluation,
                                                      "mec.run": run},
                 {f"{protocol.split('_')[0]}/top1_best": top1, f"{protocol.split('_')[0]}/top1_last": top1}, parent=pre)
    md = write_summary(experiment_runs("digits", uri), tmp_path)["summary"].read_text()
    table = md[md.index("| protocol |"):]
    assert table.splitlines() == [
        "| protocol | digits_s0 | random_init_s0 |",
        "|---|---:|---:|",
        "| kNN top-1 (k=20) | 0.820 | 0.470 |",
        "| kNN top-1 (k=200) | 0.770 | 0.420 |",
        "| linear top-1 | 0.700 | 0.700 |",
        "| linear 1% top-1 | 0.500 | 0.500 |",
        "| fine-tune 10% top-1 | 0.900 | 0.900 |",
        "| monitor: kNN top-1 | 0.810 | 0.460 |",
    ]


def test_only_seeds_are_averaged_and_other_recipe_differences_are_a_conflict(tmp_path):
    """The `57.7 +- 25.1 over 4 runs` report: two evaluation recipes of one backbone must not read as two seeds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("seeds")
    imagenet = {"data.augment": "imagenet", "data.name": "imagefolder"}

    def pretrain(epochs, seed, run, **params):
        return _run(client, exp_id, "pretrain", imagenet | {"optim.epochs": epochs, "train.seed": seed,
                                                            "train.output_dir": f"/r/{run}", "tracking.run_name": run}
                    | params, {"mec.run": run})

    def linear(pre, top1, evaluation="linear", **params):
        return _run(client, exp_id, "evaluate", {"eval.backbone": f"/r/{pre}/backbone.pt"} | params,
                    {"mec.protocol": "linear_probe", "mec.evaluation": evaluation}, {"linear/top1_best": top1},
                    parent=pre)

    # 100 epochs: two pretraining seeds of one recipe (their output folders and run names differ) -> mean +- std;
    # the same backbone evaluated again under another name with the same recipe is one value, not a third seed.
    s0, s1 = pretrain(100, 0, "a_s0"), pretrain(100, 1, "a_s1")
    linear(s0, 0.70)
    linear(s1, 0.72)
    linear(s1, 0.72, evaluation="linear_again")
    # 200 epochs: one backbone, the evaluation's own seed differs -> averaged.
    b = pretrain(200, 0, "b_s0")
    linear(b, 0.60, **{"eval.seed": 0})
    linear(b, 0.62, evaluation="linear_seed1", **{"eval.seed": 1})
    # 400 epochs: one backbone, two evaluation recipes (another lr) -> a conflict naming eval.lr.
    c = pretrain(400, 0, "c_s0")
    linear(c, 0.10)
    linear(c, 0.70, evaluation="linear_lr", **{"eval.lr": 4.0})
    # 800 epochs: two backbones whose pretraining differs in eps, not only in seed -> a conflict naming loss.eps;
    # a random-init baseline of the same config is not an MEC result and stays out.
    linear(pretrain(800, 0, "d_s0", **{"loss.eps": 8}), 0.74)
    linear(pretrain(800, 1, "d_s1", **{"loss.eps": 11}), 0.75)
    baseline = pretrain(800, 0, "random_init_s0", **{"loss.eps": 8})
    client.set_tag(baseline, "mec.baseline", "random_init")
    linear(baseline, 0.05)

    write_tables(experiment_runs("seeds", uri), tmp_path / "tables")
    t1 = pd.read_csv(tmp_path / "tables" / "table1_linear_by_epochs.csv", dtype={"row": str}, keep_default_na=False)
    assert (_row(t1, "100", "top1")["ours"], int(_row(t1, "100", "top1")["runs"])) == ("71.0 +- 1.4", 2)
    assert (_row(t1, "200", "top1")["ours"], int(_row(t1, "200", "top1")["runs"])) == ("61.0 +- 1.4", 2)
    assert _row(t1, "400", "top1")["ours"] == "conflict: eval.lr"
    assert _row(t1, "400", "top1")["conflict"] == "eval.lr" and _row(t1, "400", "top1")["mean"] == ""
    assert _row(t1, "800", "top1")["ours"] == "conflict: loss.eps" and int(_row(t1, "800", "top1")["runs"]) == 2
    markdown = (tmp_path / "tables" / "table1_linear_by_epochs.md").read_text()
    assert "| 400 | top1 | conflict: eval.lr | n/a | n/a | 2 |" in markdown


def test_pretraining_curves_give_each_run_its_own_axes(tmp_path):
    """A run 100x larger than another must not flatten it: one row of panels per run."""
    from PIL import Image

    from workflow.reports.figures import training_curves

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("curves")
    for run, scale in (("small", 1.0), ("large", 100.0), ("larger", 1000.0)):
        run_id = _run(client, exp_id, "pretrain", {}, {"mec.run": run})
        client.log_batch(run_id, metrics=[Metric(key, -scale * step, 0, step) for step in range(1, 6)
                                          for key in ("train/loss", "train/coding_length")])
    path = training_curves(experiment_runs("curves", uri), client, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.size == (11 * 120, round((2.4 * 3 + 0.6) * 120))  # three rows of (loss, coding length)


def test_mec_tables_command_writes_every_table(store, tmp_path):
    uri, _ = store
    client = MlflowClient(uri)
    failed = client.create_run(client.get_experiment_by_name("campaign").experiment_id,
                               tags={"mec.stage": "evaluate", "mec.protocol": "knn", "mec.evaluation": "knn"})
    client.set_terminated(failed.info.run_id, "FAILED")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "workflow.cli", "tables", "--tracking-uri", uri, "--out",
                           str(out), "--figures", str(out / "figures")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "left out of the tables: 1 run(s) (1 FAILED)" in proc.stderr
    names = {p.stem for p in (out / "paper").glob("table*.md")}
    assert names == {"table1_linear_by_epochs", "table2_semi_supervised", "table3_detection", "table4_tracking",
                     "table5_ablations", "table7_strategies", "table8_transfer", "table9_places365"}
    assert "# campaign" in (out / "summary.md").read_text()
    from PIL import Image

    with Image.open(out / "figures" / "pretraining_curves.png") as image:
        assert image.size[0] > 500
    (logged,) = client.search_runs([client.get_experiment_by_name("mec-tables").experiment_id])
    assert logged.data.tags["mec.stage"] == "tables" and logged.data.tags["mec.source_experiments"] == "campaign"
    paths = {a.path for a in client.list_artifacts(logged.info.run_id, "tables/paper")}
    # Artifacts live beside the SQLite store, not in ./mlruns of wherever the command ran.
    assert not (tmp_path / "mlruns").exists()
    assert logged.info.artifact_uri.startswith(f"file://{Path(uri.removeprefix('sqlite:///')).parent}/artifacts/")
    assert "tables/paper/table1_linear_by_epochs.csv" in paths
    # Regenerating updates the same report run instead of adding one per call.
    again = subprocess.run(proc.args, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r.info.run_id for r in client.search_runs([logged.info.experiment_id])] == [logged.info.run_id]
    missing = subprocess.run([sys.executable, "-m", "workflow.cli", "tables", "--tracking-uri", uri, "--experiment",
                              "nope", "--out", str(tmp_path / "x"), "--no-log"], capture_output=True, text=True,
                             timeout=300, check=False)
    assert missing.returncode == 2 and "'nope' not found" in missing.stderr
    assert "it holds ['Default', 'campaign', 'mec-tables']" in missing.stderr


def _mec_tables(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "workflow.cli", "tables", *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=cwd, env=env)


def test_mec_tables_where_there_is_no_store_says_so_and_creates_none(tmp_path):
    proc = _mec_tables(cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    store = tmp_path / "results" / "mlflow.db"
    assert proc.stderr.splitlines()[-1] == (
        f"mec: error: MLflow store sqlite:///{store}: {store} does not exist (nothing was logged there); "
        "fix --tracking-uri / MLFLOW_TRACKING_URI (both unset: results/mlflow.db here)")
    # Before the fix an empty ~1 MB results/mlflow.db was left behind, and the default output folders with it.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--out", "--figures"])
def test_mec_tables_names_the_output_option_it_cannot_write(store, tmp_path, option):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / "tabs"
    others = {"--out": str(tmp_path / "out"), "--figures": str(tmp_path / "figures")} | {option: str(target)}
    proc = _mec_tables("--tracking-uri", store[0], "--no-log", *(x for kv in others.items() for x in kv),
                       cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"mec: error: {option} {target}: cannot create the folder ({blocker} is not a folder)"), proc.stderr


def test_mec_help_is_plain_text_and_explains_each_command():
    proc = subprocess.run([sys.executable, "-m", "workflow.cli", "--help"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "``" not in proc.stdout
    for command in ("pretrain", "evaluate", "tables"):
        assert f"mec {command}" in proc.stdout
        sub = subprocess.run([sys.executable, "-m", "workflow.cli", command, "--help"], capture_output=True,
                             text=True, timeout=120, check=True)
        assert "``" not in sub.stdout and len(sub.stdout.split("options:")[0]) > 200, sub.stdout


def test_taylor_figure_errors_fall_with_the_order(tmp_path):
    from PIL import Image

    from workflow.reports.figures import taylor_error_figure, taylor_error_table

    table = taylor_error_table(dims=(32, 64), repeats=1)
    error = {(r.d, r.order): r.rel_error for r in table.itertuples()}
    for d in (32, 64):
        assert error[(d, "1")] > error[(d, "2")] > error[(d, "4")]
    with Image.open(taylor_error_figure(table, tmp_path / "fig6.png", device="cpu")) as image:
        assert image.size[0] > image.size[1]


def test_the_taylor_figure_csv_names_the_device_it_was_timed_on(tmp_path):
    import torch

    from workflow.reports.figures import cpu_name, taylor_figure

    written = taylor_figure(tmp_path / "taylor_error.png", dims=(32,), repeats=1)
    table = pd.read_csv(written["figure:taylor:csv"])
    assert set(table["device"]) == {cpu_name()}
    assert cpu_name().startswith("CPU ") and cpu_name().endswith(f", {torch.get_num_threads()} threads")


def test_a_rerun_evaluation_replaces_the_older_run_instead_of_counting_as_a_seed(tmp_path):
    import time

    from workflow.reports.paper_tables import evaluation_rows

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("rerun")
    pre = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder",
                                            "optim.epochs": 100})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.10}, parent=pre)
    time.sleep(0.01)
    newer = _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
                 {"linear/top1_best": 0.70}, parent=pre)
    runs = experiment_runs("rerun", uri)
    assert list(evaluation_rows(runs)["run_id"]) == [newer]
    values = summary_values(runs)
    top1 = values[values["key"] == "linear:linear/top1_best"]
    assert list(top1["value"]) == [0.70] and list(top1["run_id"]) == [newer]


def test_tsne_panels_are_drawn_from_the_embeddings_in_the_store(tmp_path):
    """One figure per t-SNE evaluation, a panel per run, from the runs' logged embeddings (any copy of the store)."""
    import numpy as np
    from PIL import Image

    from mec.tracking import ensure_experiment
    from workflow.reports.figures import tsne_panels

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "study")
    for run, eps in (("eps_study_eps0.12_s0", 0.12), ("eps_study_eps0.01_s0", 0.01)):
        pre = _run(client, exp_id, "pretrain", {"loss.eps": eps}, {"mec.run": run})
        ev = _run(client, exp_id, "evaluate", {}, {"mec.protocol": "tsne", "mec.evaluation": "tsne", "mec.run": run},
                  {"tsne/points": 30.0}, parent=pre)
        folder = tmp_path / run
        folder.mkdir()
        rng = np.random.default_rng(0)
        np.savez(folder / "embedding.npz", points=rng.normal(size=(30, 2)), labels=np.arange(30) % 3)
        client.log_artifact(ev, str(folder / "embedding.npz"), "tsne")
    figures = tsne_panels(experiment_runs("study", uri), client, tmp_path / "figures")
    assert list(figures) == ["figure:tsne"] and figures["figure:tsne"] == tmp_path / "figures" / "tsne.png"
    with Image.open(figures["figure:tsne"]) as image:
        assert image.size == (2 * 5 * 120, 5 * 120)  # two panels side by side


def test_a_miniature_run_fills_the_cell_it_stands_for_and_is_marked(tmp_path):
    """A campaign's miniature (workflow/miniature.py) logs what each run stands for (`mec.nominal`): the tables
    read the run as that (a digits run standing for 800 ImageNet epochs fills Table 1's 800 row) and mark it."""
    import json

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("mec-table1-miniature")
    nominal = {"data.name": "imagefolder", "data.augment": "imagenet", "optim.epochs": 800}
    pre = _run(client, exp_id, "pretrain", {"data.name": "digits", "data.augment": "digits", "optim.epochs": 6},
               {"mec.run": "mec800_s0", "mec.scale": "miniature", "mec.nominal": json.dumps(nominal)})
    _run(client, exp_id, "evaluate", {"eval.split": "/r/splits/digits-1.txt"},
         {"mec.protocol": "finetune", "mec.evaluation": "finetune_1pct", "mec.scale": "miniature",
          "mec.nominal": json.dumps({"split": "/datasets/simclr/1percent.txt"})},
         {"finetune/top1_last": 0.41, "finetune/top5_last": 0.9}, parent=pre)
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear",
                                          "mec.scale": "miniature", "mec.nominal": "{}"},
         {"linear/top1_best": 0.6}, parent=pre)
    write_tables(experiment_runs("mec-table1-miniature", client.tracking_uri), tmp_path / "tables")
    t1 = pd.read_csv(tmp_path / "tables" / "table1_linear_by_epochs.csv", keep_default_na=False)
    assert _row(t1, "800", "top1")["ours"] == "60.0 (miniature)" and _row(t1, "100", "top1")["ours"] == "n/a"
    t2 = pd.read_csv(tmp_path / "tables" / "table2_semi_supervised.csv", keep_default_na=False)
    assert _row(t2, "1%", "top1")["ours"] == "41.0 (miniature)"


def test_table9_reads_imagenet_from_the_probe_that_read_it_and_places365_from_the_others(tmp_path):
    """Table 9: one Places365 backbone, two linear probes; the ImageNet cell is the probe logged with
    ``eval.dataset: imagenet`` (option dataset), the Places365 cell the probe of the pretraining data. A miniature's
    digits run standing for Places365 (`mec.nominal`) fills both, marked."""
    import json

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    full = client.create_experiment("mec-table9")
    places = _run(client, full, "pretrain", {"data.name": "places365", "data.augment": "imagenet"}, {"mec.run": "p"})
    _run(client, full, "evaluate", {"eval.protocol": "linear_probe"},
         {"mec.protocol": "linear_probe", "mec.evaluation": "linear"}, {"linear/top1_best": 0.536}, parent=places)
    imagenet = _run(client, full, "evaluate", {"eval.dataset": "imagenet", "eval.root": "/datasets/imagenet"},
                    {"mec.protocol": "linear_probe", "mec.evaluation": "linear_imagenet"},
                    {"linear/top1_best": 0.601}, parent=places)
    write_tables(experiment_runs("mec-table9", client.tracking_uri), tmp_path / "full")
    t9 = pd.read_csv(tmp_path / "full" / "table9_places365.csv", dtype=str, keep_default_na=False)
    assert _row(t9, "MEC", "Places365")["ours"] == "53.6" and _row(t9, "MEC", "ImageNet")["ours"] == "60.1"
    assert _row(t9, "MEC", "ImageNet")["run_ids"] == imagenet and float(_row(t9, "MEC", "ImageNet")["paper"]) == 59.9
    assert _row(t9, "MEC", "Places365")["conflict"] == ""  # the ImageNet probe is not a second Places365 recipe

    mini = client.create_experiment("mec-table9-miniature")
    tags = {"mec.scale": "miniature", "mec.nominal": "{}", "mec.protocol": "linear_probe"}
    digits = _run(client, mini, "pretrain", {"data.name": "digits", "data.augment": "digits"},
                  {"mec.run": "places_s0", "mec.scale": "miniature",
                   "mec.nominal": json.dumps({"data.name": "places365", "data.augment": "imagenet"})})
    _run(client, mini, "evaluate", {"eval.epochs": 5}, tags | {"mec.evaluation": "linear"},
         {"linear/top1_best": 0.231}, parent=digits)
    _run(client, mini, "evaluate", {"eval.epochs": 20, "eval.dataset": "imagenet",
                                    "eval.root": "/r/data/digit-transfer-ImageNet-digits-0123456789"},
         tags | {"mec.evaluation": "linear_imagenet"}, {"linear/top1_best": 0.45}, parent=digits)
    write_tables(experiment_runs("mec-table9-miniature", client.tracking_uri), tmp_path / "mini")
    t9 = pd.read_csv(tmp_path / "mini" / "table9_places365.csv", dtype=str, keep_default_na=False)
    assert _row(t9, "MEC", "Places365")["ours"] == "23.1 (miniature)"
    assert _row(t9, "MEC", "ImageNet")["ours"] == "45.0 (miniature)"


def test_a_probe_of_another_data_set_never_fills_an_imagenet_linear_cell(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("campaign")
    pre = _run(client, exp_id, "pretrain", {"data.augment": "imagenet", "data.name": "imagefolder",
                                            "optim.epochs": 800, "model.projector_hidden": 2048}, {"mec.run": "m"})
    _run(client, exp_id, "evaluate", {}, {"mec.protocol": "linear_probe", "mec.evaluation": "linear"},
         {"linear/top1_best": 0.745}, parent=pre)
    _run(client, exp_id, "evaluate", {"eval.dataset": "places365"},
         {"mec.protocol": "linear_probe", "mec.evaluation": "linear_places"}, {"linear/top1_best": 0.5}, parent=pre)
    write_tables(experiment_runs("campaign", client.tracking_uri), tmp_path / "tables")
    for table, row in (("table1_linear_by_epochs", "800"), ("table7_strategies", "MEC")):
        cells = pd.read_csv(tmp_path / "tables" / f"{table}.csv", dtype=str, keep_default_na=False)
        assert _row(cells, row, "top1")["ours"] == "74.5" and _row(cells, row, "top1")["conflict"] == "", table


def test_table5_reads_each_knob_from_its_own_sweep_and_averages_the_shared_default(tmp_path):
    """Two ablation grids, each keeping the other knob at its default: the order rows are the order grid's runs
    plus the eps grid's run at the default eps (the same recipe: averaged), never the eps grid's other run."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("ablations")
    base = {"data.augment": "imagenet", "data.name": "imagefolder", "optim.epochs": 100}
    for name, order, eps, batch, knn in (("order2", 2, 8.0, 1024, 0.60), ("order4", 4, 8.0, 1024, 0.70),
                                         ("eps8", 4, 8.0, 1024, 0.72), ("eps16", 4, 16.0, 1024, 0.50),
                                         ("batch256", 4, 8.0, 256, 0.40)):
        pre = _run(client, exp_id, "pretrain", base | {"loss.order": order, "loss.eps": eps, "optim.batch_size": batch,
                                                       "derived.lr": 0.05 * batch / 256}, {"mec.run": name})
        _run(client, exp_id, "evaluate", {}, {"mec.protocol": "knn", "mec.evaluation": "knn"},
             {"knn/top1_k20": knn}, parent=pre)
    write_tables(experiment_runs("ablations", client.tracking_uri), tmp_path / "tables")
    t5 = pd.read_csv(tmp_path / "tables" / "table5_ablations.csv", keep_default_na=False)
    assert _row(t5, "Taylor order = 2", "kNN top-1")["ours"] == "60.0"
    default = _row(t5, "Taylor order = 4", "kNN top-1")
    assert default["runs"] == 2 and default["conflict"] == ""  # order4 and eps8: one recipe
    assert default["ours"] == "71.0 +- 1.4"
    assert _row(t5, "eps = 16.0", "kNN top-1")["ours"] == "50.0"
    assert _row(t5, "batch size = 256", "kNN top-1")["ours"] == "40.0"
    assert _row(t5, "batch size = 1024", "kNN top-1")["runs"] == 2
