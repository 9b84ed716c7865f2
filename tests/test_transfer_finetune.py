"""The fine-tuning transfer protocol (paper Table 8, fine-tuned rows) on real-format data written here: CIFAR-10
batches whose class is the image's colour, a VOC2007 tree; a width-4 backbone, a few dozen steps per training."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
from conftest import CIFAR10_FILES, write_pickle
from mlflow.tracking import MlflowClient
from PIL import Image
from test_evals import _backbone, _config, _job
from torch import nn

from evals import run_protocol
from evals import transfer_finetune as tf
from evals.transfer import DATASETS, VOC_CLASSES, split_indices
from evals.transfer_sets import write_transfer_sets
from mec import checkpoint as ckpt

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # class 0 red, 1 green, 2 blue
GOOD_LR, TINY_LR, HUGE_LR = 0.03, 1e-6, 1000.0
STEPS = 30  # per training: 3 epochs of the 160 training images at batch 16; checkpoints every 10 steps


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch):
    """Tiny convolutions run fastest on one thread, and much slower on two when the machine is busy. On the CPU
    also where there is a GPU: the resumed loss curve is compared bit for bit, which cuDNN does not promise."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_colour_cifar10(root: Path, images_per_file: int = 40) -> Path:
    """Real-format CIFAR-10 batches (uint8 rows of R, G, B planes), classes 0-2 in turn, each its own colour
    plus noise: 200 training images (160 train and 40 held out for validation) and 40 test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        labels = [i % 3 for i in range(images_per_file)]
        data = np.stack([np.concatenate([rng.normal(c, 10, 1024) for c in COLOURS[label]]) for label in labels])
        write_pickle(folder / name, {"batch_label": name, "data": np.clip(data, 0, 255).astype(np.uint8),
                                      "labels": labels})
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return root


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    root = _write_colour_cifar10(tmp_path / "cifar")
    config = _config({"name": "cifar10", "root": str(root), "augment": "cifar", "image_size": 32,
                      "verify_checksums": False})
    return root, config, _backbone(tmp_path / "b.pt", config)


def _cifar_job(tmp_path: Path, cifar, **options):
    root, config, backbone = cifar
    options = {"dataset": "CIFAR10", "root": str(root), "wds": [0.0], "steps": STEPS, "batch_size": 16,
               "checkpoint_every": 10} | options
    return _job(tmp_path, "transfer_finetune", config, backbone, **options)


def _scores(job) -> dict:
    return json.loads(next(Path(job.output_dir).glob(f"search-*/{tf.SCORES_FILE}")).read_text())


def _losses(job, offset: int) -> list[tuple[int, float]]:
    """The training loss curve of one training of the search, at steps relative to its offset."""
    history = MlflowClient(job.tracking_uri).get_metric_history(job.run_id, "transfer_finetune/train_loss")
    return sorted((m.step - offset, m.value) for m in history if offset < m.step <= offset + STEPS)


def test_search_picks_the_best_validation_point_retrains_on_train_and_val_and_resumes(tmp_path, cifar, monkeypatch):
    # Three learning rates: a tiny one leaves the random head near chance (1/3), a huge one makes the loss
    # non-finite within a step or two (scored 0, marked diverged), the middle one learns the colours.
    job = _cifar_job(tmp_path, cifar, lrs=[TINY_LR, GOOD_LR, HUGE_LR])
    client = MlflowClient(job.tracking_uri)
    good = tf.point_key(GOOD_LR, 0.0)

    # Preempted after the checkpoint at step 20 of the second grid point: the first point is scored and kept.
    save = ckpt.save_checkpoint

    def preempted(path, state):
        save(path, state)
        if good in str(path) and state["step"] == 20:
            raise RuntimeError("simulated preemption")

    monkeypatch.setattr(ckpt, "save_checkpoint", preempted)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        run_protocol(job)
    assert client.get_run(job.run_id).info.status == "FAILED"
    assert list(_scores(job)["val"]) == [tf.point_key(TINY_LR, 0.0)]
    monkeypatch.setattr(ckpt, "save_checkpoint", save)

    trained = []
    finetune = tf.finetune

    def counted(job_, s, data, run, proc, logger):
        trained.append(run.name)
        return finetune(job_, s, data, run, proc, logger)

    monkeypatch.setattr(tf, "finetune", counted)
    metrics = run_protocol(job)  # the same job: the same output folder and MLflow run
    assert trained == [good, tf.point_key(HUGE_LR, 0.0), f"final-{good}"]  # the finished point is not retrained
    assert client.get_run(job.run_id).info.status == "FINISHED"

    val = {tf.point_key(lr, 0.0): _scores(job)["val"][tf.point_key(lr, 0.0)]["score"]
           for lr in (TINY_LR, GOOD_LR, HUGE_LR)}  # in grid order
    assert val[tf.point_key(TINY_LR, 0.0)] < 0.5 and val[good] >= 0.9
    assert val[tf.point_key(HUGE_LR, 0.0)] == 0.0 and _scores(job)["val"][tf.point_key(HUGE_LR, 0.0)]["diverged"]
    assert metrics["transfer_finetune/best_lr"] == GOOD_LR and metrics["transfer_finetune/best_wd"] == 0.0
    assert metrics["transfer_finetune/val_score"] == val[good] == max(val.values())
    assert metrics["transfer_finetune/train_images"] == 200  # the retrain: 160 train + 40 validation images
    assert metrics["transfer_finetune/score"] >= 0.9  # top-1 on the 40 test images
    for key, value in val.items():
        assert [m.value for m in client.get_metric_history(job.run_id, f"transfer_finetune/val_score_{key}")] == [value]
    by_point = client.get_metric_history(job.run_id, "transfer_finetune/val_score_by_point")
    assert [m.value for m in sorted(by_point, key=lambda m: m.step)] == list(val.values())
    tags = client.get_run(job.run_id).data.tags
    assert tags["transfer.dataset"] == "CIFAR10" and tags["transfer.metric"] == "top1"
    assert not (next(Path(job.output_dir).glob("search-*")) / good).exists()  # scored: checkpoints gone

    # The resumed point continued where it stopped: its loss curve (steps 10 and 20 before the preemption, 30
    # after) is the one of a run never interrupted (stopped here before its retrain).
    def point_only(job_, s, data, run, proc, logger):
        if run.name.startswith("final-"):
            raise KeyboardInterrupt
        return finetune(job_, s, data, run, proc, logger)

    monkeypatch.setattr(tf, "finetune", point_only)
    (tmp_path / "straight").mkdir()
    straight = _cifar_job(tmp_path / "straight", cifar, lrs=[GOOD_LR])
    with pytest.raises(KeyboardInterrupt):
        run_protocol(straight)
    assert _losses(job, STEPS) == _losses(straight, 0) and [step for step, _ in _losses(straight, 0)] == [10, 20, 30]
    assert _scores(straight)["val"][good]["score"] == val[good]
    monkeypatch.setattr(tf, "finetune", counted)

    # Once finished, a rerun trains nothing and logs nothing twice.
    trained.clear()
    assert run_protocol(job) == metrics and trained == []
    assert len(client.get_metric_history(job.run_id, "transfer_finetune/val_score_by_point")) == 3


def _rank(rank: int, job, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True  # a new process: patch again
    results[rank] = run_protocol(job)


@pytest.mark.slow
def test_two_ranks_share_each_batch_and_only_rank_0_records(tmp_path, cifar, monkeypatch):
    """The campaign runs the protocol on several GPUs, one process each (torchrun / SLURM variables): here two
    CPU ranks (gloo), batch 16 as 8 + 8."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    job = _cifar_job(tmp_path, cifar, lrs=[GOOD_LR], steps=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(job, port, results), nprocs=2)
    assert results[0] == results[1] and results[0]["transfer_finetune/train_images"] == 200
    assert _scores(job)["test"] == {"point": tf.point_key(GOOD_LR, 0.0), "score": results[0]["transfer_finetune/score"]}
    client = MlflowClient(job.tracking_uri)
    assert client.get_run(job.run_id).info.status == "FINISHED"
    # 10 steps, 10 an epoch (80 images a rank, 8 at a time), then 10 on train + val: one loss each, from rank 0
    assert [m.step for m in client.get_metric_history(job.run_id, "transfer_finetune/train_loss")] == [10, 20]


