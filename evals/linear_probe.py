"""Linear probe: frozen backbone in eval mode, BN(affine=False) + Linear head (released MEC code).

ImageNet (reference.md §3): LARS-wrapped SGD (trust 0.001, no clipping), momentum 0.9, wd 0, batch 4096,
lr 0.03 x batch/256, 100 epochs, cosine per epoch; RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224).
CIFAR and the offline digits keep the recipe at their own scale (batch 256, fewer epochs for the digits).
Options override any recipe field (``epochs``, ``batch_size``, ``base_lr``, ``lars``, ...); ``split`` names a
label-subset file (few-label probe).
"""

from __future__ import annotations

from evals.job import EvalJob
from evals.supervised import Recipe, train_classifier

DEFAULTS = {
    "imagenet": {"epochs": 100, "batch_size": 4096, "base_lr": 0.03, "lars": True},
    "cifar": {"epochs": 100, "batch_size": 256, "base_lr": 0.03, "lars": True},
    "digits": {"epochs": 20, "batch_size": 256, "base_lr": 0.03, "lars": True},
}


def evaluate(job: EvalJob) -> dict[str, float]:
    recipe = Recipe.from_options(DEFAULTS[job.cfg.data.augment], job.options, finetune=False)
    return train_classifier(job, recipe, prefix="linear")
