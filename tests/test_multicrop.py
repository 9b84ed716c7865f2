"""Multi-crop pretraining (appendix Table 7): the views, the pairs the loss compares, the forward, a resumed run.

The rule under test (mec.loss.multi_crop_pairs): the target sees only the two global views; each student view
(global and local) is compared with every target global view except its own crop; the loss is the MEAN of the
pairs' coding lengths, so that with no local views it is the released two-view loss exactly.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import TINY_MODEL, write_image_folder
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision import transforms as T

from mec import checkpoint as ckpt
from mec import distributed
from mec.augment import (
    MultiCropTransform,
    TwoViewTransform,
    build_pretrain_views,
    build_two_view,
    imagenet_two_view,
    multi_crop,
)
from mec.config import ConfigError, build_config, load_config
from mec.data import build_pretrain_dataset
from mec.loss import MaximumEntropyCodingLoss, multi_crop_pairs
from mec.models import MECModel
from mec.opencv_ops import OpenCVGaussianBlur, OpenCVHueColorJitter
from mec.train import MultiCropForward, build_model, pretrain


def _image(size: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _steps(pipeline: T.Compose) -> dict[type, tuple]:
    """{transform type: (transform, RandomApply p or None)} of a pipeline's steps."""
    steps = {}
    for step in pipeline.transforms:
        inner, p = (step.transforms[0], step.p) if isinstance(step, T.RandomApply) else (step, None)
        steps[type(inner)] = (inner, p)
    return steps


# --- the views ---------------------------------------------------------------------------------------------------


def test_imagenet_multi_crop_is_the_two_view_recipe_plus_swav_local_views():
    views = multi_crop("imagenet", 224)
    assert isinstance(views, MultiCropTransform) and views.local_crops == 6
    # The global views are the released asymmetric recipe, parameter for parameter.
    assert repr(views.view1) == repr(imagenet_two_view(224).view1)
    assert repr(views.view2) == repr(imagenet_two_view(224).view2)
    local = _steps(views.local_view)
    crop, _ = local[T.RandomResizedCrop]
    assert crop.size == (96, 96) and crop.scale == (0.05, 0.14)
    blur, blur_p = local[OpenCVGaussianBlur]
    assert blur_p == 0.5 and blur.sigma == (0.1, 2.0)
    assert local[T.RandomSolarize][0].p == 0.0
    jitter, jitter_p = local[OpenCVHueColorJitter]
    assert jitter_p == 0.8 and jitter.saturation == pytest.approx((0.8, 1.2))
    assert local[T.RandomGrayscale][0].p == 0.2 and T.RandomHorizontalFlip in local

    torch.manual_seed(0)
    out = multi_crop("imagenet", 64, local_crops=3, local_size=24)(_image(80))
    assert [tuple(v.shape) for v in out] == [(3, 64, 64)] * 2 + [(3, 24, 24)] * 3
    assert not torch.equal(out[2], out[3])  # independent draws


def test_scaled_down_digits_and_cifar_local_views_keep_their_recipe():
    digits = multi_crop("digits", 16, local_crops=2, local_size=8, local_scale=(0.2, 0.5), crop_scale=(0.5, 1.0),
                        jitter_p=0.0)
    assert _steps(digits.view1)[T.RandomResizedCrop][0].scale == (0.5, 1.0)  # the global views' own scale
    local = _steps(digits.local_view)
    assert local[T.RandomResizedCrop][0].size == (8, 8) and local[T.RandomResizedCrop][0].scale == (0.2, 0.5)
    assert local[OpenCVHueColorJitter][1] == 0.0  # the recipe's options reach the local views
    assert T.RandomHorizontalFlip not in local and OpenCVGaussianBlur not in local
    assert [tuple(v.shape) for v in digits(_image(16))] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2

    cifar = multi_crop("cifar", 32, local_crops=4, local_size=16)
    assert OpenCVGaussianBlur not in _steps(cifar.local_view)  # appendix B: no blur on CIFAR
    assert [tuple(v.shape) for v in cifar(_image(32))] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    restored = pickle.loads(pickle.dumps(cifar))
    assert len(restored(_image(32))) == 6


