"""Linear probe: frozen backbone in eval mode, BN(affine=False) + Linear head (released MEC code).

ImageNet (reference.md §3): LARS-wrapped SGD (trust 0.001, no clipping), momentum 0.9, wd 0, batch 4096,
lr 0.03 x batch/256, 100 epochs, cosine per epoch; RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224).
CIFAR keeps the recipe at batch 256; the offline digits, with 6 steps per epoch, use plain SGD (see DEFAULTS).
Options override any recipe field (``epochs``, ``batch_size``, ``base_lr``, ``lars``, ...); ``split`` names a
label-subset file (few-label probe); ``dataset`` (imagenet, places365, cifar10, cifar100) probes that data set,
read from ``root``, instead of the pretraining one, with the run's image size and augment recipe (paper Table 9:
a Places365 backbone probed on ImageNet; `evals.supervised.probe_data`).
"""

from __future__ import annotations

from evals.job import EvalJob
from evals.supervised import Recipe, train_classifier

DEFAULTS = {
    "imagenet": {"epochs": 100, "batch_size": 4096, "base_lr": 0.03, "lars": True},
    "cifar": {"epochs": 100, "batch_size": 256, "base_lr": 0.03, "lars": True},
    # LARS with trust 0.001 moves a fresh head too little in a few hundred steps (measured: chance after 120);
    # on the offline data plain SGD at lr 4.0 for 50 epochs trains the head.
    "digits": {"epochs": 50, "batch_size": 256, "base_lr": 4.0, "lars": False},
}


def evaluate(job: EvalJob) -> dict[str, float]:
    recipe = Recipe.from_options(DEFAULTS[job.cfg.data.augment], job, finetune=False)
    return train_classifier(job, recipe, prefix="linear")
