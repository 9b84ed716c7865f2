"""The supervised training loop shared by the linear probe and semi-supervised fine-tuning.

One resumable loop: a backbone loaded strictly from the pretraining run, a classification head, SGD (optionally
wrapped in LARS), cosine decay per epoch, an atomic checkpoint per epoch, top-1/top-5 on the validation split
after every epoch, everything logged into the evaluation's MLflow run. Under DDP (torchrun or SLURM tasks)
each rank trains on its share; validation runs on rank 0.
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
from torch.utils.data import Subset

from evals.job import EvalJob, load_frozen_backbone, select_device
from evals.splits import resolve_split
from mec import checkpoint as ckpt
from mec import distributed as dist_env
from mec.augment import eval_transform, probe_train_transform
from mec.data import build_eval_dataset, build_loader

log = logging.getLogger(__name__)


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
    def from_options(cls, defaults: dict[str, Any], options: dict[str, Any], finetune: bool) -> Recipe:
        known = {f for f in cls.__dataclass_fields__ if f != "finetune"}
        unknown = sorted(set(options) - known - {"split", "topk"})
        if unknown:
            raise ValueError(f"unknown options {unknown}; allowed: {sorted(known | {'split'})}")
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


def train_classifier(job: EvalJob, recipe: Recipe, prefix: str) -> dict[str, float]:
    """Train and validate a classifier on the job's backbone; returns best/last top-1 and last top-5."""
    distributed = dist_env.init_distributed()
    rank, world = dist_env.rank(), dist_env.world_size()
    if recipe.batch_size % world:
        raise ValueError(f"{prefix}: batch_size {recipe.batch_size} must be divisible by the world size {world}")
    device = select_device()
    cfg = job.cfg
    data = cfg.data
    torch.manual_seed(cfg.train.seed + rank)

    train_set = build_eval_dataset(data.name, data.root, probe_train_transform(data.augment, data.image_size),
                                   "train", download=data.download, digits_params=data.digits_params())
    val_set = build_eval_dataset(data.name, data.root, eval_transform(data.augment, data.image_size), "val",
                                 download=data.download, digits_params=data.digits_params())
    num_classes = len(train_set.classes)
    split = job.option("split", None)
    if split is not None:
        samples = getattr(train_set, "samples", None)
        indices = resolve_split(Path(split), samples, Path(train_set.root) if samples else None, len(train_set))
        train_set = Subset(train_set, indices)
    ks = (1, min(5, num_classes))

    backbone, summary = load_frozen_backbone(job.backbone, cfg)
    model = Classifier(backbone, LinearHead(backbone.feature_dim, num_classes, norm=not recipe.finetune),
                       recipe.finetune).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if recipe.lars:
        optimizer = Lars(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                         trust_coeff=recipe.trust_coefficient, trust_clip=False, always_adapt=True)
    else:
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)

    out_dir = Path(job.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    start_epoch, best = 0, 0.0
    resumed = ckpt.find_resumable(ckpt_dir)
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"])
        start_epoch, best = int(state["epoch"]), float(state["best_top1"])
        log.info("%s: resuming from %s (epoch %d done)", prefix, path, start_epoch)

    train_model: nn.Module = DistributedDataParallel(model) if distributed and params else model
    loader = build_loader(train_set, recipe.batch_size // world, shuffle=True, drop_last=False,
                          num_workers=data.num_workers, seed=cfg.train.seed, distributed=distributed)
    val_loader = build_loader(val_set, 256, shuffle=False, drop_last=False, num_workers=data.num_workers,
                              seed=0, distributed=False)
    logger = job.open_logger() if rank == 0 else None
    if logger is not None:
        logger.try_("log the backbone check", logger.set_tags,
                    {f"{prefix}.backbone_keys_loaded": f"{summary['loaded_keys']}/{summary['expected_keys']}"})
    steps_per_epoch = max(1, len(loader))
    top1 = top5 = math.nan
    try:
        for epoch in range(start_epoch, recipe.epochs):
            loader.sampler.set_epoch(epoch)
            train_model.train()
            total, count = 0.0, 0
            for images, targets in loader:
                logits = train_model(images.to(device))
                loss = F.cross_entropy(logits, targets.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(targets)
                count += len(targets)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if rank == 0:
                top1, top5 = evaluate_top(model, val_loader, device, ks)
                best = max(best, top1)
                step = (epoch + 1) * steps_per_epoch
                logger.log_metrics({f"{prefix}/train_loss": total / max(count, 1), f"{prefix}/lr": lr,
                                    f"{prefix}/top1": top1, f"{prefix}/top5": top5, f"{prefix}/epoch": epoch + 1},
                                   step)
                logger.flush()
                ckpt.save_checkpoint(ckpt.checkpoint_path(ckpt_dir, epoch + 1), {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "best_top1": best, "rng": ckpt.capture_rng_state(),
                })
                ckpt.prune_checkpoints(ckpt_dir, keep=1)
                log.info("%s epoch %d/%d: loss %.4f top-1 %.4f top-5 %.4f", prefix, epoch + 1, recipe.epochs,
                         total / max(count, 1), top1, top5)
            if distributed:
                torch.distributed.barrier()
        if rank == 0 and math.isnan(top1):  # resumed after the last epoch: report the saved model
            top1, top5 = evaluate_top(model, val_loader, device, ks)
        metrics = {f"{prefix}/top1_best": best, f"{prefix}/top1_last": top1, f"{prefix}/top5_last": top5,
                   f"{prefix}/train_images": float(len(train_set))}
        if logger is not None:
            logger.log_metrics(metrics, recipe.epochs * steps_per_epoch)
            logger.close()
        return metrics
    except BaseException:
        if logger is not None:
            logger.close("FAILED")
        raise
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