def test_no_local_crops_is_the_two_view_transform_with_the_same_draws():
    views = build_pretrain_views("digits", 16, local_crops=0, crop_scale=(0.5, 1.0))
    assert type(views) is TwoViewTransform
    torch.manual_seed(3)
    first = views(_image(16))
    torch.manual_seed(3)
    second = build_two_view("digits", 16, crop_scale=(0.5, 1.0))(_image(16))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_source_pairs_take_the_local_views_from_view_1s_file(tmp_path):
    folder = write_image_folder(tmp_path, per_class=4, size=16, variants=2)
    views = multi_crop("digits", 16, local_crops=3, local_size=8)
    dataset = build_pretrain_dataset("imagefolder", folder, views, positives="same_source")
    crops, _ = dataset[0]
    assert [tuple(v.shape) for v in crops] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match=r"local_size \(32\) must be smaller"):
        multi_crop("digits", 32, local_crops=2, local_size=32)
    with pytest.raises(ValueError, match="local_crops"):
        build_pretrain_views("digits", 32, local_crops=-1)
    with pytest.raises(ValueError, match="crop_scale"):
        multi_crop("digits", 32, local_crops=2, local_size=16, local_scale=(0.5, 0.1))
    with pytest.raises(TypeError, match="crop_scale"):  # the released ImageNet recipe takes no options
        multi_crop("imagenet", 64, local_crops=2, local_size=32, crop_scale=(0.5, 1.0))


# --- the pairs and the loss --------------------------------------------------------------------------------------


