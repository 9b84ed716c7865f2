"""Evaluation protocols on small real-format data: kNN with its feature cache, linear probe, fine-tuning, splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from conftest import CIFAR10_FILES, TINY_MODEL, write_cifar10, write_image_folder, write_pickle
from mlflow.tracking import MlflowClient

from evals import run_protocol
from evals.job import EvalJob
from evals.splits import (
    SplitError,
    balanced_subset,
    resolve_split,
    verify_simclr_split,
    write_split,
)
from mec.checkpoint import MissingBackboneKeysError, export_backbone
from mec.config import build_config
from mec.data import DataIntegrityError
from mec.tracking import RunLogger
from mec.train import build_backbone_from_config


def _config(data: dict) -> dict:
    return build_config({"name": "tiny", "data": {"num_workers": 0, "augment": "digits", "image_size": 16} | data,
                         "model": TINY_MODEL}).model_dump(mode="json")


def _backbone(path: Path, config: dict, drop: str | None = None) -> Path:
    torch.manual_seed(0)
    net = build_backbone_from_config(build_config(config), zero_init_residual=False)
    state = {k: v for k, v in net.state_dict().items() if drop is None or not k.startswith(drop)}
    return export_backbone(state, path, {"arch": "resnet18"})


def _job(tmp_path: Path, protocol: str, config: dict, backbone: Path, **options) -> EvalJob:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / protocol
    run = RunLogger.open(experiment="evals", run_name=protocol, journal=out / "metrics.jsonl", tracking_uri=uri)
    return EvalJob(protocol=protocol, backbone=str(backbone), config=config, output_dir=str(out),
                   feature_cache=str(tmp_path / "features"), options=options, run_id=run.run_id,
                   tracking_uri=uri, experiment="evals")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), per_class=12, size=16)


def test_knn_extracts_features_once_per_backbone_and_split(tmp_path, folder, caplog):
    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    first = run_protocol(_job(tmp_path, "knn", config, backbone, k=[3]))
    assert first["knn/features_reused"] == 0.0 and 0.0 <= first["knn/top1_k3"] <= 1.0
    caplog.set_level("INFO")
    second = run_protocol(_job(tmp_path, "knn", config, backbone, k=[3, 5]))
    assert second["knn/features_reused"] == 1.0
    assert second["knn/top1_k3"] == first["knn/top1_k3"]
    assert "reusing cached train features" in caplog.text
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2
    # A different backbone file is never served another's features.
    other = _backbone(tmp_path / "other.pt", config, drop=None)
    torch.save(torch.load(other, weights_only=True) | {"metadata": {"arch": "resnet18", "v": 2}}, other)
    assert run_protocol(_job(tmp_path, "knn", config, other, k=[3]))["knn/features_reused"] == 0.0


@pytest.mark.parametrize("protocol, options, message", [
    ("knn", {"kk": 5}, r"^knn: unknown options \['kk'\]; allowed: \['k', 'temperature'\]$"),
    ("knn", {"temperature": "abc"}, r"^knn: options.temperature must be a number, got 'abc'$"),
    ("tsne", {"perplexity": "high"}, r"^tsne: options.perplexity must be a number, got 'high'$"),
    ("tsne", {"max_points": 2.5}, r"^tsne: options.max_points must be an int, got 2.5$"),
    ("transfer", {"dataset": "DTD", "root": "/x", "c": [1.0]}, r"^transfer: unknown options \['c'\]"),
    ("transfer", {"dataset": "DTD", "root": "/x", "C": "1e-3"}, r"^transfer: options.C must be a list of positive"),
    ("linear_probe", {"epochz": 3}, r"^linear_probe: unknown options \['epochz'\]; allowed: \['base_lr', "),
])
def test_options_a_protocol_does_not_read_or_cannot_use_are_refused_by_name(tmp_path, folder, protocol, options,
                                                                             message):
    config = _config({"name": "imagefolder", "root": str(folder)})
    with pytest.raises(ValueError, match=message):
        run_protocol(_job(tmp_path, protocol, config, tmp_path / "never-read.pt", **options))


def test_every_protocol_names_its_options_in_one_place():
    from evals import PROTOCOL_OPTIONS, PROTOCOLS
    from evals.supervised import DATA_OPTIONS, Recipe

    assert set(PROTOCOL_OPTIONS) == set(PROTOCOLS)
    recipe_fields = set(Recipe.__dataclass_fields__) - {"finetune"}
    for protocol in ("linear_probe", "finetune"):
        assert set(PROTOCOL_OPTIONS[protocol]) == recipe_fields | set(DATA_OPTIONS)


def test_linear_probe_logs_each_epoch_and_resumes_instead_of_retraining(tmp_path, folder, caplog):
    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    job = _job(tmp_path, "linear_probe", config, backbone, epochs=2, batch_size=8)
    metrics = run_protocol(job)
    assert set(metrics) == {"linear/top1_best", "linear/top1_last", "linear/top5_last", "linear/train_images"}
    assert metrics["linear/train_images"] == 24
    client = MlflowClient(job.tracking_uri)
    assert len(client.get_metric_history(job.run_id, "linear/top1")) == 2
    assert client.get_run(job.run_id).data.tags["linear.backbone_keys_loaded"].split("/")[0] == \
        client.get_run(job.run_id).data.tags["linear.backbone_keys_loaded"].split("/")[1]
    caplog.set_level("INFO")
    again = run_protocol(job)
    assert "resuming from" in caplog.text and again["linear/top1_best"] == metrics["linear/top1_best"]
    assert len(client.get_metric_history(job.run_id, "linear/top1")) == 2  # nothing logged twice


def test_linear_probe_reads_real_cifar_batches_from_elsewhere_with_checksums_off(tmp_path):
    write_cifar10(tmp_path / "cifar", images_per_file=8)  # real format, not torchvision's official bytes
    data = {"name": "cifar10", "root": str(tmp_path / "cifar"), "augment": "cifar", "image_size": 32}
    config = _config(data | {"verify_checksums": False})
    backbone = _backbone(tmp_path / "b.pt", config)
    metrics = run_protocol(_job(tmp_path, "linear_probe", config, backbone, epochs=1, batch_size=8))
    assert metrics["linear/train_images"] == 40 and 0.0 <= metrics["linear/top5_last"] <= 1.0
    (tmp_path / "checked").mkdir()
    checked = _job(tmp_path / "checked", "linear_probe", _config(data), backbone, epochs=1, batch_size=8)
    with pytest.raises(DataIntegrityError, match=r"data_batch_1 \(and 6 more\) fails torchvision's MD5"):
        run_protocol(checked)
    assert MlflowClient(checked.tracking_uri).get_run(checked.run_id).info.status == "FAILED"


@pytest.mark.parametrize("protocol", ["linear_probe", "finetune"])
def test_option_dataset_trains_and_scores_on_another_data_set_than_the_pretraining_one(tmp_path, folder, protocol):
    """Table 9's ImageNet column: a backbone pretrained on Places365 (class folders) probed on an ImageFolder tree,
    read at the run's image size with its augment recipe; the data read is tagged on the run."""
    config = _config({"name": "places365", "root": str(folder)})  # 12 images per class
    backbone = _backbone(tmp_path / "b.pt", config)
    imagenet = write_image_folder(tmp_path / "imagenet", per_class=5, size=16)
    extra = {"split": str(write_split(tmp_path / "s.txt", ["disc/000.png", "bar/001.png", "bar/002.png"]))} \
        if protocol == "finetune" else {}
    job = _job(tmp_path, protocol, config, backbone, dataset="imagenet", root=str(imagenet), epochs=1, batch_size=4,
               **extra)
    metrics = run_protocol(job)
    prefix = "linear" if protocol == "linear_probe" else "finetune"
    assert metrics[f"{prefix}/train_images"] == (3 if extra else 10)  # the ImageNet tree's, not Places365's 24
    assert 0.0 <= metrics[f"{prefix}/top1_last"] <= 1.0
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).data.tags[f"{prefix}.data"] == f"imagefolder {imagenet}"
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match=r"options.dataset: 'imagenet1k' is not one of \['imagenet', 'places365'"):
        run_protocol(_job(tmp_path / "bad", protocol, config, backbone, dataset="imagenet1k", root=str(imagenet),
                          epochs=1, **extra))
    with pytest.raises(ValueError, match="options.dataset 'imagenet' needs options.root"):
        run_protocol(_job(tmp_path / "bad", protocol, config, backbone, dataset="imagenet", epochs=1, **extra))


