"""Image augmentations: two-view and multi-crop pretraining recipes and the evaluation transforms.

All transforms take a PIL image (what `ImageFolder` and torchvision's CIFAR return) and produce a normalised
float tensor of shape [3, size, size]. They are built from `torchvision.transforms` (v1) so that every recipe is
a plain `Compose` whose parameters tests and users can inspect, and which pickles for DataLoader workers. The
colour jitter's hue step and the Gaussian blur are done by OpenCV (`mec.opencv_ops`: same random draws, about 8x
faster on one core than Pillow's, within a grey level of torchvision's ops).

Recipes:
- "imagenet": the released MEC code's asymmetric MoCo v3 recipe (blur always on view 1, rarely on view 2;
  solarize only on view 2).
- "cifar": the SimSiam CIFAR recipe the paper's appendix B follows: no blur, symmetric views.
- "digits": the offline rendered digits of `mec.digits`: crops and strong colour jitter, never a mirror flip.

Multi-crop (paper appendix, "Pre-training with additional strategies", Table 7's MEC with multi-crop):
each recipe's two global views, unchanged, plus N smaller local views (six 96 x 96 crops of scale
(0.05, 0.14) following SwAV); see `multi_crop` and `build_pretrain_views`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision import transforms as T

from mec.opencv_ops import OpenCVGaussianBlur, OpenCVHueColorJitter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel pixel mean and standard deviation of the 50,000 CIFAR-10 training images.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# The rendered digits have random colours everywhere, so their channel statistics sit near mid-grey;
# mapping [0, 1] to [-1, 1] is all the normalisation they need.
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)

TWO_VIEW_RECIPES = ("imagenet", "cifar", "digits")
EVAL_KINDS = ("imagenet", "cifar", "digits")

# Sigma range of the Gaussian blur in BYOL / MoCo v3.
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128
# Multi-crop local views (SwAV's ImageNet setting, which the paper's appendix follows): 6 crops of 96 px
# covering 5% to 14% of the image; DINO/SwAV blur a local view with p=0.5 and never solarize it.
LOCAL_CROPS = 6
LOCAL_SIZE = 96
LOCAL_SCALE = (0.05, 0.14)
LOCAL_BLUR_P = 0.5


class TwoViewTransform:
    """Apply two (possibly different) augmentation pipelines to one image and return both views.

    A plain class rather than a closure so that it pickles into DataLoader worker processes.
    """

    def __init__(self, view1: Callable[[Any], Any], view2: Callable[[Any], Any]) -> None:
        if not callable(view1) or not callable(view2):
            raise TypeError(
                f"TwoViewTransform needs two callables, got view1={type(view1).__name__}, "
                f"view2={type(view2).__name__}"
            )
        self.view1 = view1
        self.view2 = view2

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.view1(image), self.view2(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\nview1={self.view1!r},\nview2={self.view2!r})"


class MultiCropTransform(TwoViewTransform):
    """Two global views (`view1`, `view2`, as a `TwoViewTransform`) then `local_crops` local views of one image.

    `__call__` returns the tuple (view1, view2, local_1, ..., local_N): global views first, as DINO and SwAV
    order their crops, so that a batch's first two entries are what the two-view recipe gives. Each local
    view is an independent draw of the one `local_view` pipeline. A plain class, so it pickles for workers.
    """

    def __init__(
        self, view1: Callable[[Any], Any], view2: Callable[[Any], Any], local_view: Callable[[Any], Any],
        local_crops: int,
    ) -> None:
        super().__init__(view1, view2)
        if not callable(local_view):
            raise TypeError(f"MultiCropTransform needs a callable local_view, got {type(local_view).__name__}")
        if isinstance(local_crops, bool) or not isinstance(local_crops, int) or local_crops < 1:
            raise ValueError(f"local_crops must be an int >= 1, got {local_crops!r}")
        self.local_view = local_view
        self.local_crops = local_crops

    def local_views(self, image: Any) -> list[Any]:
        """The `local_crops` local views of `image` (`mec.data.SourcePairs` calls it on view 1's file)."""
        return [self.local_view(image) for _ in range(self.local_crops)]

    def __call__(self, image: Any) -> tuple[Any, ...]:
        return (self.view1(image), self.view2(image), *self.local_views(image))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(\nview1={self.view1!r},\nview2={self.view2!r},\n"
                f"local_crops={self.local_crops},\nlocal_view={self.local_view!r})")


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_crop_scale(crop_scale: Sequence[float]) -> tuple[float, float]:
    if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale!r}")
    return float(crop_scale[0]), float(crop_scale[1])