def _embeddings(count: int, m: int = 12, d: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(m, d, generator=generator, dtype=torch.float64)
    return [3.0 * (base + 0.5 * torch.randn(m, d, generator=generator, dtype=torch.float64)) for _ in range(count)]


@pytest.mark.parametrize("parametrisation", ["released", "paper"])
@pytest.mark.parametrize("order", [4, None])
def test_without_local_views_the_loss_and_its_gradient_are_the_two_view_ones_bit_for_bit(parametrisation, order):
    loss = MaximumEntropyCodingLoss(2.0, order=order, side="batch", parametrisation=parametrisation,
                                    gather_distributed=False)
    z1, z2, *raw = _embeddings(4)
    p1, p2 = (x.clone().requires_grad_() for x in raw)
    two_view = loss([(z1, p2), (z2, p1)])
    two_view.loss.backward()
    grads = p1.grad.clone(), p2.grad.clone()
    p1.grad = p2.grad = None
    multi = loss.multi_crop([z1, z2], [p1, p2])
    multi.loss.backward()
    assert torch.equal(multi.loss, two_view.loss) and torch.equal(multi.coding_length, two_view.coding_length)
    assert torch.equal(p1.grad, grads[0]) and torch.equal(p2.grad, grads[1])
    assert multi.pairs == 2

    # The symmetric net (Algorithm 1): one pair (z1, z2), both with gradient.
    e1, e2 = (x.detach().clone().requires_grad_() for x in (p1, p2))
    single = loss([(e1, e2)])
    single.loss.backward()
    grads = e1.grad.clone(), e2.grad.clone()
    e1.grad = e2.grad = None
    symmetric = loss.multi_crop([e1, e2], [e1, e2], symmetric=True)
    symmetric.loss.backward()
    assert torch.equal(symmetric.loss, single.loss)
    assert torch.equal(e1.grad, grads[0]) and torch.equal(e2.grad, grads[1])


def test_the_pairs_are_every_student_view_against_every_other_global_target():
    t1, t2, s1, s2, l1, l2, l3 = (torch.zeros(2, 2) for _ in range(7))
    pairs = multi_crop_pairs([t1, t2], [s1, s2, l1, l2, l3])
    expected = [(t1, s2), (t1, l1), (t1, l2), (t1, l3), (t2, s1), (t2, l1), (t2, l2), (t2, l3)]
    assert [(a is x and b is y) for (a, b), (x, y) in zip(pairs, expected, strict=True)] == [True] * 8
    # Symmetric net: targets are the students' global embeddings; the global pair is written (g1, g2) twice.
    g1, g2 = s1, s2
    pairs = multi_crop_pairs([g1, g2], [g1, g2, l1], symmetric=True)
    expected = [(g1, g2), (g1, l1), (g1, g2), (g2, l1)]
    assert [(a is x and b is y) for (a, b), (x, y) in zip(pairs, expected, strict=True)] == [True] * 4
    ((a, b), (c, e)) = multi_crop_pairs([t1, t2], [s1, s2])  # the released (z1, p2), (z2, p1)
    assert a is t1 and b is s2 and c is t2 and e is s1
    with pytest.raises(ValueError, match="target"):
        multi_crop_pairs([], [s1])


def _at_angle(theta: float, m: int) -> torch.Tensor:
    """m identical rows, the unit vector at angle theta in the plane: cos between two views is cos(dtheta)."""
    return torch.tensor([[math.cos(theta), math.sin(theta)]] * m, dtype=torch.float64)


def test_hand_made_embeddings_give_the_mean_of_the_known_pair_coding_lengths():
    # Every row of a view equal: lam * A @ B.T has one eigenvalue, lam * m * cos(A, B), so each pair's coding
    # length is exactly log(1 + lam * m * cos). d = 2, m = 4, eps = 1: lam * m = d / eps^2 = 2.
    m, lam_m = 4, 2.0
    angles = {"g1": 0.0, "g2": math.pi / 3, "l1": math.pi / 2, "l2": -math.pi / 4}
    views = {name: _at_angle(theta, m) for name, theta in angles.items()}
    compared = [("g1", "g2"), ("g1", "l1"), ("g1", "l2"), ("g2", "g1"), ("g2", "l1"), ("g2", "l2")]
    lengths = [math.log(1 + lam_m * math.cos(angles[a] - angles[b])) for a, b in compared]
    loss = MaximumEntropyCodingLoss(1.0, order=None, parametrisation="paper", gather_distributed=False)
    out = loss.multi_crop([views["g1"], views["g2"]], [views[k] for k in ("g1", "g2", "l1", "l2")])
    mu = (m + 2) / 2
    assert out.pairs == 6
    assert out.loss.item() == pytest.approx(-mu * sum(lengths) / 6, rel=1e-12)
    assert out.coding_length.item() == pytest.approx(mu * sum(lengths) / 6, rel=1e-12)
    # A global view is not compared with itself (cos 1): including (g1, g1) and (g2, g2) would change it.
    with_self = sum(lengths) + 2 * math.log(1 + lam_m)
    assert out.loss.item() != pytest.approx(-mu * with_self / 8, rel=1e-6)


# --- the forward, gradients to every crop --------------------------------------------------------------------------


def _tiny_model(architecture: str) -> MECModel:
    torch.manual_seed(0)
    model = dict(TINY_MODEL) | {"architecture": architecture, "use_teacher": architecture == "asymmetric"}
    return build_model(build_config({"model": model}))


@pytest.mark.parametrize("architecture", ["asymmetric", "symmetric"])
def test_every_crop_reaches_the_loss_and_local_views_take_one_pass_per_resolution(architecture):
    model = _tiny_model(architecture).train()
    forward = MultiCropForward(model)
    batches = []
    model.backbone.register_forward_hook(lambda module, args, out: batches.append(tuple(args[0].shape)))
    sizes = [16, 16, 8, 8, 8, 12, 12]
    views = [torch.randn(4, 3, size, size, requires_grad=True) for size in sizes]
    students, targets = forward(*views)
    assert batches == [(4, 3, 16, 16), (4, 3, 16, 16), (12, 3, 8, 8), (8, 3, 12, 12)]
    assert len(students) == 7 and len(targets) == 2
    assert all(s.shape == (4, 32) for s in students + targets)
    if architecture == "symmetric":
        assert targets[0] is students[0] and targets[1] is students[1]
    else:
        assert not targets[0].requires_grad
    loss = MaximumEntropyCodingLoss(2.0, gather_distributed=False)
    out = loss.multi_crop(targets, students, symmetric=model.symmetric)
    assert out.pairs == 12
    out.loss.backward()
    for index, view in enumerate(views):
        assert view.grad is not None and view.grad.abs().sum() > 0, f"crop {index} got no gradient"
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    if model.teacher_backbone is not None:
        assert all(p.grad is None for p in model.teacher_backbone.parameters())


def test_without_local_views_the_forward_is_the_models_two_view_forward():
    model = _tiny_model("asymmetric").train()
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    torch.manual_seed(1)
    students, targets = MultiCropForward(model)(*views)
    torch.manual_seed(1)
    p1, p2, z1, z2 = model(*views)
    for a, b in zip(students + targets, [p1, p2, z1, z2], strict=True):
        assert torch.equal(a, b)


# --- pretraining with local views: steps, checkpoint, resume ---------------------------------------------------


def _multicrop_tree(tmp_path: Path, data_root: Path, run: str) -> dict:
    return {
        "name": "tiny-multicrop",
        "data": {"name": "imagefolder", "root": str(data_root), "augment": "digits", "image_size": 16,
                 "num_workers": 0, "multi_crop": {"local_crops": 2, "local_size": 8, "local_scale": [0.1, 0.4]}},
        "model": dict(TINY_MODEL),
        "loss": {"eps": 2.0, "lambda_warmup_epochs": 1},
        "optim": {"batch_size": 8, "base_lr": 0.1, "epochs": 2, "warmup_epochs": 1},
        "monitor": {"enabled": False},
        "train": {"output_dir": str(tmp_path / run), "log_every": 1, "deterministic": True},
        "tracking": {"experiment": "test", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }


def test_pretraining_with_local_views_checkpoints_and_resumes_into_the_same_state(tmp_path):
    from mlflow.tracking import MlflowClient

    folder = write_image_folder(tmp_path / "data", per_class=8, size=16)  # 16 images: 2 steps per epoch
    full = _multicrop_tree(tmp_path, folder, "full")
    result = pretrain(build_config(full))
    client = MlflowClient(full["tracking"]["tracking_uri"])
    run = client.get_run(result.run_id)
    assert run.data.params["derived.crops"] == "4" and run.data.params["derived.loss_pairs"] == "6"
    assert run.data.params["data.multi_crop.local_crops"] == "2"
    losses = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "train/loss"))
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in losses)
    checkpoints = dict(ckpt.list_checkpoints(tmp_path / "full" / "checkpoints"))
    assert sorted(checkpoints) == [1, 2]

    # The same run stopped after epoch 1: resumed from that checkpoint, epoch 2 ends in the same state.
    resumed = _multicrop_tree(tmp_path, folder, "resumed")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoints[1], tmp_path / "resumed" / "checkpoints" / checkpoints[1].name)
    pretrain(build_config(resumed))
    final = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / checkpoints[2].name)
    again = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "resumed" / "checkpoints", 2))
    assert final["step"] == again["step"] == 4
    assert final["model"].keys() == again["model"].keys()
    for key, value in final["model"].items():
        assert torch.equal(value, again["model"][key]), key


