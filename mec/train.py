"""MEC pretraining: one resumable loop for a laptop CPU, one GPU, or many nodes under DDP.

The recipe is the released code's (reference.md): two asymmetric views, student predictor against EMA
teacher, symmetrised coding-length loss on the global batch, per-iteration lr / lambda / momentum schedules.
With ``data.multi_crop.local_crops`` > 0, smaller local views join the two global ones (the appendix's
multi-crop, Table 7): `MultiCropForward` embeds them, `mec.loss.multi_crop_pairs` says which pairs the loss
compares.
Every epoch ends with an atomic checkpoint; a restarted run resumes from the newest valid one and keeps
logging into the same MLflow run.

Structure (DINO's ``train_dino`` / ``train_one_epoch``): `pretrain` runs the job inside the shared scaffold
(`mec.run`: process group, device, seeds, rank-0 run logger closed FINISHED or FAILED); `setup_pretraining`
builds data, model, loss and optimiser and resumes them; `train_one_epoch` / `train_step` are the step loop
(with `stop_if_diverged`); `end_epoch` logs and checkpoints; `export_and_monitor` exports the backbone.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from mec import checkpoint as ckpt
from mec import distributed as dist_env
from mec.augment import eval_transform
from mec.config import Config, ConfigError, build_config
from mec.data import build_eval_dataset, build_loader
from mec.loss import (
    DIVERGED_SPECTRAL_NORM,
    CodingLengthOutput,
    MaximumEntropyCodingLoss,
    cross_correlation_matrix,
    spectral_norm,
)
from mec.models import (
    MECModel,
    build_backbone,
    cifar_projector,
    convert_sync_batchnorm,
    predictor,
    released_projector,
)
from mec.monitor import effective_rank, extract_features, feature_quality
from mec.optim import build_optimizer
from mec.pretrain_input import PretrainInput, build_pretrain_input
from mec.run import JobProcess, job_process, logged_run, resume_latest, seed_everything
from mec.schedules import lambda_warmup_scale, teacher_momentum, warmup_cosine
from mec.threads import loader_workers
from mec.tracking import RunLogger, environment_tags

log = logging.getLogger(__name__)

# Checkpoint key: unreadable files skipped up to that epoch, all ranks, so a resumed run's count goes on from it.
SKIPPED_KEY = "skipped_images"
# Config keys a resumed run may change (`check_resumed_config`): where and how it runs, reads and logs, and how
# long it trains. Any other change (model, loss, batch size, lr, data set, recipe) would continue another run.
RESUMABLE_CHANGES = ("name", "source", "train.", "tracking.", "monitor.", "optim.epochs", "optim.fused",
                     "model.sync_batchnorm", "loss.convergence_check", "loss.spectral_norm_every", "data.root",
                     "data.num_workers", "data.loader", "data.download", "data.verify_checksums")


@dataclass(frozen=True)
class PretrainResult:
    run_id: str | None
    backbone_path: Path
    metrics: dict[str, float]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def build_backbone_from_config(cfg: Config, zero_init_residual: bool | None = None) -> torch.nn.Module:
    m = cfg.model
    zero_init = m.zero_init_residual if zero_init_residual is None else zero_init_residual
    return build_backbone(m.arch, width=m.width, cifar_stem=m.cifar_stem, zero_init_residual=zero_init)


def build_model(cfg: Config) -> MECModel:
    m = cfg.model
    backbone = build_backbone_from_config(cfg)
    make_projector = released_projector if m.projector == "released" else cifar_projector
    projector = make_projector(backbone.feature_dim, hidden=m.projector_hidden, out=m.embedding_dim)
    head = predictor(m.embedding_dim, hidden=m.predictor_hidden) if m.architecture == "asymmetric" else None
    return MECModel(backbone, projector, head, use_teacher=m.use_teacher)


class MultiCropForward(torch.nn.Module):
    """Student embeddings of every view and target embeddings of the global views: what the loss compares.

    DINO's MultiCropWrapper for a `MECModel`. The two global views go through the model's own two-view
    forward, each view its own pass (BN normalises each global view with its own batch statistics, as the
    released code does), so with no local views this is the two-view step exactly. Local views are
    concatenated per resolution, one student pass (backbone, projector, predictor) per resolution, so BN
    normalises over all local crops of a resolution, as DINO's wrapper does. The target (EMA teacher, or the
    stop-gradient projector output) sees only the global views. DDP wraps this module, so one forward covers
    every crop before the one backward. Returns (students, targets): [p1, p2, local_1, ...], [z1, z2].
    """

    def __init__(self, model: MECModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, view1: torch.Tensor, view2: torch.Tensor,
                *local_views: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        p1, p2, z1, z2 = self.model(view1, view2)
        students = [p1, p2]
        for _, same_size in itertools.groupby(local_views, key=lambda view: tuple(view.shape[-2:])):
            group = list(same_size)
            students.extend(self._student(torch.cat(group)).chunk(len(group)))
        return students, [z1, z2]

    def _student(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.model.projector(self.model.backbone(images))
        return embedding if self.model.predictor is None else self.model.predictor(embedding)


def check_convergence(cfg: Config) -> float:
    """Appendix E's worst-case bound lambda * m on ||C||_2, at the full lambda reached after the warm-up."""
    bound = MaximumEntropyCodingLoss.convergence_bound(cfg.loss.eps, cfg.optim.batch_size, cfg.model.embedding_dim)
    if cfg.loss.order is None or bound < 1 or cfg.loss.convergence_check == "off":
        return bound
    # lambda * m = d / eps^2 < 1  <=>  eps > sqrt(d)
    message = (
        f"loss.eps={cfg.loss.eps}: appendix E's bound ||C||_2 <= lambda*m = {bound:.3g} is not below 1 "
        f"(m={cfg.optim.batch_size}, d={cfg.model.embedding_dim}), so the order-{cfg.loss.order} Taylor series "
        f"is not guaranteed to converge; loss.eps > {math.sqrt(cfg.model.embedding_dim):.3g} guarantees it, "
        f"loss.order=null uses the exact log-determinant. The released setting (lambda*m = 32) violates the "
        f"bound and converges in practice; the logged train/spectral_norm shows the real ||C||_2."
    )
    if cfg.loss.convergence_check == "error":
        raise ConfigError(message)
    log.warning(message)
    return bound


