"""End-to-end pretraining on small real-format data: MLflow records, checkpoints, kill + resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_MODEL, write_cifar10, write_image_folder
from mlflow.tracking import MlflowClient

from mec.checkpoint import list_checkpoints, load_backbone
from mec.config import CONFIG_DIR, ConfigError, build_config, load_config
from mec.loss import DIVERGED_SPECTRAL_NORM, CodingLengthOutput, MaximumEntropyCodingLoss
from mec.models import build_backbone
from mec.run import select_device
from mec.train import StepOutput, check_steps, pretrain, stop_if_diverged


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
    assert run.data.tags["env.world_size"] == "1" and run.data.tags["env.device"] == str(select_device())
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


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "workflow.cli", *args]


def _pythonpath() -> str:
    """The repository first, then whatever the caller's PYTHONPATH holds (a machine whose packages live there)."""
    return os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": _pythonpath()}


def _run_cli(config_file: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli("pretrain", "--config", str(config_file), *overrides), capture_output=True, text=True,
                          env=_env(), timeout=600)


def _journaled_steps(journal: Path) -> list[int]:
    if not journal.exists():
        return []
    lines = journal.read_text().splitlines()
    return [row["step"] for row in map(json.loads, lines[:-1]) if row["key"] == "train/loss"]  # last may be partial


