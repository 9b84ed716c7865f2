"""Pretraining through each input path (mec.pretrain_input): the device path (bytes read by workers, decoded
and augmented as a batch in the job's process) on CPU tensors, the per-image path, unreadable files on both, a
resume on the device path, the path chosen by data.loader, and `mec bench`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_MODEL
from mlflow.tracking import MlflowClient
from PIL import Image

from mec import distributed
from mec.checkpoint import list_checkpoints
from mec.config import CONFIG_DIR, ConfigError, build_config, load_config
from mec.pretrain_input import build_pretrain_input
from mec.run import JobProcess
from mec.train import pretrain, skipped_images
from workflow.cli import main as mec_main

IMAGENET_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("imagenet-*.yaml"))


def write_jpeg_folder(root, per_class: int = 10, corrupt: int = 0):
    """Real JPEGs of different sizes (two classes), one grayscale and one CMYK among them; `corrupt` files
    named .JPEG holding garbage."""
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 72)), int(rng.integers(40, 72))
            image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            if i == 1:
                image = image.convert("L")
            elif i == 2:
                image = image.convert("CMYK")
            image.save(folder / f"{i:03d}.JPEG", quality=90)
        for i in range(corrupt if label == 0 else 0):
            (folder / f"bad{i}.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 3)
    return root


def device_config(tmp_path, data_root, **sections) -> dict:
    tree = {
        "name": "tiny-device",
        "data": {"name": "imagefolder", "root": str(data_root), "augment": "imagenet", "image_size": 32,
                 "num_workers": 0, "loader": "device"},
        "model": dict(TINY_MODEL),
        "loss": {"eps": 2.0, "lambda_warmup_epochs": 1},
        "optim": {"batch_size": 8, "base_lr": 0.1, "epochs": 1, "warmup_epochs": 0},
        "monitor": {"enabled": False},
        "train": {"output_dir": str(tmp_path / "run"), "log_every": 1, "device": "cpu"},
        "tracking": {"experiment": "test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for section, values in sections.items():
        tree[section] = tree.get(section, {}) | values
    return tree


def _metric(tree, key):
    uri = tree["tracking"]["tracking_uri"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_every_imagenet_recipe_trains_through_the_device_path(tmp_path, name):
    """The shipped recipe (two views or multi-crop) with its views drawn as batches, on CPU tensors."""
    data = write_jpeg_folder(tmp_path / "data", per_class=8)
    tree = load_config(name).model_dump(mode="json")
    tree["data"] |= {"name": "imagefolder", "root": str(data), "num_workers": 0, "image_size": 32, "loader": "device"}
    tree["data"]["multi_crop"] |= {"local_size": 16}
    tree["optim"] |= {"batch_size": 8, "epochs": 1, "warmup_epochs": 0}
    tree["loss"] |= {"lambda_warmup_epochs": 0}
    tree["monitor"] = {"enabled": False}
    tree["train"] |= {"output_dir": str(tmp_path / "run"), "device": "cpu"}
    tree["tracking"] |= {"experiment": "test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = pretrain(build_config(tree))
    assert result.backbone_path.is_file()
    assert _metric(tree, "data/skipped_images") == [(2, 0.0)]


def test_an_unreadable_jpeg_is_skipped_with_one_warning_counted_in_the_run(tmp_path, caplog):
    data = write_jpeg_folder(tmp_path / "data", per_class=8, corrupt=1)  # 17 files: two batches of 8
    tree = device_config(tmp_path, data, optim={"epochs": 2, "warmup_epochs": 0})
    with caplog.at_level("WARNING"):
        pretrain(build_config(tree))
    warnings = [r for r in caplog.records if "bad0.JPEG" in r.getMessage()]
    assert warnings, caplog.text
    (_, skipped), = _metric(tree, "data/skipped_images")[-1:]
    assert 1 <= skipped <= 2  # once per epoch in which the sampler drew it


def test_the_per_image_path_skips_the_same_file_and_counts_it(tmp_path, caplog):
    data = write_jpeg_folder(tmp_path / "data", per_class=8, corrupt=1)
    tree = device_config(tmp_path, data, data={"loader": "per_image", "num_workers": 2},
                         optim={"epochs": 2, "warmup_epochs": 0})
    with caplog.at_level("WARNING"):
        pretrain(build_config(tree))
    assert _metric(tree, "data/skipped_images")[-1][1] >= 1


def test_a_resumed_device_path_run_draws_what_the_uninterrupted_one_drew(tmp_path):
    """Epoch 2 trained again from epoch 1's checkpoint gives epoch 2's weights: the batched augmentations'
    host generator is reseeded per epoch, as the loader's is."""
    data = write_jpeg_folder(tmp_path / "data", per_class=8)
    tree = device_config(tmp_path, data, optim={"epochs": 2, "warmup_epochs": 0}, train={"deterministic": True})
    pretrain(build_config(tree))
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = dict(list_checkpoints(checkpoints))[2]
    straight = torch.load(newest, weights_only=True)["model"]
    newest.unlink()  # as if the job had been killed during epoch 2
    pretrain(build_config(tree))
    resumed = torch.load(dict(list_checkpoints(checkpoints))[2], weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.allclose(value.float(), resumed[key].float(), rtol=1e-5, atol=1e-7), key


def test_data_loader_auto_picks_the_device_only_on_a_gpu_and_refuses_what_it_cannot_read(tmp_path):
    data = write_jpeg_folder(tmp_path / "data", per_class=4)
    cpu = JobProcess(False, 0, 1, torch.device("cpu"))
    auto = build_config(device_config(tmp_path, data, data={"loader": "auto"}))
    assert build_pretrain_input(auto, cpu).path == "per_image"
    assert build_pretrain_input(build_config(device_config(tmp_path, data)), cpu).path == "device"
    with pytest.raises(ConfigError, match="data.loader=device: data.augment=digits"):
        build_pretrain_input(build_config(device_config(tmp_path, data, data={"augment": "digits"})), cpu)
    with pytest.raises(ConfigError, match="data.loader=device: data.augment_options"):
        tree = device_config(tmp_path, data, data={"augment_options": {"crop_scale": [0.5, 1.0]}})
        build_pretrain_input(build_config(tree), cpu)


def test_mec_bench_prints_every_figure_side_by_side(tmp_path, capsys):
    data = write_jpeg_folder(tmp_path / "data", per_class=12)
    overrides = [f"{key}={value}" for key, value in {
        "model.arch": "resnet18", "model.width": 4, "model.embedding_dim": 32, "model.projector_hidden": 32,
        "model.predictor_hidden": 16, "model.sync_batchnorm": "false", "optim.batch_size": 8,
        "data.image_size": 32, "data.num_workers": 0, "train.device": "cpu", "train.log_every": 2,
        "loss.eps": 2.0, "loss.lambda_warmup_epochs": 0,
        "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}.items()]
    assert mec_main(["bench", "--data", str(data), "--steps", "2", "--warmup", "1", *overrides]) == 0
    out = capsys.readouterr().out
    for row in ("step (synthetic views)", "input per_image", "input device", "end to end (per_image)",
                "busy (end to end / step)", "CPU"):
        assert row in out, out
    rates = [float(line.split()[-2]) for line in out.splitlines() if line.rstrip().endswith("img/s")]
    assert len(rates) == 4 and all(rate > 0 for rate in rates), out


def test_mec_bench_writes_data_the_config_can_read_and_names_bad_counts(tmp_path, capsys):
    # The digits pair renderings of one source (data.positives=same_source): the written JPEGs must pair too.
    overrides = ["model.width=4", "model.embedding_dim=32", "model.projector_hidden=32", "model.predictor_hidden=16",
                 "optim.batch_size=8", "data.image_size=16", "data.num_workers=0", "train.device=cpu",
                 "loss.eps=2.0", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert mec_main(["bench", "--config", "digits", "--steps", "1", "--warmup", "0", *overrides]) == 0
    assert "busy (end to end / step)" in capsys.readouterr().out
    assert mec_main(["bench", "--config", "digits", "--steps", "0", *overrides]) == 2
    assert capsys.readouterr().err.strip() == (
        "mec: error: --steps must be >= 1, --warmup >= 0 and --images >= 1; got 0, 3, None")


def test_train_compile_compiles_the_training_forward_and_keeps_the_eager_model(tmp_path):
    """Only the wiring: compiling a ResNet on this CPU takes minutes (107 s for the width-4 one against 3 s eager),
    so whether it pays is `mec bench ... train.compile=true`'s question, asked on a GPU."""
    from mec.run import job_process
    from mec.train import setup_pretraining

    data = write_jpeg_folder(tmp_path / "data", per_class=4)
    cfg = build_config(device_config(tmp_path, data, train={"compile": True, "device": "cpu"}))
    with job_process("cpu") as proc:
        job = setup_pretraining(cfg, proc, None)
    assert job.train_model._orig_mod.model is job.model  # torch.compile's wrapper around MultiCropForward


def test_the_skipped_count_goes_on_from_the_checkpoint_after_a_resume(tmp_path):
    """One batch of all 17 files per epoch, one of them unreadable: 1 after epoch 1, 2 after the resumed epoch 2
    (the count is in the checkpoint; this process's own counter starts at 0 again)."""
    data = write_jpeg_folder(tmp_path / "data", per_class=8, corrupt=1)
    tree = device_config(tmp_path, data, optim={"epochs": 1, "warmup_epochs": 0, "batch_size": 17})
    pretrain(build_config(tree))
    assert _metric(tree, "data/skipped_images") == [(1, 1.0)]
    tree["optim"]["epochs"] = 2
    pretrain(build_config(tree))
    assert _metric(tree, "data/skipped_images") == [(1, 1.0), (2, 2.0)]


def _count_skipped_on_rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    assert distributed.init_distributed("gloo")
    job = SimpleNamespace(input=SimpleNamespace(skipped_images=lambda: 3 + rank),
                          proc=SimpleNamespace(distributed=True, device=torch.device("cpu")), skipped_before=10)
    (Path(out_dir) / f"rank{rank}.txt").write_text(str(skipped_images(job)))
    torch.distributed.destroy_process_group()


def test_the_skipped_count_sums_every_ranks_files(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_count_skipped_on_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["17", "17"]  # 10 before + 3 + 4