def _checkpoint_state(
    model: MECModel, optimizer: torch.optim.Optimizer, epoch: int, step: int, run_id: str | None, cfg: Config
) -> dict:
    return {
        "epoch": epoch,  # epochs completed
        "step": step,
        "model": model.state_dict(),
        ckpt.BACKBONE_KEY: model.student_backbone_state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": ckpt.capture_rng_state(),
        ckpt.RUN_ID_KEY: run_id,
        "config": cfg.model_dump(mode="json"),
    }


def _backbone_metadata(cfg: Config, feature_dim: int, run_id: str | None, source: Path) -> dict:
    m = cfg.model
    return {
        "arch": m.arch,
        "width": m.width,
        "cifar_stem": m.cifar_stem,
        "feature_dim": feature_dim,
        "source_checkpoint": str(source),
        "mlflow_run_id": run_id,
        "config_name": cfg.name,
    }


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


def pretrain(cfg: Config, config_file: Path | None = None, run_id: str | None = None) -> PretrainResult:
    """Run (or resume) one pretraining run and export its backbone; returns the run id and monitor metrics.

    ``run_id``: an MLflow run created by the caller (a workflow rule) to log into; a checkpoint's run id wins,
    so a resumed run always continues the run it started in.
    """
    check_convergence(cfg)
    with job_process(cfg.train.device, cfg.train.seed, cfg.train.deterministic) as proc:
        job = setup_pretraining(cfg, proc, run_id)
        opener = (lambda: open_pretrain_logger(job, config_file)) if proc.main else None
        with logged_run(opener) as logger:
            if logger is not None:
                job.run_id = logger.run_id
            for epoch in range(job.start_epoch, cfg.optim.epochs):
                stats = train_one_epoch(job, epoch, logger)
                stats.skipped_images = skipped_images(job)
                if logger is not None:
                    end_epoch(job, epoch, stats, logger)
                proc.barrier()
            return export_and_monitor(job, logger)