def _moco_v3_view(
    size: int, *, blur_p: float, solarize_p: float, crop_scale: tuple[float, float] = (0.2, 1.0)
) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=crop_scale),
            T.RandomApply([OpenCVHueColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([OpenCVGaussianBlur(BLUR_SIGMA)], p=blur_p),
            T.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=solarize_p),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet_two_view(size: int = 224) -> TwoViewTransform:
    """The released MEC code's ImageNet recipe (MoCo v3's asymmetric views).

    Both views: RandomResizedCrop(size, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8,
    grayscale p=0.2, horizontal flip, ImageNet mean/std. Gaussian blur (sigma U(0.1, 2.0)) with p=1.0 on view 1
    and p=0.1 on view 2; solarize (threshold 128) with p=0 on view 1 and p=0.2 on view 2. View 1 keeps a
    solarize step with p=0 so that both pipelines have the same structure to inspect.
    """
    _check_size(size)
    return TwoViewTransform(
        _moco_v3_view(size, blur_p=1.0, solarize_p=0.0),
        _moco_v3_view(size, blur_p=0.1, solarize_p=0.2),
    )


def cifar_two_view(
    size: int = 32,
    *,
    crop_scale: Sequence[float] = (0.2, 1.0),
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
) -> TwoViewTransform:
    """The SimSiam CIFAR recipe that the paper's CIFAR-10 study (appendix B) follows.

    RandomResizedCrop(size, scale=crop_scale), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2,
    horizontal flip. No blur (appendix B: "we do not use blur augmentation") and no solarize, which SimSiam's
    CIFAR recipe does not use either, so the two views are drawn from one symmetric pipeline. The jitter
    saturation is SimSiam's 0.4, not MoCo v3's 0.2. Pass CIFAR-100's own mean/std when training on it.
    """
    _check_size(size)
    low, high = _check_crop_scale(crop_scale)
    view = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(low, high)),
            T.RandomApply([OpenCVHueColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )
    return TwoViewTransform(view, view)


def digits_two_view(
    size: int = 32,
    *,
    crop_scale: Sequence[float] = (0.3, 1.0),
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    invert_p: float = 0.0,
    translate: float = 0.0,
) -> TwoViewTransform:
    """Two symmetric views for the rendered digits of `mec.digits`.

    The renderer varies position, scale, colours and background texture, so the views use crops (position and
    scale) and SimCLR's strong colour jitter plus grayscale (colours). There is no horizontal flip: a mirrored
    2, 3, 5, 7 or 9 is not the same digit. `invert_p` inverts a view's colours: ink darker than the background
    in one view and lighter in the other, so luminance order cannot identify an image. `translate` shifts each
    view by up to this fraction of the side, filling with the edge pixels (the renderer's flat background), so
    that the digit's place on the canvas differs between the views and cannot identify an image either.
    """
    _check_size(size)
    low, high = _check_crop_scale(crop_scale)
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"{name} jitter strength must be >= 0, got {value!r}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue jitter must be in [0, 0.5], got {hue!r}")
    _check_probability("jitter_p", jitter_p)
    _check_probability("grayscale_p", grayscale_p)
    _check_probability("invert_p", invert_p)
    if not 0.0 <= translate < 0.5:
        raise ValueError(f"translate must be a fraction of the side in [0, 0.5), got {translate!r}")
    shift = [T.RandomCrop(size, padding=round(translate * size), padding_mode="edge")] if translate else []
    invert = [T.RandomInvert(p=invert_p)] if invert_p else []
    view = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(low, high)),
            *shift,
            T.RandomApply([OpenCVHueColorJitter(brightness, contrast, saturation, hue)], p=jitter_p),
            T.RandomGrayscale(p=grayscale_p),
            *invert,
            T.ToTensor(),
            T.Normalize(DIGITS_MEAN, DIGITS_STD),
        ]
    )
    return TwoViewTransform(view, view)


