"""The offline transfer data sets: miniatures of the paper's 11 Table 8 data sets rendered from the UCI digits.

For every name of `evals.transfer.DATASETS` a writer renders a small classification data set into exactly the
files the torchvision class of that name reads (no download), so that ``DATASETS[name].build(root, split, t)``
and `evals.transfer.evaluate` run on it unchanged. Every writer returns the folder to pass as the transfer
protocol's ``options.root``: the tree's own root, which holds the folder the torchvision class adds
(``cifar-10-batches-py``, ``food-101``, ``VOCdevkit/VOC2007``, ...) and ``manifest.json``.

Classes. Class ``c`` shows digit ``c % 10``. A data set of at most 10 classes draws each image's colours as
`mec.digits.render_digit_image` does; one of more classes (the real CIFAR-100 has 100, Cars 196, SUN397 397)
combines the digit with a colour pair: variant ``c // 10`` paints the background's flat colour and the ink with
pair ``c // 10`` of `mec.digits.colour_palette` (fine-grained classes: same shape, other colours), the texture,
position, scale, rotation and noise staying random. ``classes`` caps the count (default: the real data set's,
`CLASS_COUNTS`); class names are the digit's ("seven"), with the variant where there are more than 10
("seven_03"), spelt as the data set spells its names. VOC2007 is multi-label: scenes of 1 to 3 digits
(`evals.detection.scenes.render_scene`), an upright digit d being VOC class d ("aeroplane" ... "diningtable") and
a digit turned a quarter clockwise VOC class 10 + d ("dog" ... "tvmonitor").

Splits and digits. `mec.digits.split_sources` (``val_fraction``, ``seed``) splits the source digits as the offline
pretraining data does: training images ("train", "trainval" and the official "val" splits) render "train" source
digits, test images the held-out "val" ones, so the transfer test shows digits the pretraining never saw (with the
same ``val_fraction`` and ``seed``). SUN397 and Caltech-101 have no official split (the protocol draws a seeded
one from all images), so all their images render "val" digits. Per class: ``n_train`` training, ``n_val``
validation (DTD, Flowers, Aircraft: the data sets with an official one) and ``n_test`` test images; SUN397 and
Caltech-101 get ``n_train + n_test`` per class, VOC2007 ``n_train * classes`` trainval and ``n_test * classes``
test scenes. Image ``i`` of class ``c`` in split ``s`` is seeded by (seed, s, c, i).

ImageNet. Not a Table 8 data set: the stand-in a linear probe with ``dataset: imagenet`` reads for a run on the
digits (paper Table 9 probes a Places365 backbone on ImageNet; `evals.GENERATED_PROBE_SETS`), in ImageNet's
ImageFolder layout (`write_imagenet`). Its ``val`` folder holds the test images (held-out digits); the DAG draws it
in another colour pair besides the run's and with texture (`IMAGENET_STANDIN`, `generated_set_params`), so it is
another data set than the pretraining digits.

Files are written like the other generators (`mec.trees.write_tree`): into a temporary sibling, moved onto the
root when complete with ``manifest.json`` (parameters and their hash); the same parameters leave the tree alone
and give byte-identical files (JPEG quality 95 without chroma subsampling; .mat files with a fixed header), other
parameters replace it, and a non-empty folder without a manifest is never touched. ``render_kwargs`` are
`mec.digits.DigitStyle` fields (default `DigitStyle()`; VOC2007 `VOC_STYLE`).

Checksums: torchvision's CIFAR10 / CIFAR100 and Flowers102 check their files against the official MD5s even
without download, which generated files cannot match; read those through readers with the MD5s removed
(as `mec.data` does for ``data.verify_checksums: false``).

    python -m evals.transfer_sets --name Food101 --output data/transfer/Food101
    python -m evals.transfer_sets --name all --output data/transfer    # each under data/transfer/<name>
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import pickle
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals import GENERATED_PROBE_SETS, pretraining_style
from evals.detection.scenes import DIGIT_CLASSES, render_scene
from evals.transfer import DATASETS, VOC_CLASSES
from mec.digits import (
    BoundingBox,
    DigitStyle,
    colour_palette,
    digit_style,
    load_source_digits,
    paste_digit,
    render_digit_image,
    split_sources,
    textured_background,
)
from mec.trees import MANIFEST_NAME, write_tree

TRANSFER_SET_NAMES = tuple(DATASETS)
PROBE_SET_NAMES = tuple(GENERATED_PROBE_SETS.values())  # stand-ins of data sets a probe reads instead of its own
# Classes of the real data sets: the most a miniature has (and its default).
CLASS_COUNTS = {"CIFAR10": 10, "CIFAR100": 100, "Food101": 101, "DTD": 47, "Pets": 37, "Flowers": 102, "Cars": 196,
                "Aircraft": 100, "SUN397": 397, "Caltech101": 101, "VOC2007": len(VOC_CLASSES), "ImageNet": 1000}
# Bump when the written files change for the same parameters, so existing trees get rewritten.
TRANSFER_SETS_VERSION = 1
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}
CIFAR_SIZE = 32  # the python version's rows are 3 x 32 x 32
MIN_SIZE = 16
# VOC2007 scenes: digits per image (inclusive), the most two boxes may overlap, the digits' scale on the canvas.
VOC_DIGITS_PER_IMAGE = (1, 3)
VOC_MAX_BOX_IOU = 0.2
VOC_STYLE = DigitStyle(scale_range=(0.3, 0.55))
# The ImageNet stand-in the DAG writes for a probe of a digits run: the ten digits in two colour pairs and with
# texture where the pretraining digits have one pair and none (another data set, as ImageNet is for a Places365
# backbone), with enough images per class for a linear probe to learn from. Measured with the Table 9 miniature's
# 6-epoch backbone (logistic regression on its frozen features, held-out digits): 16% top-1 here, 22% in the
# pretraining style, near chance (12%, ten classes) with eight pairs and texture 0.3.
IMAGENET_STANDIN = {"classes": 10, "n_train": 100, "n_test": 30, "palette_size": 2, "texture_strength": 0.15}
# Seeds images per split; "all" is the single split of SUN397 / Caltech-101, "background" Caltech's clutter class.
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "all": 3, "background": 4}
# The 128-byte MAT-file header carries the writing time; a fixed description keeps the files byte-identical.
_MAT_DESCRIPTION = b"MATLAB 5.0 MAT-file, written by evals.transfer_sets"
_MAT_DESCRIPTION_BYTES = 116


# ---------------------------------------------------------------------------------------------------------------
# Classes and images


def class_name(label: int, classes: int) -> str:
    """The name of class ``label`` of a ``classes``-class set: "seven", or "seven_03" (digit 7, variant 3)."""
    digit, variant = label % 10, label // 10
    return DIGIT_CLASSES[digit] if classes <= 10 else f"{DIGIT_CLASSES[digit]}_{variant:02d}"


@dataclass(frozen=True)
class Sample:
    """One rendered image of a single-label set: class, index within its class and split, uint8 [H, W, 3], box."""

    label: int
    index: int
    image: np.ndarray
    box: BoundingBox


class _Digits:
    """The source digits and their split, loaded once per tree."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.images, self.labels = load_source_digits()
        self.pools = split_sources(self.labels, params["val_fraction"], params["seed"])
        self.params = params
        self.style = DigitStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["style"].items()})

    def pool(self, split: str) -> np.ndarray:
        """Source indices behind a split: "val" digits for test and no-split sets, "train" digits otherwise."""
        return self.pools["val" if split in ("test", "all") else "train"]

    def render(self, split: str, label: int, index: int) -> Sample:
        params, style = self.params, self.style
        rng = np.random.default_rng([params["seed"], _SPLIT_CODE[split], label, index])
        pool = self.pool(split)
        pool = pool[self.labels[pool] == label % 10]
        digit = self.images[int(pool[rng.integers(len(pool))])]
        if params["classes"] <= 10:
            image, box = render_digit_image(digit, rng, size=params["size"], style=style)
            return Sample(label, index, image, box)
        # More classes than digits: the variant's fixed colour pair tells classes of one digit apart.
        background, ink = colour_palette(math.ceil(params["classes"] / 10), style.min_colour_distance)[label // 10]
        canvas = textured_background(rng, params["size"], params["size"], style, flat=background)
        box = paste_digit(canvas, digit, rng, style, ink=ink)
        return Sample(label, index, _finish(canvas, rng, style), box)

    def samples(self, split: str, per_class: int) -> Iterator[Sample]:
        """Every image of a split, class by class."""
        for label in range(self.params["classes"]):
            for index in range(per_class):
                yield self.render(split, label, index)

    def background(self, index: int) -> np.ndarray:
        """A textured canvas without a digit (Caltech-101's BACKGROUND_Google clutter)."""
        rng = np.random.default_rng([self.params["seed"], _SPLIT_CODE["background"], 0, index])
        size = self.params["size"]
        return _finish(textured_background(rng, size, size, self.style), rng, self.style)


def _finish(canvas: np.ndarray, rng: np.random.Generator, style: DigitStyle) -> np.ndarray:
    """Noise as `mec.digits.render_digit_image` adds it, then uint8."""
    if style.noise_std > 0:
        canvas += rng.normal(0.0, style.noise_std, canvas.shape).astype(np.float32)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", **JPEG_OPTIONS)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _savemat(path: Path, data: dict[str, Any]) -> None:
    """`scipy.io.savemat` (MATLAB 5 format, uncompressed) with a fixed header instead of the writing time."""
    from scipy.io import savemat  # only the .mat formats need it

    buffer = io.BytesIO()
    savemat(buffer, data, do_compression=False, oned_as="row")
    raw = bytearray(buffer.getvalue())
    raw[:_MAT_DESCRIPTION_BYTES] = _MAT_DESCRIPTION.ljust(_MAT_DESCRIPTION_BYTES, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))