@dataclass
class Pretraining:
    """Everything the epoch loop reads and updates; built by `setup_pretraining`."""

    cfg: Config
    proc: JobProcess
    input: PretrainInput  # the loader and what makes views of its batches on the device
    model: MECModel
    train_model: torch.nn.Module  # MultiCropForward(model), wrapped in DistributedDataParallel under DDP
    loss_fn: MaximumEntropyCodingLoss
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    start_epoch: int = 0  # epochs completed before this process started
    step: int = 0  # optimiser steps completed
    run_id: str | None = None
    resumed: bool = False
    skipped_before: int = 0  # unreadable files skipped, all ranks, in the epochs before this process started

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.epochs * self.steps_per_epoch

    @property
    def crops(self) -> int:
        """Views per image: the two global ones and the local ones."""
        return 2 + self.cfg.data.multi_crop.local_crops

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def cuda_extras(self) -> bool:
        return self.proc.device.type == "cuda"


@dataclass
class EpochStats:
    # Summed over the epoch's steps on the device (0-d tensors after the first step): read once, at its end.
    loss: torch.Tensor | float = 0.0
    coding_length: torch.Tensor | float = 0.0
    started: float = field(default_factory=time.monotonic)
    skipped_images: int = 0  # unreadable files skipped since the run began, all ranks (`skipped_images`)


@dataclass
class StepOutput:
    """One step's results, left on the device until read: reading waits for the device, so the loop reads
    (and checks) the steps since the last read only every ``train.log_every`` steps and at the epoch's end."""

    step: int  # the step's 0-based index
    epoch: int
    out: CodingLengthOutput
    first_pair: tuple[torch.Tensor, torch.Tensor]  # (z1, p2), detached: ||C||_2 when a check needs it
    metrics: dict[str, float]  # what the host knows without reading the device (lr, lambda, measured values)

    def read(self) -> dict[str, float]:
        return {"train/loss": float(self.out.loss.detach()), "train/coding_length": float(self.out.coding_length),
                **self.metrics}


