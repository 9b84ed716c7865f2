"""Transfer classification by fine-tuning the whole network (paper Table 8, "Fine-tuned" rows).

The MEC appendix reports Table 8 with the baselines' numbers taken from SimCLR [12] and BYOL [29] and does not
restate the protocol; this is SimCLR's (Chen et al. 2020, Appendix B.8, "Transfer learning via fine-tuning",
after Kornblith et al. 2019; BYOL's appendix follows it), the one those rows were measured with:

- the pretrained backbone and a new linear head are fine-tuned together, batch norm in training mode (its
  running statistics' momentum set from SimCLR's decay max(1 - 10/s, 0.9), s the steps per epoch, i.e. PyTorch
  momentum min(10/s, 0.1));
- SGD with Nesterov momentum 0.9, batch 256, 20,000 steps. Not in the text, chosen here: the learning rate
  decays to zero on a cosine (per step), and weight decay spares batch norm's parameters (as SimCLR's code
  adds its L2 loss);
- augmentation: random resized crop and horizontal flip only (no colour, no blur); test images are resized to
  size * 256/224 and centre-cropped (`evals.transfer.center_crop_transform`);
- the learning rate and weight decay are searched on a grid, fine-tuning on the training split and scoring on
  the validation split: 7 log-spaced learning rates in [1e-4, 0.1] and weight decay 0 or 7 log-spaced values in
  [1e-6, 1e-3], each "divided by the learning rate" (the SGD coefficient is wd / lr, so lr x coefficient, the
  per-step shrinkage, is the grid value);
- the best point is retrained on train + validation and scored on the test split.

The data sets, their splits (official where there is one; otherwise the linear protocol's seeded hold-outs) and
metrics (top-1; mean per-class accuracy for Aircraft, Pets, Caltech-101 and Flowers; 11-point mAP for VOC2007,
multi-label, trained with a sigmoid cross-entropy) are `evals.transfer`'s.

Resuming: each training of the search (one per grid point, and the final retrain) checkpoints atomically in its
own folder under ``<output_dir>/search-<identity>/`` (the identity hashes everything that changes a result but
the grid, so an extended grid reuses the points already scored); the validation score of each finished point
is recorded in ``scores.json`` there (written atomically) and its checkpoints deleted, so a rerun after a
preemption neither retrains a finished point nor restarts an unfinished one. A loss that turns non-finite
stops that point: it scores 0 and is marked diverged.

Several processes (torchrun / SLURM tasks, one GPU each) train each point together: every rank takes its share
of each global batch (batch norm synchronised across the GPUs); rank 0 alone checkpoints, scores, records and
logs, and hands its decisions to the others.

Options: ``dataset`` and ``root`` (as `evals.transfer`), ``lrs`` and ``wds`` (the grid), ``steps`` (20000),
``batch_size`` (256), ``image_size`` (the pretraining data's image size: 224 for ImageNet backbones),
``seed`` (0: splits, head initialisation, data order), ``checkpoint_every`` (1000 steps; a checkpoint is taken
at the first epoch end after that many steps, and at the last step), ``wd_divided_by_lr`` (true).

Logged: ``transfer_finetune/score`` (the test metric, a fraction), ``/best_lr``, ``/best_wd`` (grid values),
``/val_score`` (the best point's), ``/train_images`` (train + validation), the validation score of every point
as ``transfer_finetune/val_score_lr<lr>_wd<wd>`` (and ``/val_score_by_point`` with the grid index as step),
``/train_loss`` at each checkpoint; tags ``transfer.dataset`` and ``transfer.metric``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import transforms as T
from torchvision.datasets.voc import ET_parse

from evals import PROTOCOL_OPTIONS
from evals.job import EvalJob, load_frozen_backbone
from evals.supervised import Classifier, LinearHead
from evals.transfer import DATASETS, _voc_labels, center_crop_transform, open_split, score_outputs, split_indices
from mec import checkpoint as ckpt
from mec.augment import IMAGENET_MEAN, IMAGENET_STD
from mec.data import build_loader
from mec.run import JobProcess, job_process, logged_run, resume_latest, seed_everything
from mec.threads import loader_workers
from mec.trees import params_hash

log = logging.getLogger(__name__)

PREFIX = "transfer_finetune"
DEFAULT_LRS = tuple(float(x) for x in np.logspace(-4, -1, 7))
DEFAULT_WDS = (0.0, *(float(x) for x in np.logspace(-6, -3, 7)))
MOMENTUM = 0.9
SCORES_FILE = "scores.json"
OPTIONS = PROTOCOL_OPTIONS["transfer_finetune"]


@dataclass(frozen=True)
class Settings:
    dataset: str
    root: str
    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    steps: int
    batch_size: int
    image_size: int
    seed: int
    checkpoint_every: int
    wd_divided_by_lr: bool

    def sgd_weight_decay(self, lr: float, wd: float) -> float:
        return wd / lr if self.wd_divided_by_lr else wd


def _bad(name: str, wanted: str, value: Any) -> ValueError:
    return ValueError(f"{PREFIX}: options.{name} must be {wanted}, got {value!r}")


def _int(options: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(name, f"an int >= {minimum}", value)
    return value


def _number(value: Any) -> float | None:
    """A finite number, also written as YAML 1.1 reads ``1e-4`` (a string); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _floats(options: dict[str, Any], name: str, default: tuple[float, ...], positive: bool) -> tuple[float, ...]:
    value = options.get(name, default)
    values = [_number(v) for v in (value if isinstance(value, list | tuple) else [value])]
    if not values or any(v is None or (v <= 0 if positive else v < 0) for v in values):
        raise _bad(name, f"a non-empty list of {'positive' if positive else 'non-negative'} numbers", value)
    return tuple(dict.fromkeys(values))  # in order, once each


