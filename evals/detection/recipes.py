"""The detection recipes: which config file, which data sets (registered from a data root) and which evaluator.

- `voc0712`: `voc0712.yaml` (MoCo's VOC07+12 R50-C4, 24k iterations); `<root>/VOC2007` + `<root>/VOC2012`
  trainval -> `<root>/VOC2007` test; VOC07 11-point AP50, AP, AP75.
- `voc07`: `voc07.yaml` (VOC07 trainval only, iterations x 5011/16551); `<root>/VOC2007` trainval -> test.
- `coco`: `coco_mask_rcnn_c4_1x.yaml` (Mask R-CNN R50-C4 1x); `<root>/coco/{annotations,train2017,val2017}`;
  pycocotools box + mask AP.
- `digits_voc`: `digits_voc.yaml` (offline, a few minutes on a CPU); digit scenes in the VOC layout at `<root>`,
  rendered into the job's folder when no root is given; VOC07 11-point.
- `digits_coco`: `digits_coco.yaml` (with masks); digit scenes in the COCO layout at `<root>`, or rendered;
  pycocotools box + mask AP.

`build_cfg` resolves one recipe into a frozen detectron2 config: the backbone's shape from its metadata, the
registered data sets, the pixel statistics of the backbone's pretraining recipe (`mec.augment`, the one place they
are written), the learning rate, seed, output folder, and the caller's "KEY VALUE" overrides last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode, get_cfg

from evals import DETECTION_SCENE_RECIPES
from evals.detection.modeling import ARCHS, add_mec_config, set_backbone_shape
from mec.augment import CIFAR_MEAN, CIFAR_STD, DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# normalisation recipe of the backbone's pretraining (mec config data.augment) -> torchvision mean/std in [0, 1]
NORMALIZATION = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "digits": (DIGITS_MEAN, DIGITS_STD),
}
# Keys the recipe derives itself: an override of them would describe another network or another run.
PROTECTED_KEYS = ("MODEL.MEC_BACKBONE.", "MODEL.WEIGHTS", "OUTPUT_DIR", "DATASETS.TRAIN", "DATASETS.TEST", "SEED")


class RecipeError(ValueError):
    """A recipe, data root or override that cannot make a run; one line."""


@dataclass(frozen=True)
class DataSplit:
    """One data set of a recipe, relative to the data root."""

    key: str  # short name, part of the registered name
    format: str  # "voc" or "coco"
    folder: str  # voc: the VOC tree (Annotations, JPEGImages, ImageSets); coco: the image folder
    split: str = ""  # voc: the ImageSets/Main list; coco: the annotation json, relative to the root
    year: int = 2007  # voc: 2007 selects the 11-point metric


@dataclass(frozen=True)
class Recipe:
    config: str  # file in configs/
    train: tuple[DataSplit, ...]
    test: tuple[DataSplit, ...]
    evaluator: str  # "voc" or "coco"
    classes: str  # "voc", "digits" or "coco" (read from the annotation file)
    expects: Mapping[str, Any] = field(default_factory=dict)  # backbone arch / cifar_stem the config is made for
    root: str = ""  # what the data root holds, for messages
    scenes: str | None = None  # digits: the scenes format rendered when no root is given
    # torch threads of a CPU run (None: the process' default). The digits network's tensors are tiny: on a 2-core
    # machine shared with other work, 2 threads made a step 4-30x slower than 1 (OpenMP regions waiting for a
    # descheduled thread); 0.3-0.45 s per step with 1.
    cpu_threads: int | None = None


RECIPES: dict[str, Recipe] = {
    "voc0712": Recipe(
        "voc0712.yaml",
        (DataSplit("voc_2007_trainval", "voc", "VOC2007", "trainval", 2007),
         DataSplit("voc_2012_trainval", "voc", "VOC2012", "trainval", 2012)),
        (DataSplit("voc_2007_test", "voc", "VOC2007", "test", 2007),),
        "voc", "voc", {"arch": "resnet50", "cifar_stem": False},
        "detectron2's datasets/ layout: VOC2007/ and VOC2012/ (Annotations, JPEGImages, ImageSets/Main)"),
    "voc07": Recipe(
        "voc07.yaml",
        (DataSplit("voc_2007_trainval", "voc", "VOC2007", "trainval", 2007),),
        (DataSplit("voc_2007_test", "voc", "VOC2007", "test", 2007),),
        "voc", "voc", {"arch": "resnet50", "cifar_stem": False},
        "detectron2's datasets/ layout: VOC2007/ (Annotations, JPEGImages, ImageSets/Main)"),
    "coco": Recipe(
        "coco_mask_rcnn_c4_1x.yaml",
        (DataSplit("coco_2017_train", "coco", "coco/train2017", "coco/annotations/instances_train2017.json"),),
        (DataSplit("coco_2017_val", "coco", "coco/val2017", "coco/annotations/instances_val2017.json"),),
        "coco", "coco", {"arch": "resnet50", "cifar_stem": False},
        "detectron2's datasets/ layout: coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/"),
    "digits_voc": Recipe(
        "digits_voc.yaml",
        (DataSplit("digits_voc_trainval", "voc", ".", "trainval", 2007),),
        (DataSplit("digits_voc_test", "voc", ".", "test", 2007),),
        "voc", "digits", {"arch": "resnet18", "cifar_stem": True},
        "digit scenes in the VOC layout (evals.detection.scenes.write_voc_scenes)",
        scenes=DETECTION_SCENE_RECIPES["digits_voc"], cpu_threads=1),
    "digits_coco": Recipe(
        "digits_coco.yaml",
        (DataSplit("digits_coco_train", "coco", "train2017", "annotations/instances_train2017.json"),),
        (DataSplit("digits_coco_val", "coco", "val2017", "annotations/instances_val2017.json"),),
        "coco", "digits", {"arch": "resnet18", "cifar_stem": True},
        "digit scenes in the COCO layout (evals.detection.scenes.write_coco_scenes)",
        scenes=DETECTION_SCENE_RECIPES["digits_coco"], cpu_threads=1),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown detection recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def config_file(recipe: str) -> Path:
    return CONFIG_DIR / get_recipe(recipe).config


def pixel_statistics(normalization: str) -> tuple[list[float], list[float]]:
    """PIXEL_MEAN / PIXEL_STD (0-255 scale, RGB) of a pretraining normalisation recipe of `mec.augment`."""
    if normalization not in NORMALIZATION:
        raise RecipeError(f"unknown normalisation {normalization!r}; known: {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
    return [round(m * 255, 6) for m in mean], [round(s * 255, 6) for s in std]


def _class_names(recipe: Recipe) -> tuple[str, ...] | None:
    if recipe.classes == "voc":
        from evals.detection.datasets import VOC_CLASSES

        return tuple(VOC_CLASSES)
    if recipe.classes == "digits":
        from evals.detection.scenes import DIGIT_CLASSES

        return tuple(DIGIT_CLASSES)
    return None


def register_data(recipe_name: str, root: str | Path) -> tuple[list[str], list[str]]:
    """Register the recipe's train and test data sets under ``root``; returns their registered names.

    A missing folder or file stops with one line naming it and what the root should hold (`datasets.DatasetError`).
    The train sets are registered with role "train" (an unreadable image is skipped while training), the test
    sets with role "test" (it stops the run).
    """
    from evals.detection.datasets import DatasetError, register_coco, register_voc

    recipe = get_recipe(recipe_name)
    root = Path(root)
    if not root.is_dir():
        raise RecipeError(f"detection recipe {recipe_name}: data root {root} is not a folder; it should hold "
                          f"{recipe.root}")
    classes = _class_names(recipe)
    names = []
    for role, group in (("train", recipe.train), ("test", recipe.test)):
        registered = []
        for data in group:
            try:
                if data.format == "voc":
                    registered.append(register_voc(data.key, str(root / data.folder), data.split, data.year,
                                                   classes, role=role))
                else:
                    registered.append(register_coco(data.key, str(root / data.split), str(root / data.folder),
                                                    role=role))
            except DatasetError as error:
                raise RecipeError(f"detection recipe {recipe_name}: {error} (the root should hold {recipe.root})") \
                    from error
        names.append(registered)
    return names[0], names[1]


def _parse_overrides(overrides: Sequence[str]) -> list[str]:
    pairs: list[str] = []
    for item in overrides:
        if not isinstance(item, str) or len(item.split(None, 1)) != 2:
            raise RecipeError(f"detection override {item!r} is not a 'KEY VALUE' string (e.g. 'SOLVER.MAX_ITER 100')")
        key, value = item.split(None, 1)
        if key.startswith(PROTECTED_KEYS):
            raise RecipeError(f"detection override {key} is set by the recipe from the backbone, data root and "
                              "options; it cannot be overridden")
        pairs += [key, value]
    return pairs


def build_cfg(
    recipe: str,
    backbone_meta: Mapping[str, Any],
    weights_pkl: str | Path,
    output_dir: str | Path,
    *,
    root: str | Path,
    seed: int = 0,
    lr: float | None = None,
    max_iter_scale: float | None = None,
    ims_per_batch: int | None = None,
    normalization: str | None = None,
    overrides: Sequence[str] = (),
    register: bool = True,
) -> CfgNode:
    """The frozen detectron2 config of one run of ``recipe`` on the backbone ``backbone_meta`` describes.

    ``normalization`` is the backbone's pretraining normalisation (`mec.augment`: imagenet / cifar / digits;
    default: the recipe's data, ImageNet or digits). ``max_iter_scale`` scales MAX_ITER, STEPS, WARMUP_ITERS and
    CHECKPOINT_PERIOD together. ``register=False`` leaves the data sets unregistered (the config file's names).
    """
    spec = get_recipe(recipe)
    meta = {"arch": backbone_meta.get("arch"), "width": int(backbone_meta.get("width", 64)),
            "cifar_stem": bool(backbone_meta.get("cifar_stem", False))}
    if meta["arch"] not in ARCHS:
        raise RecipeError(f"detection needs a ResNet backbone ({', '.join(sorted(ARCHS))}), got arch {meta['arch']!r}")
    wrong = [f"{k}={meta[k]!r} (expected {v!r})" for k, v in spec.expects.items() if meta[k] != v]
    if wrong:
        raise RecipeError(f"backbone {backbone_meta.get('source', '')} does not fit detection recipe {recipe}: "
                          + ", ".join(wrong))
    cfg = add_mec_config(get_cfg())
    cfg.merge_from_file(str(CONFIG_DIR / spec.config))
    set_backbone_shape(cfg, meta["arch"], meta["width"], meta["cifar_stem"])
    norm = normalization or ("digits" if spec.classes == "digits" else "imagenet")
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = pixel_statistics(norm)
    cfg.MODEL.WEIGHTS = str(weights_pkl)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = int(seed)
    if register:
        train, test = register_data(recipe, root)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    if lr is not None:
        if not float(lr) > 0:
            raise RecipeError(f"detection lr must be > 0, got {lr!r}")
        cfg.SOLVER.BASE_LR = float(lr)
    if ims_per_batch is not None:
        if int(ims_per_batch) < 1:
            raise RecipeError(f"detection ims_per_batch must be >= 1, got {ims_per_batch!r}")
        cfg.SOLVER.IMS_PER_BATCH = int(ims_per_batch)
    if max_iter_scale is not None:
        scale = float(max_iter_scale)
        if not scale > 0:
            raise RecipeError(f"detection max_iter_scale must be > 0, got {max_iter_scale!r}")
        s = cfg.SOLVER
        s.MAX_ITER = max(1, round(s.MAX_ITER * scale))
        s.STEPS = tuple(max(1, round(step * scale)) for step in s.STEPS)
        s.WARMUP_ITERS = round(s.WARMUP_ITERS * scale)
        s.CHECKPOINT_PERIOD = max(1, round(s.CHECKPOINT_PERIOD * scale))
    try:
        cfg.merge_from_list(_parse_overrides(overrides))
    except (KeyError, ValueError, AssertionError, TypeError) as error:
        if isinstance(error, RecipeError):
            raise
        message = error.args[0] if error.args else repr(error)
        raise RecipeError(f"detection overrides {list(overrides)}: {message}") from error
    cfg.freeze()
    return cfg
