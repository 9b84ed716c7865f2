"""The offline detection data (evals.detection.scenes) and its registration in detectron2 (evals.detection.datasets).

Scenes are written in both formats, read back through detectron2 (`DatasetCatalog.get`, its own VOC loader, its
evaluators on perfect predictions), and broken copies check that bad input stops with one line naming the file.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from evals.detection import datasets, scenes
from evals.detection.datasets import (
    VOC_CLASSES,
    DatasetError,
    check_coco_json,
    register_coco,
    register_voc,
)
from evals.detection.scenes import DIGIT_CLASSES, write_coco_scenes, write_voc_scenes

N_TRAIN, N_TEST = 24, 16


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc_scenes(tmp_path_factory.mktemp("voc") / "scenes", n_trainval=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco_scenes(tmp_path_factory.mktemp("coco") / "scenes", n_train=N_TRAIN, n_val=N_TEST)


def test_scenes(voc_root: Path) -> None:
    """Digits inside the canvas, masks inside their boxes and disjoint, boxes overlapping little."""
    images, labels = scenes.load_source_digits()
    pools = scenes.split_sources(labels, 0.2, 0)
    counts = []
    for index in range(30):
        scene = scenes.render_scene(np.random.default_rng([0, 1, index]), images, labels, pools["val"])
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 4
        counts.append(len(scene.objects))
        union = np.zeros((64, 64), dtype=int)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert obj.source in pools["val"] and obj.label == labels[obj.source]
            inside = np.zeros_like(obj.mask)
            inside[y0:y1, x0:x1] = True
            assert obj.mask.any() and not (obj.mask & ~inside).any()
            union += obj.mask
        assert union.max() <= 1
        for i, a in enumerate(scene.objects):
            assert all(scenes.box_iou(a.box, b.box) <= 0.2 for b in scene.objects[i + 1 :])
    assert np.mean(counts) > 2  # most scenes get the digits they drew

    manifest = json.loads((voc_root / "manifest.json").read_text())
    assert manifest["counts"]["trainval"]["images"] == N_TRAIN and manifest["counts"]["test"]["images"] == N_TEST
    assert manifest["params"]["canvas"] == 64 and manifest["params"]["seed"] == 0


def test_mask_polygons_trace_outer_boundaries() -> None:
    mask_util = pytest.importorskip("pycocotools.mask")
    ring = np.zeros((10, 10), dtype=bool)
    ring[1:8, 3:8] = True
    ring[3:6, 5:6] = False  # a hole
    ring[0, 9] = True  # a second component, one pixel
    ring[8, 0] = ring[9, 1] = True  # a diagonal pair: one 8-connected component
    polygons = scenes.mask_polygons(ring)
    assert len(polygons) == 3 and all(len(p) >= 8 and len(p) % 2 == 0 for p in polygons)
    assert polygons[0] == [9.0, 0.0, 10.0, 0.0, 10.0, 1.0, 9.0, 1.0]
    assert polygons[1] == [3.0, 1.0, 8.0, 1.0, 8.0, 8.0, 3.0, 8.0]  # the ring: a rectangle of pixel corners
    rasterised = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, 10, 10))).astype(bool)
    filled = scenes.filled_mask(ring)
    np.testing.assert_array_equal(rasterised, filled)
    assert filled[3:6, 5:6].all() and filled.sum() == ring.sum() + 3


def test_coco_polygons_match_the_digit_masks(coco_root: Path) -> None:
    """annToMask(polygons) is the digit's mask with holes filled, exactly; its IoU with the mask is high."""
    coco_module = pytest.importorskip("pycocotools.coco")
    coco = coco_module.COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    images, labels = scenes.load_source_digits()
    pool = scenes.split_sources(labels, 0.2, 0)["val"]
    ious = []
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        scene = scenes.render_scene(np.random.default_rng([0, 1, index]), images, labels, pool)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [a["category_id"] - 1 for a in annotations] == [o.label for o in scene.objects]
        for annotation, obj in zip(annotations, scene.objects, strict=True):
            x0, y0, x1, y1 = obj.box
            assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0] and annotation["iscrowd"] == 0
            decoded = coco.annToMask(annotation).astype(bool)
            np.testing.assert_array_equal(decoded, scenes.filled_mask(obj.mask))
            assert annotation["area"] == decoded.sum()
            ious.append((decoded & obj.mask).sum() / (decoded | obj.mask).sum())
    # Polygons keep no holes: a thick zero or eight loses its hole (IoU down to about 0.64 in 758 digits).
    assert np.mean(ious) > 0.9 and np.mean(np.array(ious) > 0.7) >= 0.95 and min(ious) > 0.5
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DIGIT_CLASSES)