def settings(job: EvalJob) -> Settings:
    """The job's options, checked: a bad one raises ValueError in one line naming it."""
    options = dict(job.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{PREFIX}: unknown options {unknown}; allowed: {sorted(OPTIONS)}")
    name = options.get("dataset")
    if name not in DATASETS:
        raise _bad("dataset", f"one of {sorted(DATASETS)}", name)
    root = options.get("root")
    if not isinstance(root, str) or not root:
        raise _bad("root", f"the folder holding {name}", root)
    divided = options.get("wd_divided_by_lr", True)
    if not isinstance(divided, bool):
        raise _bad("wd_divided_by_lr", "true or false", divided)
    return Settings(
        dataset=name, root=root, lrs=_floats(options, "lrs", DEFAULT_LRS, positive=True),
        wds=_floats(options, "wds", DEFAULT_WDS, positive=False), steps=_int(options, "steps", 20000, 1),
        batch_size=_int(options, "batch_size", 256, 2),
        image_size=_int(options, "image_size", job.cfg.data.image_size, 8),
        seed=_int(options, "seed", 0, 0), checkpoint_every=_int(options, "checkpoint_every", 1000, 1),
        wd_divided_by_lr=divided)


def point_key(lr: float, wd: float) -> str:
    """A grid point's name in metric names, folders and the scores file: ``lr0.001_wd1e-05``."""
    return f"lr{lr:.6g}_wd{wd:.6g}"


# ------------------------------------------------------------------------------------------------- data


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Every image's label ([N], or [N, classes] of 0/1 for VOC2007) without decoding an image where the
    torchvision data set keeps them; otherwise by reading the data set."""
    if isinstance(dataset, tvd.VOCDetection):
        return np.asarray([_voc_labels(dataset.parse_voc_xml(ET_parse(path).getroot()))
                           for path in dataset.annotations])
    if isinstance(dataset, tvd.StanfordCars):
        return np.asarray([label for _, label in dataset._samples])
    for attribute in ("targets", "_labels", "y"):  # CIFAR; Food101, DTD, Pets, Flowers, Aircraft, SUN397; Caltech
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute))
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


@dataclass
class TransferData:
    """The search's data: augmented training images, validation and test images seen as at test time."""

    train: Dataset
    val: Dataset
    train_and_val: Dataset
    test: Dataset
    num_classes: int
    multilabel: bool


def train_transform(size: int) -> Any:
    """SimCLR's fine-tuning augmentation: random resized crop and horizontal flip, nothing else."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def transfer_data(s: Settings) -> TransferData:
    """The data set's splits as `evals.transfer` defines them (`split_indices`), as image data sets."""
    train_split, val_split, test_split = DATASETS[s.dataset].splits
    augment, plain = train_transform(s.image_size), center_crop_transform(s.image_size)
    train_augmented = open_split(s.dataset, s.root, train_split, augment)
    train_plain = open_split(s.dataset, s.root, train_split, plain)
    labels = dataset_labels(train_plain)
    train_idx, val_idx, test_idx = split_indices(s.dataset, labels, s.seed)
    test = (open_split(s.dataset, s.root, test_split, plain) if test_idx is None
            else Subset(train_plain, test_idx.tolist()))
    train = Subset(train_augmented, train_idx.tolist())
    if val_idx is None:
        val = open_split(s.dataset, s.root, val_split, plain)
        train_and_val = ConcatDataset([train, open_split(s.dataset, s.root, val_split, augment)])
    else:
        val = Subset(train_plain, val_idx.tolist())
        train_and_val = Subset(train_augmented, np.sort(np.concatenate([train_idx, val_idx])).tolist())
    multilabel = labels.ndim == 2
    return TransferData(train, val, train_and_val, test, labels.shape[1] if multilabel else int(labels.max()) + 1,
                        multilabel)


def _targets(targets: Any) -> torch.Tensor:
    # VOC's label lists collate into one tensor per class
    return torch.stack(targets, dim=1) if isinstance(targets, list) else torch.as_tensor(targets)


# --------------------------------------------------------------------------------------------- training


def _loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on every weight but batch norm's (as SimCLR's fine-tuning code adds its L2 loss)."""
    norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()}
    params = list(model.parameters())
    return [{"params": [p for p in params if id(p) not in norm], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in norm], "weight_decay": 0.0}]


@dataclass
class Training:
    """One fine-tuning of the search: where it checkpoints and which offset its loss curve is logged at."""

    name: str
    lr: float
    wd: float
    dataset: Dataset
    ckpt_dir: Path
    step_offset: int


class _Silent:
    """The run logger of a rank other than 0: it logs nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def try_(self, what: str, call: Any, *args: Any) -> bool:
        return False


