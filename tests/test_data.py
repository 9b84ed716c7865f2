"""Data sets read from real on-disk formats written here, and the rendered offline digits."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from conftest import write_cifar10, write_image_folder, write_pickle
from PIL import Image
from sklearn.datasets import load_digits

from mec.augment import build_two_view, eval_transform
from mec.config import ConfigError, DataConfig, data_identity
from mec.data import (
    DataIntegrityError,
    SeededItems,
    SeededSampler,
    build_eval_dataset,
    build_loader,
    build_pretrain_dataset,
)
from mec.digits import DigitStyle, paste_digit, render_digit_image, write_digit_folders


def _write_cifar100(root: Path, images_per_file: int = 3) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        data = rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8)
        fine = [int(label) for label in rng.integers(0, 100, images_per_file)]
        write_pickle(folder / name, {"data": data, "fine_labels": fine, "coarse_labels": [0] * images_per_file})
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})


@pytest.fixture
def accept_test_md5(monkeypatch):
    """torchvision checks each CIFAR file against the official MD5; accept the files written by the test."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_python_batches_load_as_two_views(tmp_path, accept_test_md5):
    written = write_cifar10(tmp_path)
    train = build_pretrain_dataset("cifar10", tmp_path, build_two_view("cifar", 32))
    assert len(train) == 15
    (view1, view2), label = train[0]
    assert view1.shape == view2.shape == (3, 32, 32) and 0 <= label < 10
    # Pixel layout per the CIFAR format: 1024 red, then green, then blue values, row-major.
    val = build_eval_dataset("cifar10", tmp_path, np.asarray, "val")
    image, _ = val[1]
    assert np.array_equal(image, written["test_batch"][1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_uses_fine_labels(tmp_path, accept_test_md5):
    _write_cifar100(tmp_path)
    dataset = build_eval_dataset("cifar100", tmp_path, eval_transform("cifar", 32), "train")
    image, label = dataset[2]
    assert image.shape == (3, 32, 32) and 0 <= label < 100
    assert len(dataset.classes) == 100


def test_missing_cifar_folder_names_it_and_the_download_switch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data\.download=true"):
        build_pretrain_dataset("cifar10", tmp_path, None)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        build_eval_dataset("cifar100", tmp_path, None, "val")


def test_cifar_files_with_wrong_md5_are_named_in_one_line_with_the_switch(tmp_path):
    write_cifar10(tmp_path)  # real format, but not torchvision's official bytes
    with pytest.raises(DataIntegrityError) as caught:
        build_pretrain_dataset("cifar10", tmp_path, None)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, ConfigError)  # the CLI prints it as one line
    assert f"{tmp_path / 'cifar-10-batches-py' / 'data_batch_1'} (and 6 more) fails torchvision's MD5" in message
    assert "data.verify_checksums=false" in message


def test_cifar_batches_from_elsewhere_load_with_checksums_off(tmp_path):
    written = write_cifar10(tmp_path)
    train = build_pretrain_dataset("cifar10", tmp_path, build_two_view("cifar", 32), verify_checksums=False)
    assert len(train) == 15 and train.classes == [f"class{i}" for i in range(10)]
    val = build_eval_dataset("cifar10", tmp_path, np.asarray, "val", verify_checksums=False)
    np.testing.assert_array_equal(val[0][0][0, 0], written["test_batch"][0, [0, 1024, 2048]])
    _write_cifar100(tmp_path)
    assert len(build_eval_dataset("cifar100", tmp_path, None, "train", verify_checksums=False)) == 3


def test_checksums_off_still_needs_every_file_in_the_real_format(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataIntegrityError, match=r"data_batch_3 is not a batch of the python version"):
        build_eval_dataset("cifar10", tmp_path, None, "train", verify_checksums=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: data_batch_3"):
        build_eval_dataset("cifar10", tmp_path, None, "train", verify_checksums=False)


def _cifar10_batch(images: int = 20, labels: int | None = None) -> dict:
    rng = np.random.default_rng(3)
    return {"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
            "labels": [int(label) for label in rng.integers(0, 10, images if labels is None else labels)]}


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({**_cifar10_batch(), "data": _cifar10_batch()["data"].astype(np.float32)},
         "'data' is float32 [20, 3072], expected uint8 [N, 3072]"),
        (_cifar10_batch(labels=5), "20 images but 5 labels"),
        ({**_cifar10_batch(), "labels": [3] * 19 + [17]}, "label 17 outside the 10 classes of batches.meta"),
        ({**_cifar10_batch(), "labels": [-1] * 20}, "label -1 outside the 10 classes of batches.meta"),
        ({**_cifar10_batch(), "data": _cifar10_batch()["data"].reshape(20, 3, 32, 32)},
         "'data' is uint8 [20, 3, 32, 32], expected uint8 [N, 3072]"),
        ({**_cifar10_batch(), "data": _cifar10_batch()["data"][:, :3000]},
         "'data' is uint8 [20, 3000], expected uint8 [N, 3072]"),
        ({"data": _cifar10_batch()["data"], "batch_label": "x"}, "no 'labels' key (it has 'batch_label', 'data')"),
        ({"labels": [1, 2]}, "no 'data' key (it has 'labels')"),
        ({**_cifar10_batch(), "data": [[0] * 3072] * 20}, "'data' is a list, expected a uint8 array [N, 3072]"),
        ({**_cifar10_batch(), "labels": [0.5] * 20},
         "'labels' is not a list of integer class indices (list of float64)"),
    ],
    ids=["float-data", "few-labels", "label-17", "negative-label", "4d-data", "short-rows", "no-labels",
         "no-data", "list-data", "float-labels"],
)
def test_cifar_batch_from_elsewhere_with_bad_content_is_named_when_built(tmp_path, batch, expected):
    write_cifar10(tmp_path)
    batch_file = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(batch_file, batch)
    with pytest.raises(DataIntegrityError) as caught:
        build_pretrain_dataset("cifar10", tmp_path, build_two_view("cifar", 32), verify_checksums=False)
    message = str(caught.value)
    assert message == f"cifar10: {batch_file}: {expected}"
    assert "\n" not in message and isinstance(caught.value, ConfigError)
    # The val split reads test_batch only: the bad training batch does not stop an evaluation's val set.
    assert len(build_eval_dataset("cifar10", tmp_path, None, "val", verify_checksums=False)) == 3


