"""The Snakemake DAG: experiment configs, a local end-to-end run, MLflow links, and reruns after a failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import campaign_data, job_wildcards, planned_jobs, run_snakemake, write_tiny_mec_config
from mlflow.tracking import MlflowClient

from evals import TRACKING_TASKS
from mec.config import ConfigError
from workflow.experiment import build_experiment

REPO = Path(__file__).resolve().parents[1]


def test_grid_and_seeds_expand_into_named_runs():
    exp = build_experiment({
        "experiment": "abl",
        "pretrain": {"c10": {"config": "cifar10", "grid": {"loss.order": [2, 4], "optim.batch_size": [256]},
                             "seeds": [0, 1]}},
        "evaluate": {"knn": {"runs": ["c10"]}},
    })
    # grid keys in sorted order (loss.order before optim.batch_size), then the seed
    assert sorted(exp.runs) == ["c10_order2_batchsize256_s0", "c10_order2_batchsize256_s1",
                                "c10_order4_batchsize256_s0", "c10_order4_batchsize256_s1"]
    cfg = exp.config_for("c10_order2_batchsize256_s1")
    assert (cfg.loss.order, cfg.optim.batch_size, cfg.train.seed) == (2, 256, 1)
    assert cfg.tracking.experiment == "abl" and cfg.tracking.run_name == "c10_order2_batchsize256_s1"
    assert Path(cfg.train.output_dir) == Path("results/abl/pretrain/c10_order2_batchsize256_s1").resolve()
    assert exp.evaluation("knn").runs == tuple(sorted(exp.runs))


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"pretrain": {"a": {"config": "digits"}}}, "'experiment'"),
        ({"experiment": "e", "pretrain": {"a": {"config": "digits", "overrides": {"loss.epsilon": 1}}}},
         r"pretrain\.a \(run a_s0\).*loss\.epsilon"),
        ({"experiment": "e", "pretrain": {"a": {"config": "digits", "grid": {"loss.order": [0]}}}},
         r"run a_order0_s0.*loss\.order"),
        ({"experiment": "e", "pretrain": {"a": {"config": "digits"}}, "evaluate": {"knn": {"runs": ["b"]}}},
         r"evaluate\.knn\.runs: unknown pretrain groups \['b'\]"),
        ({"experiment": "e", "launcher": "auto", "pretrain": {"a": {"config": "digits"}}},
         "launcher: 'auto' is not one of"),
    ],
)
def test_bad_experiment_configs_name_the_key(tree, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tree)


def test_schema_rejects_an_unknown_key_before_anything_runs(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"experiment": "e", "pretrain": {"a": {"config": "digits"}}, "sedds": [1]}))
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(config))
    assert proc.returncode != 0
    assert "sedds" in proc.stdout + proc.stderr


def test_local_jobs_take_their_cores_and_slurm_jobs_do_not(tmp_path):
    """`--cores 2` on a laptop runs one 2-CPU job at a time; under SLURM a rule only waits on its job."""
    local = run_snakemake(tmp_path, "-n", "--cores", "2")
    assert local.returncode == 0, local.stderr[-3000:]
    threads = [line.split()[1] for line in local.stdout.splitlines() if line.strip().startswith("threads:")]
    assert threads and set(threads) == {"2"}
    cluster = run_snakemake(tmp_path, "-n", "--cores", "64", "--config", "launcher=slurm")
    assert cluster.returncode == 0, cluster.stderr[-3000:]
    assert "threads:" not in cluster.stdout  # Snakemake prints threads only when above 1


def _tiny_experiment(tmp_path: Path, *, fail_group_b: bool) -> Path:
    mec_config = write_tiny_mec_config(tmp_path)
    # Group b reads its own copy of the data, an empty folder on the first run (it exists, so planning passes;
    # the job finds no images and fails), the rerun has it.
    b_data = tmp_path / "data_b"
    b_data.mkdir(exist_ok=True)
    if not fail_group_b and not any(b_data.iterdir()):
        shutil.copytree(tmp_path / "data", b_data, dirs_exist_ok=True)
    b_overrides = {"data.root": str(b_data)}
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "experiment": "wf-test",
        "output": str(tmp_path / "results"),
        "launcher": "local",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain": {
            # One core per job: `--cores 2` runs two jobs side by side against one SQLite store.
            "a": {"config": str(mec_config), "seeds": [0, 1], "resources": {"cpus_per_task": 1}},
            "b": {"config": str(mec_config), "overrides": b_overrides, "resources": {"cpus_per_task": 1}},
        },
        "evaluate": {"knn": {"runs": ["a", "b"], "options": {"k": [5]}}},
    }))
    return experiment


def _metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_local_dag_runs_end_to_end_and_a_failed_branch_reruns_alone(tmp_path):
    experiment = _tiny_experiment(tmp_path, fail_group_b=True)
    first = run_snakemake(tmp_path, "--cores", "2", "--keep-going", "--configfile", str(experiment))
    assert first.returncode != 0, first.stderr[-3000:]
    results = tmp_path / "results"
    for run in ("a_s0", "a_s1"):  # the two seeds ran side by side against one SQLite store
        assert (results / "pretrain" / run / "pretrain.json").exists(), first.stderr[-3000:]
        assert (results / "eval" / "knn" / run / "result.json").exists()
    assert not (results / "pretrain" / "b_s0" / "pretrain.json").exists()
    b_run_id = (results / "pretrain" / "b_s0" / "mlflow_run_id").read_text().strip()
    # The failed job's run ends FAILED, saying why and where the job's log is; the rule's log says it in one line.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    failed = client.get_run(b_run_id)
    assert failed.info.status == "FAILED"
    assert "data_b" in failed.data.tags["mec.failure"]
    assert failed.data.tags["mec.failure_log"].endswith(".err")
    rule_log = (results / "logs" / "pretrain" / "b_s0.log").read_text()
    assert "pretrain b_s0 failed: local job" in rule_log and "data_b" in rule_log

    # The failed branch, and only it (plus the tables), is what is left to do.
    experiment = _tiny_experiment(tmp_path, fail_group_b=False)
    dry = run_snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(experiment))
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = dry.stdout + dry.stderr
    assert "b_s0" in planned and "run=a_s0" not in planned and "a_s0/pretrain.json\n" not in planned
    job_counts = {line.split()[0]: int(line.split()[1]) for line in planned.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert job_counts.get("pretrain") == 1 and job_counts.get("evaluate") == 1 and job_counts.get("tables") == 1

    second = run_snakemake(tmp_path, "--cores", "2", "--configfile", str(experiment))
    assert second.returncode == 0, second.stderr[-3000:]
    records = {run: json.loads((results / "pretrain" / run / "pretrain.json").read_text())
               for run in ("a_s0", "a_s1", "b_s0")}
    assert records["b_s0"]["run_id"] == b_run_id  # resumed into the run the killed job started
    assert records["a_s0"]["launch"]["cluster"] == "local" and records["a_s0"]["launch"]["job_id"]

    for run, record in records.items():
        # 2 epochs x 4 steps, logged every step: every step exactly once, in the killed-and-resumed run too
        assert _metric_steps(client, record["run_id"], "train/loss") == list(range(1, 9)), run
        tags = client.get_run(record["run_id"]).data.tags
        assert tags["launcher.job_id"] == record["launch"]["job_id"]
        # every submission is recorded: b's failed job and its rerun
        submitted = [e["job_id"] for e in record["launches"] if e["event"] == "submitted"]
        assert tags["launcher.job_ids"] == ",".join(submitted) and tags["launcher.attempts"] == str(len(submitted))
        assert len(submitted) == (2 if run == "b_s0" else 1), run
        assert tags["mec.stage"] == "pretrain"
        ev = json.loads((results / "eval" / "knn" / run / "result.json").read_text())
        ev_tags = client.get_run(ev["run_id"]).data.tags
        assert ev_tags["mlflow.parentRunId"] == record["run_id"] == ev_tags["mec.pretrain_run_id"]
        assert 0.0 <= client.get_run(ev["run_id"]).data.metrics["knn/top1_k5"] <= 1.0

    # Features were extracted once per (backbone, split) by the features rule, the evaluations only read them.
    assert sorted(str(p.relative_to(results / "features")) for p in (results / "features").rglob("*.pt")) == \
        [f"{run}/{split}.pt" for run in ("a_s0", "a_s1", "b_s0") for split in ("train", "val")]
    summary = (results / "tables" / "summary.csv").read_text()
    for record in records.values():
        assert record["run_id"] in summary
    assert "knn:knn/top1_k5" in summary
    (figures_run,) = client.search_runs([client.get_experiment_by_name("wf-test").experiment_id],
                                        "tags.`mec.stage` = 'tables'")
    logged = {a.path for a in client.list_artifacts(figures_run.info.run_id, "figures")}
    assert "figures/taylor_error.png" in logged

    again = run_snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(experiment))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_failing_evaluation_ends_its_mlflow_run_failed_with_the_reason(tmp_path):
    from workflow import stage, stages

    mec_config = write_tiny_mec_config(tmp_path)
    tree = {"experiment": "fail-test", "output": str(tmp_path / "results"), "launcher": "inline",
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "pretrain": {"a": {"config": str(mec_config)}}, "evaluate": {"knn": {"runs": ["a"]}}}
    experiment_record = tmp_path / "results" / "mlflow_experiment.json"
    stages.create_experiment(tree, experiment_record)
    # A pretraining record whose backbone file is missing: the protocol raises in the job.
    config = build_experiment(tree).config_for("a_s0").model_dump(mode="json")
    pretrain_record = tmp_path / "pretrain.json"
    pretrain_record.write_text(json.dumps({"run_id": "0" * 32, "backbone": str(tmp_path / "missing.pt"),
                                           "config": config}))
    output = tmp_path / "results" / "eval" / "knn" / "a_s0" / "result.json"
    with pytest.raises(stage.StageError, match="missing.pt"):
        stage.evaluate(experiment_record, "knn", "a_s0", pretrain_record, output, {})
    assert not output.exists()
    client = MlflowClient(tree["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("fail-test").experiment_id])
    assert run.info.status == "FAILED"
    assert "missing.pt" in run.data.tags["mec.failure"]
    assert run.data.tags["launcher.cluster"] == "inline"


def test_the_waiting_process_imports_neither_torch_nor_mlflow(tmp_path):
    """A rule waiting on its job holds a light process (a login node may hold one per rule in flight)."""
    # VmRSS, not ru_maxrss: a child's maxrss starts at its parent's (here pytest's) and survives exec.
    probe = ("import re, sys, workflow.stage; "
             "print(sorted({'torch', 'mlflow'} & set(sys.modules)), "
             "int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    heavy, rss_mb = proc.stdout.split("]")
    assert heavy == "[", proc.stdout
    assert int(rss_mb) < 150  # MB; torch alone is about 500


def test_a_stage_whose_tracking_server_is_away_stops_in_seconds_naming_it(tmp_path):
    import socket
    import time

    from mec.tracking import TrackingUnavailableError
    from workflow import stages

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tree = {"experiment": "away", "output": str(tmp_path / "results"), "tracking_uri": f"http://127.0.0.1:{port}",
            "pretrain": {"a": {"config": str(write_tiny_mec_config(tmp_path))}}}
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=rf"http://127.0.0.1:{port} is not reachable .*tracking_uri"):
        stages.create_experiment(tree, tmp_path / "record.json")
    assert time.monotonic() - started < 30  # MLflow's own retries took about 258 s
    assert not (tmp_path / "record.json").exists()


def test_label_splits_are_written_by_their_own_rule_before_the_evaluations_that_read_them(tmp_path):
    mec_config = write_tiny_mec_config(tmp_path)  # 16 images per class, two classes
    experiment = tmp_path / "experiment.yaml"
    tree = {
        "experiment": "split-test", "output": str(tmp_path / "results"), "launcher": "local",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain": {"a": {"config": str(mec_config), "seeds": [0, 1]}},
        "evaluate": {"few": {"protocol": "linear_probe", "runs": ["a"], "fraction": 0.25},
                     "few_ft": {"protocol": "finetune", "runs": ["a"], "fraction": 0.25}},
    }
    experiment.write_text(yaml.safe_dump(tree))
    split = build_experiment(tree, root=tmp_path).split_file("a_s0", 0.25)
    # Both seeds and both protocols read one file, written by one job of its own rule.
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(experiment))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.count("rule label_split:") == 1 and str(split.name) in dry.stdout
    made = run_snakemake(tmp_path, str(split), "--cores", "1", "--configfile", str(experiment))
    assert made.returncode == 0, made.stderr[-3000:]
    lines = split.read_text().splitlines()
    assert len(lines) == 8 and {line.split("/")[0] for line in lines} == {"bar", "disc"}  # 4 of 16 per class
    again = run_snakemake(tmp_path, str(split), "-n", "--configfile", str(experiment))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_features_are_declared_outputs_of_their_own_rule_that_knn_and_tsne_read(tmp_path):
    """One features job per (run, split) some evaluation reads, none for the runs no feature-reading evaluation
    evaluates; the kNN and t-SNE evaluations take them as input, the others do not."""
    dry = run_snakemake(tmp_path, "-n", "--cores", "2")  # the default experiment
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout)
    features = {(w["run"], w["split"]): job["output"] for job in jobs if job["rule"] == "features"
                for w in [job_wildcards(job)]}
    assert sorted(features) == [("digits_s0", "train"), ("digits_s0", "val"), ("eps_study_eps0.01_s0", "train"),
                                ("eps_study_eps0.12_s0", "train"), ("random_init_s0", "train"),
                                ("random_init_s0", "val")]
    assert features[("digits_s0", "val")] == "results/mec-digits/features/digits_s0/val.pt"
    for job in jobs:
        if job["rule"] == "evaluate":
            w = job_wildcards(job)
            wanted = {"knn": ("train", "val"), "tsne": ("train",)}.get(w["evaluation"], ())
            read = sorted(path for path in job["input"].split(", ") if "/features/" in path)
            assert read == sorted(features[(w["run"], split)] for split in wanted), job

    # A group that only a linear probe evaluates gets no features job.
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "experiment": "feat", "output": str(tmp_path / "out"),
        "pretrain": {"a": {"config": "digits"}, "b": {"config": "digits"}, "c": {"config": "digits"}},
        "evaluate": {"knn": {"runs": ["a"]}, "tsne": {"runs": ["a", "b"]},
                     "linear": {"protocol": "linear_probe", "runs": ["a", "b", "c"]}},
    }))
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(experiment))
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = sorted((w["run"], w["split"]) for job in planned_jobs(dry.stdout) if job["rule"] == "features"
                     for w in [job_wildcards(job)])
    assert planned == [("a_s0", "train"), ("a_s0", "val"), ("b_s0", "train")]  # a_s0/train: once, for knn and tsne


def test_the_features_rule_extracts_a_runs_features_through_the_launcher(tmp_path):
    import torch

    from mec.checkpoint import export_backbone, file_sha256
    from mec.train import build_backbone_from_config

    mec_config = write_tiny_mec_config(tmp_path, per_class=4)
    experiment = tmp_path / "experiment.yaml"
    tree = {"experiment": "features-rule", "output": str(tmp_path / "results"), "launcher": "local",
            "pretrain": {"r": {"config": str(mec_config)}}, "evaluate": {"knn": {"runs": ["r"]}}}
    experiment.write_text(yaml.safe_dump(tree))
    exp = build_experiment(tree)
    # The pretraining run's records as its rules leave them (the stage itself is tested elsewhere).
    cfg = exp.config_for("r_s0")
    backbone = export_backbone(build_backbone_from_config(cfg).state_dict(), exp.pretrain_dir("r_s0") / "backbone.pt",
                               {"arch": cfg.model.arch})
    (exp.output / "mlflow_experiment.json").write_text(json.dumps({"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    exp.pretrain_record("r_s0").write_text(json.dumps({"run_id": "0" * 32, "backbone": str(backbone),
                                                       "config": cfg.model_dump(mode="json")}))
    target = exp.feature_file("r_s0", "train")
    made = run_snakemake(tmp_path, str(target), "--cores", "1", "--configfile", str(experiment))
    assert made.returncode == 0, made.stderr[-3000:]
    assert made.stderr.count("rule ") == 1, made.stderr[-3000:]  # the features job alone

    stored = torch.load(target, weights_only=True)
    assert stored["features"].shape[0] == stored["labels"].shape[0] == 8
    assert stored["backbone_sha256"] == file_sha256(backbone)
    assert sorted(p.name for p in target.parent.iterdir()) == ["train", "train.pt"]  # no temporary file beside it
    (launch,) = [json.loads(line) for line in (target.parent / "train" / "launches.jsonl").read_text().splitlines()]
    assert launch["event"] == "submitted" and launch["cluster"] == "local"
    rule_log = (exp.output / "logs" / "features" / "r_s0" / "train.log").read_text()
    assert "submitted local job" in rule_log and "features of run r_s0 on train: [8, " in rule_log
    again = run_snakemake(tmp_path, str(target), "-n", "--configfile", str(experiment))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_evaluation_grid_and_seeds_expand_into_named_evaluations_with_a_data_root():
    exp = build_experiment({
        "experiment": "det", "datasets": {"detectron2": "/data/datasets"},
        "pretrain": {"a": {"config": "digits"}},
        "evaluate": {"voc": {"protocol": "detection", "options": {"recipe": "voc0712"}, "grid": {"lr": [0.02, 0.05]},
                             "seeds": [0, 1]},
                     "scenes": {"protocol": "detection", "options": {"recipe": "digits_voc"}}},
    })
    assert sorted(exp.evaluations) == ["scenes", "voc_lr0.02_s0", "voc_lr0.02_s1", "voc_lr0.05_s0", "voc_lr0.05_s1"]
    assert exp.evaluation("voc_lr0.05_s1").options == {"recipe": "voc0712", "lr": 0.05, "seed": 1,
                                                       "root": "/data/datasets"}
    # The offline recipe reads the digit scenes the DAG writes in the style of the run's pretraining digits (the
    # stage gives the job their root); both recipes need detectron2 installed first.
    assert "root" not in exp.evaluation("scenes").options
    scenes = exp.scenes_root("scenes", "a_s0")
    assert scenes == exp.scenes_dir("a_s0", "voc") and scenes.name.startswith("digit-scenes-voc-digits-")
    assert exp.detection_scenes() == {scenes.name: ("a_s0", "voc")}
    assert exp.detection_inputs("scenes", "a_s0") == [str(exp.detectron2_record()), str(scenes / "manifest.json")]
    assert exp.detection_inputs("voc_lr0.02_s0", "a_s0") == [str(exp.detectron2_record())]
    assert exp.scenes_root("voc_lr0.02_s0", "a_s0") is None


def test_the_scenes_stage_writes_the_runs_scenes_in_its_pretraining_style(tmp_path):
    from workflow.stage import main

    tree = {"experiment": "det", "output": str(tmp_path / "out"),
            "pretrain": {"a": {"config": "digits", "overrides": {"data.root": str(tmp_path / "digits")}}},
            "evaluate": {"d": {"protocol": "detection", "options": {"recipe": "digits_voc"}}}}
    exp = build_experiment(tree)
    manifest = exp.scenes_dir("a_s0", "voc") / "manifest.json"
    assert main(["scenes", "--config", json.dumps(tree), "--run", "a_s0", "--format", "voc",
                 "--output", str(manifest)]) == 0
    written = json.loads(manifest.read_text())
    assert written["params"]["style"]["palette_size"] == 1  # the digits config's one colour pair
    assert main(["scenes", "--config", json.dumps(tree), "--run", "a_s0", "--format", "voc",
                 "--output", str(tmp_path / "elsewhere" / "manifest.json")]) == 1


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"protocol": "detection", "options": {"recipe": "voc07"}}, r"evaluate\.d: .*set datasets\.detectron2"),
        ({"protocol": "detection", "options": {}}, r"evaluate\.d\.options\.recipe: a detection recipe is required"),
        ({"protocol": "detection", "options": {"recipe": "voc07", "seed": 1, "root": "x"}, "seeds": [0]},
         r"evaluate\.d: \['seed'\] given both"),
    ],
)
def test_bad_detection_evaluations_name_the_key(evaluation, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment({"experiment": "e", "pretrain": {"a": {"config": "digits"}}, "evaluate": {"d": evaluation}})


def test_the_table3_campaign_plans_its_pretraining_and_eleven_detection_jobs(tmp_path):
    campaign = REPO / "workflow" / "experiments" / "table3.yaml"
    missing = run_snakemake(tmp_path, "-n", "--configfile", str(campaign))
    assert missing.returncode != 0
    assert f"pretrain.mec800 (data.root of imagefolder): no such file or folder {tmp_path / 'datasets' / 'imagenet'}" \
        in missing.stdout + missing.stderr
    campaign_data(tmp_path, campaign)
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(campaign))
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout)
    evaluations = sorted(job_wildcards(job)["evaluation"] for job in jobs if job["rule"] == "evaluate")
    assert evaluations == sorted(["coco_lr0.02", *(f"voc07_lr0.02_s{s}" for s in range(5)),
                                  *(f"voc0712_lr0.02_s{s}" for s in range(5))])
    assert [job["rule"] for job in jobs].count("pretrain") == 1
    assert [job["rule"] for job in jobs].count("detectron2") == 1
    assert "detection_scenes" not in [job["rule"] for job in jobs]


def test_the_table4_campaign_plans_its_pretraining_and_one_tracking_job_per_task(tmp_path):
    campaign = REPO / "workflow" / "experiments" / "table4.yaml"
    campaign_data(tmp_path, campaign)
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(campaign))
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout)
    evaluations = sorted(job_wildcards(job)["evaluation"] for job in jobs if job["rule"] == "evaluate")
    assert evaluations == sorted(TRACKING_TASKS)
    assert [job["rule"] for job in jobs].count("pretrain") == 1
    assert "tracking_videos" not in [job["rule"] for job in jobs]  # every task reads its benchmark folder
    exp = build_experiment(yaml.safe_load(campaign.read_text()), REPO)
    assert {name: Path(e.options["root"]).name for name, e in exp.evaluations.items()} == {
        "sot": "OTB100", "vos": "DAVIS", "mot": "MOT16", "mots": "MOTS", "posetrack": "PoseTrack18"}