def test_a_backbone_file_with_missing_keys_fails_loudly(tmp_path, folder):
    config = _config({"name": "imagefolder", "root": str(folder)})
    broken = _backbone(tmp_path / "broken.pt", config, drop="layer4.")
    with pytest.raises(MissingBackboneKeysError, match=r"broken\.pt.*missing .*layer4\."):
        run_protocol(_job(tmp_path, "linear_probe", config, broken, epochs=1, batch_size=8))


def test_finetune_trains_on_the_split_and_names_a_missing_image(tmp_path, folder):
    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    split = write_split(tmp_path / "split.txt", ["disc/000.png", "disc/001.png", "bar/000.png", "bar/001.png"])
    metrics = run_protocol(_job(tmp_path, "finetune", config, backbone, split=str(split), epochs=1, batch_size=4))
    assert metrics["finetune/train_images"] == 4
    bad = write_split(tmp_path / "bad.txt", ["disc/000.png", "disc/999.png"])
    with pytest.raises(SplitError, match=r"bad\.txt:2: image 'disc/999\.png' is not in"):
        run_protocol(_job(tmp_path, "finetune", config, backbone, split=str(bad), epochs=1, batch_size=4))
    with pytest.raises(ValueError, match="options.split"):
        run_protocol(_job(tmp_path, "finetune", config, backbone, epochs=1))


