"""Tests of the MEC networks against torchvision's ResNets and independently computed EMA updates."""

import math

import pytest
import torch
import torchvision
from torch import nn

from mec.models import (
    MECModel,
    build_backbone,
    cifar_projector,
    convert_sync_batchnorm,
    predictor,
    released_projector,
)
from mec.schedules import teacher_momentum


def _without_fc(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in state_dict.items() if not name.startswith("fc.")}


@pytest.mark.parametrize(
    ("arch", "torchvision_builder", "feature_dim"),
    [("resnet18", torchvision.models.resnet18, 512), ("resnet50", torchvision.models.resnet50, 2048)],
)
def test_width64_backbone_matches_torchvision_layout(arch, torchvision_builder, feature_dim):
    backbone = build_backbone(arch)
    reference = torchvision_builder()
    assert _without_fc(backbone.state_dict()) == _without_fc(reference.state_dict())
    assert backbone.feature_dim == feature_dim


def test_exported_resnet50_loads_into_torchvision_and_gives_the_same_features():
    torch.manual_seed(0)
    model = MECModel(build_backbone("resnet50"), released_projector(2048, 64, 32), predictor(32, 16))
    with torch.no_grad():
        # Non-trivial BN statistics, so that a key mix-up would change the features.
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    exported = model.student_backbone_state_dict()
    assert "conv1.weight" in exported and not any(name.startswith("backbone.") for name in exported)
    reference = torchvision.models.resnet50()
    incompatible = reference.load_state_dict(exported, strict=False)
    assert sorted(incompatible.missing_keys) == ["fc.bias", "fc.weight"]
    assert incompatible.unexpected_keys == []
    reference.fc = nn.Identity()
    images = torch.randn(1, 3, 64, 64)
    model.eval()
    reference.eval()
    with torch.no_grad():
        features = model.backbone(images)
        expected = reference(images)
    assert features.shape == (1, 2048)
    torch.testing.assert_close(features, expected)


def test_exported_state_dict_is_a_snapshot():
    backbone = build_backbone("resnet18", width=8)
    model = MECModel(backbone, cifar_projector(64, 16, 8), predictor(8, 4))
    exported = model.student_backbone_state_dict()
    with torch.no_grad():
        backbone.conv1.weight.add_(1.0)
    assert not torch.equal(exported["conv1.weight"], backbone.conv1.weight)


def test_backbone_initialisation_follows_torchvision():
    torch.manual_seed(0)
    backbone = build_backbone("resnet50")
    conv = backbone.layer3[0].conv3  # 1x1, 256 -> 1024: kaiming normal with fan_out = 1024 (fan_in would be 256)
    expected_std = math.sqrt(2.0 / 1024)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std
    assert torch.equal(backbone.bn1.weight, torch.ones(64))
    assert torch.equal(backbone.layer2[0].downsample[1].bias, torch.zeros(512))


@pytest.mark.parametrize(("arch", "last_bn_name"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_bn_of_each_block(arch, last_bn_name):
    backbone = build_backbone(arch, width=8)
    stages = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    blocks = [block for stage in stages for block in stage]
    assert len(blocks) == (8 if arch == "resnet18" else 16)
    for block in blocks:
        assert torch.count_nonzero(getattr(block, last_bn_name).weight) == 0
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    kept_bn = getattr(build_backbone(arch, width=8, zero_init_residual=False).layer1[0], last_bn_name)
    assert torch.equal(kept_bn.weight, torch.ones_like(kept_bn.weight))


def test_cifar_stem_keeps_32px_inputs_at_4x4_before_pooling():
    backbone = build_backbone("resnet18", width=16, cifar_stem=True)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert not any(isinstance(module, nn.MaxPool2d) for module in backbone.modules())
    layer4_shapes = []
    backbone.layer4.register_forward_hook(lambda module, inputs, output: layer4_shapes.append(output.shape))
    features = backbone(torch.randn(2, 3, 32, 32))
    assert layer4_shapes == [torch.Size([2, 128, 4, 4])]
    assert backbone.feature_dim == 128
    assert features.shape == (2, 128)


def test_width_scales_every_stage():
    backbone = build_backbone("resnet50", width=16)
    assert backbone.conv1.out_channels == 16
    stages = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    assert [stage[-1].conv3.out_channels for stage in stages] == [64, 128, 256, 512]
    assert backbone.feature_dim == 512


def test_backbone_runs_channels_last():
    backbone = build_backbone("resnet18", width=8, cifar_stem=True).to(memory_format=torch.channels_last).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = backbone(images)
        features = backbone(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet34"}, "arch must be one of"),
        ({"arch": "resnet18", "width": 0}, "width must be a positive integer, got 0"),
    ],
)
def test_build_backbone_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**kwargs)