def build_two_view(name: str, size: int, **overrides: Any) -> TwoViewTransform:
    """The two-view recipe called `name` ("imagenet", "cifar" or "digits") at `size` pixels.

    `overrides` go to the recipe's keyword arguments (see `cifar_two_view`, `digits_two_view`; the ImageNet
    recipe is fixed by the released code and takes none).
    """
    builders: dict[str, Callable[..., TwoViewTransform]] = {
        "imagenet": imagenet_two_view,
        "cifar": cifar_two_view,
        "digits": digits_two_view,
    }
    if name not in builders:
        raise ValueError(f"unknown augmentation recipe {name!r}; expected one of {list(TWO_VIEW_RECIPES)}")
    return builders[name](size, **overrides)


def _check_local_crops(local_crops: int) -> None:
    if isinstance(local_crops, bool) or not isinstance(local_crops, int) or local_crops < 0:
        raise ValueError(f"local_crops must be an int >= 0, got {local_crops!r}")


def local_view(
    name: str, local_size: int = LOCAL_SIZE, local_scale: Sequence[float] = LOCAL_SCALE, **overrides: Any
) -> T.Compose:
    """The local-view pipeline of recipe `name`: its own augmentations on a small crop.

    "imagenet": the MoCo v3 view at `local_size` with RandomResizedCrop scale `local_scale`, Gaussian blur
    with p=0.5 and no solarize (p=0, kept as a step
    like the two-view recipe's view 1), as DINO's and SwAV's local crops are.
    "cifar" / "digits": the recipe's (symmetric) view at `local_size` with crop scale `local_scale`; the CIFAR
    recipe has no blur (appendix B) and the digits recipe none either, so local views add none. `overrides`
    are the recipe's keyword arguments as for the global views, except `crop_scale`, which `local_scale`
    replaces for the local views.
    """
    _check_size(local_size)
    low, high = _check_crop_scale(local_scale)
    if name == "imagenet":
        if overrides:
            raise TypeError(f"the imagenet recipe is fixed by the released code and takes no options, got "
                            f"{sorted(overrides)}")
        return _moco_v3_view(local_size, blur_p=LOCAL_BLUR_P, solarize_p=0.0, crop_scale=(low, high))
    return build_two_view(name, local_size, **(overrides | {"crop_scale": (low, high)})).view1


def multi_crop(
    name: str,
    size: int,
    *,
    local_crops: int = LOCAL_CROPS,
    local_size: int = LOCAL_SIZE,
    local_scale: Sequence[float] = LOCAL_SCALE,
    **overrides: Any,
) -> MultiCropTransform:
    """Recipe `name`'s two global views at `size` (exactly `build_two_view`'s, asymmetry included) plus
    `local_crops` local views (`local_view`) of `local_size` pixels, `local_size` < `size`.

    The global views keep the recipe's own crop scale (the released ImageNet recipe's (0.2, 1)).
    """
    _check_local_crops(local_crops)
    if local_crops == 0:
        raise ValueError("local_crops must be >= 1 for a multi-crop transform; 0 is the two-view recipe")
    _check_size(size)
    _check_size(local_size)
    if local_size >= size:
        raise ValueError(f"local_size ({local_size}) must be smaller than the global views' size ({size})")
    two_view = build_two_view(name, size, **overrides)
    local = local_view(name, local_size, local_scale, **overrides)
    return MultiCropTransform(two_view.view1, two_view.view2, local, local_crops)


