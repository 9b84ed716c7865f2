"""Feature files: what they were computed from is stored and checked, writes are atomic, and the features stage."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, write_image_folder, write_tiny_mec_config
from mlflow.tracking import MlflowClient

from evals import FEATURE_SPLITS, run_protocol
from evals.features import StaleFeaturesError, cached_features, feature_key, provenance, write_features
from evals.job import EvalJob
from mec import checkpoint as ckpt
from mec.checkpoint import export_backbone
from mec.config import build_config
from mec.tracking import RunLogger
from mec.train import build_backbone_from_config
from workflow.experiment import build_experiment


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), per_class=6, size=16)


def _config(folder: Path) -> dict:
    return build_config({"name": "tiny", "data": {"name": "imagefolder", "root": str(folder), "num_workers": 0,
                                                  "augment": "digits", "image_size": 16},
                         "model": TINY_MODEL}).model_dump(mode="json")


def _backbone(path: Path, config: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_backbone_from_config(build_config(config), zero_init_residual=False)
    return export_backbone(net.state_dict(), path, {"arch": "resnet18"})


def test_a_feature_file_carries_what_it_was_computed_from_and_is_kept_while_it_matches(tmp_path, folder):
    config = _config(folder)
    backbone = _backbone(tmp_path / "a.pt", config)
    path = tmp_path / "features" / "a_s0" / "train.pt"
    features, reused = write_features(path, backbone, build_config(config), "train")
    assert not reused and features.features.shape[0] == 12
    stored = ckpt.load_checkpoint(path)
    expected = provenance(backbone, build_config(config), "train")
    assert stored["backbone_sha256"] == ckpt.file_sha256(backbone) == expected["backbone_sha256"]
    assert stored["data_identity"] == expected["data_identity"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]  # no temporary file left
    assert write_features(path, backbone, build_config(config), "train")[1]  # kept, not extracted again

    # Another backbone: the features job extracts again over the stale file.
    other = _backbone(tmp_path / "b.pt", config, seed=1)
    _, reused = write_features(path, other, build_config(config), "train")
    assert not reused and ckpt.load_checkpoint(path)["backbone_sha256"] == ckpt.file_sha256(other)


def test_an_evaluation_given_a_feature_file_of_another_backbone_refuses_it_naming_the_file(tmp_path, folder):
    config = _config(folder)
    cfg = build_config(config)
    trained = _backbone(tmp_path / "trained.pt", config)
    other = _backbone(tmp_path / "other.pt", config, seed=1)
    files = {split: str(tmp_path / "features" / "run" / f"{split}.pt") for split in FEATURE_SPLITS["knn"]}
    for split, path in files.items():
        write_features(Path(path), other, cfg, split)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = RunLogger.open(experiment="features", run_name="knn", journal=tmp_path / "knn" / "metrics.jsonl",
                         tracking_uri=uri)
    job = EvalJob(protocol="knn", backbone=str(trained), config=config, output_dir=str(tmp_path / "knn"),
                  feature_cache=str(tmp_path / "cache"), features=files, options={"k": [3]}, run_id=run.run_id,
                  tracking_uri=uri, experiment="features")
    with pytest.raises(StaleFeaturesError, match=rf"{re.escape(files['train'])} was computed from another backbone"
                                                 rf".*backbone_sha256 {ckpt.file_sha256(other)} where "
                                                 rf"{ckpt.file_sha256(trained)} was expected"):
        run_protocol(job)
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"
    assert not (tmp_path / "cache").exists()  # no silent fallback to the content-keyed cache

    # The right files are read as they are (never extracted by the evaluation).
    for split, path in files.items():
        write_features(Path(path), trained, cfg, split)
    run = RunLogger.open(experiment="features", run_name="knn2", journal=tmp_path / "knn2" / "metrics.jsonl",
                         tracking_uri=uri)
    again = dataclasses.replace(job, run_id=run.run_id, output_dir=str(tmp_path / "knn2"))
    assert run_protocol(again)["knn/features_reused"] == 1.0


def test_the_content_keyed_cache_extracts_a_file_without_provenance_again(tmp_path, folder):
    """Without the DAG (a protocol called directly) features land in the keyed cache; a file written before the
    provenance was stored (or otherwise stale) is replaced, not trusted."""
    config = _config(folder)
    cfg = build_config(config)
    backbone = _backbone(tmp_path / "a.pt", config)
    path = tmp_path / "cache" / f"val-{feature_key(backbone, cfg, 'val')}.pt"
    ckpt.save_checkpoint(path, {"features": torch.zeros(12, 4), "labels": torch.zeros(12, dtype=torch.long)})
    features, reused = cached_features(backbone, cfg, "val", tmp_path / "cache")
    assert not reused and features.features.shape[1] != 4
    assert ckpt.load_checkpoint(path)["backbone_sha256"] == ckpt.file_sha256(backbone)
    assert cached_features(backbone, cfg, "val", tmp_path / "cache")[1]


def _tree(tmp_path: Path) -> dict:
    return {"experiment": "features-test", "output": str(tmp_path / "results"), "launcher": "inline",
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "pretrain": {"a": {"config": str(write_tiny_mec_config(tmp_path, per_class=4))}},
            "evaluate": {"knn": {"runs": ["a"]}}}


def test_the_features_stage_writes_its_file_atomically_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    from workflow import stage

    tree = _tree(tmp_path)
    experiment = build_experiment(tree)
    config = experiment.config_for("a_s0").model_dump(mode="json")
    backbone = _backbone(tmp_path / "backbone.pt", config)
    record = tmp_path / "pretrain.json"
    record.write_text(json.dumps({"run_id": "0" * 32, "backbone": str(backbone), "config": config}))
    output = experiment.feature_file("a_s0", "val")
    argv = ["--log", str(tmp_path / "features.log"), "features", "--config", json.dumps(tree), "--run", "a_s0",
            "--split", "val", "--pretrain", str(record), "--output", str(output)]

    # A write that dies half-way leaves neither the file nor a temporary one.
    real_save = torch.save

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    assert stage.main(argv) == 1
    assert not output.exists() and not list(output.parent.glob("*.tmp-*"))
    failure = [line for line in capsys.readouterr().out.splitlines() if "failed" in line]
    assert len(failure) == 1 and "features a_s0 val failed: OSError: disk full" in failure[0]

    monkeypatch.setattr(torch, "save", real_save)
    assert stage.main(argv) == 0
    stored = ckpt.load_checkpoint(output, required_keys=("features", "labels", "backbone_sha256", "data_identity"))
    assert stored["features"].shape[0] == 8 and stored["backbone_sha256"] == ckpt.file_sha256(backbone)
    assert sorted(p.name for p in output.parent.iterdir()) == ["val", "val.pt"]  # the file and its job's folder
    launches = (experiment.feature_job_dir("a_s0", "val") / "launches.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in launches] == ["inline", "inline"]

    # A split no evaluation reads is refused in one line.
    assert stage.main([*argv[:8], "test", *argv[9:]]) == 1
    assert "no evaluation of experiment 'features-test' reads the 'test' features" in capsys.readouterr().out