def test_released_projector_freezes_the_output_bias_and_has_a_non_affine_output_bn():
    projector = released_projector(16, hidden=32, out=8)
    linears = [module for module in projector if isinstance(module, nn.Linear)]
    norms = [module for module in projector if isinstance(module, nn.BatchNorm1d)]
    assert [(linear.in_features, linear.out_features) for linear in linears] == [(16, 32), (32, 32), (32, 8)]
    assert linears[0].bias is None and linears[1].bias is None
    assert linears[2].bias is not None and not linears[2].bias.requires_grad
    assert linears[2].weight.requires_grad
    assert [norm.affine for norm in norms] == [True, True, False]
    assert norms[-1].weight is None and norms[-1].bias is None
    assert isinstance(projector[-1], nn.BatchNorm1d)
    assert projector(torch.randn(4, 16)).shape == (4, 8)


def test_cifar_projector_and_predictor_layouts():
    projector = cifar_projector(16, hidden=32, out=8)
    assert [type(module) for module in projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert projector[0].bias is None and projector[3].bias.requires_grad
    assert (projector[3].in_features, projector[3].out_features) == (32, 8)
    head = predictor(8, hidden=4)
    assert [type(module) for module in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[0].bias) == (8, 4, None)
    assert (head[3].in_features, head[3].out_features) == (4, 8)


def test_heads_reject_bad_sizes():
    with pytest.raises(ValueError, match="hidden must be a positive integer, got -1"):
        released_projector(16, hidden=-1)
    with pytest.raises(ValueError, match="out must be a positive integer, got 0"):
        cifar_projector(16, out=0)
    with pytest.raises(ValueError, match="dim must be a positive integer, got 2.0"):
        predictor(2.0)


def _small_model(use_teacher: bool = True) -> MECModel:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=4, cifar_stem=True)
    return MECModel(backbone, released_projector(32, 16, 8), predictor(8, 4), use_teacher=use_teacher)


def test_teacher_starts_as_a_frozen_copy_of_backbone_and_projector_only():
    model = _small_model()
    student_encoder = nn.ModuleDict({"backbone": model.backbone, "projector": model.projector})
    teacher_encoder = nn.ModuleDict({"backbone": model.teacher_backbone, "projector": model.teacher_projector})
    student_params = dict(student_encoder.named_parameters())
    teacher_params = dict(teacher_encoder.named_parameters())
    assert teacher_params.keys() == student_params.keys()
    for name, teacher_param in teacher_params.items():
        assert not teacher_param.requires_grad
        assert torch.equal(teacher_param, student_params[name])
        assert teacher_param.data_ptr() != student_params[name].data_ptr()
    predictor_param_ids = {id(param) for param in model.predictor.parameters()}
    teacher_param_ids = {id(param) for param in teacher_params.values()}
    assert not predictor_param_ids & teacher_param_ids
    total = sum(param.numel() for param in model.parameters())
    assert total == sum(p.numel() for p in student_encoder.parameters()) * 2 + sum(
        p.numel() for p in model.predictor.parameters()
    )


def test_update_teacher_averages_parameters_and_leaves_buffers():
    model = _small_model()
    with torch.no_grad():
        for param in list(model.backbone.parameters()) + list(model.projector.parameters()):
            param.add_(torch.randn_like(param))
        model.backbone.bn1.running_mean.fill_(3.0)
    old_teacher = {
        ("backbone", name): param.clone() for name, param in model.teacher_backbone.named_parameters()
    } | {("projector", name): param.clone() for name, param in model.teacher_projector.named_parameters()}
    teacher_running_mean = model.teacher_backbone.bn1.running_mean.clone()
    momentum = 0.9
    model.update_teacher(momentum)
    students = {
        "backbone": dict(model.backbone.named_parameters()),
        "projector": dict(model.projector.named_parameters()),
    }
    teachers = {
        "backbone": dict(model.teacher_backbone.named_parameters()),
        "projector": dict(model.teacher_projector.named_parameters()),
    }
    for (part, name), old in old_teacher.items():
        expected = momentum * old + (1 - momentum) * students[part][name]
        torch.testing.assert_close(teachers[part][name], expected)
        assert not teachers[part][name].requires_grad
    assert torch.equal(model.teacher_backbone.bn1.running_mean, teacher_running_mean)
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\], got 1.5"):
        model.update_teacher(1.5)