def _mat_cell(values: list[str]) -> np.ndarray:
    """A 1 x N MATLAB cell array of strings."""
    cell = np.empty((1, len(values)), dtype=object)
    cell[0, :] = values
    return cell


# ---------------------------------------------------------------------------------------------------------------
# One tree per data set: each fills `target` (the root the torchvision class is given) and returns its counts.


def _cifar_rows(samples: list[Sample]) -> np.ndarray:
    """uint8 [N, 3072]: each image as its R, G and B planes, row-major (the python version's layout)."""
    if not samples:
        return np.zeros((0, 3 * CIFAR_SIZE * CIFAR_SIZE), dtype=np.uint8)
    return np.stack([s.image.transpose(2, 0, 1).reshape(-1) for s in samples])


def _write_pickle(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(payload, protocol=4))


def _cifar_file_name(sample: Sample, classes: int) -> str:
    return f"{class_name(sample.label, classes)}_s_{sample.index:06d}.png"


def _write_cifar(target: Path, digits: _Digits, cifar100: bool) -> dict[str, Any]:
    params = digits.params
    classes = params["classes"]
    folder = target / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    counts: dict[str, Any] = {}
    for split in ("train", "test"):
        samples = list(digits.samples(split, params["images"][split]))
        # The real batches are shuffled: a seeded order, the same for the same parameters.
        order = np.random.default_rng([params["seed"], _SPLIT_CODE[split], 10**6]).permutation(len(samples))
        samples = [samples[i] for i in order]
        counts[split] = len(samples)
        if cifar100:
            _write_pickle(folder / split, {
                "filenames": [_cifar_file_name(s, classes) for s in samples],
                "batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1",
                "fine_labels": [s.label for s in samples],
                "coarse_labels": [s.label // 5 for s in samples],  # 5 fine classes per superclass, as CIFAR-100's
                "data": _cifar_rows(samples),
            })
            continue
        batches = np.array_split(np.arange(len(samples)), 5) if split == "train" else [np.arange(len(samples))]
        for number, batch in enumerate(batches, 1):
            chunk = [samples[i] for i in batch]
            name = f"data_batch_{number}" if split == "train" else "test_batch"
            _write_pickle(folder / name, {
                "batch_label": f"training batch {number} of 5" if split == "train" else "testing batch 1 of 1",
                "labels": [s.label for s in chunk],
                "data": _cifar_rows(chunk),
                "filenames": [_cifar_file_name(s, classes) for s in chunk],
            })
    names = [class_name(c, classes) for c in range(classes)]
    if cifar100:
        coarse = [f"superclass_{j:02d}" for j in range(math.ceil(classes / 5))]
        _write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": coarse})
    else:
        _write_pickle(folder / "batches.meta", {"num_cases_per_batch": math.ceil(counts["train"] / 5),
                                                 "label_names": names, "num_vis": 3 * CIFAR_SIZE * CIFAR_SIZE})
    return counts


def _write_food101(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    base = target / "food-101"
    names = [class_name(c, classes) for c in range(classes)]
    counts, next_id = {}, 1_000_001
    for split in ("train", "test"):
        metadata: dict[str, list[str]] = {name: [] for name in names}
        for sample in digits.samples(split, digits.params["images"][split]):
            relative = f"{names[sample.label]}/{next_id}"
            _save_jpeg(sample.image, base / "images" / f"{relative}.jpg")
            metadata[names[sample.label]].append(relative)
            next_id += 1
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(metadata))
        _write_lines(base / "meta" / f"{split}.txt", (path for paths in metadata.values() for path in paths))
        counts[split] = sum(len(paths) for paths in metadata.values())
    _write_lines(base / "meta" / "classes.txt", names)
    _write_lines(base / "meta" / "labels.txt", (name.replace("_", " ").capitalize() for name in names))
    return counts


def _write_dtd(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    data = target / "dtd" / "dtd"
    names = [class_name(c, classes) for c in range(classes)]
    numbers = [0] * classes  # images are numbered per class across the splits, as DTD's
    counts = {}
    for split in ("train", "val", "test"):
        lines = []
        for sample in digits.samples(split, digits.params["images"][split]):
            numbers[sample.label] += 1
            name = names[sample.label]
            _save_jpeg(sample.image, data / "images" / name / f"{name}_{numbers[sample.label]:04d}.jpg")
            lines.append(f"{name}/{name}_{numbers[sample.label]:04d}.jpg")
        _write_lines(data / "labels" / f"{split}1.txt", lines)  # partition 1 (the protocol's) only
        counts[split] = len(lines)
    return counts


def _pets_breed(label: int, classes: int) -> tuple[str, int]:
    """(breed name, species): even digits are "cats" (1, names capitalised as Pets' cat breeds), odd ones "dogs"
    (2, lower case)."""
    cat = label % 10 % 2 == 0
    name = class_name(label, classes)
    return (name.capitalize() if cat else name), (1 if cat else 2)


def _write_pets(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    base = target / "oxford-iiit-pet"
    breeds = [_pets_breed(c, classes) for c in range(classes)]
    # BREED ID: the class's rank within its species, from 1.
    breed_ids = [sum(1 for other in breeds[: c + 1] if other[1] == breeds[c][1]) for c in range(classes)]
    numbers = [0] * classes
    counts, every = {}, []
    for split in ("trainval", "test"):
        lines = []
        for sample in digits.samples("train" if split == "trainval" else "test", digits.params["images"][split]):
            numbers[sample.label] += 1
            breed, species = breeds[sample.label]
            image_id = f"{breed}_{numbers[sample.label]}"
            _save_jpeg(sample.image, base / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {sample.label + 1} {species} {breed_ids[sample.label]}")
        _write_lines(base / "annotations" / f"{split}.txt", lines)
        every += lines
        counts[split] = len(lines)
    header = ["#Image CLASS-ID SPECIES BREED ID", f"#CLASS-ID: 1:{classes} Class ids", "#SPECIES: 1:Cat 2:Dog",
              "#BREED ID: the class's rank within its species, from 1",
              "#All images with 1st letter as capital are cat images",
              "#images with small first letter are dog images"]
    _write_lines(base / "annotations" / "list.txt", header + sorted(every, key=lambda line: line.split()[0].lower()))
    return counts


def _write_flowers(target: Path, digits: _Digits) -> dict[str, Any]:
    base = target / "flowers-102"
    labels: list[int] = []
    set_ids: dict[str, list[int]] = {}
    counts = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        set_ids[key] = []
        for sample in digits.samples(split, digits.params["images"][split]):
            labels.append(sample.label + 1)  # imagelabels.mat counts classes from 1
            set_ids[key].append(len(labels))  # and images from 1
            _save_jpeg(sample.image, base / "jpg" / f"image_{len(labels):05d}.jpg")
        counts[split] = len(set_ids[key])
    _savemat(base / "imagelabels.mat", {"labels": np.asarray([labels], dtype=np.uint8)})
    id_type = np.min_scalar_type(max(len(labels), 255))  # uint8 / uint16 / ...: integers, so ids format as %05d
    _savemat(base / "setid.mat", {key: np.asarray([ids], dtype=id_type) for key, ids in set_ids.items()})
    return counts


_CARS_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _cars_annotations(samples: list[Sample], with_class: bool = True) -> np.ndarray:
    """The 1 x N struct array of cars_*_annos.mat: box (1-based, inclusive), class (from 1), file name."""
    fields = [f for f in _CARS_FIELDS if with_class or f != "class"]
    annotations = np.empty((1, len(samples)), dtype=[(f, object) for f in fields])
    for j, sample in enumerate(samples):
        x0, y0, x1, y1 = sample.box
        values = {"bbox_x1": x0 + 1, "bbox_y1": y0 + 1, "bbox_x2": x1, "bbox_y2": y1}
        record = {key: np.array([[value]], dtype=np.uint16) for key, value in values.items()}
        record |= {"class": np.array([[sample.label + 1]], dtype=np.uint8), "fname": f"{j + 1:05d}.jpg"}
        annotations[0, j] = tuple(record[f] for f in fields)
    return annotations


def _write_cars(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    base = target / "stanford_cars"
    counts = {}
    for split in ("train", "test"):
        samples = list(digits.samples(split, digits.params["images"][split]))
        for j, sample in enumerate(samples):
            _save_jpeg(sample.image, base / f"cars_{split}" / f"{j + 1:05d}.jpg")
        if split == "train":
            _savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(samples)})
        else:
            _savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _cars_annotations(samples)})
            _savemat(base / "devkit" / "cars_test_annos.mat", {"annotations": _cars_annotations(samples, False)})
        counts[split] = len(samples)
    names = [class_name(c, classes).replace("_", " ").title() for c in range(classes)]
    _savemat(base / "devkit" / "cars_meta.mat", {"class_names": _mat_cell(names)})
    return counts


def _aircraft_names(label: int, classes: int) -> dict[str, str]:
    """Variant ("Seven-03"), family (two variants of one digit: "Seven 1") and manufacturer (the digit)."""
    digit = DIGIT_CLASSES[label % 10].capitalize()
    if classes <= 10:
        return {"variant": digit, "family": digit, "manufacturer": digit}
    return {"variant": f"{digit}-{label // 10:02d}", "family": f"{digit} {label // 20}", "manufacturer": digit}


def _write_aircraft(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    data = target / "fgvc-aircraft-2013b" / "data"
    names = [_aircraft_names(c, classes) for c in range(classes)]
    levels = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}
    for level, file in levels.items():
        _write_lines(data / f"{file}.txt", dict.fromkeys(n[level] for n in names))
    counts, next_id, boxes = {}, 1_000_001, []
    rows: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "val", "test"):
        rows[split] = []
        for sample in digits.samples(split, digits.params["images"][split]):
            image_id = f"{next_id:07d}"
            next_id += 1
            _save_jpeg(sample.image, data / "images" / f"{image_id}.jpg")
            rows[split].append((image_id, sample.label))
            x0, y0, x1, y1 = sample.box
            boxes.append(f"{image_id} {x0 + 1} {y0 + 1} {x1} {y1}")
        counts[split] = len(rows[split])
    rows["trainval"] = rows["train"] + rows["val"]
    for split, split_rows in rows.items():
        _write_lines(data / f"images_{split}.txt", (image_id for image_id, _ in split_rows))
        for level in levels:
            _write_lines(data / f"images_{level}_{split}.txt",
                         (f"{image_id} {names[label][level]}" for image_id, label in split_rows))
    _write_lines(data / "images_box.txt", boxes)
    return counts