# --- distributed: the gathered multi-crop loss equals the single-process one ------------------------------------

GLOBAL_BATCH, IN_FEATURES, EMBEDDING_DIM, LOCAL_VIEWS, WORLD = 8, 6, 5, 2, 2


def _linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return layer


def _linear_mec(architecture: str) -> MECModel:
    """A BN-free MECModel (linear backbone, projector, predictor): per-rank batches change nothing but the rows."""
    if architecture == "symmetric":
        return MECModel(_linear(IN_FEATURES, 7, 1), _linear(7, EMBEDDING_DIM, 2), None, use_teacher=False)
    model = MECModel(_linear(IN_FEATURES, 7, 1), _linear(7, EMBEDDING_DIM, 2), _linear(EMBEDDING_DIM, EMBEDDING_DIM, 3))
    with torch.no_grad():  # a teacher that is not the student
        model.teacher_backbone.weight.add_(0.1 * torch.randn(7, IN_FEATURES, dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(4)))
    return model


def _crops() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=generator, dtype=torch.float64)
    return [images + 0.3 * torch.randn(images.shape, generator=generator, dtype=torch.float64)
            for _ in range(2 + LOCAL_VIEWS)]


def _multicrop_loss(forward: nn.Module, symmetric: bool, crops: list[torch.Tensor]) -> torch.Tensor:
    students, targets = forward(*crops)
    loss = MaximumEntropyCodingLoss(eps=1.5, order=4, side="batch", parametrisation="released")
    return loss.multi_crop(targets, students, lambda_scale=2.0, symmetric=symmetric).loss


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    assert distributed.init_distributed("gloo")
    rows = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    results = {}
    for architecture in ("asymmetric", "symmetric"):
        model = _linear_mec(architecture)
        ddp = DistributedDataParallel(MultiCropForward(model))  # kept alive: its reducer syncs in backward
        loss = _multicrop_loss(ddp, model.symmetric, [crop[rows] for crop in _crops()])
        loss.backward()
        results[architecture] = {"loss": loss.detach(),
                                 "grads": [p.grad.clone() for p in model.parameters() if p.requires_grad]}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_multi_crop_loss_and_gradients_equal_the_full_batch_ones(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for architecture in ("asymmetric", "symmetric"):
        model = _linear_mec(architecture)
        loss = _multicrop_loss(MultiCropForward(model), model.symmetric, _crops())
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert len(grads) == (3 if architecture == "asymmetric" else 2)
        for rank in range(WORLD):
            result = torch.load(tmp_path / f"rank{rank}.pt")[architecture]
            torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-10, atol=0)
            for got, expected in zip(result["grads"], grads, strict=True):
                torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


