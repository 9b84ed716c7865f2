"""Evaluation protocols for MEC backbones: one small entry point per protocol, `evaluate(job) -> metrics`."""

from __future__ import annotations

import importlib
from typing import Any

# protocol name -> module whose `evaluate(EvalJob)` runs it
PROTOCOLS = {
    "knn": "evals.knn",
    "linear_probe": "evals.linear_probe",
    "finetune": "evals.finetune",
    "tsne": "evals.tsne",
    "transfer": "evals.transfer",
    "detection": "evals.detection",
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


def run_protocol(job: Any) -> dict[str, float]:
    """Entry point of an evaluation job (what the launcher pickles): import the protocol and run it."""
    if job.protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {job.protocol!r}; known: {sorted(PROTOCOLS)}")
    return importlib.import_module(PROTOCOLS[job.protocol]).evaluate(job)