def _write_voc2007(root: Path, trainval: int = 40, test: int = 20) -> Path:
    """A real VOC2007 tree (JPEGImages, Annotations, ImageSets/Main): each image holds a cat (red), a dog
    (blue) or both, as its annotation says."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}" for i in range(trainval + test)]
    for i, name in enumerate(names):
        objects = [("cat",), ("dog",), ("cat", "dog")][i % 3]
        pixels = rng.integers(0, 40, (32, 32, 3))
        pixels[:16, :, 0] += 200 * ("cat" in objects)
        pixels[16:, :, 2] += 200 * ("dog" in objects)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        found = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objects)
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>32</width><height>32</height><depth>3</depth>"
            f"</size>{found}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names[:trainval]) + "\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[trainval:]) + "\n")
    return root


def test_voc2007_trains_multi_label_and_scores_eleven_point_map(tmp_path, cifar):
    root = _write_voc2007(tmp_path / "voc")
    s = tf.Settings("VOC2007", str(root), (GOOD_LR,), (0.0,), 12, 8, 32, 0, 10, True)
    data = tf.transfer_data(s)
    labels = tf.dataset_labels(tf.open_split("VOC2007", str(root), "trainval", None))
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    assert labels.shape == (40, 20) and labels[:, [cat, dog]].tolist()[:3] == [[1, 0], [0, 1], [1, 1]]
    assert labels.sum() == labels[:, [cat, dog]].sum()
    assert data.multilabel and data.num_classes == 20 and len(data.val) == 8 and len(data.test) == 20

    _, config, backbone = cifar
    job = _job(tmp_path, "transfer_finetune", config, backbone, dataset="VOC2007", root=str(root), lrs=[GOOD_LR],
               wds=[0.0], steps=12, batch_size=8)
    metrics = run_protocol(job)
    assert 0.0 < metrics["transfer_finetune/score"] <= 1.0 and metrics["transfer_finetune/train_images"] == 40
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).data.tags["transfer.metric"] == "map11"


def test_labels_and_splits_of_every_data_set_in_its_own_format(tmp_path, monkeypatch):
    """On the offline miniatures of the 11 data sets (evals.transfer_sets, read by torchvision's own classes):
    the labels read without decoding an image are the data set's, and the splits are the linear protocol's."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.flowers102):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)
    roots = write_transfer_sets(tmp_path, classes=3, n_train=5, n_val=2, n_test=2)
    assert set(roots) == set(DATASETS)
    for name, root in roots.items():
        train_split, val_split, test_split = DATASETS[name].splits
        images = tf.open_split(name, str(root), train_split, lambda image: 0)
        labels = tf.dataset_labels(images)
        assert labels.tolist() == [images[i][1] for i in range(len(images))], name
        data = tf.transfer_data(tf.Settings(name, str(root), (0.1,), (0.0,), 1, 2, 16, 0, 1, True))
        train, val, test = split_indices(name, labels, 0)
        official = {split: len(tf.open_split(name, str(root), split, None)) for split in (val_split, test_split)
                    if split is not None and split != train_split}
        assert len(data.train) == len(train), name
        assert len(data.val) == (len(val) if val is not None else official[val_split]), name
        assert len(data.test) == (len(test) if test is not None else official[test_split]), name
        assert len(data.train_and_val) == len(data.train) + len(data.val) and data.multilabel == (name == "VOC2007")
        assert data.num_classes == (20 if name == "VOC2007" else 3), name


class _Fixed(nn.Module):
    """A 'model' whose logits are given: the image tensor carries its row index."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_the_metric_is_the_data_sets_own():
    settings = tf.Settings("CIFAR10", "x", (0.1,), (0.0,), 1, 2, 8, 0, 1, True)
    device = torch.device("cpu")
    images = torch.arange(4.0)[:, None, None, None].expand(4, 1, 1, 1)
    # Labels 0, 0, 0, 1, predictions 0, 0, 0, 0: top-1 0.75, mean per-class accuracy (1 + 0) / 2.
    model = _Fixed([[1, 0], [1, 0], [1, 0], [1, 0]])
    single = list(zip(images, [0, 0, 0, 1], strict=True))
    assert tf.score(model, single, "top1", settings, 0, device) == 0.75
    assert tf.score(model, single, "mean_per_class", settings, 0, device) == 0.5
    # Multi-label: class 0 ranked perfectly (AP 1), class 1's only positive ranked last of 4 (AP 1/4 at every
    # recall point), class 2 without positives left out.
    scores = _Fixed([[0.9, 0.8, 0], [0.8, 0.7, 0], [0.1, 0.6, 0], [0.2, 0.1, 0]])
    multi = list(zip(images, [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], strict=True))
    assert tf.score(scores, multi, "map11", settings, 0, device) == pytest.approx((1 + 0.25) / 2)
    assert {DATASETS[n].metric for n in ("Aircraft", "Pets", "Caltech101", "Flowers")} == {"mean_per_class"}
    assert DATASETS["VOC2007"].metric == "map11" and DATASETS["CIFAR10"].metric == "top1"


def test_simclrs_grid_and_weight_decay_divided_by_the_learning_rate(tmp_path, cifar):
    _, config, backbone = cifar
    job = _job(tmp_path, "transfer_finetune", config, backbone, dataset="DTD", root="x", lrs=["1e-3", 0.01, 0.01],
               wds=0.0)  # YAML 1.1 reads 1e-3 as a string; one number for a one-point list; repeats once
    s = tf.settings(job)
    assert s.lrs == (1e-3, 0.01) and s.wds == (0.0,) and s.steps == 20000 and s.batch_size == 256
    assert s.image_size == 32 and s.seed == 0 and s.wd_divided_by_lr  # the backbone's input size by default
    assert len(tf.DEFAULT_LRS) == 7 and tf.DEFAULT_LRS[0] == pytest.approx(1e-4) and tf.DEFAULT_LRS[-1] == 0.1
    assert tf.DEFAULT_WDS[0] == 0.0 and len(tf.DEFAULT_WDS) == 8
    assert tf.DEFAULT_WDS[1] == pytest.approx(1e-6) and tf.DEFAULT_WDS[-1] == pytest.approx(1e-3)
    assert s.sgd_weight_decay(0.01, 1e-4) == pytest.approx(1e-2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decayed, plain = tf._param_groups(net, 0.5)
    assert decayed["weight_decay"] == 0.5 and plain["weight_decay"] == 0.0
    assert {id(p) for p in plain["params"]} == {id(p) for p in net[1].parameters()}
    assert len(decayed["params"]) == 4  # conv and linear weights and biases


BAD_OPTIONS = [
    ({"dataset": "MNIST"}, "options.dataset must be one of"),
    ({"root": None}, "options.root must be the folder holding CIFAR10"),
    ({"lrs": [0.1, -1]}, "options.lrs must be a non-empty list of positive numbers"),
    ({"lrs": []}, "options.lrs must be"),
    ({"wds": ["none"]}, "options.wds must be a non-empty list of non-negative numbers"),
    ({"wds": [float("nan")]}, "options.wds must be"),
    ({"steps": 0}, "options.steps must be an int >= 1"),
    ({"batch_size": 1}, "options.batch_size must be an int >= 2"),
    ({"image_size": "big"}, "options.image_size must be an int >= 8"),
    ({"wd_divided_by_lr": "yes"}, "options.wd_divided_by_lr must be true or false"),
    ({"epochs": 3}, r"unknown options \['epochs'\]"),
    ({"batch_size": 512}, "options.batch_size=512 exceeds the 160 images CIFAR10 trains on"),
]


def test_a_bad_option_or_missing_data_fails_in_one_line_and_the_run_ends_failed(tmp_path, cifar):
    client = None
    for options, named in BAD_OPTIONS:  # one MLflow store for all: a store per case costs seconds
        job = _cifar_job(tmp_path, cifar, **{"lrs": [GOOD_LR]} | options)
        client = client or MlflowClient(job.tracking_uri)
        with pytest.raises(ValueError, match=named) as raised:
            run_protocol(job)
        assert "\n" not in str(raised.value) and str(raised.value).startswith("transfer_finetune"), options
        assert client.get_run(job.run_id).info.status == "FAILED", options
    job = _cifar_job(tmp_path, cifar, dataset="CIFAR100", root=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="transfer data set CIFAR100 not found under"):
        run_protocol(job)
    assert client.get_run(job.run_id).info.status == "FAILED"
