"""The MEC networks: ResNet backbones, projectors, predictor and the student/EMA-teacher pair.

The backbone keeps torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...) so that an exported
width-64 standard-stem backbone loads into ``torchvision.models.resnet18()`` / ``resnet50()`` with only ``fc.*``
missing, which is what the linear probe, detection and tracking evaluations expect.
"""

import copy
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

_ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

# SyncBatchNorm has kernels only for these device types; on a CPU it raises in the forward pass.
_SYNC_BATCHNORM_DEVICE_TYPES = ("cuda", "hpu", "xpu")


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ResNetBackbone(nn.Module):
    """A torchvision-layout ResNet without its classifier, with every stage width scaled by ``width``.

    Stage ``i`` (0-based) has ``width * 2**i`` planes, so ``width=64`` is torchvision's ResNet exactly.
    ``forward`` returns globally average-pooled, flattened features of size ``feature_dim``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: list[int],
        width: int,
        cifar_stem: bool,
        zero_init_residual: bool,
    ) -> None:
        super().__init__()
        if cifar_stem:
            # CIFAR images are 32 px: a strided 7x7 stem plus max-pool would leave a 1x1 map at layer4.
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_channels = width
        stages = []
        for stage_index, num_blocks in enumerate(blocks_per_stage):
            planes = width * 2**stage_index
            stride = 1 if stage_index == 0 else 2
            stages.append(self._make_stage(block, in_channels, planes, num_blocks, stride))
            in_channels = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = in_channels
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck], in_channels: int, planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [block(in_channels, planes, stride, downsample)]
        layers += [block(out_channels, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's ResNet initialisation, so that width 64 starts from the same distribution.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Each residual branch starts at zero, so every block starts as the identity (Goyal et al. 2017).
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(
    arch: str, width: int = 64, cifar_stem: bool = False, zero_init_residual: bool = True
) -> ResNetBackbone:
    """Build a ResNet backbone ("resnet18" or "resnet50"); ``width`` is the stem width (64 = torchvision's)."""
    if arch not in _ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(_ARCHITECTURES)}, got {arch!r}")
    _check_positive_int("width", width)
    block, blocks_per_stage = _ARCHITECTURES[arch]
    return ResNetBackbone(block, blocks_per_stage, width, cifar_stem, zero_init_residual)


def released_projector(in_dim: int, hidden: int = 2048, out: int = 2048) -> nn.Sequential:
    """The released code's 3-layer projector, ending in a frozen-bias linear layer and a non-affine BN."""
    for name, value in (("in_dim", in_dim), ("hidden", hidden), ("out", out)):
        _check_positive_int(name, value)
    output_linear = nn.Linear(hidden, out)
    # The bias is cancelled by the BN that follows; the released code freezes it rather than removing it.
    output_linear.bias.requires_grad_(False)
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        output_linear,
        nn.BatchNorm1d(out, affine=False),
    )


def cifar_projector(in_dim: int, hidden: int = 2048, out: int = 2048) -> nn.Sequential:
    """The 2-layer projector with BN and ReLU of the CIFAR-10 study (paper appendix B)."""
    for name, value in (("in_dim", in_dim), ("hidden", hidden), ("out", out)):
        _check_positive_int(name, value)
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    )


def predictor(dim: int = 2048, hidden: int = 512) -> nn.Sequential:
    """The bottleneck predictor on top of the student's projector: dim -> hidden -> dim."""
    for name, value in (("dim", dim), ("hidden", hidden)):
        _check_positive_int(name, value)
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
    )


class ViewPairOutputs(NamedTuple):
    """What ``MECModel`` returns for two views of a batch.

    ``p1``/``p2``: the student's predictor outputs (carry gradients).
    ``z1``/``z2``: the targets, without gradients: the teacher's projector outputs, or the student's own
    projector outputs when the model has no teacher.
    """

    p1: torch.Tensor
    p2: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor


class MECModel(nn.Module):
    """Student (backbone + projector + predictor) and an EMA teacher (copies of backbone + projector).

    Each view gets its own forward pass, so BatchNorm normalises each view with its own batch statistics
    (as the released code does). The teacher follows the model's train/eval mode: in training its BN uses
    batch statistics. With ``use_teacher=False`` (SimSiam-style) there is no teacher and the targets are
    the student's projector outputs behind a stop-gradient.

    With ``predictor=None`` the model is the symmetric net of the paper's Algorithm 1: one encoder
    (backbone + projector) embeds both views and the loss reaches both, no predictor, no teacher, no
    stop-gradient; ``forward`` then returns the two embeddings as both (p1, p2) and (z1, z2).
    """

    def __init__(
        self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None, use_teacher: bool = True
    ) -> None:
        super().__init__()
        if predictor is None and use_teacher:
            raise ValueError("the symmetric net (predictor=None) has no teacher; pass use_teacher=False")
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.use_teacher = use_teacher
        self.teacher_backbone: nn.Module | None = None
        self.teacher_projector: nn.Module | None = None
        if use_teacher:
            self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.teacher_projector = copy.deepcopy(projector).requires_grad_(False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> ViewPairOutputs:
        embedding1 = self.projector(self.backbone(x1))
        embedding2 = self.projector(self.backbone(x2))
        if self.predictor is None:
            return ViewPairOutputs(embedding1, embedding2, embedding1, embedding2)
        p1, p2 = self.predictor(embedding1), self.predictor(embedding2)
        if self.teacher_backbone is None or self.teacher_projector is None:
            return ViewPairOutputs(p1, p2, embedding1.detach(), embedding2.detach())
        with torch.no_grad():
            z1 = self.teacher_projector(self.teacher_backbone(x1))
            z2 = self.teacher_projector(self.teacher_backbone(x2))
        return ViewPairOutputs(p1, p2, z1, z2)

    @property
    def symmetric(self) -> bool:
        """Whether this is Algorithm 1's symmetric net (no predictor, gradients through both views)."""
        return self.predictor is None

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for parameters only (not BN buffers)."""
        if self.teacher_backbone is None or self.teacher_projector is None:
            raise RuntimeError("update_teacher called on a MECModel built with use_teacher=False")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        pairs = (
            (self.teacher_backbone, self.backbone),
            (self.teacher_projector, self.projector),
        )
        for teacher, student in pairs:
            for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
                teacher_param.lerp_(student_param, 1.0 - momentum)

    def student_backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The student backbone's weights with torchvision's key names, copied to the CPU for export."""
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.backbone.state_dict().items()}


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Turn every BatchNorm of ``model`` into SyncBatchNorm when training is distributed, as the released code does.

    BN then normalises over the global batch of each view. Conversion happens only when a
    ``torch.distributed`` process group is initialised and ``device`` (default: the device of the model's
    first parameter, so call this after ``.to(device)`` or pass the device) is an accelerator: SyncBatchNorm
    has no CPU kernel, so CPU (gloo) runs keep per-process BN. Returns the model to use from then on.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    if device is None:
        first_parameter = next(model.parameters(), None)
        if first_parameter is None:
            return model
        device = first_parameter.device
    if torch.device(device).type not in _SYNC_BATCHNORM_DEVICE_TYPES:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
