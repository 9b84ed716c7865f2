"""The tracking protocol (evals.tracking.evaluate) end to end, and its place in the experiment and the DAG.

Each task runs on a tiny offline video tree through the real writers, readers, heads and metrics, with an exported
width-4 digits backbone, logging into a real MLflow store; bad data ends in one line and a FAILED run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from mlflow.tracking import MlflowClient

from evals import TRACKING_TASKS, run_protocol
from evals.job import EvalJob
from evals.tracking import TrackingOptionError, video_parameters, write_videos
from evals.tracking.datasets import TrackingDataError
from mec.checkpoint import export_backbone
from mec.config import ConfigError, build_config, load_config
from mec.models import build_backbone
from mec.tracking import RunLogger
from workflow.experiment import build_experiment

SMALL_VIDEOS = {"n_videos": 2, "frames": 6, "canvas": 48}
TASK_SCORES = {"vos": {"J_mean", "F_mean", "JF_mean"}, "sot": {"AUC", "precision"}, "mot": {"IDF1", "HOTA", "IDSW"},
               "mots": {"IDF1", "HOTA", "IDSW"}, "posetrack": {"IDF1", "IDSW"}}


def _digits_config() -> dict:
    config = load_config("digits").model_dump(mode="json")
    config["model"] |= TINY_MODEL
    return config


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_backbone("resnet18", width=TINY_MODEL["width"], cifar_stem=True, zero_init_residual=False)
    return export_backbone(net.state_dict(), tmp_path_factory.mktemp("b") / "backbone.pt", {"arch": "resnet18"})


def _job(tmp_path: Path, backbone: Path, config: dict | None = None, **options) -> EvalJob:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "tracking"
    run = RunLogger.open(experiment="evals", run_name="tracking", journal=out / "metrics.jsonl", tracking_uri=uri)
    return EvalJob(protocol="tracking", backbone=str(backbone), config=config or _digits_config(),
                   output_dir=str(out), feature_cache="", options=options, run_id=run.run_id, tracking_uri=uri,
                   experiment="evals")


@pytest.mark.parametrize("task", sorted(TASK_SCORES))
def test_each_task_tracks_the_offline_videos_and_logs_its_scores(tmp_path, backbone, task):
    head = {"exemplar_size": 16, "instance_size": 32} if task == "sot" else {}
    job = _job(tmp_path, backbone, task=task, videos=SMALL_VIDEOS, head=head)
    metrics = run_protocol(job)
    scores = {name.removeprefix("tracking/") for name in metrics}
    assert TASK_SCORES[task] <= scores
    assert all(0.0 <= metrics[f"tracking/{name}"] <= 1.0 for name in TASK_SCORES[task] - {"IDSW"})
    run = MlflowClient(job.tracking_uri).get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["tracking.task"] == task and run.data.tags["tracking.benchmark"] == "digits"
    assert {k: round(v, 9) for k, v in run.data.metrics.items()} == {k: round(v, 9) for k, v in metrics.items()}
    results = Path(job.output_dir) / "results"
    per_sequence = json.loads((results / "sequences.json").read_text())
    assert len(per_sequence) == SMALL_VIDEOS["n_videos"]
    # the offline tree was rendered into the job's own folder, in the layout of the task's benchmark
    fmt = TRACKING_TASKS[task].video_format
    assert (Path(job.output_dir) / f"videos-{fmt}" / "manifest.json").is_file()


def test_vos_predictions_are_davis_pngs_and_mot_results_are_motchallenge_text(tmp_path, backbone):
    job = _job(tmp_path, backbone, task="mot", videos=SMALL_VIDEOS)
    run_protocol(job)
    lines = (Path(job.output_dir) / "results" / "DIGITS-01.txt").read_text().splitlines()
    assert lines and all(len(line.split(",")) == 10 for line in lines)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "vos", "speed": 2}, r"unknown tracking options \['speed'\]"),
        ({"task": "detect"}, r"options\.task must be one of \['mot', 'mots', 'posetrack', 'sot', 'vos'\]"),
        ({"task": "vos", "runner": "unitrack"}, r"runner unitrack needs options\.unitrack"),
        ({"task": "vos", "head": [1]}, r"options\.head must be a mapping"),
        ({"task": "vos", "stride": 0}, r"options\.stride must be a positive int"),
    ],
)
def test_bad_options_stop_before_anything_runs(tmp_path, backbone, options, message):
    with pytest.raises(TrackingOptionError, match=message):
        run_protocol(_job(tmp_path, backbone, **options))
    assert not (tmp_path / "tracking" / "results").exists()


def test_a_run_on_other_data_needs_a_benchmark_root(tmp_path, backbone):
    config = _digits_config() | {"data": {**_digits_config()["data"], "name": "cifar10", "augment": "cifar"}}
    job = _job(tmp_path, backbone, config=config, task="vos")
    with pytest.raises(TrackingOptionError, match=r"needs options\.root \(or datasets\.davis\).*'cifar10'"):
        run_protocol(job)
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


def test_a_missing_benchmark_folder_is_one_line_and_a_failed_run(tmp_path, backbone):
    job = _job(tmp_path, backbone, task="sot", root=str(tmp_path / "OTB100"))
    with pytest.raises(TrackingDataError, match=r"OTB100") as error:
        run_protocol(job)
    assert "\n" not in str(error.value)
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


def test_a_malformed_ground_truth_line_names_the_file_and_line(tmp_path, backbone):
    cfg = build_config(_digits_config())
    root = write_videos("mot", tmp_path / "mot", video_parameters(cfg.data, SMALL_VIDEOS))
    gt = root / "train" / "DIGITS-02" / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "3,1,oops"
    gt.write_text("\n".join(lines) + "\n")
    job = _job(tmp_path, backbone, task="mot", root=str(root))
    with pytest.raises(TrackingDataError, match=rf"^{gt}:3: expected comma-separated numbers"):
        run_protocol(job)
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


def test_a_mot_sequence_without_its_detections_file_fails_instead_of_scoring_zero(tmp_path, backbone):
    cfg = build_config(_digits_config())
    root = write_videos("mot", tmp_path / "mot", video_parameters(cfg.data, SMALL_VIDEOS))
    det = root / "train" / "DIGITS-01" / "det" / "det.txt"
    det.write_text("")  # a sequence with no detections at all is real data: it runs
    (tmp_path / "empty").mkdir()
    metrics = run_protocol(_job(tmp_path / "empty", backbone, task="mot", root=str(root)))
    assert 0.0 <= metrics["tracking/IDF1"] < 1.0
    shutil.rmtree(det.parent)
    job = _job(tmp_path, backbone, task="mot", root=str(root))
    with pytest.raises(TrackingDataError) as error:
        run_protocol(job)
    assert str(error.value) == (f"{det}: missing file (MOT tracks the given detections of every sequence; "
                                "an empty file stands for a sequence without any)")
    assert not (Path(job.output_dir) / "results" / "DIGITS-02.txt").exists()  # refused before tracking any
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


def test_a_davis_sequence_missing_a_middle_mask_names_that_mask(tmp_path, backbone):
    cfg = build_config(_digits_config())
    root = write_videos("vos", tmp_path / "davis", video_parameters(cfg.data, SMALL_VIDEOS))
    mask = root / "Annotations" / "480p" / "digits-002" / "00002.png"
    mask.unlink()
    job = _job(tmp_path, backbone, task="vos", root=str(root))
    with pytest.raises(TrackingDataError) as error:
        run_protocol(job)
    assert str(error.value) == (f"{mask}: missing annotation (1 of {SMALL_VIDEOS['frames']} frames have none; "
                                "semi-supervised VOS scores every frame)")


# ------------------------------------------------------------------------------------------------ experiment and DAG


def test_tracking_evaluations_read_their_benchmark_from_datasets_or_the_dag_written_videos():
    exp = build_experiment({
        "experiment": "trk", "datasets": {"davis": "/data/DAVIS", "unitrack": "/src/UniTrack"},
        "pretrain": {"a": {"config": "digits"}},
        "evaluate": {"vos": {"protocol": "tracking", "options": {"task": "vos"}},
                     "vos_unitrack": {"protocol": "tracking", "options": {"task": "vos", "runner": "unitrack"}},
                     "mot": {"protocol": "tracking", "options": {"task": "mot"}}},
    })
    assert exp.evaluation("vos").options == {"task": "vos", "root": "/data/DAVIS"}
    assert exp.evaluation("vos_unitrack").options["unitrack"] == "/src/UniTrack"
    assert exp.videos_root("vos", "a_s0") is None and exp.generated_inputs("vos", "a_s0") == []
    videos = exp.videos_root("mot", "a_s0")
    assert videos == exp.videos_dir("a_s0", "mot") and videos.name.startswith("digit-videos-mot-digits-")
    assert exp.tracking_videos() == {videos.name: ("a_s0", "mot")}
    assert exp.generated_inputs("mot", "a_s0") == [str(videos / "manifest.json")]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"pretrain": {"a": {"config": "digits"}}, "evaluate": {"t": {"protocol": "tracking", "options": {}}}},
         r"evaluate\.t\.options\.task: None is not one of"),
        ({"pretrain": {"a": {"config": "digits"}},
          "evaluate": {"t": {"protocol": "tracking", "options": {"task": "sot", "runner": "unitrack"}}}},
         r"evaluate\.t: runner unitrack needs datasets\.unitrack"),
        ({"pretrain": {"a": {"config": "cifar10"}},
          "evaluate": {"t": {"protocol": "tracking", "options": {"task": "sot"}}}},
         r"evaluate\.t: run a_s0 is pretrained on 'cifar10'.*set datasets\.otb \(the OTB-2015 folder\)"),
    ],
)
def test_bad_tracking_evaluations_stop_at_planning(tree, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment({"experiment": "e", **tree})


def test_the_videos_stage_writes_the_runs_videos_in_its_pretraining_style(tmp_path):
    from workflow.stage import main

    tree = {"experiment": "trk", "output": str(tmp_path / "out"),
            "pretrain": {"a": {"config": "digits", "overrides": {"data.root": str(tmp_path / "digits")}}},
            "evaluate": {"t": {"protocol": "tracking", "options": {"task": "vos"}}}}
    exp = build_experiment(tree)
    manifest = exp.videos_dir("a_s0", "vos") / "manifest.json"
    assert main(["videos", "--config", json.dumps(tree), "--run", "a_s0", "--task", "vos",
                 "--output", str(manifest)]) == 0
    written = json.loads(manifest.read_text())
    assert written["params"]["format"] == "davis" and written["params"]["style"]["palette_size"] == 1
    assert (manifest.parent / "ImageSets" / "2017" / "val.txt").is_file()
    assert main(["videos", "--config", json.dumps(tree), "--run", "a_s0", "--task", "vos",
                 "--output", str(tmp_path / "elsewhere" / "manifest.json")]) == 1

