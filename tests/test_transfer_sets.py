"""The offline transfer data sets: every miniature read by the real torchvision class of its name, byte-identical
for the same parameters, and one transfer evaluation end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
from conftest import TINY_MODEL
from mlflow.tracking import MlflowClient
from PIL import Image
from torchvision import transforms as T

from evals import run_protocol, transfer_sets
from evals.job import EvalJob
from evals.transfer import DATASETS, VOC_CLASSES
from evals.transfer_sets import (
    CLASS_COUNTS,
    TRANSFER_SET_NAMES,
    main,
    transfer_set_params,
    write_transfer_set,
    write_transfer_sets,
)
from mec.checkpoint import export_backbone
from mec.config import build_config
from mec.digits import load_source_digits, split_sources
from mec.tracking import RunLogger
from mec.train import build_backbone_from_config
from mec.trees import MANIFEST_NAME, params_hash

# 12 classes: more than the 10 digits, so the colour variants are exercised too.
TINY = {"classes": 12, "n_train": 2, "n_val": 1, "n_test": 1}


@pytest.fixture
def accept_generated_md5(monkeypatch):
    """torchvision's CIFAR and Flowers-102 readers check their files against the official MD5s even without
    download; generated files cannot match them (evals.transfer reads them with torchvision's classes as they are)."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.flowers102):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> dict[str, Path]:
    return write_transfer_sets(tmp_path_factory.mktemp("transfer"), **TINY)


def _expected_images(name: str, split: str, classes: int) -> int:
    per_class = {"train": TINY["n_train"], "trainval": TINY["n_train"], "val": TINY["n_val"],
                 "test": TINY["n_test"], "all": TINY["n_train"] + TINY["n_test"]}[split]
    return per_class * classes


def test_the_names_are_those_of_the_transfer_protocol():
    assert TRANSFER_SET_NAMES == tuple(DATASETS) and len(TRANSFER_SET_NAMES) == 11
    assert set(CLASS_COUNTS) == set(DATASETS) | {"ImageNet"}  # and the probe's ImageNet stand-in
    assert transfer_sets.PROBE_SET_NAMES == ("ImageNet",)


@pytest.mark.parametrize("name", TRANSFER_SET_NAMES)
def test_every_split_the_protocol_reads_loads_through_torchvision(tiny_sets, name, accept_generated_md5):
    root = tiny_sets[name]
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    classes = manifest["params"]["classes"]
    assert classes == min(TINY["classes"], CLASS_COUNTS[name])
    labels_by_split = {}
    for split in dict.fromkeys(s for s in DATASETS[name].splits if s is not None):
        dataset = DATASETS[name].build(str(root), split, T.ToTensor())
        assert len(dataset) == _expected_images(name, split, classes), split
        items = [dataset[i] for i in range(len(dataset))]
        assert all(image.shape == (3, 32, 32) for image, _ in items)
        labels = [target for _, target in items]
        if name == "VOC2007":  # multi-hot over the 20 VOC classes; the first `classes` of them occur
            hot = np.asarray(labels)
            assert hot.shape == (len(dataset), len(VOC_CLASSES)) and set(np.unique(hot)) <= {0, 1}
            assert hot.sum(1).min() >= 1 and not hot[:, classes:].any()
            labels_by_split[split] = hot
        else:  # one label per image, every class with its count
            assert all(isinstance(label, int) for label in labels)
            assert Counter(labels) == {c: len(dataset) // classes for c in range(classes)}
            labels_by_split[split] = labels
    if name == "VOC2007":  # what the protocol collates: a [N, 20] label matrix
        dataset = DATASETS[name].build(str(root), "test", T.ToTensor())
        _, targets = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
        assert torch.stack(targets, dim=1).numpy().tolist() == labels_by_split["test"].tolist()


def test_training_images_show_training_digits_and_test_images_held_out_ones(tmp_path, monkeypatch):
    images, labels = load_source_digits()
    pools = split_sources(labels, 0.2, 0)
    drawn: list[tuple[str, np.ndarray]] = []
    current = {}
    render, paste, draw = transfer_sets._Digits.render, transfer_sets.paste_digit, transfer_sets.render_digit_image

    def rendering(self, split, label, index):
        current["split"] = split
        return render(self, split, label, index)

    def pasting(canvas, digit, *args, **kwargs):
        drawn.append((current["split"], digit))
        return paste(canvas, digit, *args, **kwargs)

    def drawing(digit, *args, **kwargs):
        drawn.append((current["split"], digit))
        return draw(digit, *args, **kwargs)

    monkeypatch.setattr(transfer_sets._Digits, "render", rendering)
    monkeypatch.setattr(transfer_sets, "paste_digit", pasting)
    monkeypatch.setattr(transfer_sets, "render_digit_image", drawing)
    write_transfer_set("DTD", tmp_path / "dtd", classes=12, n_train=2, n_val=2, n_test=2)  # colour variants
    write_transfer_set("CIFAR10", tmp_path / "cifar", classes=3, n_train=2, n_test=2)  # render_digit_image
    write_transfer_set("SUN397", tmp_path / "sun", classes=3, n_train=2, n_test=2)  # no official split
    write_transfer_set("ImageNet", tmp_path / "imagenet", classes=3, n_train=2, n_test=2)  # val/: test images
    pool_of = {"train": "train", "val": "train", "test": "val", "all": "val"}
    assert {split for split, _ in drawn} == set(pool_of)
    for split, digit in drawn:
        sources = np.flatnonzero((images == digit).all(axis=(1, 2)))
        assert np.isin(sources, pools[pool_of[split]]).any(), split


def test_the_imagenet_stand_in_is_an_image_folder_tree_drawn_unlike_the_pretraining_digits(tmp_path):
    """What a probe with ``dataset: imagenet`` reads for a digits run: ImageNet's train/<wnid>/*.JPEG and
    val/<wnid>/*.JPEG, at the run's image size, in other colours and with texture than the run's digits."""
    from mec.config import load_config

    data = load_config("digits", []).data
    params = transfer_sets.generated_set_params("ImageNet", data)
    assert params["size"] == data.image_size and params["seed"] == data.digits.seed
    assert params["palette_size"] != data.digits.options["palette_size"] and params["texture_strength"] > 0
    assert transfer_sets.generated_set_params("DTD", data).get("palette_size") == data.digits.options["palette_size"]
    root = transfer_sets.write_imagenet(tmp_path / "imagenet", **params | {"n_train": 2, "n_test": 1})
    for split, per_class in (("train", 2), ("val", 1)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == [f"n{c:08d}" for c in range(10)]
        files = sorted((root / split).glob("*/*.JPEG"))
        assert len(files) == 10 * per_class and Image.open(files[0]).size == (data.image_size, data.image_size)
    assert (root / "train" / "n00000007" / "n00000007_1.JPEG").is_file()
    assert (root / "LOC_synset_mapping.txt").read_text().splitlines()[7] == "n00000007 seven"
    assert json.loads((root / MANIFEST_NAME).read_text())["counts"] == {"train": 20, "val": 10}


def test_the_same_parameters_write_the_same_bytes_and_other_parameters_replace_the_tree(tmp_path):
    def contents(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    params = {"classes": 3, "n_train": 1, "n_val": 1, "n_test": 1}
    for name in ("CIFAR100", "Flowers", "Cars", "VOC2007"):  # pickles, .mat files (dated headers), XML, JPEG
        first = contents(write_transfer_set(name, tmp_path / "a" / name, **params))
        second = contents(write_transfer_set(name, tmp_path / "b" / name, **params))
        assert first == second, name
        manifest = json.loads(first[MANIFEST_NAME])
        assert manifest["params_hash"] == params_hash(transfer_set_params(name, **params))

    root = tmp_path / "a" / "Flowers"
    stamp = (root / MANIFEST_NAME).stat().st_mtime_ns
    write_transfer_set("Flowers", root, **params)  # current: left alone
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == stamp
    write_transfer_set("Flowers", root, **params, seed=1)  # other parameters: rewritten
    image = "flowers-102/jpg/image_00001.jpg"
    assert contents(root)[image] != contents(tmp_path / "b" / "Flowers")[image]
    assert json.loads((root / MANIFEST_NAME).read_text())["params"]["seed"] == 1


def test_bad_parameters_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown transfer data set 'MNIST'; expected one of CIFAR10, CIFAR100"):
        write_transfer_set("MNIST", tmp_path / "x")
    with pytest.raises(ValueError, match="CIFAR10 images are 32x32"):
        write_transfer_sets(tmp_path / "y", ["Food101", "CIFAR10"], size=64)
    with pytest.raises(ValueError, match=r"unknown digit render parameters \['colour'\]"):
        write_transfer_set("DTD", tmp_path / "z", colour=1)
    with pytest.raises(ValueError, match="n_test must be an integer >= 1"):
        write_transfer_set("DTD", tmp_path / "z", n_test=0)
    assert not any(tmp_path.iterdir())


def test_the_command_line_writes_one_set_or_all(tmp_path, capsys):
    assert main(["--name", "Pets", "--output", str(tmp_path / "pets"), "--classes", "3", "--n-train", "1",
                 "--n-test", "1"]) == 0
    assert "Pets (3 classes)" in capsys.readouterr().out
    assert (tmp_path / "pets" / "oxford-iiit-pet" / "annotations" / "trainval.txt").read_text().count("\n") == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a generated tree")
    assert main(["--name", "DTD", "--output", str(tmp_path / "mine")]) == 2  # a folder it did not write: refused
    assert "error:" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    assert main(["--name", "CIFAR10", "--output", str(tmp_path / "c"), "--size", "64"]) == 2
    assert "size must be 32" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The transfer protocol end to end on a generated set


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for the module's runs: creating a sqlite store takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _job(tmp_path: Path, uri: str, **options) -> EvalJob:
    config = build_config({"name": "tiny", "data": {"name": "imagefolder", "root": str(tmp_path), "num_workers": 0,
                                                    "augment": "digits", "image_size": 16},
                           "model": TINY_MODEL}).model_dump(mode="json")
    torch.manual_seed(0)
    net = build_backbone_from_config(build_config(config), zero_init_residual=False)
    backbone = export_backbone(net.state_dict(), tmp_path / "backbone.pt", {"arch": "resnet18"})
    run = RunLogger.open(experiment="evals", run_name="transfer", journal=tmp_path / "transfer" / "metrics.jsonl",
                         tracking_uri=uri)
    return EvalJob(protocol="transfer", backbone=str(backbone), config=config, output_dir=str(tmp_path / "transfer"),
                   feature_cache=str(tmp_path / "features"), options=options, run_id=run.run_id, tracking_uri=uri,
                   experiment="evals")


@pytest.mark.parametrize("name", ["DTD", "VOC2007"])
def test_transfer_evaluates_a_generated_set(tmp_path, tracking_uri, name):
    root = write_transfer_set(name, tmp_path / name, classes=4, n_train=4, n_val=2, n_test=2)
    job = _job(tmp_path, tracking_uri, dataset=name, root=str(root), image_size=32, C=[0.1, 1.0])
    metrics = run_protocol(job)
    assert 0.0 <= metrics["transfer/score"] <= 1.0 and metrics["transfer/best_C"] in (0.1, 1.0)
    run = MlflowClient(job.tracking_uri).get_run(job.run_id)
    assert run.data.tags["transfer.metric"] == DATASETS[name].metric
    assert run.data.metrics["transfer/score"] == pytest.approx(metrics["transfer/score"])


def test_the_transfer_protocol_reads_generated_sets_without_the_real_md5(tiny_sets):
    """No generated file can match the real CIFAR / Flowers-102 MD5s: `evals.transfer.open_split` reads a tree its
    manifest marks as a miniature of that data set without them (and a real tree with them)."""
    from evals.transfer import is_generated_set, open_split

    for name in ("CIFAR10", "CIFAR100", "Flowers"):
        assert is_generated_set(name, tiny_sets[name]) and not is_generated_set("DTD", tiny_sets[name])
        classes = min(TINY["classes"], CLASS_COUNTS[name])
        assert len(open_split(name, str(tiny_sets[name]), "test", None)) == _expected_images(name, "test", classes)
