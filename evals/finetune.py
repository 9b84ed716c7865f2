"""Semi-supervised fine-tuning on a fixed label subset (paper §4.1): the whole network, linear head on top.

ImageNet: SimCLR's 1% / 10% lists (``split`` option, checked against the published checksum when the split
is resolved, `evals.splits.resolve_split`), SGD batch 1024, momentum 0.9, wd 0, base lr 0.05 (x batch/256),
50 epochs, the probe's augmentations; top-1 and top-5. CIFAR and the offline digits use class-balanced
subsets written once by the workflow (`evals.splits`), at their own scale. ``dataset`` and ``root`` fine-tune on
another data set than the pretraining one, as the linear probe's (`evals.supervised.probe_data`).
"""

from __future__ import annotations

from evals.job import EvalJob
from evals.supervised import Recipe, train_classifier

DEFAULTS = {
    "imagenet": {"epochs": 50, "batch_size": 1024, "base_lr": 0.05},
    "cifar": {"epochs": 50, "batch_size": 256, "base_lr": 0.05},
    # Measured on the offline data: 50 epochs of 32 images at lr 0.0625 train; 20 epochs at 0.0125 did not.
    "digits": {"epochs": 50, "batch_size": 32, "base_lr": 0.5},
}


def evaluate(job: EvalJob) -> dict[str, float]:
    split = job.option("split", None)
    if split is None:
        raise ValueError("finetune needs options.split: a label-subset file (SimCLR's list or one we wrote)")
    recipe = Recipe.from_options(DEFAULTS[job.cfg.data.augment], job, finetune=True)
    return train_classifier(job, recipe, prefix="finetune")  # which split: the run's eval.split parameter