@pytest.mark.parametrize("protocol", ["linear_probe", "finetune"])
def test_both_protocols_refuse_a_simclr_list_that_fails_its_checksum(tmp_path, folder, protocol):
    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    # Every image it names exists: only the checksum can reject it.
    fake = write_split(tmp_path / "1percent.txt", ["disc/000.png", "bar/000.png"])
    job = _job(tmp_path, protocol, config, backbone, split=str(fake), epochs=1, batch_size=2)
    with pytest.raises(SplitError, match=r"1percent\.txt: SHA-256 .* does not match SimCLR's published list"):
        run_protocol(job)
    assert MlflowClient(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"
    renamed = write_split(tmp_path / "mine.txt", ["disc/000.png", "bar/000.png"])  # same lines, our own list
    (tmp_path / "ok").mkdir()
    metrics = run_protocol(_job(tmp_path / "ok", protocol, config, backbone, split=str(renamed), epochs=1,
                                batch_size=2))
    assert metrics[f"{'linear' if protocol == 'linear_probe' else 'finetune'}/train_images"] == 2


def test_simclr_style_lists_resolve_by_file_name_and_are_checked(tmp_path):
    samples = [(str(tmp_path / "train" / "n01" / "n01_1.JPEG"), 0), (str(tmp_path / "train" / "n02" / "n02_7.JPEG"), 1)]
    listed = write_split(tmp_path / "list.txt", ["n02_7.JPEG", "n01_1.JPEG"])
    assert resolve_split(listed, samples, tmp_path / "train") == [1, 0]
    missing = write_split(tmp_path / "list2.txt", ["n01_1.JPEG", "n03_5.JPEG"])
    with pytest.raises(SplitError,
                       match=r"list2\.txt:2: image 'n03_5\.JPEG' is missing \(expected .*n03/n03_5\.JPEG\)"):
        resolve_split(missing, samples, tmp_path / "train")
    fake = write_split(tmp_path / "1percent.txt", ["n01_1.JPEG"])
    with pytest.raises(SplitError, match="does not match SimCLR's published list"):
        verify_simclr_split(fake)


def _png_tree(root: Path, names: list[str]) -> list[tuple[str, int]]:
    """An ImageFolder tree of tiny PNGs at ``root``/class/file; its samples as torchvision lists them."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(root / name)
    return ImageFolder(str(root)).samples


def test_split_entries_that_name_no_single_image_are_one_line_with_the_file_and_line(tmp_path):
    root = tmp_path / "train"
    samples = _png_tree(root, ["cat/img0.png", "dog/img0.png", "dog/img1.png"])
    assert resolve_split(write_split(tmp_path / "ok.txt", ["img1.png", "cat/img0.png"]), samples, root) == [2, 0]
    bad = {"ambiguous": (["img1.png", "img0.png"], r"ambiguous\.txt:2: image 'img0\.png' is ambiguous: "
                                                   r"cat/img0\.png, dog/img0\.png share the name; give class/file"),
           "windows": ([r"cat\img0.png"], r"windows\.txt:1: 'cat\\\\img0\.png' has Windows path separators .* "
                                           r"not supported: write class/file with '/'"),
           "index": (["#2", "#abc"], r"index\.txt:2: expected an image index \(an integer after '#'\), got '#abc'")}
    for name, (lines, message) in bad.items():
        with pytest.raises(SplitError, match=f"^{re.escape(str(tmp_path))}/{message}$"):
            resolve_split(write_split(tmp_path / f"{name}.txt", lines), samples, root, len(samples))


def test_a_simclr_name_must_sit_in_the_folder_of_its_class_prefix(tmp_path):
    root = tmp_path / "train"
    samples = _png_tree(root, ["n01/n01_1.png", "n01/n02_5.png", "n02/n02_7.png", "misc/a_1.png"])
    listed = write_split(tmp_path / "list.txt", ["n02_7.png", "n01_1.png", "a_1.png"])
    assert resolve_split(listed, samples, root) == [3, 1, 0]  # 'a' names no class folder: found by name alone
    moved = write_split(tmp_path / "moved.txt", ["n02_5.png"])
    with pytest.raises(SplitError, match=r"moved\.txt:1: image 'n02_5\.png' is named for class 'n02' but is in "
                                         r"n01/n02_5\.png"):
        resolve_split(moved, samples, root)


def test_cifar_splits_take_indices_and_say_so_for_a_file_name(tmp_path):
    from evals.supervised import classifier_datasets

    write_cifar10(tmp_path / "cifar", images_per_file=8)
    config = _config({"name": "cifar10", "root": str(tmp_path / "cifar"), "augment": "cifar", "image_size": 32,
                      "verify_checksums": False})
    backbone = tmp_path / "unused.pt"
    split = write_split(tmp_path / "s.txt", ["#0", "#39"])
    train, _, _ = classifier_datasets(_job(tmp_path, "finetune", config, backbone, split=str(split)))
    assert len(train) == 2
    for entry in ("cat/img0.jpg", "img0.jpg"):
        bad = write_split(tmp_path / "bad.txt", ["#0", entry])
        with pytest.raises(SplitError, match=rf"bad\.txt:2: got '{entry}', but this data set has no image files: "
                                             r"its split entries are image indices '#<integer>' \(file names"):
            classifier_datasets(_job(tmp_path, "finetune", config, backbone, split=str(bad)))


SIMCLR_LISTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "simclr-imagenet-subsets"


@pytest.mark.skipif(not (SIMCLR_LISTS / "1percent.txt").is_file(), reason="SimCLR's published lists are not here")
def test_the_published_simclr_list_resolves_and_a_crlf_copy_of_it_passes_its_checksum(tmp_path):
    published = SIMCLR_LISTS / "1percent.txt"
    names = published.read_text().split()
    root = tmp_path / "train"
    samples = [(str(root / name.split("_")[0] / name), 0) for name in sorted(names)]  # resolving reads no pixels
    assert sorted(resolve_split(published, samples, root)) == list(range(len(names))) and len(names) == 12811
    crlf = tmp_path / "crlf" / "1percent.txt"
    crlf.parent.mkdir()
    crlf.write_bytes(published.read_bytes().replace(b"\n", b"\r\n"))
    assert resolve_split(crlf, samples, root) == resolve_split(published, samples, root)
    crlf.write_bytes(crlf.read_bytes()[:-7] + b"\r\n")  # a list cut short still fails, line endings aside
    with pytest.raises(SplitError, match="does not match SimCLR's published list"):
        verify_simclr_split(crlf)


def test_balanced_subsets_are_deterministic_and_cover_every_class():
    targets = [c for c in range(10) for _ in range(50)]
    subset = balanced_subset(targets, 0.1, seed=3)
    assert subset == balanced_subset(targets, 0.1, seed=3) != balanced_subset(targets, 0.1, seed=4)
    assert sorted({targets[i] for i in subset}) == list(range(10)) and len(subset) == 50
    assert len(balanced_subset(targets, 0.001)) == 10  # at least one image per class


def test_tsne_embeds_cached_features_and_draws_a_png(tmp_path, folder):
    from PIL import Image

    from evals.tsne import plot_panels

    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    run_protocol(_job(tmp_path, "knn", config, backbone, k=[3]))
    job = _job(tmp_path, "tsne", config, backbone, max_points=20)
    metrics = run_protocol(job)
    assert {k: metrics[k] for k in ("tsne/points", "tsne/features_reused")} == {
        "tsne/points": 20.0, "tsne/features_reused": 1.0}  # extracted once, by kNN
    assert 0.0 <= metrics["tsne/knn_top1"] <= 1.0 and metrics["tsne/uniformity"] <= 0.0
    embedding = np.load(Path(job.output_dir) / "embedding.npz")
    assert float(embedding["knn_top1"]) == metrics["tsne/knn_top1"]  # what the study's panels print
    assert embedding["points"].shape == (20, 2) and sorted(set(embedding["labels"])) == [0, 1]
    artifacts = [a.path for a in MlflowClient(job.tracking_uri).list_artifacts(job.run_id, "tsne")]
    assert "tsne/tsne.png" in artifacts
    two = plot_panels([("eps 0.12", embedding["points"], embedding["labels"]),
                       ("eps 0.01", embedding["points"], embedding["labels"])], tmp_path / "fig.png")
    with Image.open(two) as image:
        assert image.size[0] > image.size[1] > 100


def test_tsne_structure_scores_on_known_cases():
    from evals.tsne import panel_title, structure_scores

    # two classes at opposite poles: every neighbour is of the same class; of the 6 pairs, 2 coincide
    # (exp(0) = 1) and 4 are opposite (||x - y||^2 = 4, exp(-8))
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    scores = structure_scores(x, np.array([0, 0, 1, 1]), k=1)
    assert scores["knn_top1"] == 1.0
    assert scores["uniformity"] == pytest.approx(np.log((2 + 4 * np.exp(-8)) / 6), rel=1e-5)
    collapsed = structure_scores(np.ones((6, 3)), np.array([0, 1, 0, 1, 0, 1]))
    assert collapsed["uniformity"] == pytest.approx(0.0, abs=1e-6)  # one point: no spread at all
    # labels swapped across the poles: every neighbour is of the other class
    assert structure_scores(x, np.array([0, 1, 0, 1]), k=1)["knn_top1"] == 0.0
    assert panel_title("eps 0.12", scores).endswith("kNN top-1 1.000, uniformity -1.10")


def _write_bright_dark_cifar10(root: Path, images_per_file: int = 20) -> None:
    """Real-format CIFAR-10 batches whose class shows in the pixels: dark images are class 0, bright ones class
    1, three dark to one bright in every file, so predicting the majority class scores 0.75."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        labels = [int(i % 4 == 3) for i in range(images_per_file)]
        data = np.stack([rng.integers(190, 256, 3072) if label else rng.integers(0, 60, 3072) for label in labels])
        write_pickle(folder / name, {"batch_label": name, "data": data.astype(np.uint8), "labels": labels})
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})


