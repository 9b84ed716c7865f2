"""End-to-end pretraining on small real-format data: MLflow records, checkpoints, kill + resume, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL, write_image_folder
from mlflow.tracking import MlflowClient

from mec.checkpoint import list_checkpoints, load_backbone
from mec.config import CONFIG_DIR, build_config, load_config
from mec.models import build_backbone
from mec.train import SIMULATED_KILL_EXIT_CODE, pretrain


def tiny_config(tmp_path: Path, data_root: Path, **sections) -> dict:
    tree = {
        "name": "tiny",
        "data": {"name": "imagefolder", "root": str(data_root), "augment": "digits", "image_size": 16,
                 "num_workers": 0},
        "model": dict(TINY_MODEL),
        "loss": {"eps": 2.0, "lambda_warmup_epochs": 1},
        "optim": {"batch_size": 8, "base_lr": 0.1, "epochs": 2, "warmup_epochs": 1},
        "monitor": {"enabled": False},
        "train": {"output_dir": str(tmp_path / "run"), "log_every": 1, "deterministic": True},
        "tracking": {"experiment": "test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for section, values in sections.items():
        tree[section] = tree.get(section, {}) | values
    return tree


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="module")
def paired_image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("paired"), variants=2)


def test_pretrain_logs_checkpoints_and_exports(tmp_path, image_folder):
    tree = tiny_config(tmp_path, image_folder, monitor={"enabled": True, "few_shot": 2, "few_shot_draws": 2})
    cfg = build_config(tree)
    result = pretrain(cfg)

    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.eps"] == "2.0" and run.data.params["optim.batch_size"] == "8"
    assert run.data.tags["env.world_size"] == "1" and run.data.tags["env.device"] == "cpu"
    steps_per_epoch = 24 // 8
    losses = metric_history(cfg.tracking.tracking_uri, result.run_id, "train/loss")
    assert [s for s, _ in losses] == list(range(1, 2 * steps_per_epoch + 1))
    for key in ("train/lr", "train/lambda", "train/teacher_momentum", "train/coding_length", "train/spectral_norm",
                "train/embedding_rank", "epoch/loss"):
        assert key in run.data.metrics, key
    assert set(result.metrics) >= {"monitor/knn_top1", "monitor/random_init/knn_top1", "monitor/linear_2shot_top1"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"backbone", "config"} <= artifacts

    # Two epochs, two checkpoints kept; the exported backbone loads strictly into a fresh network.
    assert [e for e, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2, 1]
    net = build_backbone("resnet18", width=4, cifar_stem=True)
    meta = load_backbone(net, result.backbone_path)
    assert meta["metadata"]["mlflow_run_id"] == result.run_id


def _run_cli(config_file: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "workflow.cli", "pretrain", "--config", str(config_file), *overrides],
        capture_output=True, text=True, env=env, timeout=600,
    )


def test_killed_run_resumes_into_same_mlflow_run_with_same_losses(tmp_path, image_folder):
    # Reference: an uninterrupted deterministic run. One loader worker: augmentations drawn in a worker
    # process must also come back the same after a resume.
    workers = {"name": "imagefolder", "root": str(image_folder), "augment": "digits", "image_size": 16,
               "num_workers": 1}
    ref_tree = tiny_config(tmp_path / "ref", image_folder, optim={"epochs": 3}, data=workers)
    ref = pretrain(build_config(ref_tree))
    ref_losses = dict(metric_history(ref_tree["tracking"]["tracking_uri"], ref.run_id, "train/loss"))

    # The same run killed (hard exit, no cleanup) in the middle of epoch 2, then started again.
    tree = tiny_config(tmp_path / "killed", image_folder, optim={"epochs": 3}, data=workers)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    killed = _run_cli(config_file, "train.stop_after_steps=5")
    assert killed.returncode == SIMULATED_KILL_EXIT_CODE, killed.stderr
    ckpts = tmp_path / "killed" / "run" / "checkpoints"
    assert [e for e, _ in list_checkpoints(ckpts)] == [1]

    resumed = _run_cli(config_file)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr

    uri = tree["tracking"]["tracking_uri"]
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1, "the resumed job must continue the same MLflow run"
    history = metric_history(uri, runs[0].info.run_id, "train/loss")
    steps = [s for s, _ in history]
    assert steps == sorted(set(steps)) == list(range(1, 10)), "no step logged twice or lost"
    for step, value in history:
        assert value == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-7), step
    assert runs[0].info.status == "FINISHED"


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, image_folder, caplog):
    tree = tiny_config(tmp_path, image_folder)
    first = pretrain(build_config(tree))
    newest = tmp_path / "run" / "checkpoints" / "checkpoint_epoch0002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    tree["optim"]["epochs"] = 3
    with caplog.at_level("WARNING"):
        again = pretrain(build_config(tree))
    assert "checkpoint_epoch0002.pt" in caplog.text
    assert again.run_id == first.run_id
    assert [e for e, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 2]


def test_non_finite_loss_names_the_step(tmp_path, image_folder):
    # A distortion this small makes lambda ~1e11: the order-4 series overflows float32 at once.
    tree = tiny_config(tmp_path, image_folder, loss={"eps": 1e-6, "lambda_warmup_epochs": 0})
    with pytest.raises(FloatingPointError, match=r"step 0 \(epoch 1\).*not finite.*eps"):
        pretrain(build_config(tree))
    run = MlflowClient(tree["tracking"]["tracking_uri"]).search_runs(["1"])[0]
    assert run.info.status == "FAILED"


def test_convergence_guard_in_error_mode_stops_before_training(tmp_path, image_folder):
    tree = tiny_config(tmp_path, image_folder, loss={"eps": 2.0, "convergence_check": "error"})
    with pytest.raises(ValueError, match=r"loss.eps=2.0: .*lambda\*m = .* is not below 1"):
        pretrain(build_config(tree))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "workflow.cli", "pretrain", "--config", "digits", "loss.eps=zero"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mec: error: ")
    assert "loss.eps" in out.stderr

    missing = tmp_path / "nowhere"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path, missing)))
    out = subprocess.run([*cmd[:5], str(cfg)], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert str(missing / "train") in out.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_trains_a_few_steps(tmp_path, image_folder, paired_image_folder, name):
    """solo-learn style smoke test: the shipped recipe (optimiser, loss, heads, augmentations) runs.

    Only what cannot fit a CPU test changes: the data (a small ImageFolder), batch, image size and epochs.
    """
    cfg = load_config(name)
    tree = cfg.model_dump(mode="json")
    folder = paired_image_folder if cfg.data.positives == "same_source" else image_folder
    tree["data"] |= {"name": "imagefolder", "root": str(folder), "num_workers": 0,
                     "image_size": 32 if cfg.data.augment == "imagenet" else 16}
    tree["optim"] |= {"batch_size": 8, "epochs": 1, "warmup_epochs": 0}
    tree["loss"] |= {"lambda_warmup_epochs": 0}
    tree["monitor"] = {"enabled": False}
    tree["train"] |= {"output_dir": str(tmp_path / "run"), "stop_after_steps": 0}
    tree["tracking"] |= {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = pretrain(build_config(tree))
    assert result.backbone_path.is_file()
    state = torch.load(result.backbone_path, weights_only=True)
    assert state["metadata"]["arch"] == cfg.model.arch


def test_torchrun_two_process_gloo_pretraining(tmp_path, image_folder):
    """DDP end to end: torchrun's environment, sharded sampler, gathered loss, rank-0 records only."""
    tree = tiny_config(tmp_path, image_folder, optim={"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
                       train={"deterministic": False})
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "workflow.cli", "pretrain", "--config", str(config_file)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    uri = tree["tracking"]["tracking_uri"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1, "only rank 0 opens a run"
    assert runs[0].data.tags["env.world_size"] == "2"
    # 24 images, global batch 8 split 4 + 4: 3 steps, each logged once.
    assert [s for s, _ in metric_history(uri, runs[0].info.run_id, "train/loss")] == [1, 2, 3]
    assert [e for e, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [1]
