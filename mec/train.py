"""MEC pretraining: one resumable loop for a laptop CPU, one GPU, or many nodes under DDP.

The recipe is the released code's (reference.md): two asymmetric views, student predictor against EMA
teacher, symmetrised coding-length loss on the global batch, per-iteration lr / lambda / momentum schedules.
Every epoch ends with an atomic checkpoint; a restarted run resumes from the newest valid one and keeps
logging into the same MLflow run.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from mec import checkpoint as ckpt
from mec import distributed as dist_env
from mec.augment import build_two_view, eval_transform
from mec.config import Config, ConfigError
from mec.data import build_eval_dataset, build_loader, build_pretrain_dataset
from mec.loss import MaximumEntropyCodingLoss, cross_correlation_matrix, spectral_norm
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
from mec.schedules import lambda_warmup_scale, teacher_momentum, warmup_cosine
from mec.tracking import RunLogger, environment_tags

log = logging.getLogger(__name__)

SIMULATED_KILL_EXIT_CODE = 137  # what a SIGKILL'd process reports; used by train.stop_after_steps


@dataclass(frozen=True)
class PretrainResult:
    run_id: str | None
    backbone_path: Path
    metrics: dict[str, float]


def select_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    given_run_id = run_id
    distributed = dist_env.init_distributed()
    rank, world = dist_env.rank(), dist_env.world_size()
    main = rank == 0
    device = select_device(cfg.train.device)
    if cfg.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} must be divisible by the world size {world}")
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.train.seed + rank)

    out_dir = Path(cfg.train.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    check_convergence(cfg)

    two_view = build_two_view(cfg.data.augment, cfg.data.image_size, **cfg.data.augment_options)
    dataset = build_pretrain_dataset(
        cfg.data.name, cfg.data.root, two_view, download=cfg.data.download, digits_params=cfg.data.digits_params(),
        positives=cfg.data.positives, source_pair_p=cfg.data.source_pair_p,
    )
    local_batch = cfg.optim.batch_size // world
    loader = build_loader(
        dataset, local_batch, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers,
        seed=cfg.train.seed, distributed=distributed,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is larger than the data set ({len(dataset)} images "
            f"in {cfg.data.root}); lower optim.batch_size"
        )
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    lambda_warmup_steps = round(cfg.loss.lambda_warmup_epochs * steps_per_epoch)

    model = build_model(cfg).to(device)
    model = convert_sync_batchnorm(model, device)
    use_cuda_extras = device.type == "cuda"
    if use_cuda_extras and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = MaximumEntropyCodingLoss(
        eps=cfg.loss.eps, order=cfg.loss.order, side=cfg.loss.side, parametrisation=cfg.loss.parametrisation
    )
    optimizer = build_optimizer(model, cfg.optim, cfg.lr)

    start_epoch, step, run_id = 0, 0, given_run_id
    resumed = ckpt.find_resumable(ckpt_dir)
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng_state(state["rng"])
        if rank != 0:  # only rank 0's RNG state is saved; other ranks get their own stream back
            seed_everything(epoch_seed(cfg.train.seed, int(state["epoch"]), rank))
        start_epoch, step = int(state["epoch"]), int(state["step"])
        run_id = state.get(ckpt.RUN_ID_KEY) or given_run_id
        if given_run_id and run_id != given_run_id:
            log.warning("checkpoint %s belongs to MLflow run %s, not %s: continuing %s", path, run_id,
                        given_run_id, run_id)
        log.info("resuming from %s (epoch %d done, step %d)", path, start_epoch, step)

    train_model = DistributedDataParallel(model, device_ids=[device.index] if use_cuda_extras else None) \
        if distributed else model

    logger: RunLogger | None = None
    if main:
        logger = RunLogger.open(
            experiment=cfg.tracking.experiment,
            run_name=cfg.tracking.run_name or cfg.name,
            journal=out_dir / "metrics.jsonl",
            resume_run_id=run_id,
            tracking_uri=cfg.tracking.tracking_uri,
            tags={"mec.stage": "pretrain", "mec.config_name": cfg.name},
        )
        run_id = logger.run_id
        logger.try_("log params", logger.log_params,
                    cfg.flat() | {"derived.lr": cfg.lr, "derived.steps_per_epoch": steps_per_epoch})
        logger.try_("set tags", logger.set_tags,
                    environment_tags(world, str(device)) | {"mec.output_dir": str(out_dir.resolve())})
        if resumed is None:
            logger.try_("log the resolved config", logger.log_text,
                        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")
            if config_file is not None:
                logger.try_("log the config file", logger.log_artifact, config_file, "config")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda_extras and cfg.train.amp)
    steps_this_process = 0
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            # The loader's generator seeds the shuffle and the workers' augmentations; deriving it from
            # (seed, epoch, rank) lets a resumed run draw what the uninterrupted run would have. Randomness
            # in this process comes from the RNG state restored from the checkpoint.
            loader.generator.manual_seed(epoch_seed(cfg.train.seed, epoch, rank))
            if loader.sampler is not None and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            model.train()
            epoch_loss, epoch_cl, started = 0.0, 0.0, time.monotonic()
            for (view1, view2), _ in _progress(loader, steps_per_epoch, f"epoch {epoch + 1}", main):
                view1 = view1.to(device, non_blocking=True)
                view2 = view2.to(device, non_blocking=True)
                if use_cuda_extras and cfg.train.channels_last:
                    view1 = view1.contiguous(memory_format=torch.channels_last)
                    view2 = view2.contiguous(memory_format=torch.channels_last)
                lr = warmup_cosine(step, total_steps, warmup_steps, cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                scale = lambda_warmup_scale(step, lambda_warmup_steps, cfg.loss.lambda_warmup_factor)
                with autocast:
                    p1, p2, z1, z2 = train_model(view1, view2)
                # Released pairing: teacher view 1 with student view 2, and the reverse; the symmetric net has
                # one pair (Algorithm 1). The loss leaves autocast and evaluates the series in float32 (bf16
                # powers of C lose the higher terms).
                pairs = [(z1, z2)] if model.symmetric else [(z1, p2), (z2, p1)]
                try:
                    out = loss_fn(pairs, lambda_scale=scale)
                except FloatingPointError as exc:
                    raise FloatingPointError(f"step {step} (epoch {epoch + 1}): {exc}") from None
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                momentum = teacher_momentum(step, total_steps, cfg.model.teacher_momentum)
                if cfg.model.use_teacher:
                    model.update_teacher(momentum)
                step += 1
                steps_this_process += 1
                loss_value = out.loss.item()
                epoch_loss += loss_value
                epoch_cl += float(out.coding_length)
                if logger is not None and (step % cfg.train.log_every == 0 or step == 1):
                    metrics = {
                        "train/loss": loss_value,
                        "train/coding_length": float(out.coding_length),
                        "train/lr": lr,
                        "train/lambda": out.lam,
                        "train/teacher_momentum": momentum,
                    }
                    every = cfg.loss.spectral_norm_every
                    if every and (step % every == 0 or step == 1):
                        # Dimensional collapse shows here long before it shows in the loss.
                        metrics["train/embedding_rank"] = effective_rank(p2)
                        if cfg.loss.order is not None:
                            metrics["train/spectral_norm"] = _spectral_norm_of(z1, p2, out.lam)
                    logger.log_metrics(metrics, step)
                    if not sys.stderr.isatty():
                        log.info("epoch %d step %d/%d loss %.5f lr %.4g lambda %.4g", epoch + 1, step,
                                 total_steps, loss_value, lr, out.lam)
                if cfg.train.stop_after_steps and steps_this_process >= cfg.train.stop_after_steps:
                    # Test hook for a killed job: no cleanup, no flush, no checkpoint.
                    logging.shutdown()
                    os._exit(SIMULATED_KILL_EXIT_CODE)
            if logger is not None:
                logger.log_metrics(
                    {
                        "epoch/loss": epoch_loss / steps_per_epoch,
                        "epoch/coding_length": epoch_cl / steps_per_epoch,
                        "epoch/seconds": time.monotonic() - started,
                        "epoch/epoch": epoch + 1,
                    },
                    step,
                )
                # Metrics reach the store before the checkpoint that marks the epoch done.
                logger.flush()
                ckpt.save_checkpoint(
                    ckpt.checkpoint_path(ckpt_dir, epoch + 1),
                    _checkpoint_state(model, optimizer, epoch + 1, step, run_id, cfg),
                )
                ckpt.prune_checkpoints(ckpt_dir, keep=cfg.train.checkpoint_keep)
                log.info("epoch %d/%d: loss %.5f (%.1f s)", epoch + 1, cfg.optim.epochs,
                         epoch_loss / steps_per_epoch, time.monotonic() - started)
            if distributed:
                torch.distributed.barrier()

        backbone_path = out_dir / "backbone.pt"
        metrics: dict[str, float] = {}
        if main:
            last = ckpt.checkpoint_path(ckpt_dir, cfg.optim.epochs)
            ckpt.export_backbone(model.student_backbone_state_dict(), backbone_path,
                                 _backbone_metadata(cfg, model.backbone.feature_dim, run_id, last))
            if cfg.monitor.enabled:
                metrics = monitor_backbone(cfg, model.backbone, device)
                logger.log_metrics(metrics, step)
            if cfg.tracking.log_backbone:
                logger.try_("log the backbone", logger.log_artifact, backbone_path, "backbone")
            logger.close("FINISHED")
            logger = None
        return PretrainResult(run_id, backbone_path, metrics)
    except BaseException:
        if logger is not None:
            logger.close("FAILED")
        raise
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


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
        dataset = build_eval_dataset(cfg.data.name, cfg.data.root, transform, split,
                                     download=cfg.data.download, digits_params=cfg.data.digits_params())
        splits[split] = build_loader(dataset, 256, shuffle=False, drop_last=False,
                                     num_workers=cfg.data.num_workers, seed=0, distributed=False)
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