def test_writing_is_deterministic_and_kept_by_its_manifest(tmp_path: Path) -> None:
    for write, kwargs in ((write_voc_scenes, {"n_trainval": 5, "n_test": 3}), (write_coco_scenes, {"n_train": 5,
                                                                                                    "n_val": 3})):
        first = write(tmp_path / f"{write.__name__}-a", **kwargs)
        second = write(tmp_path / f"{write.__name__}-b", **kwargs)
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
        assert mismatch == [] and errors == []

    root = tmp_path / "write_voc_scenes-a"
    marker = root / "marker"
    marker.write_text("kept while the parameters match")
    write_voc_scenes(root, n_trainval=5, n_test=3)
    assert marker.exists()
    write_voc_scenes(root, n_trainval=5, n_test=3, seed=1)
    assert not marker.exists()
    assert json.loads((root / "manifest.json").read_text())["params"]["seed"] == 1
    assert len((root / "ImageSets" / "Main" / "trainval.txt").read_text().split()) == 5
    assert not list(tmp_path.glob(".*"))  # no staging or retired folder left behind

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not yours")
    with pytest.raises(FileExistsError, match="has no manifest.json"):
        write_coco_scenes(foreign, n_train=2, n_val=2)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    with pytest.raises(ValueError, match="unknown digit render parameters"):
        write_voc_scenes(tmp_path / "x", n_trainval=2, n_test=2, colour="red")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scenes.main(["--format", "coco", "--output", str(tmp_path / "c"), "--n-train", "3", "--n-test", "2",
                        "--canvas", "48", "--seed", "3"]) == 0
    assert "coco digit scenes in" in capsys.readouterr().out
    data = json.loads((tmp_path / "c" / "annotations" / "instances_train2017.json").read_text())
    assert len(data["images"]) == 3 and data["images"][0]["width"] == 48
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "other").write_text("")
    assert scenes.main(["--format", "voc", "--output", str(tmp_path / "v")]) == 2
    assert "refusing to replace" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Through detectron2


@pytest.fixture(scope="module")
def d2():
    return pytest.importorskip("detectron2.data")


def _perfect_outputs(dicts, *, masks: list[list[np.ndarray]] | None = None):
    """Model outputs that predict every ground-truth box (score 1), and masks when given."""
    import torch
    from detectron2.structures import Boxes, BoxMode, Instances

    outputs = []
    for index, record in enumerate(dicts):
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.int64)
        if masks is not None:
            instances.pred_masks = torch.from_numpy(np.stack(masks[index])) if masks[index] else torch.zeros(
                (0, record["height"], record["width"]), dtype=torch.bool)
        outputs.append({"instances": instances})
    return outputs


