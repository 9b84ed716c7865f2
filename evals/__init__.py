"""Evaluation protocols for MEC backbones: one small entry point per protocol, `evaluate(job) -> metrics`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# protocol name -> module whose `evaluate(EvalJob)` runs it
PROTOCOLS = {
    "knn": "evals.knn",
    "linear_probe": "evals.linear_probe",
    "finetune": "evals.finetune",
    "tsne": "evals.tsne",
    "transfer": "evals.transfer",
    "transfer_finetune": "evals.transfer_finetune",
    "detection": "evals.detection",
    "tracking": "evals.tracking",
}

# protocol -> the options its entry point reads. One place for both checks: each protocol refuses any other when
# it runs (`evals.job.EvalJob.check_options`), and the DAG when it plans (`workflow.experiment`), before the
# pretraining a misspelt option would otherwise wait for.
_CLASSIFIER_OPTIONS = ("epochs", "batch_size", "base_lr", "momentum", "weight_decay", "lars", "trust_coefficient",
                       "split", "dataset", "root")  # `evals.supervised.Recipe`'s fields and what data it reads
PROTOCOL_OPTIONS: dict[str, tuple[str, ...]] = {
    "knn": ("k", "temperature"),
    "linear_probe": _CLASSIFIER_OPTIONS,
    "finetune": _CLASSIFIER_OPTIONS,
    "tsne": ("max_points", "seed", "perplexity"),
    "transfer": ("dataset", "root", "C", "image_size", "seed"),
    "transfer_finetune": ("dataset", "root", "lrs", "wds", "steps", "batch_size", "image_size", "seed",
                          "checkpoint_every", "wd_divided_by_lr"),
    "detection": ("recipe", "root", "seed", "lr", "ims_per_batch", "max_iter_scale", "max_iter", "overrides",
                  "log_period", "scenes", "cpu_threads"),
    "tracking": ("task", "root", "split", "head", "stride", "batch_size", "videos", "runner", "unitrack",
                 "unitrack_overrides", "seed"),
}

# protocol -> the splits of the evaluated run's data whose frozen features it reads (`evals.features`). The DAG
# extracts each (run, split) once, in a features job of its own, before the evaluations that read it start.
# (transfer reads features of other data sets and extracts them itself.)
FEATURE_SPLITS: dict[str, tuple[str, ...]] = {
    "knn": ("train", "val"),
    "tsne": ("train",),
}

# Detection recipes (evals/detection/recipes.py) that train on the offline digit scenes: recipe -> the scenes'
# format. The DAG writes them (evals/detection/scenes.py) before the jobs; the others read datasets.detectron2.
DETECTION_SCENE_RECIPES: dict[str, str] = {"digits_voc": "voc", "digits_coco": "coco"}


# The data sets an experiment names folders for (its ``datasets`` keys) -> the `mec.data` name each is read as:
# a pretraining run's ``data.name`` and what option ``dataset`` of the classifier protocols reads instead of it.
DATA_NAMES = {"imagenet": "imagefolder", "places365": "places365", "cifar10": "cifar10", "cifar100": "cifar100"}
# The protocols training a classifier on a labelled data set (`evals.supervised`): the pretraining run's, or with
# option ``dataset`` (a `DATA_NAMES` key) another one, read with the run's image size and augment recipe.
CLASSIFIER_PROTOCOLS = ("linear_probe", "finetune")
# Those the DAG renders offline from the digits (`evals.transfer_sets`) for runs on the digits when the experiment
# names no folder for them: ``datasets`` key -> the generated set's name.
GENERATED_PROBE_SETS = {"imagenet": "ImageNet"}

# The data sets of the transfer protocols (paper Table 8, `evals.transfer.DATASETS` reads each), in its order.
TRANSFER_DATASETS = ("Food101", "CIFAR10", "CIFAR100", "SUN397", "Cars", "Aircraft", "VOC2007", "DTD", "Pets",
                     "Caltech101", "Flowers")


@dataclass(frozen=True)
class TrackingTask:
    """One row of paper Table 4 (`evals.tracking`): its benchmark, where an experiment config names that
    benchmark's folder (``datasets.<key>``), and the layout the DAG writes the offline digit videos in."""

    benchmark: str
    datasets_key: str
    video_format: str


TRACKING_TASKS: dict[str, TrackingTask] = {
    "sot": TrackingTask("OTB-2015", "otb", "otb"),
    "vos": TrackingTask("DAVIS-2017", "davis", "davis"),
    "mot": TrackingTask("MOT16", "mot16", "mot"),
    "mots": TrackingTask("MOTS20", "mots", "mots"),
    "posetrack": TrackingTask("PoseTrack18", "posetrack", "posetrack"),
}

# Renderer knobs of the pretraining digits (`data.digits.options`) that the generated transfer data (detection
# scenes, tracking videos) inherit: colours, texture, rotation. Not the scale: scenes and videos place their
# digits at sizes of their own.
INHERITED_DIGITS_STYLE = ("palette_size", "texture_strength", "texture_cells", "stripe_cycles", "max_rotation_deg",
                          "min_colour_distance", "noise_std")


def pretraining_style(data: Any) -> dict[str, Any]:
    """What generated transfer data inherits from a pretraining data config (`mec.config.DataConfig`): for the
    digits, the renderer's style (`INHERITED_DIGITS_STYLE`) and the source split (val_fraction, seed), so no
    evaluated digit was seen in pretraining; nothing for other data.

    The style matters more than anything else: on detection scenes in the renderer's default style (a random colour
    pair and texture per image) the offline MEC backbone, pretrained on one colour pair without texture, fell below
    a random-init one (AP50 0.24 vs 0.49); in its own style it beats it (0.92 vs 0.83).
    """
    if data is None or data.name != "digits":
        return {}
    style = {k: v for k, v in data.digits.options.items() if k in INHERITED_DIGITS_STYLE}
    return style | {"val_fraction": data.digits.val_fraction, "seed": data.digits.seed}


def run_protocol(job: Any) -> dict[str, float]:
    """Entry point of an evaluation job (what the launcher pickles): import the protocol and run it."""
    if job.protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {job.protocol!r}; known: {sorted(PROTOCOLS)}")
    return importlib.import_module(PROTOCOLS[job.protocol]).evaluate(job)
