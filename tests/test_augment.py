"""The augmentation recipes: their parameters against the published ones, their outputs, and pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mec.augment import (
    TwoViewTransform,
    build_two_view,
    cifar_two_view,
    digits_two_view,
    eval_transform,
    imagenet_two_view,
    probe_train_transform,
)
from mec.opencv_ops import OpenCVGaussianBlur


def _random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _steps(pipeline: T.Compose) -> list:
    """The pipeline's steps, with each RandomApply unwrapped into (its transform, its p)."""
    steps = []
    for step in pipeline.transforms:
        if isinstance(step, T.RandomApply):
            (inner,) = step.transforms
            steps.append((inner, step.p))
        else:
            steps.append((step, None))
    return steps


def _find(pipeline: T.Compose, kind: type) -> list:
    return [(step, p) for step, p in _steps(pipeline) if isinstance(step, kind)]


def test_imagenet_recipe_matches_the_released_moco_v3_views():
    two_view = imagenet_two_view(224)
    expected_blur_p = {1: 1.0, 2: 0.1}
    expected_solarize_p = {1: 0.0, 2: 0.2}
    for index, view in ((1, two_view.view1), (2, two_view.view2)):
        ((crop, _),) = _find(view, T.RandomResizedCrop)
        assert crop.size == (224, 224) and crop.scale == (0.2, 1.0)
        ((jitter, jitter_p),) = _find(view, T.ColorJitter)
        assert jitter_p == 0.8
        # ColorJitter(0.4, 0.4, 0.2, 0.1) stores factor ranges around 1 (and around 0 for hue).
        assert jitter.brightness == pytest.approx((0.6, 1.4))
        assert jitter.contrast == pytest.approx((0.6, 1.4))
        assert jitter.saturation == pytest.approx((0.8, 1.2))
        assert jitter.hue == pytest.approx((-0.1, 0.1))
        ((gray, _),) = _find(view, T.RandomGrayscale)
        assert gray.p == 0.2
        ((blur, blur_p),) = _find(view, OpenCVGaussianBlur)
        assert blur_p == expected_blur_p[index]
        assert blur.sigma == (0.1, 2.0)
        ((solarize, _),) = _find(view, T.RandomSolarize)
        assert solarize.p == expected_solarize_p[index] and solarize.threshold == 128
        ((flip, _),) = _find(view, T.RandomHorizontalFlip)
        assert flip.p == 0.5
        ((normalize, _),) = _find(view, T.Normalize)
        assert normalize.mean == pytest.approx((0.485, 0.456, 0.406))
        assert normalize.std == pytest.approx((0.229, 0.224, 0.225))


def test_cifar_recipe_has_no_blur_or_solarize_and_is_symmetric():
    two_view = cifar_two_view(32)
    assert two_view.view1 is two_view.view2
    assert not _find(two_view.view1, OpenCVGaussianBlur)
    assert not _find(two_view.view1, T.RandomSolarize)
    ((crop, _),) = _find(two_view.view1, T.RandomResizedCrop)
    assert crop.scale == (0.2, 1.0)
    assert _find(two_view.view1, T.RandomHorizontalFlip)


def test_digits_recipe_never_flips_and_exposes_its_knobs():
    two_view = digits_two_view(32, crop_scale=(0.5, 1.0), hue=0.3, grayscale_p=0.1)
    for view in (two_view.view1, two_view.view2):
        assert not _find(view, T.RandomHorizontalFlip)
        assert not _find(view, T.RandomVerticalFlip)
        ((crop, _),) = _find(view, T.RandomResizedCrop)
        assert crop.scale == (0.5, 1.0)
        ((jitter, _),) = _find(view, T.ColorJitter)
        assert jitter.hue == pytest.approx((-0.3, 0.3))
        ((gray, _),) = _find(view, T.RandomGrayscale)
        assert gray.p == 0.1
    assert not _find(probe_train_transform("digits", 32), T.RandomHorizontalFlip)
    plain = digits_two_view(16).view1
    assert not _find(plain, T.RandomInvert) and not _find(plain, T.RandomCrop)  # both off unless asked for


