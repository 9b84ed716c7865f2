"""The supervised training loop shared by the linear probe and semi-supervised fine-tuning.

One resumable loop: a backbone loaded strictly from the pretraining run, a classification head, SGD (optionally
wrapped in LARS), cosine decay per epoch, an atomic checkpoint per epoch, top-1/top-5 on the validation split
after every epoch, everything logged into the evaluation's MLflow run. The data set is the pretraining run's, or
with option ``dataset`` (a key of `evals.DATA_NAMES`) the one at option ``root`` (`probe_data`). Under DDP
(torchrun or SLURM tasks) each rank trains on its share; validation runs on rank 0. The process group, seeds, run
logger (FAILED on any error) and resuming are pretraining's scaffold (`mec.run`): `setup_classifier` builds and
resumes, `train_classifier_epoch` trains, `validate_and_checkpoint` scores, logs and saves.

The input path (`data.loader`, `mec.config.resolve_loader` for the data read): per image, Pillow transforms in the
loader workers; or, for the ImageNet recipe on a folder data set (by default on a GPU), workers read the files'
bytes, the job's device decodes them and makes the batch there (`mec.batch_eval`): training views by
`ProbeTrainView` drawn from a CPU generator seeded with (seed, epoch, rank) as pretraining's (`mec.train.epoch_seed`),
validation by `center_view`. Either path skips files that do not read (`mec.data`, `mec.encoded`), counted in
``data/skipped_images`` (as pretraining logs it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from evals import DATA_NAMES
from evals.job import EvalJob, load_frozen_backbone
from evals.splits import resolve_split
from mec import checkpoint as ckpt
from mec.augment import eval_transform, probe_train_transform
from mec.batch_eval import CenterView, ProbeTrainView, eval_loader, input_dataset
from mec.config import DataConfig, resolve_loader
from mec.data import build_eval_dataset
from mec.encoded import DecodedLoader, skipped_images
from mec.run import JobProcess, job_process, logged_run, resume_latest
from mec.threads import loader_workers
from mec.tracking import RunLogger
from mec.train import epoch_seed

log = logging.getLogger(__name__)
# Options naming what the classifier reads rather than how it trains: a label subset, another data set and its folder.
DATA_OPTIONS = ("split", "dataset", "root")


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one supervised protocol; ``batch_size`` is global (summed over ranks)."""

    epochs: int
    batch_size: int
    base_lr: float  # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    lars: bool = False  # wrap SGD in LARS (trust 0.001, no clipping), as the released linear probe does
    trust_coefficient: float = 0.001
    finetune: bool = False  # False: frozen backbone in eval mode (linear probe)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0:
            raise ValueError(f"recipe needs epochs >= 1, batch_size >= 1, base_lr > 0; got {self}")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    @classmethod
    def from_options(cls, defaults: dict[str, Any], job: EvalJob, finetune: bool) -> Recipe:
        """``defaults`` with the job's options (`EvalJob.check_options` refuses those no protocol field reads)."""
        job.check_options()
        known = {f for f in cls.__dataclass_fields__ if f != "finetune"}
        options = job.options
        values = defaults | {k: v for k, v in options.items() if k in known}
        return cls(**values, finetune=finetune)