# --- config ----------------------------------------------------------------------------------------------------


def test_the_shipped_multicrop_recipe_is_the_800_epoch_one_plus_six_96px_local_views():
    multicrop, plain = load_config("imagenet-800ep-multicrop"), load_config("imagenet-800ep")
    crops = multicrop.data.multi_crop
    assert (crops.local_crops, crops.local_size, crops.local_scale) == (6, 96, (0.05, 0.14))
    assert plain.data.multi_crop.local_crops == 0
    for section in ("model", "loss", "optim"):
        assert getattr(multicrop, section) == getattr(plain, section), section
    assert multicrop.data.model_copy(update={"multi_crop": plain.data.multi_crop}) == plain.data


@pytest.mark.parametrize(("multi_crop", "key", "expected"), [
    ({"local_crops": -1}, "data.multi_crop.local_crops", "greater than or equal to 0"),
    ({"local_crops": "six"}, "data.multi_crop.local_crops", "valid integer"),
    ({"local_size": 2}, "data.multi_crop.local_size", "greater than or equal to 4"),
    ({"local_scale": [0.5, 0.1]}, "data.multi_crop.local_scale", "0 < low <= high <= 1"),
    ({"local_scale": [0.1]}, "data.multi_crop.local_scale", "0 < low <= high <= 1"),
    ({"local_crops": 2, "local_size": 16}, "data.multi_crop.local_size=16", "smaller than data.image_size=16"),
    ({"local": 2}, "data.multi_crop.local", "allowed at data.multi_crop: local_crops, local_size, local_scale"),
])
def test_bad_multi_crop_values_fail_in_one_line_naming_the_key(multi_crop, key, expected):
    with pytest.raises(ConfigError) as error:
        build_config({"data": {"image_size": 16, "multi_crop": multi_crop}})
    message = str(error.value)
    assert "\n" not in message and key in message and expected in message


def test_a_digits_miniature_config_loads(tmp_path):
    cfg = load_config("digits", ["data.multi_crop.local_crops=6", "data.multi_crop.local_size=8"])
    views = build_pretrain_views(cfg.data.augment, cfg.data.image_size, local_crops=6, local_size=8,
                                 local_scale=cfg.data.multi_crop.local_scale, **cfg.data.augment_options)
    assert [tuple(v.shape) for v in views(_image(16))] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 6
    (tmp_path / "miniature.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(tmp_path / "miniature.yaml") == cfg