def test_digits_translate_and_invert_are_per_view_and_validated():
    view = digits_two_view(16, translate=0.25, invert_p=0.5).view1
    ((shift, _),) = _find(view, T.RandomCrop)
    assert shift.padding == 4 and shift.padding_mode == "edge"  # the flat background fills the shifted border
    ((invert, _),) = _find(view, T.RandomInvert)
    assert invert.p == 0.5
    with pytest.raises(ValueError, match="translate"):
        digits_two_view(16, translate=0.5)
    with pytest.raises(ValueError, match="invert_p"):
        digits_two_view(16, invert_p=1.5)


@pytest.mark.parametrize("name, size, image_size", [("imagenet", 64, (80, 96)), ("cifar", 32, (32, 32)),
                                                    ("digits", 32, (32, 32))])
def test_two_views_have_the_right_shape_and_differ(name, size, image_size):
    torch.manual_seed(0)
    view1, view2 = build_two_view(name, size)(_random_image(*image_size))
    assert view1.shape == view2.shape == (3, size, size)
    assert view1.dtype == torch.float32
    assert not torch.equal(view1, view2)


def test_two_view_transform_pickles_and_still_works():
    restored = pickle.loads(pickle.dumps(build_two_view("imagenet", 32)))
    assert isinstance(restored, TwoViewTransform)
    view1, view2 = restored(_random_image(40, 40))
    assert view1.shape == view2.shape == (3, 32, 32)
    pickle.loads(pickle.dumps(digits_two_view(32)))


def test_eval_transforms_are_deterministic_with_the_right_shape():
    image = _random_image(300, 400)
    transform = eval_transform("imagenet", 224)
    resize = _find(transform, T.Resize)[0][0]
    assert resize.size == 256
    out = transform(image)
    assert out.shape == (3, 224, 224)
    assert torch.equal(out, transform(image))
    small = _random_image(32, 32)
    for kind in ("cifar", "digits"):
        assert eval_transform(kind, 32)(small).shape == (3, 32, 32)
        assert probe_train_transform(kind, 32)(small).shape == (3, 32, 32)
    assert probe_train_transform("imagenet", 64)(image).shape == (3, 64, 64)


def test_digits_normalisation_maps_unit_range_to_plus_minus_one():
    white = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))
    black = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    assert torch.allclose(eval_transform("digits", 32)(white), torch.ones(3, 32, 32))
    assert torch.allclose(eval_transform("digits", 32)(black), -torch.ones(3, 32, 32))


def test_unknown_names_and_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"unknown augmentation recipe 'mnist'.*'imagenet', 'cifar', 'digits'"):
        build_two_view("mnist", 32)
    with pytest.raises(ValueError, match="unknown evaluation transform kind 'svhn'"):
        eval_transform("svhn", 32)
    with pytest.raises(ValueError, match="crop_scale"):
        digits_two_view(32, crop_scale=(0.9, 0.3))
    with pytest.raises(ValueError, match="grayscale_p"):
        digits_two_view(32, grayscale_p=1.5)
    with pytest.raises(ValueError, match="size"):
        imagenet_two_view(-1)
    with pytest.raises(TypeError):
        TwoViewTransform("not callable", lambda x: x)


@pytest.mark.parametrize("recipe", ["imagenet", "cifar", "digits"])
@pytest.mark.parametrize("local_crops", [0, 2])
def test_views_normalised_on_the_device_are_the_same_numbers(recipe, local_crops):
    """Workers send uint8 views; normalising the batch afterwards gives what ToTensor + Normalize gave, with the
    same random draws."""
    from mec.augment import build_pretrain_views, normalise_on_the_device
    from mec.batch_augment import normalize, to_float

    size = 32
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    views = build_pretrain_views(recipe, size, local_crops=local_crops, local_size=16)
    later, mean, std = normalise_on_the_device(views)
    torch.manual_seed(3)
    expected = views(image)
    torch.manual_seed(3)
    raw = later(image)
    assert len(raw) == len(expected) == 2 + local_crops
    for got, want in zip(raw, expected, strict=True):
        assert got.dtype == torch.uint8
        assert torch.allclose(normalize(to_float(got.unsqueeze(0)), mean, std)[0], want, atol=1e-6)
    with pytest.raises(ValueError, match="ending in ToTensor"):
        normalise_on_the_device(TwoViewTransform(T.Compose([T.ToTensor()]), views.view2))
