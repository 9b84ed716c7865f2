"""The appearance model of the tracking transfer (paper Table 4, UniTrack): a frozen backbone cut after layer3.

UniTrack builds one appearance model from a torchvision ResNet, drops ``layer4`` and sets the strides of layer3 to
1, so that its features are 8x down-sampled, and normalises frames with the backbone's training mean/std; every
task head (VOS label propagation, SiamFC-style SOT, appearance-only MOT association) reads these features without
any fine-tuning. The heads only use ``features(frames)`` and ``stride``, so a test may pass any object with both.

The CIFAR stem (3x3 stride-1 conv, no max-pool) does not down-sample: layer3 then already gives 4x down-sampled
maps with its natural strides, which are kept (halving them further would leave the map at the stem's 2x).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mec.augment import CIFAR_MEAN, CIFAR_STD, DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD

# The eval-time normalisation of each pretraining recipe (as mec.augment.eval_transform normalises).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "digits": (DIGITS_MEAN, DIGITS_STD),
}


def _stride_of(module: nn.Module) -> int:
    """The spatial down-sampling of a stem module (conv or pool): its stride, 1 for identities."""
    stride = getattr(module, "stride", 1)
    if isinstance(stride, tuple):
        if len(set(stride)) != 1:
            raise ValueError(f"anisotropic stride {stride} of {module}")
        stride = stride[0]
    return int(stride)


def _stage_stride(stage: nn.Module) -> int:
    """The down-sampling of a ResNet stage: the product of its first block's conv strides (torchvision layout)."""
    first = stage[0]
    stride = 1
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(first, name, None)
        if conv is not None:
            stride *= _stride_of(conv)
    return stride


def _set_stage_stride_one(stage: nn.Module) -> None:
    """Set every conv of a stage to stride 1 (its first block's strided conv and its downsample), as UniTrack."""
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)


class AppearanceModel(nn.Module):
    """Stage-3 features of a frozen ResNet backbone (torchvision layout), L2-normalised over channels.

    ``stride`` is the largest down-sampling wanted (UniTrack's ``down_factor: 8``): layer3's natural stride is
    kept when its output is at most that coarse, otherwise layer3's stride is set to 1 (an ImageNet-stem ResNet:
    16x -> 8x). The resulting down-sampling is the attribute ``stride``. The backbone is copied, never changed.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        stride: int = 8,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean!r}, {std!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for name in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3"):
            if not hasattr(backbone, name):
                raise ValueError(f"the backbone has no {name!r}: a torchvision-layout ResNet is needed")
        maxpool = getattr(backbone, "maxpool", nn.Identity())
        stem = nn.Sequential(
            copy.deepcopy(backbone.conv1), copy.deepcopy(backbone.bn1), nn.ReLU(), copy.deepcopy(maxpool)
        )
        layer1, layer2, layer3 = (copy.deepcopy(getattr(backbone, n)) for n in ("layer1", "layer2", "layer3"))
        before_layer3 = _stride_of(backbone.conv1) * _stride_of(maxpool) * _stage_stride(layer1) * _stage_stride(layer2)
        natural = before_layer3 * _stage_stride(layer3)
        if natural <= stride:
            self.stride = natural
        elif before_layer3 <= stride:
            _set_stage_stride_one(layer3)
            self.stride = before_layer3
        else:
            raise ValueError(
                f"the backbone is {before_layer3}x down-sampled before layer3, coarser than stride={stride}"
            )
        self.body = nn.Sequential(stem, layer1, layer2, layer3)
        self.body.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.to(self.device)
        self.eval()

    def train(self, mode: bool = True) -> AppearanceModel:
        # Frozen: BatchNorm always uses its running statistics.
        return super().train(False)

    @staticmethod
    def _as_batch(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        array = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"frames must be [H,W,3] RGB images (0-255), got shape {array.shape}")
        return array

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised features of a [N,3,H,W] float batch in 0-255 (RGB)."""
        x = (images - self.mean) / self.std
        return F.normalize(self.body(x), dim=1)

    @torch.no_grad()
    def features(self, frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """[N,C,ceil(H/stride),ceil(W/stride)] features of RGB frames ([H,W,3], uint8 or float in 0-255).

        Frames of one call must share their size. Features come back on the model's device, float32.
        """
        array = self._as_batch(frames)
        out = []
        for start in range(0, len(array), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(array[start : start + self.batch_size]))
            chunk = chunk.to(self.device, dtype=torch.float32).permute(0, 3, 1, 2)
            out.append(self(chunk))
        return torch.cat(out)


def normalization(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) that the config's pretraining recipe (``cfg.data.augment``) normalises with."""
    kind = cfg.data.augment
    if kind not in NORMALIZATION:
        raise ValueError(f"no normalisation known for data.augment={kind!r}; known: {sorted(NORMALIZATION)}")
    return NORMALIZATION[kind]


def from_backbone_file(
    path: str | Path, cfg: Any, *, stride: int = 8, device: str | torch.device = "cpu", batch_size: int = 8
) -> AppearanceModel:
    """The appearance model of an exported backbone (or checkpoint) of the run whose resolved config is ``cfg``."""
    from evals.job import load_frozen_backbone

    backbone, _ = load_frozen_backbone(path, cfg)
    mean, std = normalization(cfg)
    return AppearanceModel(backbone, mean, std, stride=stride, device=device, batch_size=batch_size)
