"""detectron2 pieces of the detection transfer, registered on import.

- `Res5ROIHeadsExtraNorm`: MoCo's ROI heads, `Res5ROIHeads` with an extra norm (``MODEL.RESNETS.NORM``) after
  res5; for a BasicBlock backbone (ResNet-18) its res5 is two BasicBlocks of the backbone's width, where
  detectron2's own `Res5ROIHeads` always builds bottlenecks.
- `build_mec_resnet_backbone`: detectron2's `ResNet` shaped like the exported backbone that
  ``MODEL.MEC_BACKBONE.{ARCH,WIDTH,CIFAR_STEM}`` describes: ResNet-50 (bottlenecks, stride in the 3x3 as
  torchvision) or ResNet-18 (BasicBlocks) of any width, with the ImageNet stem (7x7/2 + max-pool) or the CIFAR stem
  (3x3/1, no max-pool). detectron2's `build_resnet_backbone` insists on 64 channels at res2 for R18 and has no
  CIFAR stem.
- `add_mec_config` adds those keys to a config; `missing_pretrained_keys` lists the backbone / res5 weights a
  loaded checkpoint did not fill.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2), 18), "resnet50": (BottleneckBlock, (3, 4, 6, 3), 50)}
BACKBONE_NAME = "build_mec_resnet_backbone"
ROI_HEADS_NAME = "Res5ROIHeadsExtraNorm"


class DetectionModelError(ValueError):
    """A config or a weight file that does not describe the exported backbone; one line."""


def add_mec_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.MEC_BACKBONE.{ARCH, WIDTH, CIFAR_STEM}`` (defaults: torchvision's ResNet-50)."""
    cfg.MODEL.MEC_BACKBONE = CfgNode()
    cfg.MODEL.MEC_BACKBONE.ARCH = "resnet50"
    cfg.MODEL.MEC_BACKBONE.WIDTH = 64
    cfg.MODEL.MEC_BACKBONE.CIFAR_STEM = False
    return cfg


def set_backbone_shape(cfg: CfgNode, arch: str, width: int, cifar_stem: bool) -> CfgNode:
    """Fill MEC_BACKBONE and the RESNETS keys the ROI heads read (depth, channels) from one description."""
    if arch not in ARCHS:
        raise DetectionModelError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    block, _, depth = ARCHS[arch]
    cfg.MODEL.MEC_BACKBONE.ARCH = arch
    cfg.MODEL.MEC_BACKBONE.WIDTH = int(width)
    cfg.MODEL.MEC_BACKBONE.CIFAR_STEM = bool(cifar_stem)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = int(width)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = int(width) * (4 if block is BottleneckBlock else 1)
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = int(width)
    cfg.MODEL.RESNETS.NUM_GROUPS = 1
    return cfg


def _shape(cfg: CfgNode) -> tuple[str, int, bool]:
    mb = cfg.MODEL.MEC_BACKBONE
    arch, width, cifar_stem = mb.ARCH, int(mb.WIDTH), bool(mb.CIFAR_STEM)
    if arch not in ARCHS:
        raise DetectionModelError(f"MODEL.MEC_BACKBONE.ARCH must be one of {sorted(ARCHS)}, got {arch!r}")
    block, _, depth = ARCHS[arch]
    res = cfg.MODEL.RESNETS
    want = {"DEPTH": depth, "STEM_OUT_CHANNELS": width, "NUM_GROUPS": 1, "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": width * (4 if block is BottleneckBlock else 1)}
    if block is BottleneckBlock:
        want["WIDTH_PER_GROUP"] = width
    wrong = [f"RESNETS.{k}={res[k]} (the backbone needs {v})" for k, v in want.items() if res[k] != v]
    if any(res.DEFORM_ON_PER_STAGE):
        wrong.append("RESNETS.DEFORM_ON_PER_STAGE (no deformable convolutions in the exported backbone)")
    if wrong:
        raise DetectionModelError(f"MODEL.MEC_BACKBONE says {arch} width {width} but " + "; ".join(wrong))
    return arch, width, cifar_stem


class CifarStem(CNNBlockBase):
    """The CIFAR stem of `mec.models`: a 3x3 stride-1 conv + norm + ReLU, no max-pool (stride 1)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN") -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        # detectron2's (fvcore's) c2_msra_fill, as BasicStem: the loaded weights replace it anyway
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return F.relu_(self.conv1(x))


def _stage_kwargs(block: type, cfg: CfgNode, in_channels: int, out_channels: int, bottleneck: int) -> dict:
    kwargs = {"in_channels": in_channels, "out_channels": out_channels, "norm": cfg.MODEL.RESNETS.NORM}
    if block is BottleneckBlock:
        kwargs.update(bottleneck_channels=bottleneck, stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1,
                      num_groups=1, dilation=1)
    return kwargs


@BACKBONE_REGISTRY.register()
def build_mec_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet with the exported backbone's block type, width and stem (``MODEL.MEC_BACKBONE``)."""
    arch, width, cifar_stem = _shape(cfg)
    block, blocks_per_stage, _ = ARCHS[arch]
    norm = cfg.MODEL.RESNETS.NORM
    stem_class = CifarStem if cifar_stem else BasicStem
    stem = stem_class(in_channels=input_shape.channels, out_channels=width, norm=norm)
    expansion = 4 if block is BottleneckBlock else 1
    stages, in_channels = [], width
    for index, num_blocks in enumerate(blocks_per_stage):
        planes = width * 2**index
        out_channels = planes * expansion
        stages.append(ResNet.make_stage(block, num_blocks, stride_per_block=[1 if index == 0 else 2] +
                                        [1] * (num_blocks - 1),
                                        **_stage_kwargs(block, cfg, in_channels, out_channels, planes)))
        in_channels = out_channels
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """MoCo's detection ROI heads: res5, then an extra ``MODEL.RESNETS.NORM`` layer (``res5.norm``).

    res5 follows the backbone: three bottlenecks for ResNet-50 (detectron2's own), two BasicBlocks of
    8 x width channels for ResNet-18.
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode) -> tuple[nn.Sequential, int]:
        basic = ("MEC_BACKBONE" in cfg.MODEL and cfg.MODEL.MEC_BACKBONE.ARCH == "resnet18") or \
            cfg.MODEL.RESNETS.DEPTH in (18, 34)
        if basic:
            out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            blocks = ResNet.make_stage(BasicBlock, 2, stride_per_block=[2, 1], in_channels=out_channels // 2,
                                       out_channels=out_channels, norm=cfg.MODEL.RESNETS.NORM)
            seq = nn.Sequential(*blocks)
        else:
            seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


def expected_pretrained_keys(model_keys: Iterable[str]) -> list[str]:
    """The model's weights that come from the pretrained backbone: ``backbone.*`` and res5 (not res5.norm)."""
    return [k for k in model_keys if (k.startswith("backbone.") or k.startswith("roi_heads.res5."))
            and not k.startswith("roi_heads.res5.norm.")]


def missing_pretrained_keys(model: nn.Module, missing: Iterable[str]) -> list[str]:
    """Of a load's missing keys, the ones the pretrained backbone should have filled."""
    expected = set(expected_pretrained_keys(model.state_dict()))
    return sorted(k for k in missing if k in expected)