def test_voc_scenes_through_detectron2(d2, voc_root: Path, coco_root: Path) -> None:
    from detectron2.data.datasets.pascal_voc import load_voc_instances
    from detectron2.evaluation import PascalVOCDetectionEvaluator

    name = register_voc("test_digit_scenes_voc_test", voc_root, "test", 2007, DIGIT_CLASSES)
    assert register_voc(name, voc_root, "test", 2007, DIGIT_CLASSES) == name  # twice: a no-op
    meta = d2.MetadataCatalog.get(name)
    assert meta.evaluator_type == "pascal_voc" and meta.year == 2007 and meta.split == "test"
    assert meta.thing_classes == list(DIGIT_CLASSES) and Path(meta.dirname) == voc_root
    dicts = d2.DatasetCatalog.get(name)
    assert len(dicts) == N_TEST
    # detectron2's own loader reads the tree as it reads VOC2007, to the same dicts.
    theirs = load_voc_instances(str(voc_root), "test", DIGIT_CLASSES)
    assert [(str(d["image_id"]), d["height"], d["width"], d["annotations"]) for d in theirs] == [
        (d["image_id"], d["height"], d["width"], d["annotations"]) for d in dicts
    ]
    manifest = json.loads((voc_root / "manifest.json").read_text())
    assert sum(len(d["annotations"]) for d in dicts) == manifest["counts"]["test"]["objects"]

    # The VOC test scenes are the COCO val scenes (same seed): the same boxes, 1-based in the XML.
    coco_name = register_coco("test_digit_scenes_coco_val_for_voc", coco_root / "annotations" /
                              "instances_val2017.json", coco_root / "val2017")
    coco_dicts = d2.DatasetCatalog.get(coco_name)
    for voc_record, coco_record in zip(dicts, coco_dicts, strict=True):
        assert [(a["category_id"], a["bbox"]) for a in voc_record["annotations"]] == [
            (a["category_id"], [x, y, x + w, y + h]) for a in coco_record["annotations"] for x, y, w, h in [a["bbox"]]
        ]

    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    evaluator.process(dicts, _perfect_outputs(dicts))
    result = evaluator.evaluate()["bbox"]
    assert result["AP50"] == pytest.approx(100.0) and result["AP"] == pytest.approx(100.0)


def test_coco_scenes_through_detectron2(d2, coco_root: Path) -> None:
    pytest.importorskip("pycocotools")
    from detectron2.evaluation import COCOEvaluator

    json_file = coco_root / "annotations" / "instances_val2017.json"
    name = register_coco("test_digit_scenes_coco_val", json_file, coco_root / "val2017")
    assert register_coco(name, json_file, coco_root / "val2017") == name
    meta = d2.MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(DIGIT_CLASSES)
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(10)}
    dicts = d2.DatasetCatalog.get(name)  # load_coco_json sets the same metadata again: no conflict
    assert len(dicts) == N_TEST and all(Path(d["file_name"]).is_file() for d in dicts)
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for d in dicts for a in d["annotations"])

    images, labels = scenes.load_source_digits()
    pool = scenes.split_sources(labels, 0.2, 0)["val"]
    masks = [[o.mask for o in scenes.render_scene(np.random.default_rng([0, 1, i]), images, labels, pool).objects]
             for i in range(N_TEST)]
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, use_fast_impl=False)
    evaluator.reset()
    evaluator.process(dicts, _perfect_outputs(dicts, masks=masks))
    result = evaluator.evaluate()
    assert result["bbox"]["AP"] == pytest.approx(100.0)
    # The source masks keep the holes the polygons fill: a few digits fall under the higher IoU thresholds.
    assert result["segm"]["AP50"] == pytest.approx(100.0) and result["segm"]["AP"] > 85


def test_registering_again_with_other_arguments_replaces(d2, tmp_path: Path, voc_root: Path) -> None:
    copy = Path(shutil.copytree(voc_root, tmp_path / "copy"))
    name = register_voc("test_digit_scenes_replace", voc_root, "trainval", 2007, DIGIT_CLASSES)
    register_voc(name, copy, "test", 2012, DIGIT_CLASSES)
    meta = d2.MetadataCatalog.get(name)
    assert (Path(meta.dirname), meta.split, meta.year) == (copy, "test", 2012)
    assert len(d2.DatasetCatalog.get(name)) == N_TEST
    # detectron2's built-in names are replaced too (and restored for the tests that come after)
    builtin = "voc_2007_test"
    loader, metadata = d2.DatasetCatalog[builtin], d2.MetadataCatalog.get(builtin).as_dict()
    try:
        register_voc(builtin, copy, "test", 2007, DIGIT_CLASSES)
        assert d2.MetadataCatalog.get(builtin).thing_classes == list(DIGIT_CLASSES)
    finally:
        d2.DatasetCatalog.remove(builtin)
        d2.DatasetCatalog.register(builtin, loader)
        d2.MetadataCatalog.remove(builtin)
        d2.MetadataCatalog.get(builtin).set(**{k: v for k, v in metadata.items() if k != "name"})
        datasets._REGISTERED.pop(builtin, None)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file