def build_pretrain_views(
    name: str,
    size: int,
    *,
    local_crops: int = 0,
    local_size: int = LOCAL_SIZE,
    local_scale: Sequence[float] = LOCAL_SCALE,
    **overrides: Any,
) -> TwoViewTransform:
    """The pretraining transform: `build_two_view(name, size, **overrides)` when `local_crops` is 0 (the
    two-view recipe exactly, same draws), else `multi_crop(...)` with `local_crops` local views."""
    _check_local_crops(local_crops)
    if local_crops == 0:
        return build_two_view(name, size, **overrides)
    return multi_crop(name, size, local_crops=local_crops, local_size=local_size, local_scale=local_scale,
                      **overrides)


def normalise_on_the_device(views: TwoViewTransform) -> tuple[TwoViewTransform, tuple[float, ...], tuple[float, ...]]:
    """`views` ending in uint8 [3, H, W] tensors (`PILToTensor`) instead of normalised floats, and the (mean,
    std) to normalise the batch with once it is on the device (`mec.batch_augment.normalize(to_float(batch),
    mean, std)`: the same arithmetic as ToTensor + Normalize, so the same numbers).

    Why: a loader worker then skips the float conversion and normalisation (about 1.2 ms of the 12 ms a two-view
    ImageNet image costs on one core) and sends a quarter of the bytes to the main process. Every view of the
    recipes here ends in ToTensor + Normalize (checked: anything else raises ValueError); no random draw changes.
    """
    stats: set[tuple[tuple[float, ...], tuple[float, ...]]] = set()

    def uint8_view(view: Callable[[Any], Any]) -> T.Compose:
        steps = getattr(view, "transforms", [])
        if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
            raise ValueError(f"a view ending in ToTensor + Normalize is needed to normalise later, got {view!r}")
        stats.add((tuple(map(float, steps[-1].mean)), tuple(map(float, steps[-1].std))))
        return T.Compose([*steps[:-2], T.PILToTensor()])

    if isinstance(views, MultiCropTransform):
        later: TwoViewTransform = MultiCropTransform(uint8_view(views.view1), uint8_view(views.view2),
                                                     uint8_view(views.local_view), views.local_crops)
    else:
        later = TwoViewTransform(uint8_view(views.view1), uint8_view(views.view2))
    if len(stats) != 1:
        raise ValueError(f"the views normalise with different statistics {sorted(stats)}; expected one")
    mean, std = stats.pop()
    return later, mean, std


def _check_eval_kind(kind: str) -> None:
    if kind not in EVAL_KINDS:
        raise ValueError(f"unknown evaluation transform kind {kind!r}; expected one of {list(EVAL_KINDS)}")


def _normalize(kind: str) -> T.Normalize:
    mean, std = {
        "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
        "cifar": (CIFAR_MEAN, CIFAR_STD),
        "digits": (DIGITS_MEAN, DIGITS_STD),
    }[kind]
    return T.Normalize(mean, std)


def eval_transform(kind: str, size: int) -> T.Compose:
    """Deterministic transform for feature extraction (kNN, probe validation).

    "imagenet": Resize(size * 256/224) then CenterCrop(size) (Resize(256) + CenterCrop(224) at 224).
    "cifar" / "digits": ToTensor + Normalize only; these sets are stored at their training resolution, so
    `size` must equal the stored image side and nothing is resized.
    """
    _check_eval_kind(kind)
    _check_size(size)
    if kind == "imagenet":
        resize = round(size * 256 / 224)
        return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), _normalize(kind)])
    return T.Compose([T.ToTensor(), _normalize(kind)])


def probe_train_transform(kind: str, size: int) -> T.Compose:
    """Training transform of supervised probes (linear probe, fine-tuning).

    "imagenet": RandomResizedCrop(size) + horizontal flip (the released linear-probe recipe).
    "cifar": RandomCrop(size, padding=size // 8) + horizontal flip (padding 4 at 32 px, the usual recipe).
    "digits": the same shift, no flip.
    """
    _check_eval_kind(kind)
    _check_size(size)
    if kind == "imagenet":
        geometric = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    elif kind == "cifar":
        geometric = [T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()]
    else:
        geometric = [T.RandomCrop(size, padding=max(1, size // 8))]
    return T.Compose([*geometric, T.ToTensor(), _normalize(kind)])
