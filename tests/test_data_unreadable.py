"""The per-image path (`mec.data`'s folder data sets) reads past files it cannot read: a whole epoch, with one
warning naming each file, the next readable file in its place, and the count shared by the loader's workers."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from mec.data import (
    DataIntegrityError,
    build_eval_dataset,
    build_loader,
    build_pretrain_dataset,
    skipped_images,
)

# Solid colours tell which file served an item: JPEG keeps a flat colour within a grey level or two. Index 2 is
# written as a grayscale JPEG, so its colour is a grey.
COLOURS = [(200, 30, 30), (30, 200, 30), (90, 90, 90), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 120, 120), (250, 250, 250)]


def _solid(index: int, size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), COLOURS[index])


def _jpeg_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def _write_tree(root: Path) -> dict[int, str]:
    """root/train/{a,b}/<index>.<ext>, indices in ImageFolder's order; the unreadable ones by index -> why."""
    a, b = root / "train" / "a", root / "train" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    _solid(0).save(a / "0.png")
    (a / "1.JPEG").write_bytes(_jpeg_bytes(_solid(1))[:300])  # truncated
    _solid(2).convert("L").save(a / "2.JPEG")  # grayscale JPEG: read, as RGB
    _solid(3).convert("CMYK").save(b / "3.JPEG")  # CMYK JPEG: read, as RGB
    (b / "4.JPEG").write_bytes(b"<html>not found</html>")  # garbage named .JPEG
    (b / "5.JPEG").write_bytes(b"")  # empty
    _solid(6).save(b / "6.JPEG", "PNG")  # a PNG named .JPEG: read
    (b / "7.JPEG").write_bytes(_jpeg_bytes(_solid(7))[:-60])  # truncated, the last index: wraps to index 0
    return {1: "truncated", 4: "garbage", 5: "empty", 7: "truncated"}


def colour_and_size(image: Image.Image) -> torch.Tensor:
    """The transform: the image's mean colour and its mode's band count (module level, so workers can pickle it)."""
    pixels = np.asarray(image, dtype=np.float64)
    return torch.tensor([*pixels.reshape(-1, pixels.shape[-1]).mean(axis=0), len(image.getbands())])


def _source(colour: torch.Tensor) -> int:
    """The index of the file whose colour this is."""
    distances = [float(np.abs(np.subtract(colour[:3].numpy(), c)).max()) for c in COLOURS]
    index = int(np.argmin(distances))
    assert distances[index] < 4, (colour, distances)
    return index


# Unreadable index -> the index that serves it: the next readable one, wrapping around.
REPLACED_BY = {1: 2, 4: 6, 5: 6, 7: 0}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_reads_past_unreadable_files_warning_once_each_and_counting_across_workers(
        tmp_path, caplog, num_workers):
    bad = _write_tree(tmp_path)
    dataset = build_pretrain_dataset("imagefolder", tmp_path, colour_and_size)
    paths = [path for path, _ in dataset.samples]
    # Workers are processes of their own: their warnings reach a file handler they inherit, not caplog.
    log_file = tmp_path / "warnings.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger("mec.data").addHandler(handler)
    try:
        loader = build_loader(dataset, 3, shuffle=False, drop_last=False, num_workers=num_workers, seed=0)
        served = {}
        with caplog.at_level(logging.WARNING, logger="mec.data"):
            for epoch in range(2):
                loader.sampler.set_epoch(epoch)
                for colours, labels in loader:
                    for colour, label in zip(colours, labels.tolist(), strict=True):
                        served.setdefault(epoch, []).append((_source(colour), label))
                        assert colour[3] == 3  # every file read is RGB: grayscale, CMYK and PNG included
                assert skipped_images(dataset) == len(bad) * (epoch + 1)
    finally:
        logging.getLogger("mec.data").removeHandler(handler)
        handler.close()

    labels = [label for _, label in dataset.samples]
    expected = [(REPLACED_BY.get(i, i), labels[REPLACED_BY.get(i, i)]) for i in range(len(paths))]
    assert served[0] == served[1] == expected  # the label follows the file that served the item
    warnings = log_file.read_text().splitlines()
    for index in bad:
        mine = [line for line in warnings if paths[index] in line]
        # Once per file and process: workers persist across epochs, and without shuffling a file's batch goes
        # to the same worker each epoch.
        assert len(mine) == 1, (index, warnings)
        assert "skipped" in mine[0] and "cannot be read as an image" in mine[0]
    assert "truncated" in next(line for line in warnings if paths[1] in line).lower()
    assert "not an image format" in next(line for line in warnings if paths[4] in line)
    if num_workers == 0:
        assert [r.getMessage() for r in caplog.records] == warnings[: len(caplog.records)]


def test_evaluation_sets_skip_too_and_a_folder_of_unreadable_files_raises(tmp_path):
    _write_tree(tmp_path)
    dataset = build_eval_dataset("imagefolder", tmp_path, colour_and_size, "train")
    colour, label = dataset[7]
    assert _source(colour) == 0 and label == 0 and skipped_images(dataset) == 1

    (tmp_path / "junk" / "train" / "a").mkdir(parents=True)
    for name in ("x.JPEG", "y.JPEG"):
        (tmp_path / "junk" / "train" / "a" / name).write_bytes(b"garbage")
    junk = build_eval_dataset("imagefolder", tmp_path / "junk", None, "train")
    with pytest.raises(DataIntegrityError, match=r"2 files in a row .*cannot be read as images, the first .*y\.JPEG"):
        junk[1]


def test_source_pairs_replace_a_pair_with_an_unreadable_file_by_the_next_source(tmp_path, caplog):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    _solid(0).save(folder / "0001_0.png")
    (folder / "0001_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _solid(2).save(folder / "0002_0.png")
    _solid(3).save(folder / "0002_1.png")

    class Identity:
        def view1(self, image):
            return colour_and_size(image)

        def view2(self, image):
            return colour_and_size(image)

    pairs = build_pretrain_dataset("imagefolder", tmp_path, Identity(), positives="same_source")
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="mec.data"):
        (first, second), label = pairs[0]  # pair_p = 1: source 0001 needs its broken variant
    assert {_source(first), _source(second)} == {2, 3} and label == 0
    assert skipped_images(pairs) == 1 and str(folder / "0001_1.png") in caplog.text


def test_data_sets_that_do_not_skip_count_none():
    tensors = TensorDataset(torch.zeros(3, 2))
    assert skipped_images(tensors) == 0 and skipped_images(Subset(tensors, [0])) == 0