def _one_line(error: pytest.ExceptionInfo[DatasetError], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.fixture
def voc_copy(tmp_path: Path, voc_root: Path) -> Path:
    return Path(shutil.copytree(voc_root, tmp_path / "VOC2007"))


def test_voc_layout_errors(d2, tmp_path: Path, voc_copy: Path) -> None:
    missing = tmp_path / "datasets" / "VOC2007"
    with pytest.raises(DatasetError) as error:
        register_voc("test_bad_voc", missing, "test", 2007, VOC_CLASSES)
    assert "no such folder; expected a Pascal VOC tree (Annotations/" in _one_line(error, missing)
    with pytest.raises(DatasetError) as error:
        register_voc("test_bad_voc", voc_copy, "val", 2007, DIGIT_CLASSES)
    assert "no ImageSets/Main/val.txt; expected a Pascal VOC tree" in _one_line(error, voc_copy)
    (voc_copy / "JPEGImages" / "000030.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        register_voc("test_bad_voc", voc_copy, "test", 2007, DIGIT_CLASSES)
    assert "no such file, listed in ImageSets/Main/test.txt" in _one_line(error, voc_copy / "JPEGImages" /
                                                                          "000030.jpg")
    with pytest.raises(DatasetError, match="VOC year 2010"):
        register_voc("test_bad_voc", voc_copy, "trainval", 2010, DIGIT_CLASSES)
    assert "test_bad_voc" not in d2.DatasetCatalog.list()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate", "not a VOC annotation (XML does not parse"),
        ("no_xmax", "not a VOC annotation (no bndbox/xmax)"),
        ("bad_number", "not a VOC annotation (bndbox/ymin is 'twelve', not a number)"),
        ("dog", "object 'dog' is not one of the 10 classes (zero, one,"),
    ],
)
def test_voc_annotation_errors(d2, voc_copy: Path, damage: str, expected: str) -> None:
    anno_file = voc_copy / "Annotations" / f"{N_TRAIN + 3:06d}.xml"
    if damage == "truncate":
        anno_file.write_bytes(anno_file.read_bytes()[:200])
    else:
        tree = ET.parse(anno_file)
        obj = tree.getroot().find("object")
        if damage == "no_xmax":
            obj.find("bndbox").remove(obj.find("bndbox/xmax"))
        elif damage == "bad_number":
            obj.find("bndbox/ymin").text = "twelve"
        else:
            obj.find("name").text = "dog"
        tree.write(anno_file)
    name = register_voc(f"test_bad_voc_{damage}", voc_copy, "test", 2007, DIGIT_CLASSES)
    with pytest.raises(DatasetError) as error:
        d2.DatasetCatalog.get(name)
    assert expected in _one_line(error, anno_file)


def test_coco_errors(d2, tmp_path: Path, coco_root: Path) -> None:
    source = coco_root / "annotations" / "instances_val2017.json"
    image_root = coco_root / "val2017"
    missing = tmp_path / "missing.json"
    with pytest.raises(DatasetError) as error:
        register_coco("test_bad_coco", missing, image_root)
    assert "no such file; expected a COCO instances JSON" in _one_line(error, missing)

    not_json = tmp_path / "not.json"
    not_json.write_text("{'images': [")
    with pytest.raises(DatasetError) as error:
        register_coco("test_bad_coco", not_json, image_root)
    assert "not JSON (" in _one_line(error, not_json)

    data = json.loads(source.read_text())
    no_categories = tmp_path / "no_categories.json"
    no_categories.write_text(json.dumps({k: v for k, v in data.items() if k != "categories"}))
    with pytest.raises(DatasetError) as error:
        register_coco("test_bad_coco", no_categories, image_root)
    assert "not a COCO instances file (no 'categories' list)" in _one_line(error, no_categories)

    data["annotations"][2]["category_id"] = 91
    unknown = tmp_path / "unknown_category.json"
    unknown.write_text(json.dumps(data))
    ann_id = data["annotations"][2]["id"]
    with pytest.raises(DatasetError) as error:
        register_coco("test_bad_coco", unknown, image_root)
    assert f"annotation {ann_id} has category_id 91, not one of the 10 categories (1..10)" in _one_line(error, unknown)

    data["annotations"][2]["category_id"] = 1
    data["annotations"][2]["image_id"] = 9999
    orphan = tmp_path / "orphan.json"
    orphan.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as error:
        check_coco_json(orphan)
    assert f"annotation {ann_id} has image_id 9999, not one of the {N_TEST} images" in _one_line(error, orphan)

    with pytest.raises(DatasetError) as error:
        register_coco("test_bad_coco", source, tmp_path / "no_images")
    _one_line(error, tmp_path / "no_images")
    assert "test_bad_coco" not in d2.DatasetCatalog.list()


# ---------------------------------------------------------------------------------------------------------------
# Unreadable images, sizes that do not match the image, boxes outside it


def _set_xml(anno_file: Path, **fields: str) -> None:
    """Set <size>/<width>-like fields ("width", "height") or the first object's bndbox fields ("xmin", ...)."""
    tree = ET.parse(anno_file)
    root = tree.getroot()
    for key, value in fields.items():
        path = f"size/{key}" if key in ("width", "height") else f"object/bndbox/{key}"
        root.find(path).text = value
    tree.write(anno_file)


def test_box_problem() -> None:
    assert datasets.box_problem(0, 0, 64, 64, 64, 64) is None  # the whole image
    assert datasets.box_problem(-1, -2, 66, 65.5, 64, 64) is None  # up to BORDER_TOLERANCE past it
    assert datasets.box_problem(10, 10, 10, 20, 64, 64) is None  # zero width (COCO train2017 has two)
    assert "negative width or height" in datasets.box_problem(10, 10, 5, 20, 64, 64)
    for outside in [(70, 0, 90, 10), (-30, 0, -5, 10), (0, 64, 10, 80), (64, 0, 70, 10), (65, 10, 65, 20)]:
        assert "lies wholly outside the 64x64 image" in datasets.box_problem(*outside, 64, 64)
    assert "reaches 436 px past the 64x64 image (at most 2 accepted" in datasets.box_problem(4, 4, 500, 20, 64, 64)
    assert "reaches 51 px past" in datasets.box_problem(-51, 4, 20, 20, 64, 64)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"xmax": "500"}, "box (xmin, ymin, xmax, ymax) = ({xmin}, {ymin}, 500, {ymax}) reaches 436 px past the "
                          "64x64 image (at most 2 accepted"),
        ({"xmin": "-50"}, "box (xmin, ymin, xmax, ymax) = (-50, {ymin}, {xmax}, {ymax}) reaches 51 px past the 64x64"),
        ({"xmin": "100", "xmax": "120"}, "box (xmin, ymin, xmax, ymax) = (100, {ymin}, 120, {ymax}) lies wholly "
                                         "outside the 64x64 image"),
    ],
    ids=["xmax_far_past", "xmin_negative", "wholly_outside"],
)
def test_voc_boxes_outside_the_image_are_refused(d2, voc_copy: Path, fields: dict, expected: str) -> None:
    anno_file = voc_copy / "Annotations" / f"{N_TRAIN + 3:06d}.xml"
    box = {k: ET.parse(anno_file).getroot().find(f"object/bndbox/{k}").text for k in ("xmin", "ymin", "xmax", "ymax")}
    _set_xml(anno_file, **fields)
    name = register_voc("test_bad_voc_box", voc_copy, "test", 2007, DIGIT_CLASSES)
    with pytest.raises(DatasetError) as error:
        d2.DatasetCatalog.get(name)
    assert expected.format(**box) in _one_line(error, anno_file)