def prepare_model(cfg: Config, device: torch.device) -> MECModel:
    """The model on ``device``; SyncBatchNorm when ``model.sync_batchnorm`` and DDP runs on an accelerator."""
    model = build_model(cfg).to(device)
    if cfg.model.sync_batchnorm:
        model = convert_sync_batchnorm(model, device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_resumed_config(path: Path, stored: dict | None, cfg: Config) -> None:
    """Refuse to resume checkpoint ``path`` under a config that changes what it trains (anything outside
    `RESUMABLE_CHANGES`), naming each key with both values; warn when the length changes (the cosine schedule
    goes on at the new length). Checkpoints without a config, or with one this version cannot read, pass."""
    try:
        before = build_config(stored).flat() if stored is not None else None
    except ConfigError as err:
        log.warning("cannot compare checkpoint %s's config with this one (%s)", path, err)
        return
    if before is None:
        return
    changed = {key: (before.get(key), value) for key, value in cfg.flat().items() if before.get(key) != value}
    refused = sorted(key for key in changed if not key.startswith(RESUMABLE_CHANGES))
    if refused:
        was = ", ".join(f"{key}={changed[key][0]!r}" for key in refused)
        now = ", ".join(f"{key}={changed[key][1]!r}" for key in refused)
        raise ConfigError(f"checkpoint {path} was trained with {was}; the config now says {now}: restore them to "
                          "resume this run, or give another train.output_dir to start a new one")
    if "optim.epochs" in changed:
        log.warning("optim.epochs %s -> %s since checkpoint %s: the schedules go on at the new length",
                    *changed["optim.epochs"], path)


def setup_pretraining(cfg: Config, proc: JobProcess, given_run_id: str | None) -> Pretraining:
    """Data, model, loss and optimiser, resumed from the newest checkpoint when there is one."""
    pretrain_input = build_pretrain_input(cfg, proc)
    model = prepare_model(cfg, proc.device)
    # Non-finite losses are caught where the loop reads them (`check_steps`), not by a read in every step.
    loss_fn = MaximumEntropyCodingLoss(
        eps=cfg.loss.eps, order=cfg.loss.order, side=cfg.loss.side, parametrisation=cfg.loss.parametrisation,
        check_finite=False,
    )
    optimizer = build_optimizer(model, cfg.optim, cfg.lr, on_gpu=proc.device.type == "cuda")
    job = Pretraining(cfg, proc, pretrain_input, model, MultiCropForward(model), loss_fn, optimizer,
                      len(pretrain_input.loader), run_id=given_run_id)
    local = f" and {job.crops - 2} local views of {cfg.data.multi_crop.local_size} px" if job.crops > 2 else ""
    log.info("%d crops per image: 2 global views of %d px%s", job.crops, cfg.data.image_size, local)
    resumed = resume_latest(job.ckpt_dir, model=model, optimizer=optimizer)
    if resumed is not None:
        path, state = resumed
        if not proc.main:  # only rank 0's RNG state is saved; other ranks get their own stream back
            seed_everything(epoch_seed(cfg.train.seed, int(state["epoch"]), proc.rank))
        check_resumed_config(path, state.get("config"), cfg)
        job.start_epoch, job.step, job.resumed = int(state["epoch"]), int(state["step"]), True
        job.skipped_before = int(state.get(SKIPPED_KEY, 0))
        job.run_id = state.get(ckpt.RUN_ID_KEY) or given_run_id
        if given_run_id and job.run_id != given_run_id:
            log.warning("checkpoint %s belongs to MLflow run %s, not %s: continuing %s", path, job.run_id,
                        given_run_id, job.run_id)
        log.info("resuming from %s (epoch %d done, step %d)", path, job.start_epoch, job.step)
    if proc.distributed:
        job.train_model = DistributedDataParallel(
            job.train_model, device_ids=[proc.device.index] if job.cuda_extras else None)
    if cfg.train.compile:
        # Compiles lazily, at the first step (minutes for a ResNet-50 on a GPU); the eager modules keep the
        # parameters, so checkpoints and the teacher update are unchanged.
        job.train_model = torch.compile(job.train_model)
    return job


def open_pretrain_logger(job: Pretraining, config_file: Path | None) -> RunLogger:
    """Rank 0's MLflow run (the checkpoint's, the caller's, or a new one) with params, tags and the config."""
    cfg = job.cfg
    logger = RunLogger.open(
        experiment=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or cfg.name,
        journal=job.out_dir / "metrics.jsonl",
        resume_run_id=job.run_id,
        tracking_uri=cfg.tracking.tracking_uri,
        tags={"mec.stage": "pretrain", "mec.config_name": cfg.name},
    )
    logger.try_("log params", logger.log_params,
                cfg.flat() | {"derived.lr": cfg.lr, "derived.steps_per_epoch": job.steps_per_epoch,
                              "derived.crops": job.crops, "derived.loss_pairs": 2 * (job.crops - 1)})
    logger.try_("set tags", logger.set_tags, environment_tags(job.proc.world, str(job.proc.device))
                | {"mec.output_dir": str(job.out_dir.resolve())})
    if not job.resumed:
        logger.try_("log the resolved config", logger.log_text,
                    yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")
        if config_file is not None:
            logger.try_("log the config file", logger.log_artifact, config_file, "config")
    return logger


def train_one_epoch(job: Pretraining, epoch: int, logger: RunLogger | None) -> EpochStats:
    """One pass over the loader: a step per batch; every ``train.log_every`` steps the steps since the last
    read are read and checked (`check_steps`) and the last one's metrics logged."""
    cfg = job.cfg
    # The input's generators seed the shuffle and the augmentations; deriving them from (seed, epoch, rank)
    # lets a resumed run draw what the uninterrupted run would have. Randomness in this process comes from
    # the RNG state restored from the checkpoint.
    job.input.start_epoch(epoch, epoch_seed(cfg.train.seed, epoch, job.proc.rank))
    job.model.train()
    stats = EpochStats()
    unread: list[StepOutput] = []
    for batch in _progress(job.input.loader, job.steps_per_epoch, f"epoch {epoch + 1}", job.proc.main):
        done = train_step(job, epoch, *job.input.views(batch))
        stats.loss += done.out.loss.detach()
        stats.coding_length += done.out.coding_length
        unread.append(done)
        if job.step % cfg.train.log_every == 0 or job.step == 1:
            check_steps(job, unread)
            unread.clear()
            if logger is not None:
                metrics = done.read()
                logger.log_metrics(metrics, job.step)
                if not sys.stderr.isatty():
                    log.info("epoch %d step %d/%d loss %.5f lr %.4g lambda %.4g", epoch + 1, job.step,
                             job.total_steps, metrics["train/loss"], metrics["train/lr"], metrics["train/lambda"])
    check_steps(job, unread)
    return stats


def check_steps(job: Pretraining, steps: list[StepOutput]) -> None:
    """Read the losses of `steps` (one read of the device for all of them) and stop at the first that is not
    finite (FloatingPointError naming its step) or whose series has diverged (`stop_if_diverged`): the checks
    run on the values read."""
    if not steps:
        return
    losses = torch.stack([s.out.loss.detach() for s in steps]).tolist()
    for s, loss in zip(steps, losses, strict=True):
        if not math.isfinite(loss):
            _raise_not_finite(job, s)
        if job.cfg.loss.order is not None:
            z1, p2 = s.first_pair
            stop_if_diverged(job, s.epoch, s.out, s.metrics.get("train/spectral_norm"),
                             measure=lambda z1=z1, p2=p2, lam=s.out.lam: _spectral_norm_of(z1, p2, lam), step=s.step,
                             loss=loss)


def _raise_not_finite(job: Pretraining, s: StepOutput) -> None:
    """The loss module's FloatingPointError for a step whose loss is not finite (it names lambda, m, d, the order
    and the remedies), with the step in front; its loss is read once more, as the run stops."""
    try:
        job.loss_fn.check_output(s.out)
    except FloatingPointError as exc:
        raise FloatingPointError(f"step {s.step} (epoch {s.epoch + 1}): {exc}") from None


def train_step(job: Pretraining, epoch: int, *views: torch.Tensor) -> StepOutput:
    """One optimiser step on one batch: the two global views, then any local views (multi-crop), each a
    [batch, 3, H, W] tensor on the device; returns the step's output unread (``job.step`` advances). Nothing
    here waits for the device except the occasional rank and ||C||_2 measurements."""
    cfg, model = job.cfg, job.model
    if job.cuda_extras and cfg.train.channels_last:
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    lr = warmup_cosine(job.step, job.total_steps, round(cfg.optim.warmup_epochs * job.steps_per_epoch), cfg.lr)
    for group in job.optimizer.param_groups:
        group["lr"] = lr
    scale = lambda_warmup_scale(job.step, round(cfg.loss.lambda_warmup_epochs * job.steps_per_epoch),
                                cfg.loss.lambda_warmup_factor)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=job.cuda_extras and cfg.train.amp):
        students, targets = job.train_model(*views)
    # Released pairing: teacher view 1 with student view 2, and the reverse; each local view against both
    # teacher global views; the mean over these pairs (`multi_crop_pairs`). The symmetric net's two global
    # pairs are one (Algorithm 1). The loss leaves autocast and evaluates the series in float32 (bf16 powers
    # of C lose the higher terms).
    z1, p2 = targets[0], students[1]  # the first pair, for the rank and ||C||_2 estimates
    out = job.loss_fn.multi_crop(targets, students, lambda_scale=scale, symmetric=model.symmetric)
    metrics = {"train/lr": lr, "train/lambda": out.lam}
    number = job.step + 1  # the step's number in the metrics (1-based)
    every = cfg.loss.spectral_norm_every
    if every and (number % every == 0 or number == 1):
        # Dimensional collapse shows in the rank long before it shows in the loss.
        metrics["train/embedding_rank"] = effective_rank(p2)
        if cfg.loss.order is not None:
            metrics["train/spectral_norm"] = _spectral_norm_of(z1, p2, out.lam)
    job.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    job.optimizer.step()
    metrics["train/teacher_momentum"] = teacher_momentum(job.step, job.total_steps, cfg.model.teacher_momentum)
    if cfg.model.use_teacher:
        model.update_teacher(metrics["train/teacher_momentum"])
    done = StepOutput(job.step, epoch, out, (z1.detach(), p2.detach()), metrics)
    job.step += 1
    return done


def stop_if_diverged(job: Pretraining, epoch: int, out: CodingLengthOutput, measured: float | None,
                     measure: Callable[[], float], step: int | None = None, loss: float | None = None) -> None:
    """Raise FloatingPointError when the Taylor series has clearly diverged, whatever loss.convergence_check says.

    Clearly diverged: the loss is one no convergent series can give (`convergent_loss_bound`, checked for
    each step; ``measure`` then gives ||C||_2 for the message), or ``measured`` ||C||_2 (each
    ``loss.spectral_norm_every`` steps) exceeds DIVERGED_SPECTRAL_NORM. Every rank decides alike: the loss is
    the global batch's, and the largest ||C||_2 over ranks counts. ``loss``: `out.loss`'s value when the caller
    has read it already (`check_steps`), else read here.
    """
    loss, bound = out.loss.item() if loss is None else loss, job.loss_fn.convergent_loss_bound(out)
    if measured is None and abs(loss) > bound:
        measured = measure()
    if measured is not None and job.proc.distributed:
        largest = torch.tensor([measured], device=job.proc.device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        measured = float(largest)
    if abs(loss) <= bound and (measured is None or measured <= DIVERGED_SPECTRAL_NORM):
        return
    d = job.cfg.model.embedding_dim
    step = job.step if step is None else step
    why = (f"loss {loss:.4g} is beyond the |loss| <= {bound:.3g} a convergent series gives; measured ||C||_2 = "
           f"{measured:.4g}" if abs(loss) > bound else
           f"measured ||C||_2 = {measured:.4g} is above {DIVERGED_SPECTRAL_NORM:g}; loss {loss:.4g}")
    raise FloatingPointError(
        f"step {step} (epoch {epoch + 1}): the order-{job.cfg.loss.order} Taylor series has diverged ({why}; "
        f"the series converges only for ||C||_2 < 1) at lambda*m = {out.lam * out.m:.4g} (lambda={out.lam:.4g}, "
        f"m={out.m}, d={d}). Use a larger loss.eps (above {math.sqrt(d):.3g} guarantees convergence), a longer "
        "loss.lambda_warmup_epochs, or loss.order=null (exact log-determinant)"
    )


def skipped_images(job: Pretraining) -> int:
    """Unreadable files skipped since the run began, on every rank (a collective: all ranks call it)."""
    count = job.input.skipped_images()
    if job.proc.distributed:
        total = torch.tensor([count], dtype=torch.int64, device=job.proc.device)
        torch.distributed.all_reduce(total)
        count = int(total)
    return job.skipped_before + count


def end_epoch(job: Pretraining, epoch: int, stats: EpochStats, logger: RunLogger) -> None:
    """Rank 0: the epoch's metrics, then the checkpoint that marks the epoch done, then pruning."""
    seconds = time.monotonic() - stats.started
    mean_loss = float(stats.loss) / job.steps_per_epoch
    logger.log_metrics({"epoch/loss": mean_loss,
                        "epoch/coding_length": float(stats.coding_length) / job.steps_per_epoch,
                        "epoch/seconds": seconds, "epoch/epoch": epoch + 1,
                        "data/skipped_images": stats.skipped_images}, job.step)
    # Metrics reach the journal (and, when it answers, the store) before the checkpoint that marks the epoch done.
    logger.flush()
    state = _checkpoint_state(job.model, job.optimizer, epoch + 1, job.step, job.run_id, job.cfg)
    ckpt.save_checkpoint(ckpt.checkpoint_path(job.ckpt_dir, epoch + 1), state | {SKIPPED_KEY: stats.skipped_images})
    ckpt.prune_checkpoints(job.ckpt_dir, keep=job.cfg.train.checkpoint_keep)
    log.info("epoch %d/%d: loss %.5f (%.1f s)", epoch + 1, job.cfg.optim.epochs, mean_loss, seconds)


def export_and_monitor(job: Pretraining, logger: RunLogger | None) -> PretrainResult:
    """Rank 0: export the student backbone, score it against a random one, log both; other ranks return."""
    cfg = job.cfg
    backbone_path = job.out_dir / "backbone.pt"
    metrics: dict[str, float] = {}
    if logger is None:
        return PretrainResult(job.run_id, backbone_path, metrics)
    last = ckpt.checkpoint_path(job.ckpt_dir, cfg.optim.epochs)
    ckpt.export_backbone(job.model.student_backbone_state_dict(), backbone_path,
                         _backbone_metadata(cfg, job.model.backbone.feature_dim, job.run_id, last))
    if cfg.monitor.enabled:
        metrics = monitor_backbone(cfg, job.model.backbone, job.proc.device)
        logger.log_metrics(metrics, job.step)
    if cfg.tracking.log_backbone:
        logger.try_("log the backbone", logger.log_artifact, backbone_path, "backbone")
    return PretrainResult(job.run_id, backbone_path, metrics)


def _spectral_norm_of(target: torch.Tensor, online: torch.Tensor, lam: float) -> float:
    """||C||_2 of one pair's small-side C on this rank's rows: an estimate of the global batch's value.

    lambda was set for the global batch; this rank holds batch/world rows, hence the rescaling.
    """
    with torch.no_grad():
        a = torch.nn.functional.normalize(target.float(), dim=1)
        b = torch.nn.functional.normalize(online.float(), dim=1)
        return spectral_norm(cross_correlation_matrix(a, b, lam * dist_env.world_size(), side="auto"))


def monitor_backbone(cfg: Config, backbone: torch.nn.Module, device: torch.device) -> dict[str, float]:
    """kNN / few-shot / linear accuracy of the learned backbone and of a random one, on held-out images."""
    transform = eval_transform(cfg.data.augment, cfg.data.image_size)
    splits = {}
    for split in ("train", "val"):
        dataset = build_eval_dataset(cfg.data.name, cfg.data.root, transform, split, **cfg.data.dataset_options())
        splits[split] = build_loader(dataset, 256, shuffle=False, drop_last=False,
                                     num_workers=loader_workers(cfg.data.num_workers), seed=0, distributed=False)
    # The baseline keeps every residual branch active: zero-initialised residual BNs would make each block
    # the identity and the random network needlessly weak (eval-mode kNN 0.09 vs 0.16 on the digits).
    torch.manual_seed(cfg.train.seed)
    random_backbone = build_backbone_from_config(cfg, zero_init_residual=False).to(device)
    results: dict[str, float] = {}
    for prefix, net in (("monitor", backbone), ("monitor/random_init", random_backbone)):
        train = extract_features(net, splits["train"], device)
        val = extract_features(net, splits["val"], device)
        scores = feature_quality(
            train, val, knn_k=cfg.monitor.knn_k, knn_temperature=cfg.monitor.knn_temperature,
            few_shot=cfg.monitor.few_shot, few_shot_draws=cfg.monitor.few_shot_draws,
            full_linear=cfg.monitor.full_linear, seed=cfg.train.seed,
        )
        results.update({f"{prefix}/{k}": v for k, v in scores.items()})
    for key, value in sorted(results.items()):
        log.info("%s = %.4f", key, value)
    return results