def _write_sun397(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    data = target / "SUN397"
    names = [class_name(c, classes) for c in range(classes)]
    _write_lines(data / "ClassName.txt", (f"/{name[0]}/{name}" for name in names))
    count = 0
    for sample in digits.samples("all", digits.params["images"]["all"]):
        count += 1
        name = names[sample.label]
        _save_jpeg(sample.image, data / name[0] / name / f"sun_{count:08d}.jpg")
    return {"all": count}


def _write_caltech101(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    categories = target / "caltech101" / "101_ObjectCategories"
    per_class = digits.params["images"]["all"]
    count = 0
    for sample in digits.samples("all", per_class):
        count += 1
        _save_jpeg(sample.image, categories / class_name(sample.label, classes) / f"image_{sample.index + 1:04d}.jpg")
    # torchvision removes this folder from the categories: it must exist (clutter, not a class).
    for index in range(per_class):
        _save_jpeg(digits.background(index), categories / "BACKGROUND_Google" / f"image_{index + 1:04d}.jpg")
    return {"all": count, "background": per_class}


def voc_annotation(image_id: str, image: np.ndarray, objects: Iterable[tuple[int, BoundingBox]]) -> bytes:
    """A Pascal VOC annotation XML: (VOC class index, box end-exclusive) per object; boxes written 1-based and
    inclusive, as VOC writes them."""
    height, width = image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "MEC digit transfer sets"
    ET.SubElement(source, "annotation").text = "evals.transfer_sets"
    ET.SubElement(source, "image").text = "UCI handwritten digits (scikit-learn)"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for label, (x0, y0, x1, y1) in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = VOC_CLASSES[label]
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "0"
        bndbox = ET.SubElement(element, "bndbox")
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_voc2007(target: Path, digits: _Digits) -> dict[str, Any]:
    params = digits.params
    classes = params["classes"]
    voc = target / "VOCdevkit" / "VOC2007"
    # Upright digits are VOC classes 0-9, digits turned a quarter clockwise classes 10-19.
    turned = np.rot90(digits.images, k=-1, axes=(1, 2))
    images = np.concatenate([digits.images, turned])
    labels = np.concatenate([digits.labels, digits.labels + 10])
    counts: dict[str, Any] = {}
    memberships: dict[str, list[tuple[str, set[int]]]] = {}
    next_id = 1
    for split in ("trainval", "test"):
        source_split = "train" if split == "trainval" else "test"
        pool = digits.pool(source_split)
        pool = np.concatenate([pool, pool + len(digits.images)])
        pool = pool[labels[pool] < classes]
        memberships[split] = []
        objects = 0
        for index in range(params["images"][split] * classes):
            rng = np.random.default_rng([params["seed"], _SPLIT_CODE[source_split], 0, index])
            scene = render_scene(rng, images, labels, pool, canvas=params["size"],
                                 digits_per_image=tuple(params["digits_per_image"]),
                                 max_box_iou=params["max_box_iou"], style=digits.style)
            image_id = f"{next_id:06d}"
            next_id += 1
            _save_jpeg(scene.image, voc / "JPEGImages" / f"{image_id}.jpg")
            (voc / "Annotations").mkdir(parents=True, exist_ok=True)
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(
                voc_annotation(image_id, scene.image, ((obj.label, obj.box) for obj in scene.objects)))
            memberships[split].append((image_id, {obj.label for obj in scene.objects}))
            objects += len(scene.objects)
        main = voc / "ImageSets" / "Main"
        _write_lines(main / f"{split}.txt", (image_id for image_id, _ in memberships[split]))
        # The classification task's per-class lists: 1 shows the class, -1 does not.
        for k, voc_class in enumerate(VOC_CLASSES):
            _write_lines(main / f"{voc_class}_{split}.txt",
                         (f"{image_id} {1 if k in present else -1:2d}" for image_id, present in memberships[split]))
        counts[split] = {"images": len(memberships[split]), "objects": objects}
    return counts


def _wnid(label: int) -> str:
    """A WordNet-id-like class folder name that sorts as the labels do ("n00000007")."""
    return f"n{label:08d}"


def _write_imagenet(target: Path, digits: _Digits) -> dict[str, Any]:
    classes = digits.params["classes"]
    counts = {}
    # The val folder as ImageNet's after the usual valprep (val/<wnid>/ILSVRC2012_val_*.JPEG): the test images,
    # drawn from held-out digits.
    for split, folder in (("train", "train"), ("test", "val")):
        count = 0
        for sample in digits.samples(split, digits.params["images"][split]):
            wnid = _wnid(sample.label)
            count += 1
            name = f"{wnid}_{sample.index}.JPEG" if folder == "train" else f"ILSVRC2012_val_{count:08d}.JPEG"
            _save_jpeg(sample.image, target / folder / wnid / name)
        counts[folder] = count
    _write_lines(target / "LOC_synset_mapping.txt", (f"{_wnid(c)} {class_name(c, classes)}" for c in range(classes)))
    return counts


@dataclass(frozen=True)
class _Format:
    write: Callable[[Path, _Digits], dict[str, Any]]
    splits: tuple[str, ...]  # the splits whose per-class counts the parameters name
    expected: tuple[str, ...]  # paths (relative to the root) a complete tree has


_FORMATS: dict[str, _Format] = {
    "CIFAR10": _Format(lambda t, d: _write_cifar(t, d, cifar100=False), ("train", "test"),
                       ("cifar-10-batches-py/batches.meta", "cifar-10-batches-py/data_batch_5",
                        "cifar-10-batches-py/test_batch")),
    "CIFAR100": _Format(lambda t, d: _write_cifar(t, d, cifar100=True), ("train", "test"),
                        ("cifar-100-python/meta", "cifar-100-python/train", "cifar-100-python/test")),
    "Food101": _Format(_write_food101, ("train", "test"),
                       ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json")),
    "DTD": _Format(_write_dtd, ("train", "val", "test"),
                   ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt",
                    "dtd/dtd/labels/test1.txt")),
    "Pets": _Format(_write_pets, ("trainval", "test"),
                    ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
                     "oxford-iiit-pet/annotations/test.txt")),
    "Flowers": _Format(_write_flowers, ("train", "val", "test"),
                       ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat")),
    "Cars": _Format(_write_cars, ("train", "test"),
                    ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                     "stanford_cars/cars_test_annos_withlabels.mat", "stanford_cars/cars_train",
                     "stanford_cars/cars_test")),
    "Aircraft": _Format(_write_aircraft, ("train", "val", "test"),
                        ("fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt",
                         "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                         "fgvc-aircraft-2013b/data/images_variant_test.txt")),
    "SUN397": _Format(_write_sun397, ("all",), ("SUN397/ClassName.txt",)),
    "Caltech101": _Format(_write_caltech101, ("all",), ("caltech101/101_ObjectCategories/BACKGROUND_Google",)),
    "VOC2007": _Format(_write_voc2007, ("trainval", "test"),
                       ("VOCdevkit/VOC2007/Annotations", "VOCdevkit/VOC2007/JPEGImages",
                        "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", "VOCdevkit/VOC2007/ImageSets/Main/test.txt")),
    "ImageNet": _Format(_write_imagenet, ("train", "test"), ("train", "val", "LOC_synset_mapping.txt")),
}
assert set(_FORMATS) == {*TRANSFER_SET_NAMES, *PROBE_SET_NAMES}, "every transfer and probe data set needs a writer"


# ---------------------------------------------------------------------------------------------------------------
# Public writers


def _check_name(name: str) -> None:
    if name not in _FORMATS:
        raise ValueError(f"unknown transfer data set {name!r}; expected one of "
                         f"{', '.join((*TRANSFER_SET_NAMES, *PROBE_SET_NAMES))}")


def transfer_set_params(
    name: str,
    *,
    classes: int | None = None,
    n_train: int = 5,
    n_val: int = 2,
    n_test: int = 3,
    size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
    **render_kwargs: Any,
) -> dict[str, Any]:
    """The manifest parameters of data set ``name`` (validated); see `write_transfer_set`."""
    _check_name(name)
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(value) != value or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if classes is not None and (int(classes) != classes or classes < 2):
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    if name in ("CIFAR10", "CIFAR100") and size != CIFAR_SIZE:
        raise ValueError(f"{name} images are {CIFAR_SIZE}x{CIFAR_SIZE} in the CIFAR python format; size must be "
                         f"{CIFAR_SIZE}, got {size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} pixels, got {size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    per_split = {"train": n_train, "trainval": n_train, "val": n_val, "test": n_test, "all": n_train + n_test}
    params = {
        "transfer_sets_version": TRANSFER_SETS_VERSION,
        "name": name,
        "classes": min(int(classes or CLASS_COUNTS[name]), CLASS_COUNTS[name]),
        "images": {split: int(per_split[split]) for split in _FORMATS[name].splits},
        "size": int(size),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "style": dataclasses.asdict(digit_style(render_kwargs, VOC_STYLE if name == "VOC2007" else None)),
    }
    if name == "VOC2007":
        params |= {"digits_per_image": list(VOC_DIGITS_PER_IMAGE), "max_box_iou": VOC_MAX_BOX_IOU}
    return params


def generated_set_params(name: str, data: Any) -> dict[str, Any]:
    """The parameters of generated set ``name`` for a run on pretraining data ``data`` (`mec.config.DataConfig`):
    the run's digit style and source split (`evals.pretraining_style`); the ImageNet stand-in then its own style
    and counts (`IMAGENET_STANDIN`) at the run's image size, since the probe reads it with the run's transform."""
    params = pretraining_style(data)
    if name == "ImageNet":
        params |= IMAGENET_STANDIN | {"size": data.image_size}
    return params


def write_transfer_set(name: str, root: str | Path, **params: Any) -> Path:
    """Write the miniature of transfer data set ``name`` (a `TRANSFER_SET_NAMES` or `PROBE_SET_NAMES` entry) at
    ``root``; return the folder to pass as the protocol's ``options.root`` (``root`` itself, for every name).

    Parameters: ``classes`` (at most this many, default and cap the real data set's `CLASS_COUNTS`), ``n_train``
    / ``n_val`` / ``n_test`` (images per class in the training (train / trainval), official validation and test
    splits; SUN397 and Caltech-101: ``n_train + n_test`` per class in their single folder; VOC2007: ``n_train *
    classes`` trainval and ``n_test * classes`` test scenes), ``size`` (image side in pixels; the CIFAR formats
    fix it at 32), ``seed``, ``val_fraction`` (the source digits' split, as `mec.digits.split_sources`) and
    `mec.digits.DigitStyle` fields. Layouts: the ``write_<name>`` functions.
    """
    settings = transfer_set_params(name, **params)
    fmt = _FORMATS[name]
    return write_tree(root, settings, fmt.expected, lambda staging: fmt.write(staging, _Digits(settings)))


def write_transfer_sets(root: str | Path, names: Iterable[str] = TRANSFER_SET_NAMES, **params: Any) -> dict[str, Path]:
    """`write_transfer_set` for each of ``names`` under ``root/<name>``: {name: the root to pass for it}.
    ``classes`` caps each data set at its own count; the names are checked before anything is written."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        transfer_set_params(name, **params)
    return {name: write_transfer_set(name, Path(root) / name, **params) for name in names}


def write_cifar10(root: str | Path, **params: Any) -> Path:
    """CIFAR-10's python version: ``root/cifar-10-batches-py/data_batch_{1..5}`` (the shuffled training images
    in five pickles), ``test_batch`` and ``batches.meta``; each batch a dict with ``data`` (uint8 [N, 3072], R, G
    and B planes of 32x32), ``labels``, ``filenames``, ``batch_label``. torchvision checks each file's MD5."""
    return write_transfer_set("CIFAR10", root, **params)


def write_cifar100(root: str | Path, **params: Any) -> Path:
    """CIFAR-100's python version: ``root/cifar-100-python/{train,test}`` (``data``, ``fine_labels``,
    ``coarse_labels`` = fine // 5, ``filenames``) and ``meta`` (``fine_label_names``, ``coarse_label_names``).
    torchvision checks each file's MD5."""
    return write_transfer_set("CIFAR100", root, **params)


def write_food101(root: str | Path, **params: Any) -> Path:
    """Food-101: ``root/food-101/images/<class>/<id>.jpg``, ``meta/{train,test}.json`` ({class: ["<class>/<id>",
    ...]}), ``meta/{train,test}.txt``, ``meta/classes.txt``, ``meta/labels.txt``. Labels: sorted class names."""
    return write_transfer_set("Food101", root, **params)


def write_dtd(root: str | Path, **params: Any) -> Path:
    """DTD: ``root/dtd/dtd/images/<class>/<class>_NNNN.jpg`` and ``root/dtd/dtd/labels/{train,val,test}1.txt``
    ("<class>/<file>" lines; partition 1 only, the protocol's). Labels: sorted class names of the split (every
    class is in every split)."""
    return write_transfer_set("DTD", root, **params)


def write_pets(root: str | Path, **params: Any) -> Path:
    """Oxford-IIIT Pet: ``root/oxford-iiit-pet/images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``
    ("<image> <class id from 1> <species 1 cat / 2 dog> <breed id>"), ``annotations/list.txt`` (no trimaps: the
    segmentation target is not written)."""
    return write_transfer_set("Pets", root, **params)


def write_flowers(root: str | Path, **params: Any) -> Path:
    """Flowers-102: ``root/flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (``labels`` uint8 1 x N, from 1)
    and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: image numbers). torchvision checks both .mat MD5s."""
    return write_transfer_set("Flowers", root, **params)


def write_cars(root: str | Path, **params: Any) -> Path:
    """Stanford Cars: ``root/stanford_cars/cars_{train,test}/NNNNN.jpg``, ``devkit/cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat`` (``annotations``: struct array of bbox_x1, bbox_y1, bbox_x2, bbox_y2
    (the digit's box, 1-based), class (from 1), fname), ``devkit/cars_test_annos.mat`` (without class) and
    ``devkit/cars_meta.mat`` (``class_names`` cell)."""
    return write_transfer_set("Cars", root, **params)


def write_aircraft(root: str | Path, **params: Any) -> Path:
    """FGVC-Aircraft 2013b: ``root/fgvc-aircraft-2013b/data/images/NNNNNNN.jpg``, ``{variants,families,
    manufacturers}.txt`` and ``images_{variant,family,manufacturer}_{train,val,trainval,test}.txt`` ("<id>
    <name>" lines), ``images_{split}.txt`` and ``images_box.txt``."""
    return write_transfer_set("Aircraft", root, **params)


def write_sun397(root: str | Path, **params: Any) -> Path:
    """SUN397: ``root/SUN397/ClassName.txt`` ("/<initial>/<class>" lines) and
    ``root/SUN397/<initial>/<class>/sun_NNNNNNNN.jpg`` (no official split: the protocol draws a seeded one)."""
    return write_transfer_set("SUN397", root, **params)


def write_caltech101(root: str | Path, **params: Any) -> Path:
    """Caltech-101: ``root/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg`` (numbered from 1, nothing
    else in the folder: torchvision counts its entries) and ``BACKGROUND_Google`` (digit-free backgrounds, which
    torchvision requires and drops). No Annotations folder: the "annotation" target is not written."""
    return write_transfer_set("Caltech101", root, **params)


def write_voc2007(root: str | Path, **params: Any) -> Path:
    """Pascal VOC 2007: ``root/VOCdevkit/VOC2007/JPEGImages/NNNNNN.jpg``, ``Annotations/NNNNNN.xml`` (objects
    named by `evals.transfer.VOC_CLASSES`), ``ImageSets/Main/{trainval,test}.txt`` and the classification lists
    ``ImageSets/Main/<class>_{trainval,test}.txt`` (ids trainval first, then test)."""
    return write_transfer_set("VOC2007", root, **params)


def write_imagenet(root: str | Path, **params: Any) -> Path:
    """ImageNet's ImageFolder layout: ``root/train/<wnid>/<wnid>_<n>.JPEG`` and ``root/val/<wnid>/
    ILSVRC2012_val_NNNNNNNN.JPEG`` (the test images: held-out digits), wnids ``n00000000`` ... in label order, and
    ``LOC_synset_mapping.txt`` ("<wnid> <class name>" lines). The stand-in a probe with ``dataset: imagenet``
    reads for a run on the digits (`generated_set_params`)."""
    return write_transfer_set("ImageNet", root, **params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.transfer_sets",
        description="Write offline miniatures of the transfer data sets (paper Table 8), rendered from the UCI "
                    "digits, in the files torchvision's readers expect.",
    )
    parser.add_argument("--name", choices=[*TRANSFER_SET_NAMES, *PROBE_SET_NAMES, "all"], required=True,
                        help="a data set, or all the transfer data sets (each under OUTPUT/<name>)")
    parser.add_argument("--output", type=Path, required=True, help="the tree's root folder (options.root)")
    parser.add_argument("--classes", type=int, default=None, help="at most this many classes (default: the real "
                        "data set's)")
    parser.add_argument("--n-train", type=int, default=5, help="training images per class")
    parser.add_argument("--n-val", type=int, default=2, help="validation images per class (DTD, Flowers, Aircraft)")
    parser.add_argument("--n-test", type=int, default=3, help="test images per class")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (CIFAR: 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = {"classes": args.classes, "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
              "size": args.size, "seed": args.seed}
    try:
        if args.name == "all":
            roots = write_transfer_sets(args.output, **params)
        else:
            roots = {args.name: write_transfer_set(args.name, args.output, **params)}
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, root in roots.items():
        manifest = json.loads((root / MANIFEST_NAME).read_text())
        counts = ", ".join(f"{split} {c['images'] if isinstance(c, dict) else c}"
                           for split, c in manifest["counts"].items())
        print(f"{name} ({manifest['params']['classes']} classes) in {root}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