def test_voc_boxes_on_the_border_pass(d2, voc_copy: Path) -> None:
    anno_file = voc_copy / "Annotations" / f"{N_TRAIN + 3:06d}.xml"
    _set_xml(anno_file, xmin="0", ymin="1", xmax="65", ymax="64")  # 1 px past on two sides: real VOC has such
    name = register_voc("test_voc_border_box", voc_copy, "test", 2007, DIGIT_CLASSES)
    record = next(d for d in d2.DatasetCatalog.get(name) if d["image_id"] == anno_file.stem)
    assert record["annotations"][0]["bbox"] == [-1.0, 0.0, 65.0, 64.0]  # as detectron2 loads it; it clips in training


def test_voc_size_that_does_not_match_the_image_stops_at_loading(d2, voc_copy: Path) -> None:
    anno_file = voc_copy / "Annotations" / f"{N_TRAIN + 3:06d}.xml"
    _set_xml(anno_file, width="640")
    for role in ("train", "test"):
        name = register_voc(f"test_voc_size_{role}", voc_copy, "test", 2007, DIGIT_CLASSES, role=role)
        with pytest.raises(DatasetError) as error:
            d2.DatasetCatalog.get(name)
        image = voc_copy / "JPEGImages" / f"{N_TRAIN + 3:06d}.jpg"
        assert f"<size> says 640x64 but {image} is 64x64 (width x height)" in _one_line(error, anno_file)