def test_transfer_selects_c_on_a_held_out_split_and_scores_the_test_split(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    _write_bright_dark_cifar10(tmp_path / "cifar")
    config = _config({"name": "imagefolder", "root": str(folder)})
    backbone = _backbone(tmp_path / "b.pt", config)
    # C = 1e-6 or 1e-7 leaves only the (unpenalised) intercept: every image gets the majority class, 0.75 on
    # the held-out split. C = 1 separates the classes. The right C is in the middle of the grid.
    job = _job(tmp_path, "transfer", config, backbone, dataset="CIFAR10", root=str(tmp_path / "cifar"),
               image_size=32, C=[1e-6, 1.0, 1e-7])
    metrics = run_protocol(job)
    history = MlflowClient(job.tracking_uri).get_metric_history(job.run_id, "transfer/val_score_by_C")
    by_c = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert by_c[0] == by_c[2] == pytest.approx(0.75) and by_c[1] >= 0.95
    assert metrics["transfer/best_C"] == 1.0 and metrics["transfer/val_score"] == by_c[1]
    assert metrics["transfer/score"] >= 0.95  # on the 20 test images: a majority vote or shuffled labels miss it
    assert len(list((tmp_path / "features").glob("transfer-CIFAR10-*.pt"))) == 2  # train and test, cached
    with pytest.raises(FileNotFoundError, match="transfer data set CIFAR100 not found under"):
        run_protocol(_job(tmp_path, "transfer", config, backbone, dataset="CIFAR100", root=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="options.dataset must be one of"):
        run_protocol(_job(tmp_path, "transfer", config, backbone, dataset="MNIST", root="x"))


def test_voc_eleven_point_ap():
    from evals.transfer import _ap11

    assert _ap11(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert _ap11(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1])) == pytest.approx(np.mean([1 / 3] * 11))