class LinearHead(nn.Module):
    """The released probe's head: BatchNorm1d(affine=False, eps=1e-6) then Linear with N(0, 0.01) weights."""

    def __init__(self, dim: int, num_classes: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if norm else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, finetune: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.finetune = finetune
        if not finetune:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()  # a linear probe never updates the backbone's BN statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.finetune:
            return self.head(self.backbone(x))
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    top = logits.topk(max(ks), dim=1).indices
    hits = top == targets[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_top(model: nn.Module, loader: Any, device: torch.device, ks: tuple[int, ...]) -> list[float]:
    model.eval()
    correct, seen = [0] * len(ks), 0
    for images, targets in loader:
        logits = model(images.to(device))
        for i, hit in enumerate(_topk_correct(logits, targets.to(device), ks)):
            correct[i] += hit
        seen += len(targets)
    return [c / seen for c in correct]


@dataclass
class ClassifierTraining:
    """Everything the epoch loop of one supervised protocol reads and updates; built by `setup_classifier`."""

    recipe: Recipe
    prefix: str  # metric prefix: "linear" or "finetune"
    proc: JobProcess
    model: Classifier
    train_model: nn.Module  # the model, wrapped in DistributedDataParallel when DDP trains it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader | DecodedLoader  # a DecodedLoader on the device input path (`mec.batch_eval`)
    val_loader: DataLoader | DecodedLoader
    ks: tuple[int, ...]
    train_images: int
    ckpt_dir: Path
    backbone_check: str  # "<loaded>/<expected>" backbone keys
    start_epoch: int = 0
    best: float = 0.0
    seed: int = 0  # the run's seed: the device path's training views draw from epoch_seed(seed, epoch, rank)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.loader))


def train_classifier(job: EvalJob, recipe: Recipe, prefix: str) -> dict[str, float]:
    """Train and validate a classifier on the job's backbone; returns best/last top-1 and last top-5."""
    with job_process("auto", job.cfg.train.seed) as proc:
        # The rule created the run: open it first, so that a failure anywhere below ends it FAILED.
        with logged_run(job.open_logger if proc.main else None) as logger:
            run = setup_classifier(job, recipe, prefix, proc)
            if logger is not None:
                data = probe_data(job)
                logger.try_("log the backbone check and the data read", logger.set_tags,
                            {f"{prefix}.backbone_keys_loaded": run.backbone_check,
                             f"{prefix}.data": f"{data.name} {data.root}"})
            top1 = top5 = math.nan
            for epoch in range(run.start_epoch, recipe.epochs):
                train_loss, lr = train_classifier_epoch(run, epoch)
                if logger is not None:
                    top1, top5 = validate_and_checkpoint(run, epoch, train_loss, lr, logger)
                proc.barrier()
            if proc.main and math.isnan(top1):  # resumed after the last epoch: report the saved model
                top1, top5 = evaluate_top(run.model, run.val_loader, proc.device, run.ks)
            metrics = {f"{prefix}/top1_best": run.best, f"{prefix}/top1_last": top1, f"{prefix}/top5_last": top5,
                       f"{prefix}/train_images": float(run.train_images)}
            if logger is not None:
                logger.log_metrics(metrics, recipe.epochs * run.steps_per_epoch)
            return metrics


def probe_data(job: EvalJob) -> DataConfig:
    """The data the classifier reads: the pretraining run's, or with option ``dataset`` (a `DATA_NAMES` key) that
    data set at option ``root`` (the workflow fills it from the experiment's ``datasets.<key>``), never downloaded,
    with the run's image size and augment recipe (Table 9: a Places365 backbone probed on ImageNet)."""
    data, key = job.cfg.data, job.option("dataset", None)
    if key is None:
        return data
    if key not in DATA_NAMES:
        raise ValueError(f"options.dataset: {key!r} is not one of {list(DATA_NAMES)}")
    root = job.option("root", None)
    if root is None:
        raise ValueError(f"options.dataset {key!r} needs options.root: the folder of that data set")
    return data.model_copy(update={"name": DATA_NAMES[key], "root": str(root), "download": False})


def classifier_datasets(job: EvalJob, path: str = "per_image") -> tuple[Dataset, Dataset, int]:
    """The training split (restricted to ``options.split`` when given), the validation split, the class count;
    transformed images on the per-image input ``path``, the files' bytes (`EncodedImages`) on the device one."""
    data, per_image = probe_data(job), path == "per_image"
    train_set = build_eval_dataset(
        data.name, data.root, probe_train_transform(data.augment, data.image_size) if per_image else None, "train",
        **data.dataset_options())
    val_set = build_eval_dataset(data.name, data.root, eval_transform(data.augment, data.image_size)
                                 if per_image else None, "val", **data.dataset_options())
    num_classes = len(train_set.classes)
    split, indices = job.option("split", None), None
    if split is not None:
        samples = getattr(train_set, "samples", None)
        indices = resolve_split(Path(split), samples, Path(train_set.root) if samples else None, len(train_set))
    train_set, val_set = input_dataset(train_set, per_image), input_dataset(val_set, per_image)
    return (train_set if indices is None else Subset(train_set, indices)), val_set, num_classes


def _optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.lars:
        return Lars(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                    trust_coeff=recipe.trust_coefficient, trust_clip=False, always_adapt=True)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def setup_classifier(job: EvalJob, recipe: Recipe, prefix: str, proc: JobProcess) -> ClassifierTraining:
    """Data, backbone + head, optimiser and schedule, resumed from the newest checkpoint when there is one."""
    local_batch = proc.local_batch(recipe.batch_size, f"{prefix} batch_size")
    data = probe_data(job)
    train_set, val_set, num_classes = classifier_datasets(job, resolve_loader(data, proc.device.type))
    backbone, summary = load_frozen_backbone(job.backbone, job.cfg)
    model = Classifier(backbone, LinearHead(backbone.feature_dim, num_classes, norm=not recipe.finetune),
                       recipe.finetune).to(proc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(recipe, params)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    workers, seed = loader_workers(job.cfg.data.num_workers), job.cfg.train.seed
    run = ClassifierTraining(
        recipe, prefix, proc, model,
        DistributedDataParallel(model) if proc.distributed and params else model, optimizer, scheduler,
        eval_loader(train_set, local_batch, ProbeTrainView(data.image_size), proc.device, shuffle=True,
                    num_workers=workers, seed=seed, distributed=proc.distributed),
        eval_loader(val_set, 256, CenterView(data.image_size), proc.device, shuffle=False, num_workers=workers,
                    seed=0),
        ks=(1, min(5, num_classes)), train_images=len(train_set), ckpt_dir=Path(job.output_dir) / "checkpoints",
        backbone_check=f"{summary['loaded_keys']}/{summary['expected_keys']}", seed=seed,
    )
    resumed = resume_latest(run.ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler)
    if resumed is not None:
        path, state = resumed
        run.start_epoch, run.best = int(state["epoch"]), float(state["best_top1"])
        log.info("%s: resuming from %s (epoch %d done)", prefix, path, run.start_epoch)
    return run


def train_classifier_epoch(run: ClassifierTraining, epoch: int) -> tuple[float, float]:
    """One pass over this rank's share of the training split; returns the mean loss and the epoch's lr."""
    if isinstance(run.loader, DecodedLoader):
        run.loader.set_epoch(epoch, epoch_seed(run.seed, epoch, run.proc.rank))
    else:
        run.loader.sampler.set_epoch(epoch)
    run.train_model.train()
    total, count = 0.0, 0
    for images, targets in run.loader:
        logits = run.train_model(images.to(run.proc.device))
        loss = F.cross_entropy(logits, targets.to(run.proc.device))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        total += loss.item() * len(targets)
        count += len(targets)
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    return total / max(count, 1), lr


def validate_and_checkpoint(run: ClassifierTraining, epoch: int, train_loss: float, lr: float,
                            logger: RunLogger) -> tuple[float, float]:
    """Rank 0: top-1/top-5 on the validation split, logged, then the checkpoint that marks the epoch done."""
    top1, top5 = evaluate_top(run.model, run.val_loader, run.proc.device, run.ks)
    run.best = max(run.best, top1)
    p = run.prefix
    logger.log_metrics({f"{p}/train_loss": train_loss, f"{p}/lr": lr, f"{p}/top1": top1, f"{p}/top5": top5,
                        f"{p}/epoch": epoch + 1,
                        # rank 0's (its share of the training split, and validation), as its train loss
                        "data/skipped_images": skipped_images(run.loader, run.val_loader)},
                       (epoch + 1) * run.steps_per_epoch)
    logger.flush()
    ckpt.save_checkpoint(ckpt.checkpoint_path(run.ckpt_dir, epoch + 1), {
        "epoch": epoch + 1, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "best_top1": run.best, "rng": ckpt.capture_rng_state(),
    })
    ckpt.prune_checkpoints(run.ckpt_dir, keep=1)
    log.info("%s epoch %d/%d: loss %.4f top-1 %.4f top-5 %.4f", p, epoch + 1, run.recipe.epochs, train_loss,
             top1, top5)
    return top1, top5