def test_voc_unreadable_images_stop_a_test_split_and_pass_a_training_split(d2, voc_copy: Path) -> None:
    image = voc_copy / "JPEGImages" / f"{N_TRAIN + 3:06d}.jpg"
    image.write_bytes(b"")
    with pytest.raises(DatasetError) as error:  # empty: at registration (a stat per image)
        register_voc("test_voc_empty_image", voc_copy, "test", 2007, DIGIT_CLASSES)
    assert "empty file (0 bytes), listed in ImageSets/Main/test.txt; expected an image (a test split's" in _one_line(
        error, image)
    assert "test_voc_empty_image" not in d2.DatasetCatalog.list()

    image.write_bytes(b"not a jpeg at all")
    name = register_voc("test_voc_garbage_image", voc_copy, "test", 2007, DIGIT_CLASSES)
    with pytest.raises(DatasetError) as error:  # not an image: when its header is read, at loading
        d2.DatasetCatalog.get(name)
    assert "cannot be read as an image (cannot identify image file" in _one_line(error, image)

    for content in (b"", b"not a jpeg at all"):  # a training split keeps the record: the trainer skips the image
        image.write_bytes(content)
        name = register_voc(f"test_voc_train_unreadable_{len(content)}", voc_copy, "test", 2007, DIGIT_CLASSES,
                            role="train")
        assert str(image) in [d["file_name"] for d in d2.DatasetCatalog.get(name)]


def test_coco_boxes_and_unreadable_images(d2, tmp_path: Path, coco_root: Path) -> None:
    source = coco_root / "annotations" / "instances_val2017.json"
    image_root = coco_root / "val2017"
    data = json.loads(source.read_text())
    annotation = data["annotations"][2]
    ann_id, image_id = annotation["id"], annotation["image_id"]
    file_name = next(i["file_name"] for i in data["images"] if i["id"] == image_id)
    x, y, w, h = annotation["bbox"]
    cases = [
        ([x, y, -w, h], "has a negative width or height"),
        ([x, y, w, -3], "has a negative width or height"),
        ([80, y, 10, h], "lies wholly outside the 64x64 image"),
        ([x, y, 500, h], f"reaches {x + 500 - 64:g} px past the 64x64 image"),
    ]
    for index, (bbox, expected) in enumerate(cases):
        annotation["bbox"] = bbox
        bad = tmp_path / f"bad_box_{index}.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(DatasetError) as error:
            register_coco("test_bad_coco_box", bad, image_root)
        message = _one_line(error, bad)
        assert f"annotation {ann_id} (image {image_id} {file_name}) has bbox [x, y, width, height] = {bbox}" in message
        assert expected in message
    # Float boxes a fraction past the border and zero-height boxes are real COCO: they pass.
    annotation["bbox"] = [x, y, 64.5 - x, 0.0]
    edge = tmp_path / "edge_box.json"
    edge.write_text(json.dumps(data))
    check_coco_json(edge, image_root)
    assert "test_bad_coco_box" not in d2.DatasetCatalog.list()

    images = Path(shutil.copytree(image_root, tmp_path / "val2017"))
    (images / file_name).write_bytes(b"")
    with pytest.raises(DatasetError) as error:
        register_coco("test_coco_empty_image", source, images)
    assert f"empty file (0 bytes), listed in {source}; expected an image" in _one_line(error, images / file_name)
    assert register_coco("test_coco_empty_train_image", source, images, role="train") == "test_coco_empty_train_image"