def test_gradients_reach_the_student_only():
    model = _small_model()
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    p1, p2, z1, z2 = model(x1, x2)
    assert p1.shape == z1.shape == (4, 8)
    assert p1.requires_grad and not z1.requires_grad and not z2.requires_grad
    ((p1 * z2).sum() + (p2 * z1).sum()).backward()
    assert all(param.grad is None for param in model.teacher_backbone.parameters())
    assert all(param.grad is None for param in model.teacher_projector.parameters())
    assert model.backbone.conv1.weight.grad is not None
    assert model.predictor[0].weight.grad is not None
    assert model.projector[6].bias.grad is None


def test_each_view_is_normalised_with_its_own_batch_statistics():
    model = _small_model()
    x1 = torch.randn(4, 3, 8, 8)
    first = model(x1, torch.randn(4, 3, 8, 8))
    second = model(x1, torch.randn(4, 3, 8, 8))
    torch.testing.assert_close(first.p1, second.p1)
    torch.testing.assert_close(first.z1, second.z1)
    assert not torch.allclose(first.p2, second.p2)


def test_without_teacher_the_targets_are_the_detached_student_projections():
    model = _small_model(use_teacher=False)
    assert model.teacher_backbone is None and model.teacher_projector is None
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    outputs = model(x1, x2)
    expected_z2 = model.projector(model.backbone(x2))
    torch.testing.assert_close(outputs.z2, expected_z2)
    torch.testing.assert_close(outputs.p2, model.predictor(expected_z2))
    assert not outputs.z1.requires_grad and not outputs.z2.requires_grad
    with pytest.raises(RuntimeError, match="use_teacher=False"):
        model.update_teacher(0.99)


def test_teacher_momentum_schedule():
    assert teacher_momentum(0, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 100) == pytest.approx(1.0)
    assert teacher_momentum(25, 100, base=0.99) == pytest.approx(1 - 0.01 * (1 + math.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="step must be in \\[0, total_steps=100\\], got 101"):
        teacher_momentum(101, 100)
    with pytest.raises(ValueError, match="total_steps must be positive, got 0"):
        teacher_momentum(0, 0)


def test_convert_sync_batchnorm_only_when_distributed_on_an_accelerator(tmp_path):
    model = _small_model()
    assert convert_sync_batchnorm(model) is model
    assert not any(isinstance(module, nn.SyncBatchNorm) for module in model.modules())
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        cpu_model = convert_sync_batchnorm(model)
        assert not any(isinstance(module, nn.SyncBatchNorm) for module in cpu_model.modules())
        converted = convert_sync_batchnorm(model, device="cuda")
    finally:
        torch.distributed.destroy_process_group()
    norms = [module for module in converted.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(module, nn.SyncBatchNorm) for module in norms)
    assert "conv1.weight" in converted.student_backbone_state_dict()
    assert converted.teacher_backbone is not None


@pytest.mark.parametrize("sync", [True, False])
def test_pretraining_converts_batchnorm_only_when_model_sync_batchnorm_says_so(tmp_path, monkeypatch, sync):
    from mec.config import build_config
    from mec.train import prepare_model

    cfg = build_config({"model": {"arch": "resnet18", "width": 4, "cifar_stem": True, "projector_hidden": 16,
                                  "embedding_dim": 8, "predictor_hidden": 8, "sync_batchnorm": sync}})
    # No GPU here: let this test's CPU stand for an accelerator, so conversion hangs on the config alone.
    monkeypatch.setattr("mec.models._SYNC_BATCHNORM_DEVICE_TYPES", ("cuda", "cpu"))
    assert not _sync_norms(prepare_model(cfg, torch.device("cpu")))  # no process group: never
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = prepare_model(cfg, torch.device("cpu"))
    finally:
        torch.distributed.destroy_process_group()
    assert bool(_sync_norms(model)) is sync
    assert not any(type(m) is nn.BatchNorm2d for m in model.backbone.modules()) if sync else True


def _sync_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]


def test_symmetric_net_embeds_both_views_with_gradients_and_has_no_teacher():
    torch.manual_seed(0)
    model = MECModel(build_backbone("resnet18", width=4, cifar_stem=True), released_projector(32, 16, 8), None,
                     use_teacher=False)
    assert model.symmetric and model.teacher_backbone is None
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    p1, p2, z1, z2 = model(x1, x2)
    torch.testing.assert_close(z2, model.projector(model.backbone(x2)))
    assert p1 is z1 and p2 is z2 and z1.requires_grad and z2.requires_grad
    # Algorithm 1: the loss of (z1, z2) reaches the encoder through both views.
    grad_from_view2 = torch.autograd.grad((z1.detach() * z2).sum(), model.backbone.conv1.weight)[0]
    assert grad_from_view2.abs().sum() > 0
    with pytest.raises(ValueError, match="symmetric net .* has no teacher"):
        MECModel(model.backbone, model.projector, None, use_teacher=True)
