"""Optimisers of the two recipes: SGD (released code, batch 1024) and LARS (paper, batch 4096)."""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from mec.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """One group, or two: biases and normalisation parameters (ndim <= 1) without weight decay.

    In timm's LARS a group with weight_decay 0 is also not trust-ratio adapted, which is how the LARS
    recipes of BYOL/Barlow Twins/MoCo v3 treat those parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, on_gpu: bool = False) -> torch.optim.Optimizer:
    """`cfg`'s optimiser over `model`'s parameters; SGD uses torch's fused kernel when `on_gpu` and
    ``optim.fused`` (the default multi-tensor one otherwise)."""
    if cfg.name == "sgd":
        # The released code decays every parameter (reference.md, section 2).
        groups = parameter_groups(model, cfg.weight_decay, exclude_bias_and_norm=False)
        fused = {"fused": True} if on_gpu and cfg.fused else {}
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    groups = parameter_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    return Lars(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        trust_coeff=cfg.lars_trust_coefficient,
        trust_clip=False,
    )