def _kill_at_step(config_file: Path, journal: Path, step: int, timeout: float = 300,
                  signum: int = signal.SIGKILL) -> subprocess.Popen:
    """Start `mec pretrain` and SIGKILL it (no cleanup, no flush, no checkpoint), or send it ``signum``, once its
    journal holds ``step``."""
    proc = subprocess.Popen(_cli("pretrain", "--config", str(config_file)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while max(_journaled_steps(journal), default=0) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pretraining ended (rc {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    proc.stderr_text = proc.stderr.read()
    proc.stderr.close()
    return proc


def test_killed_run_resumes_into_same_mlflow_run_with_same_losses(tmp_path, image_folder):
    # Reference: an uninterrupted deterministic run. One loader worker: augmentations drawn in a worker
    # process must also come back the same after a resume.
    workers = {"name": "imagefolder", "root": str(image_folder), "augment": "digits", "image_size": 16,
               "num_workers": 1}
    ref_tree = tiny_config(tmp_path / "ref", image_folder, optim={"epochs": 3}, data=workers)
    ref = pretrain(build_config(ref_tree))
    ref_losses = dict(metric_history(ref_tree["tracking"]["tracking_uri"], ref.run_id, "train/loss"))

    # The same run killed in epoch 2 (3 steps per epoch), then started again.
    tree = tiny_config(tmp_path / "killed", image_folder, optim={"epochs": 3}, data=workers)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    run_dir = tmp_path / "killed" / "run"
    killed = _kill_at_step(config_file, run_dir / "metrics.jsonl", step=4)
    assert killed.returncode == -signal.SIGKILL
    assert max(e for e, _ in list_checkpoints(run_dir / "checkpoints")) < 3, "killed before the run ended"

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


def test_sigterm_stops_a_standalone_run_in_one_line_killed_and_it_resumes(tmp_path, image_folder):
    tree = tiny_config(tmp_path, image_folder, optim={"epochs": 3})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    stopped = _kill_at_step(config_file, tmp_path / "run" / "metrics.jsonl", step=4, signum=signal.SIGTERM)
    assert stopped.returncode == 130
    assert stopped.stderr_text.strip().splitlines()[-1] == (
        "mec: interrupted (SIGTERM); run the same command again to resume from its newest checkpoint")
    client = MlflowClient(tree["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "KILLED"
    resumed = _run_cli(config_file)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_checkpoints_of_which_none_loads_stop_the_cli_in_one_line(tmp_path, image_folder):
    tree = tiny_config(tmp_path, image_folder, optim={"epochs": 1})
    pretrain(build_config(tree))
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("checkpoint_epoch*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    out = _run_cli(config_file)
    assert out.returncode == 2
    assert re.match(rf"mec: error: none of the 1 checkpoint\(s\) in {tmp_path / 'run' / 'checkpoints'} loads",
                    out.stderr.strip().splitlines()[-1]), out.stderr[-2000:]
    assert checkpoint.stat().st_size == 500  # left as it was


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


def test_a_run_resumes_only_under_the_config_it_trained_with(tmp_path, image_folder, caplog):
    tree = tiny_config(tmp_path, image_folder, optim={"epochs": 1})
    first = pretrain(build_config(tree))
    changed = tiny_config(tmp_path, image_folder, optim={"epochs": 2, "batch_size": 4}, loss={"eps": 3.0})
    with pytest.raises(ConfigError, match=r"checkpoint_epoch0001.pt was trained with loss.eps=2.0, "
                                          r"optim.batch_size=8; the config now says loss.eps=3.0, optim.batch_size=4: "
                                          r"restore them .* or give another train.output_dir"):
        pretrain(build_config(changed))
    # Where it runs, how many workers read, and how long it trains may change.
    longer = tiny_config(tmp_path, image_folder, optim={"epochs": 2}, data={**tree["data"], "num_workers": 1})
    with caplog.at_level("WARNING"):
        again = pretrain(build_config(longer))
    assert again.run_id == first.run_id and "optim.epochs 1 -> 2 since checkpoint" in caplog.text


def test_non_finite_loss_names_the_step(tmp_path, image_folder):
    # A distortion this small makes lambda ~1e11: the order-4 series overflows float32 at once.
    tree = tiny_config(tmp_path, image_folder, loss={"eps": 1e-6, "lambda_warmup_epochs": 0})
    with pytest.raises(FloatingPointError, match=r"step 0 \(epoch 1\).*not finite.*eps"):
        pretrain(build_config(tree))
    client = MlflowClient(tree["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"


def test_convergence_guard_in_error_mode_stops_before_training(tmp_path, image_folder):
    tree = tiny_config(tmp_path, image_folder, loss={"eps": 2.0, "convergence_check": "error"})
    with pytest.raises(ValueError, match=r"loss.eps=2.0: .*lambda\*m = .* is not below 1"):
        pretrain(build_config(tree))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    env = os.environ | {"PYTHONPATH": _pythonpath()}
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


def test_a_diverged_run_stops_with_the_step_and_values_whatever_the_check_says(tmp_path, image_folder):
    # lambda*m = 356 (eps 0.3, d 32, m 8): the loss stays finite, but no convergent series gives it. The
    # default convergence_check (warn) only warns about the bound before training; the measured values stop it.
    tree = tiny_config(tmp_path, image_folder, loss={"eps": 0.3, "lambda_warmup_epochs": 1})
    assert build_config(tree).loss.convergence_check == "warn"
    config_file = tmp_path / "diverges.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    out = _run_cli(config_file)
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert re.match(r"mec: training diverged: step \d+ \(epoch 1\): the order-4 Taylor series has diverged \(loss ",
                    last), last
    for expected in ("measured ||C||_2 = ", "a convergent series gives", "lambda*m = ", "loss.eps",
                     "loss.order=null"):
        assert expected in last, expected
    client = MlflowClient(tree["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_a_measured_spectral_norm_far_above_one_stops_even_with_a_plausible_loss():
    cfg = build_config({"model": {"embedding_dim": 32}, "loss": {"convergence_check": "off"}})
    loss_fn = MaximumEntropyCodingLoss(eps=cfg.loss.eps)
    job = SimpleNamespace(cfg=cfg, loss_fn=loss_fn, step=41, proc=SimpleNamespace(distributed=False))
    out = CodingLengthOutput(loss=torch.tensor(-0.2), coding_length=torch.tensor(1.0), lam=4.0, mu=20.0, m=8, d=32)
    stop_if_diverged(job, 4, out, measured=DIVERGED_SPECTRAL_NORM * 0.9, measure=lambda: pytest.fail("measured"))
    stop_if_diverged(job, 4, out, measured=None, measure=lambda: pytest.fail("not a spectral step: not measured"))
    with pytest.raises(FloatingPointError, match=r"step 41 \(epoch 5\): .*measured \|\|C\|\|_2 = 344 is above 10; "
                       r"loss -0\.2.* lambda\*m = 32"):
        stop_if_diverged(job, 4, out, measured=344.0, measure=lambda: 344.0)


def test_checked_steps_stop_at_the_first_bad_one_named_by_its_step():
    cfg = build_config({"model": {"embedding_dim": 32}, "loss": {"convergence_check": "off"}})
    job = SimpleNamespace(cfg=cfg, loss_fn=MaximumEntropyCodingLoss(eps=cfg.loss.eps, check_finite=False), step=9,
                          proc=SimpleNamespace(distributed=False))
    pair = (torch.zeros(8, 32), torch.zeros(8, 32))

    def steps(*losses: float) -> list[StepOutput]:
        return [StepOutput(6 + i, 2, CodingLengthOutput(loss=torch.tensor(value), coding_length=torch.tensor(1.0),
                                                         lam=4.0, mu=20.0, m=8, d=32), pair, {})
                for i, value in enumerate(losses)]

    check_steps(job, steps(-0.2, -0.3))
    with pytest.raises(FloatingPointError, match=r"^step 7 \(epoch 3\): MEC loss is not finite \(value nan\)"):
        check_steps(job, steps(-0.2, float("nan"), float("inf")))
    with pytest.raises(FloatingPointError, match=r"^step 7 \(epoch 3\): the order-4 Taylor series has diverged "
                       r"\(loss -1000 is beyond"):
        check_steps(job, steps(-0.2, -1000.0, float("nan")))


def test_cifar_batches_failing_their_checksum_stop_in_one_line_and_train_with_the_switch_off(tmp_path):
    write_cifar10(tmp_path / "cifar", images_per_file=8)  # real format, not torchvision's official bytes
    data = {"name": "cifar10", "root": str(tmp_path / "cifar"), "augment": "cifar", "image_size": 32,
            "num_workers": 0}
    tree = tiny_config(tmp_path, tmp_path / "cifar", data=data, optim={"epochs": 1})
    config_file = tmp_path / "cifar.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    out = _run_cli(config_file)
    assert out.returncode == 2, out.stderr[-3000:]
    batch = tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1"
    assert out.stderr.strip().splitlines()[-1] == (
        f"mec: error: cifar10: {batch} (and 6 more) fails torchvision's MD5 check of the official file; replace "
        "it with the original, or delete the folder and set data.download=true, or set data.verify_checksums=false "
        "to read real-format batches from elsewhere")
    assert "Traceback" not in out.stderr

    tree["data"]["verify_checksums"] = False
    tree["monitor"] = {"enabled": True, "few_shot": 1, "few_shot_draws": 1}  # reads the batches again at the end
    result = pretrain(build_config(tree))
    assert result.backbone_path.is_file()
    assert "monitor/knn_top1" in result.metrics
    steps = [s for s, _ in metric_history(tree["tracking"]["tracking_uri"], result.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4, 5]  # 40 training images, batch 8


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
    tree["data"]["multi_crop"] |= {"local_size": tree["data"]["image_size"] // 2}  # local views stay smaller
    tree["optim"] |= {"batch_size": 8, "epochs": 1, "warmup_epochs": 0}
    tree["loss"] |= {"lambda_warmup_epochs": 0}
    tree["monitor"] = {"enabled": False}
    tree["train"] |= {"output_dir": str(tmp_path / "run")}
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
    env = os.environ | {"PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1"}
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