def _from_rank0(proc: JobProcess, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (what it read, scored or decided); itself without DDP."""
    if not proc.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _global_mean(proc: JobProcess, loss: torch.Tensor) -> float:
    """The step's loss averaged over the ranks: every rank sees the same value, so all stop together."""
    value = loss.detach().clone()
    if proc.distributed:
        torch.distributed.all_reduce(value)  # a sum: gloo has no average
        value /= proc.world
    return value.item()


def finetune(job: EvalJob, s: Settings, data: TransferData, run: Training, proc: JobProcess,
             logger: Any) -> nn.Module | None:
    """Fine-tune the backbone and a new linear head for ``s.steps`` at (lr, wd), resuming from the newest
    checkpoint in ``run.ckpt_dir``; the trained model, or None when the loss turned non-finite (diverged).

    Under DDP each rank trains on its share of every global batch (batch norm synchronised across GPUs, so it
    normalises over the global batch as on one device; per rank on CPU process groups); rank 0 checkpoints."""
    seed_everything(s.seed)  # every point starts from the same head and sees the same data order
    backbone, _ = load_frozen_backbone(job.backbone, job.cfg)
    model = Classifier(backbone, LinearHead(backbone.feature_dim, data.num_classes, norm=False), finetune=True)
    if len(run.dataset) < s.batch_size:
        raise ValueError(f"{PREFIX}: options.batch_size={s.batch_size} exceeds the {len(run.dataset)} images "
                         f"{s.dataset} trains on; lower it")
    loader = build_loader(run.dataset, proc.local_batch(s.batch_size, f"{PREFIX}: options.batch_size"),
                          shuffle=True, drop_last=True, num_workers=loader_workers(job.cfg.data.num_workers),
                          seed=s.seed, distributed=proc.distributed)
    steps_per_epoch = len(loader)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = min(10 / steps_per_epoch, 0.1)  # SimCLR's BN decay max(1 - 10/s, 0.9)
    if proc.distributed and proc.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(proc.device)
    train_model = DistributedDataParallel(model) if proc.distributed else model
    optimizer = torch.optim.SGD(_param_groups(model, s.sgd_weight_decay(run.lr, run.wd)), lr=run.lr,
                                momentum=MOMENTUM, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.steps)
    step = 0
    resumed = resume_latest(run.ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler)
    if resumed is not None:
        step = int(resumed[1]["step"])
        log.info("%s %s: resuming from %s (step %d of %d)", PREFIX, run.name, resumed[0], step, s.steps)
    saved, loss_sum, loss_count = step, 0.0, 0
    while step < s.steps:  # checkpoints are taken at epoch ends (and at the last step): resume at an epoch start
        epoch = step // steps_per_epoch
        loader.sampler.set_epoch(epoch)
        train_model.train()
        for images, targets in loader:
            loss = _loss(train_model(images.to(proc.device)), _targets(targets).to(proc.device), data.multilabel)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = _global_mean(proc, loss)
            if not math.isfinite(value):
                log.warning("%s %s: the loss is %s at step %d: diverged", PREFIX, run.name, value, step)
                return None
            loss_sum, loss_count = loss_sum + value, loss_count + 1
            if step == s.steps:
                break
        if proc.main and (step == s.steps or step - saved >= s.checkpoint_every):
            # journaled first: a run stopped before the checkpoint retrains these steps, and the rerun's copy
            # of the loss is skipped as already logged
            logger.log_metrics({f"{PREFIX}/train_loss": loss_sum / loss_count}, run.step_offset + step)
            ckpt.save_checkpoint(ckpt.checkpoint_path(run.ckpt_dir, step), {
                "epoch": step, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": ckpt.capture_rng_state()})
            ckpt.prune_checkpoints(run.ckpt_dir, keep=1)
            log.info("%s %s: step %d/%d, loss %.4f", PREFIX, run.name, step, s.steps, loss_sum / loss_count)
            saved, loss_sum, loss_count = step, 0.0, 0
    return model


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, metric: str, s: Settings, workers: int,
          device: torch.device) -> float:
    """The data set's metric of ``model`` (batch norm in eval mode) on ``dataset``."""
    model.eval()
    logits, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=s.batch_size, num_workers=workers):
        logits.append(model(images.to(device)).float().cpu())
        labels.append(_targets(targets))
    outputs, y = torch.cat(logits).numpy(), torch.cat(labels).numpy()
    return score_outputs(metric, outputs if metric == "map11" else outputs.argmax(1), y)


# ----------------------------------------------------------------------------------------------- search


def search_dir(job: EvalJob, s: Settings) -> Path:
    """The search's folder: named by everything that changes a grid point's score (not the grid itself)."""
    identity = {k: v for k, v in asdict(s).items() if k not in ("lrs", "wds", "checkpoint_every")}
    identity |= {"root": str(Path(s.root).resolve()), "backbone_sha256": ckpt.file_sha256(job.backbone),
                 "model": job.config.get("model")}
    return Path(job.output_dir) / f"search-{params_hash(identity)[:12]}"


def _read_scores(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"val": {}, "test": None}
    return json.loads(path.read_text())


def _write_scores(path: Path, scores: dict[str, Any]) -> None:
    ckpt.write_text_atomically(path, json.dumps(scores, indent=1) + "\n")


def evaluate(job: EvalJob) -> dict[str, float]:
    with job_process("auto") as proc, logged_run(job.open_logger if proc.main else None) as logger:
        # FAILED if anything below fails, a bad option included
        s = settings(job)
        metric = DATASETS[s.dataset].metric
        logger = logger or _Silent()
        logger.try_("log the metric name", logger.set_tags, {"transfer.metric": metric, "transfer.dataset": s.dataset})
        metrics = _search(job, s, metric, proc, logger)
    log.info("%s %s: %s %.4f (lr %g, wd %g)", PREFIX, s.dataset, metric, metrics[f"{PREFIX}/score"],
             metrics[f"{PREFIX}/best_lr"], metrics[f"{PREFIX}/best_wd"])
    return metrics


def _search(job: EvalJob, s: Settings, metric: str, proc: JobProcess, logger: Any) -> dict[str, float]:
    """Every rank trains every grid point not scored yet; rank 0 scores, records and logs, and tells the others."""
    work = search_dir(job, s)
    scores_path = work / SCORES_FILE
    scores = _from_rank0(proc, _read_scores(scores_path) if proc.main else None)
    data = transfer_data(s)
    workers = loader_workers(job.cfg.data.num_workers)
    grid = [(lr, wd) for lr in s.lrs for wd in s.wds]
    for index, (lr, wd) in enumerate(grid):
        key = point_key(lr, wd)
        if key in scores["val"]:
            log.info("%s %s: scored before (validation %.4f), not retrained", PREFIX, key, scores["val"][key]["score"])
        else:
            run = Training(key, lr, wd, data.train, work / key / "checkpoints", index * s.steps)
            model = finetune(job, s, data, run, proc, logger)
            if proc.main:
                val = 0.0 if model is None else score(model, data.val, metric, s, workers, proc.device)
                scores["val"][key] = {"lr": lr, "wd": wd, "score": val, "diverged": model is None}
                _write_scores(scores_path, scores)
                shutil.rmtree(work / key, ignore_errors=True)  # scored: its checkpoints are no longer needed
                log.info("%s %s: validation %s %.4f", PREFIX, key, metric, val)
            scores = _from_rank0(proc, scores)
        logger.log_metrics({f"{PREFIX}/val_score_{key}": scores["val"][key]["score"]}, 0)
        logger.log_metrics({f"{PREFIX}/val_score_by_point": scores["val"][key]["score"]}, index)
        logger.flush()
    best_lr, best_wd = max(grid, key=lambda point: scores["val"][point_key(*point)]["score"])  # first of ties
    key = point_key(best_lr, best_wd)
    test = scores.get("test")
    if test is None or test["point"] != key:
        run = Training(f"final-{key}", best_lr, best_wd, data.train_and_val, work / f"final-{key}" / "checkpoints",
                       len(grid) * s.steps)
        model = finetune(job, s, data, run, proc, logger)
        if model is None:
            raise RuntimeError(f"{PREFIX}: the retrain on train + validation at lr={best_lr:g}, wd={best_wd:g} "
                               "diverged (non-finite loss)")
        if proc.main:
            scores["test"] = {"point": key, "score": score(model, data.test, metric, s, workers, proc.device)}
            _write_scores(scores_path, scores)
        test = _from_rank0(proc, scores["test"])
    metrics = {f"{PREFIX}/score": float(test["score"]), f"{PREFIX}/best_lr": best_lr, f"{PREFIX}/best_wd": best_wd,
               f"{PREFIX}/val_score": float(scores["val"][key]["score"]),
               f"{PREFIX}/train_images": float(len(data.train_and_val))}
    logger.log_metrics(metrics, len(grid))
    return metrics