def test_cifar_labels_past_the_meta_files_class_names_are_refused(tmp_path):
    write_cifar10(tmp_path, images_per_file=20)  # labels 0..9
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(5)], "num_vis": 3072})
    with pytest.raises(DataIntegrityError, match=r"cifar10: .*data_batch_1: label \d outside the 5 classes of "
                                                 r"batches\.meta"):
        build_eval_dataset("cifar10", tmp_path, None, "train", verify_checksums=False)
    write_pickle(folder / "batches.meta", {"names": ["a", "b"]})
    with pytest.raises(DataIntegrityError, match=r"batches\.meta: expected a non-empty list of class names under "
                                                 r"'label_names', got none \(it has 'names'\)"):
        build_eval_dataset("cifar10", tmp_path, None, "train", verify_checksums=False)


def test_cifar100_batch_without_fine_labels_names_the_cifar100_key(tmp_path):
    _write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    write_pickle(train, {"data": np.zeros((3, 3072), np.uint8), "coarse_labels": [0, 1, 2]})
    with pytest.raises(DataIntegrityError, match=r"cifar100: .*train: no 'fine_labels' key \(it has "
                                                 r"'coarse_labels', 'data'\)"):
        build_eval_dataset("cifar100", tmp_path, None, "train", verify_checksums=False)
    write_pickle(train, {"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 99, 100]})
    with pytest.raises(DataIntegrityError, match="label 100 outside the 100 classes of meta"):
        build_eval_dataset("cifar100", tmp_path, None, "train", verify_checksums=False)


def test_data_identity_names_the_data_and_what_the_caller_adds(tmp_path):
    digits = DataConfig(name="digits", root=str(tmp_path / "d"))
    same = DataConfig(name="digits", root=str(tmp_path / "x" / ".." / "d"))  # one folder, spelt differently
    other_render = DataConfig(name="digits", root=str(tmp_path / "d"), digits={"size": 16})
    assert data_identity(digits) == data_identity(same) != data_identity(other_render)
    assert data_identity(digits, split="train") != data_identity(digits, split="val")
    assert data_identity(None, root=tmp_path / "a") == data_identity(None, root=tmp_path / "b" / ".." / "a")
    assert len(data_identity(digits, length=10)) == 10


def _write_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for class_name in ("cat", "dog"):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")


@pytest.mark.parametrize("name", ["imagefolder", "places365"])
def test_class_folders_load_for_both_splits(tmp_path, name):
    _write_image_folder(tmp_path)
    train = build_pretrain_dataset(name, tmp_path, build_two_view("imagenet", 32))
    assert len(train) == 6 and train.classes == ["cat", "dog"]
    (view1, view2), _ = train[5]
    assert view1.shape == view2.shape == (3, 32, 32)
    val = build_eval_dataset(name, tmp_path, eval_transform("imagenet", 32), "val")
    assert len(val) == 4 and val[0][0].shape == (3, 32, 32)


def test_missing_or_empty_image_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        build_pretrain_dataset("imagefolder", tmp_path, None)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        build_eval_dataset("imagefolder", tmp_path, None, "val")
    (tmp_path / "val" / "cat").mkdir()
    (tmp_path / "val" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no usable images"):
        build_eval_dataset("places365", tmp_path, None, "val")
    (tmp_path / "val" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dog" / "1.png")
    with pytest.raises(FileNotFoundError, match=r"val: class folder\(s\) \['cat'\] hold no image \(extensions .jpg"):
        build_eval_dataset("imagefolder", tmp_path, None, "val")


def test_unknown_data_set_or_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'.*'digits', 'cifar10'"):
        build_pretrain_dataset("mnist", tmp_path, None)
    with pytest.raises(ValueError, match="split must be one of"):
        build_eval_dataset("imagefolder", tmp_path, None, "test")


def test_loader_partitions_by_rank_and_reshuffles_by_epoch():
    dataset = torch.utils.data.TensorDataset(torch.arange(10))
    loader = build_loader(dataset, 4, shuffle=True, drop_last=False, num_workers=0, seed=3, distributed=False)
    assert loader.generator is not None and loader.pin_memory == torch.cuda.is_available()
    loader.sampler.set_epoch(0)
    first = torch.cat([batch for (batch,) in loader]).tolist()
    loader.sampler.set_epoch(1)
    second = torch.cat([batch for (batch,) in loader]).tolist()
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    again = build_loader(dataset, 4, shuffle=True, drop_last=False, num_workers=0, seed=3, distributed=False)
    again.sampler.set_epoch(1)
    assert torch.cat([batch for (batch,) in again]).tolist() == second
    dropped = build_loader(dataset, 4, shuffle=False, drop_last=True, num_workers=0, seed=0, distributed=False)
    assert [batch.tolist() for (batch,) in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="distributed=True"):
        build_loader(dataset, 4, shuffle=False, drop_last=False, num_workers=0, seed=0, distributed=True)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(dataset, 0, shuffle=False, drop_last=False, num_workers=0, seed=0)


# A job that fails mid-epoch, its exception left uncaught as submitit leaves it (it re-raises after saving it).
FAILS_MID_EPOCH = """
import torch
from mec.data import build_loader
loader = build_loader(torch.utils.data.TensorDataset(torch.arange(64.)), 4, shuffle=True, drop_last=True,
                      num_workers=2, seed=0)
for step, batch in enumerate(loader):
    if step == 3:
        raise FloatingPointError("loss is nan")
"""


def test_a_job_failing_with_its_loader_workers_alive_exits(tmp_path):
    # The workers ignore SIGTERM (SLURM's preemption is the main process' to handle), which is how
    # multiprocessing ends them at exit; persistent ones, held by the traceback, kept a failed job alive for ever.
    script = tmp_path / "fails.py"
    script.write_text(FAILS_MID_EPOCH)
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the failed job did not exit: its loader workers outlived it")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "FloatingPointError: loss is nan", out.stderr[-2000:]


def _epoch_views(loader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([torch.cat(views, dim=1) for views, _ in loader])


def test_augmentations_depend_on_seed_epoch_and_image_not_on_workers_or_ranks(tmp_path):
    root = write_image_folder(tmp_path / "folder", per_class=4, size=24)
    dataset = build_pretrain_dataset("imagefolder", root, build_two_view("digits", 16))

    def loader(workers: int, seed: int = 5, **kwargs):
        return build_loader(dataset, 4, shuffle=True, drop_last=False, num_workers=workers, seed=seed,
                            distributed=False, **kwargs)

    torch.manual_seed(123)
    in_process = loader(0)
    first, second = _epoch_views(in_process, 0), _epoch_views(in_process, 1)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # reading items left the process' random stream as it was
    assert not torch.equal(first, second)
    assert not torch.equal(first, _epoch_views(loader(0, seed=6), 0))
    two_workers = loader(2)
    assert two_workers.persistent_workers
    assert torch.equal(_epoch_views(two_workers, 1), second)  # another worker count, epochs in another order
    assert torch.equal(_epoch_views(two_workers, 0), first)
    assert torch.equal(_epoch_views(loader(1), 1), second)
    # Two ranks share the epoch's images, each with the views one process gives it (the order as the sampler's).
    one_process = torch.utils.data.DistributedSampler(dataset, 1, 0, shuffle=True, seed=5)
    one_process.set_epoch(1)
    by_index = dict(zip(one_process, second.unbind(), strict=True))
    for rank in range(2):
        sampler = SeededSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1)
        items = SeededItems(dataset)
        for index, seed in sampler:
            views, _ = items[(index, seed)]
            assert torch.equal(torch.cat(views), by_index[index])


# ---- rendered digits ---------------------------------------------------------------------------------------

FEW_VARIANTS = {"variants_train": 1, "variants_val": 1}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return write_digit_folders(tmp_path_factory.mktemp("digits") / "tree", seed=0, **FEW_VARIANTS)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


def _sources(root: Path, split: str) -> dict[int, str]:
    """Source digit index -> class folder, from the `<source>_<variant>.png` file names."""
    return {int(p.stem.split("_")[0]): p.parent.name for p in (root / split).rglob("*.png")}


def test_digit_tree_has_ten_classes_and_val_sources_unseen_in_train(digits_root):
    labels = load_digits().target
    train, val = _sources(digits_root, "train"), _sources(digits_root, "val")
    for split in ("train", "val"):
        assert sorted(p.name for p in (digits_root / split).iterdir()) == [str(c) for c in range(10)]
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(labels)
    # Every image sits in the folder of its source digit's label.
    assert all(str(labels[source]) == folder for source, folder in (train | val).items())
    # Stratified: each class gives about 20% of its digits to val.
    val_labels = labels[sorted(val)]
    for label in range(10):
        assert np.sum(val_labels == label) == pytest.approx(0.2 * np.sum(labels == label), abs=1)
    manifest = json.loads((digits_root / "manifest.json").read_text())
    assert manifest["counts"] == {"train": len(train), "val": len(val)}


def test_digit_tree_is_reproducible_cached_and_rewritten_on_new_parameters(digits_root, tmp_path):
    manifest = digits_root / "manifest.json"
    before = manifest.stat().st_mtime_ns
    some_image = next((digits_root / "train" / "3").iterdir())
    image_before = some_image.stat().st_mtime_ns
    assert write_digit_folders(digits_root, seed=0, **FEW_VARIANTS) == digits_root
    assert manifest.stat().st_mtime_ns == before and some_image.stat().st_mtime_ns == image_before

    copy = write_digit_folders(tmp_path / "copy", seed=0, **FEW_VARIANTS)
    assert _tree_digest(copy) == _tree_digest(digits_root)

    write_digit_folders(copy, seed=1, **FEW_VARIANTS)
    assert json.loads((copy / "manifest.json").read_text())["params"]["seed"] == 1
    assert _sources(copy, "val") != _sources(digits_root, "val")
    differing = set(_tree_digest(copy).items()) - set(_tree_digest(digits_root).items())
    assert len(differing) > 0.9 * len(_tree_digest(copy))
    assert not list(tmp_path.glob(".copy.*")), "staging or retired trees were left behind"


def test_rendered_digits_vary_in_colour_and_position(digits_root):
    files = sorted((digits_root / "train").rglob("*.png"))[::10]
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in files])
    assert pixels.shape[1:] == (32, 32, 3)
    mean_colours = pixels.mean(axis=(1, 2))
    assert mean_colours.std(axis=0).min() > 0.08

    rng = np.random.default_rng(0)
    digit = load_digits().images[0]
    boxes = np.array([render_digit_image(digit, rng)[1] for _ in range(50)], dtype=float)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert centres.std(axis=0).min() > 1.5
    assert (boxes[:, 2] - boxes[:, 0]).std() > 1.0


def test_pasted_digit_lies_in_its_box_and_stands_out_from_the_background():
    style = DigitStyle(min_colour_distance=0.8)
    digit = load_digits().images[7]
    for seed in range(10):
        background = np.array([0.3, 0.6, 0.2], dtype=np.float32)
        canvas = np.tile(background, (40, 56, 1))
        x0, y0, x1, y1 = paste_digit(canvas, digit, np.random.default_rng(seed), style)
        assert 0 <= x0 < x1 <= 56 and 0 <= y0 < y1 <= 40
        changed = np.linalg.norm(canvas - background, axis=2) > 1e-6
        rows, cols = np.nonzero(changed)
        # Nothing drawn outside the box, and the box is tight around what was drawn.
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (y0, y1, x0, x1)
        assert np.linalg.norm(canvas - background, axis=2).max() > 0.8 * 0.8


def test_build_pretrain_dataset_renders_digits_and_gives_two_views(digits_root):
    params = {"seed": 0, **FEW_VARIANTS}
    dataset = build_pretrain_dataset("digits", digits_root, build_two_view("digits", 32), digits_params=params)
    (view1, view2), label = dataset[0]
    assert view1.shape == view2.shape == (3, 32, 32) and label == 0
    assert dataset.classes == [str(c) for c in range(10)]


def test_digit_writer_refuses_foreign_folders_and_unknown_knobs(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.pdf").write_text("precious")
    with pytest.raises(FileExistsError, match="manifest.json"):
        write_digit_folders(tmp_path / "mine", **FEW_VARIANTS)
    with pytest.raises(ValueError, match=r"unknown digit render parameters \['glitter'\]"):
        write_digit_folders(tmp_path / "new", glitter=1.0)
    with pytest.raises(ValueError, match="texture_strength"):
        write_digit_folders(tmp_path / "new", texture_strength=2.0)


def test_palette_limits_colour_pairs_to_a_fixed_set():
    digits, _ = load_digits(return_X_y=True)
    style = DigitStyle(palette_size=3, texture_strength=0.0, noise_std=0.0, max_rotation_deg=0.0)
    corners = set()
    for i in range(40):
        image, _ = render_digit_image(digits[i].reshape(8, 8), np.random.default_rng(i), style=style)
        corners.add(tuple(image[0, 0]))  # the digit's cell is at most 0.8 of the canvas: a corner is background
    assert 2 <= len(corners) <= 3
    plain = DigitStyle(texture_strength=0.0, noise_std=0.0)
    free = {tuple(render_digit_image(digits[i].reshape(8, 8), np.random.default_rng(i), style=plain)[0][0, 0])
            for i in range(40)}
    assert len(free) > 30
    with pytest.raises(ValueError, match="palette_size must be >= 0"):
        DigitStyle(palette_size=-1)


class _TagViews:
    """A stand-in TwoViewTransform that passes its input through (the tests make that input the file path)."""

    def view1(self, image):
        return image

    def view2(self, image):
        return image


PAIRED = {"seed": 0, "size": 16, "variants_train": 2, "variants_val": 1}


def test_source_pairs_give_two_renderings_of_one_source_once_per_epoch(tmp_path):
    root = tmp_path / "digits"
    pairs = build_pretrain_dataset("digits", root, _TagViews(), digits_params=PAIRED, positives="same_source")
    pairs.loader = str  # views of the file paths instead of the images: which files were paired
    sources = _sources(root, "train")
    assert len(pairs) == len(sources)  # one item per source digit, not per rendering
    torch.manual_seed(0)
    for index in range(0, len(pairs), 7):
        (first, second), label = pairs[index]
        assert first != second  # pair_p = 1: always two different renderings ...
        assert Path(first).stem.split("_")[0] == Path(second).stem.split("_")[0]  # ... of one source digit
        assert Path(first).parent.name == Path(second).parent.name == str(label)

    same_file = build_pretrain_dataset("digits", root, _TagViews(), digits_params=PAIRED, positives="same_source",
                                       source_pair_p=0.0)
    same_file.loader = str
    assert all(len(set(same_file[i][0])) == 1 for i in range(0, len(same_file), 7))


def test_source_pairs_reject_files_without_sources_or_with_one_rendering(tmp_path):
    for name in ("cat.png", "0001_00.png"):
        (tmp_path / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / name)
    with pytest.raises(ValueError, match=r"cat\.png is not named <source>_<variant>"):
        build_pretrain_dataset("imagefolder", tmp_path, _TagViews(), positives="same_source")
    (tmp_path / "train" / "a" / "cat.png").unlink()
    with pytest.raises(ValueError, match=r"at least two files per source; 1 source\(s\) have one .*0001"):
        build_pretrain_dataset("imagefolder", tmp_path, _TagViews(), positives="same_source")
    with pytest.raises(ValueError, match="cifar10 has none"):
        build_pretrain_dataset("cifar10", tmp_path, _TagViews(), positives="same_source")
    with pytest.raises(ValueError, match="unknown positives 'neighbours'"):
        build_pretrain_dataset("imagefolder", tmp_path, _TagViews(), positives="neighbours")
