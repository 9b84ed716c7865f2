"""Typed pretraining configuration: YAML files plus ``key=value`` overrides.

Every hyper-parameter of a run lives here, with the source it comes from (paper appendix, or the authors'
released code as recorded in ``shared/paper/reference.md``). A config file names only what differs from
these defaults. Unknown keys and bad values stop with one message naming the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what is allowed."""


class _Section(BaseModel):
    # extra="forbid": a misspelt key must stop the run, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DigitsRender(_Section):
    """How the offline digits are rendered (see ``mec.digits``); only used when ``data.name == digits``."""

    size: int = Field(32, ge=8)
    variants_train: int = Field(4, ge=1)
    variants_val: int = Field(2, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    # Remaining renderer knobs (texture_strength, scale_range, max_rotation_deg, ...) pass through unchanged;
    # the renderer validates them.
    options: dict[str, Any] = Field(default_factory=dict)


class MultiCropConfig(_Section):
    """Multi-crop: additional smaller crops as local views (paper appendix, "Pre-training with additional
    strategies": six 96 x 96 views following SwAV, Table 7's MEC with multi-crop). The two global views stay
    the recipe's; 0 local crops is the two-view recipe, unchanged. See `mec.augment.multi_crop` and
    `mec.loss.multi_crop_pairs` (which pairs the loss compares)."""

    local_crops: int = Field(0, ge=0)
    local_size: int = Field(96, ge=4)  # pixels; must be below data.image_size
    local_scale: tuple[float, float] = (0.05, 0.14)  # RandomResizedCrop area fraction (SwAV's)

    @field_validator("local_scale", mode="before")
    @classmethod
    def _scale_is_a_range(cls, value: Any) -> Any:
        pair = list(value) if isinstance(value, (list, tuple)) else None
        if (pair is None or len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in pair) or not 0.0 < pair[0] <= pair[1] <= 1.0):
            raise ValueError("expected [low, high] with 0 < low <= high <= 1 (SwAV: [0.05, 0.14])")
        return value


class DataConfig(_Section):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder", "places365"] = "digits"
    root: str = "data/digits"
    download: bool = False  # CIFAR only; compute nodes are usually offline
    # CIFAR only: check every batch file against torchvision's MD5 (a mismatch stops with one line naming the
    # file). false reads real-format batches from elsewhere (re-pickled, another mirror): every expected file
    # must still be there and is read as the python version's pickles.
    verify_checksums: bool = True
    augment: Literal["imagenet", "cifar", "digits"] = "digits"
    image_size: int = Field(32, ge=8)
    # DataLoader worker processes; "auto": one fewer than the job's CPUs (`mec.threads.loader_workers`), the
    # main process keeping one for the training loop (SLURM's cpus-per-task on a cluster).
    # StrictInt: YAML `true` is no worker count (pydantic would read it as 1).
    num_workers: Annotated[StrictInt, Field(ge=0)] | Literal["auto"] = 2
    # Where images are decoded and augmented: per_image = Pillow and torchvision in the loader workers (the CPU
    # path); device = workers only read the files, the job's device decodes them (nvJPEG on a GPU) and augments
    # the batch (`mec.batch_augment`, the ImageNet recipe only); auto = device on a GPU for the ImageNet recipe
    # on a folder data set, else per_image. `resolve_loader` decides, and says why not when device is asked.
    loader: Literal["auto", "per_image", "device"] = "auto"
    digits: DigitsRender = DigitsRender()
    # Keyword overrides of the augmentation recipe (e.g. crop_scale for digits); empty = the recipe as published.
    augment_options: dict[str, Any] = Field(default_factory=dict)
    # same_image: the two views augment one image (SSL's usual); same_source: they augment two different
    # renderings of one source digit (folder data sets with files named <source>_<variant>; mec.data.SourcePairs).
    positives: Literal["same_image", "same_source"] = "same_image"
    # With positives=same_source: the probability that view 2 is another rendering (else the same file as view 1).
    source_pair_p: float = Field(1.0, ge=0, le=1)
    # Local views besides the two global ones; with positives=same_source they are crops of view 1's file.
    multi_crop: MultiCropConfig = MultiCropConfig()

    @model_validator(mode="after")
    def _local_views_are_smaller(self) -> DataConfig:
        mc = self.multi_crop
        if mc.local_crops and mc.local_size >= self.image_size:
            raise ValueError(f"data.multi_crop.local_size={mc.local_size} must be smaller than data.image_size="
                             f"{self.image_size} (local views are the smaller crops)")
        return self

    def digits_params(self) -> dict[str, Any]:
        """Keyword arguments of `mec.digits.write_digit_folders` for this data set."""
        d = self.digits
        return {"size": d.size, "variants_train": d.variants_train, "variants_val": d.variants_val,
                "val_fraction": d.val_fraction, "seed": d.seed, **d.options}

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of `mec.data.build_eval_dataset` for this data set, all of them: a call that left
        one out once ignored ``verify_checksums=false`` in pretraining's final monitor, after the training."""
        return {"download": self.download, "digits_params": self.digits_params(),
                "verify_checksums": self.verify_checksums}


# Data sets stored as image files, which the device path can read as bytes (CIFAR is pickled arrays).
FOLDER_DATASETS = ("digits", "imagefolder", "places365")


def resolve_loader(data: DataConfig, device_type: str, augment: str | None = None) -> str:
    """"per_image" or "device": where this job decodes and augments (`DataConfig.loader`) on a `device_type`
    ("cpu", "cuda") device. `augment` is the recipe the job applies (default: data.augment). Asking for
    "device" where it cannot run raises ConfigError naming the key; "auto" picks device only on a GPU."""
    augment = data.augment if augment is None else augment
    why_not = None
    if data.name not in FOLDER_DATASETS:
        why_not = f"data.name={data.name} is not stored as image files (one of {list(FOLDER_DATASETS)} is)"
    elif augment != "imagenet":
        why_not = f"data.augment={augment}: the batched augmentations implement the ImageNet recipe only"
    elif data.positives != "same_image":
        why_not = f"data.positives={data.positives}: pairs of different files are built per image"
    if data.loader == "device" and why_not:
        raise ConfigError(f"data.loader=device: {why_not}; use data.loader=per_image")
    if data.loader == "auto":
        return "device" if device_type == "cuda" and why_not is None else "per_image"
    return data.loader


def data_identity(data: DataConfig | None = None, *, length: int = 24, **extra: Any) -> str:
    """A hex digest naming what a data set holds: the config's data set, resolved root and digit rendering,
    plus ``extra`` (split, transform, backbone digest, ...; a `Path` value counts by its resolved form).

    Feature caches and label splits are named by it (the Snakefile too, when it names the split files: hence
    here, where importing it costs no torch), so a changed root or rendering never reuses stale files.
    ``data`` None: ``extra`` alone (a data set described otherwise, as transfer's torchvision sets are).
    """
    identity: dict[str, Any] = {}
    if data is not None:
        identity = {"data": data.name, "root": str(Path(data.root).resolve()),
                    "digits": data.digits_params() if data.name == "digits" else None}
    identity |= {key: str(value.resolve()) if isinstance(value, Path) else value for key, value in extra.items()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:length]


class ModelConfig(_Section):
    arch: Literal["resnet18", "resnet50"] = "resnet50"
    width: int = Field(64, ge=4)  # 64 = torchvision's widths; smaller makes CPU runs affordable
    cifar_stem: bool = False  # appendix B: 3x3 first conv, no max-pool
    zero_init_residual: bool = True  # released code
    projector: Literal["released", "cifar"] = "released"  # 3-layer (reference.md §2) / 2-layer (appendix B)
    projector_hidden: int = Field(2048, ge=1)
    embedding_dim: int = Field(2048, ge=1)  # d in the paper
    predictor_hidden: int = Field(512, ge=1)  # appendix C
    # asymmetric: student predictor against an EMA teacher (released code, appendix C); symmetric: the paper's
    # Algorithm 1 for "symmetric nets", one encoder on both views, gradients through both, no predictor.
    architecture: Literal["asymmetric", "symmetric"] = "asymmetric"
    use_teacher: bool = True  # EMA teacher of backbone + projector (appendix C)
    teacher_momentum: float = Field(0.996, ge=0, le=1)  # cosine schedule to 1 (appendix C)
    # released code: SyncBN over the whole model under DDP; applied only on an accelerator (no CPU kernel)
    sync_batchnorm: bool = True

    @model_validator(mode="after")
    def _symmetric_has_no_teacher(self) -> ModelConfig:
        if self.architecture == "symmetric" and self.use_teacher:
            raise ValueError("architecture=symmetric has no teacher and no predictor; set model.use_teacher=false")
        return self


class LossConfig(_Section):
    # Paper's distortion epsilon: lambda = d / (m eps^2). Released code: --eps 64 is eps^2, so eps = 8.
    eps: float = Field(8.0, gt=0)
    order: int | None = Field(4, ge=1)  # Taylor order; null = exact log-determinant
    side: Literal["auto", "batch", "feature"] = "auto"
    parametrisation: Literal["released", "paper"] = "released"
    # Released code: 1/lambda starts at 8x and falls linearly to 1x over the first 10 epochs.
    lambda_warmup_epochs: float = Field(10, ge=0)
    lambda_warmup_factor: float = Field(8.0, ge=1)
    # Appendix E: ||C||_2 <= lambda * m. "error" refuses configs that violate it; the released setting does
    # (lambda * m = 32) and converges in practice, hence "warn" by default. Whatever this says, a run that
    # has clearly diverged (measured ||C||_2 or loss, see spectral_norm_every) stops with exit 1.
    convergence_check: Literal["warn", "error", "off"] = "warn"
    # Steps between ||C||_2 estimates (power iteration, logged as train/spectral_norm on logged steps) and
    # embedding effective ranks. Each estimate is also checked: above mec.loss.DIVERGED_SPECTRAL_NORM (10) the
    # run has diverged and stops (FloatingPointError naming the step, ||C||_2, loss and lambda*m), as it does
    # at any step whose loss no convergent series can give. Measured ||C||_2 peaks: digits default 3.5 (end of
    # the lambda warm-up, then below 1.75), the tests' tiny config 1.1, a diverged run (eps tiny) 344.
    # 0 = no estimates (the loss check still runs).
    spectral_norm_every: int = Field(50, ge=0)


class OptimConfig(_Section):
    name: Literal["sgd", "lars"] = "sgd"
    batch_size: int = Field(1024, ge=2)  # global batch m, summed over all ranks
    base_lr: float = Field(0.5, gt=0)  # lr = base_lr * batch_size / 256 (appendix C)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0)
    epochs: int = Field(100, ge=1)
    warmup_epochs: float = Field(10, ge=0)
    lars_trust_coefficient: float = Field(0.001, gt=0)
    # LARS recipes exclude biases and BN parameters from weight decay and adaptation.
    exclude_bias_and_norm: bool = True
    # SGD on a GPU: torch's fused kernel (one launch for every parameter) instead of the default multi-tensor
    # one; the same arithmetic. timm's LARS has no fused form.
    fused: bool = True

    @model_validator(mode="after")
    def _warmup_within_run(self) -> OptimConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        return self


class MonitorConfig(_Section):
    """Frozen-feature quality at the end of pretraining, against a randomly initialised backbone."""

    enabled: bool = True
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    few_shot: int = Field(5, ge=1)  # labelled images per class for the few-shot linear classifier
    few_shot_draws: int = Field(5, ge=1)  # averaged over this many random draws of the labelled set
    full_linear: bool = True


class TrainConfig(_Section):
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    output_dir: str = "results/runs/default"
    checkpoint_keep: int = Field(2, ge=1)
    # Steps between reads of the loss (logged, and checked for non-finite or diverged values): reading it
    # waits for the device, so the steps in between never do.
    log_every: int = Field(10, ge=1)
    # torch.compile the training forward (student, teacher, projector, predictor); compiles at the first step.
    compile: bool = False


class TrackingConfig(_Section):
    experiment: str = "mec"
    run_name: str | None = None
    # None: MLFLOW_TRACKING_URI if set, else a SQLite file under results/.
    tracking_uri: str | None = None
    log_backbone: bool = True


class Config(_Section):
    name: str = "mec"
    source: str | None = None  # where the recipe comes from (paper section / released code)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    monitor: MonitorConfig = MonitorConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def lr(self) -> float:
        """Peak learning rate: linear scaling rule (Goyal et al.), as in appendix C."""
        return self.optim.base_lr * self.optim.batch_size / 256

    def flat(self) -> dict[str, Any]:
        """``{"loss.eps": 8.0, ...}``: the form logged to MLflow and accepted by overrides."""
        return _flatten(self.model_dump())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("options", "augment_options"):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped config (``digits`` -> ``mec/configs/digits.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    what = "is a folder" if path.is_dir() else "not found"
    raise ConfigError(f"config file {str(name_or_path)!r} {what}; give a YAML file's path or one of: {available}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice in one section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loss.eps=0.5"`` -> (["loss", "eps"], 0.5); the value is read as YAML (numbers, null, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. loss.eps=8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return tree


def build_config(tree: dict[str, Any], origin: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`; the first problem becomes one clear message."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


# Names pydantic gives a union's branches in an error location ('constrained-int', "literal['auto']",
# 'function-after[...]', 'list[int]'): not keys the user wrote.
_BRANCH_TAG = re.compile(r"^[a-z]+(-[a-z]+)+$|\[")
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_TYPE_WORDS = {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _unannotated(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _key_path(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[list[Any], Any]:
    """The keys the user wrote, from a pydantic error location, and the union annotation there (or None).

    A union's errors carry the name of each branch as an extra location part; the path stops at the union.
    """
    path: list[Any] = []
    annotation: Any = root
    for part in loc:
        current = _unannotated(annotation)
        if get_origin(current) in (Union, UnionType):
            return path, annotation
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            annotation = current.model_fields[part].annotation
        elif get_origin(current) in (dict, list, set, tuple):  # a key or an index: then the item type
            args = get_args(current)
            annotation = args[-1] if get_origin(current) is not tuple and args else None
        elif isinstance(part, str) and _BRANCH_TAG.search(part):  # a validator's or another wrapper's name
            continue
        else:  # an unknown key (extra_forbidden) or a place the types are not followed into
            annotation = None
        path.append(part)
    return path, None


def _bounds(metadata: Any) -> list[str]:
    found = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            found += _bounds(item.metadata)
            continue
        found += [f"{sign} {getattr(item, name)}" for name, sign in _BOUNDS if getattr(item, name, None) is not None]
    return found


def _expected(annotation: Any) -> str:
    """What a value of ``annotation`` may be, in words: "an int >= 0 or 'auto'"."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return " ".join([_expected(args[0]), " and ".join(_bounds(args[1:]))]).strip()
    if origin is Literal:
        return " or ".join(repr(value) for value in args)
    if origin in (Union, UnionType):
        return " or ".join(_expected(member) for member in args)
    if origin in (list, tuple, set):
        return "a list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "a mapping"
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _describe(exc: ValidationError, origin: str, root: type[BaseModel] | None = None) -> str:
    """One line for the first problem of ``exc`` (a validation of ``root``, default `Config`): the keys as the
    user wrote them (no union branch names), and for a union what any of its branches accepts."""
    root = root or Config
    errors = exc.errors()
    err = errors[0]
    path, union = _key_path(err["loc"], root)
    loc = ".".join(str(part) for part in path)
    if err["type"] == "extra_forbidden":
        section_path = path[:-1]
        model: type[BaseModel] = root
        for part in section_path:
            model = _unannotated(model.model_fields[str(part)].annotation)
        allowed = ", ".join(model.model_fields)
        where = ".".join(str(p) for p in section_path) or "top level"
        return f"{origin}: unknown key {loc!r} (allowed at {where}: {allowed})"
    # A union fails once per branch: one problem, at one key.
    others = len({tuple(map(str, _key_path(other["loc"], root)[0])) for other in errors} - {tuple(map(str, path))})
    more = f" (and {others} more problem(s))" if others else ""
    got = err.get("input")
    if union is not None:
        return f"{origin}: {loc}: expected {_expected(union)}, got {got!r}{more}"
    return f"{origin}: bad value for {loc or 'config'!r}: {err['msg']}; got {got!r}{more}"


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (path or shipped name), apply ``key=value`` overrides and validate."""
    path = resolve_config_path(name_or_path)
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if tree is None:  # an empty file (or comments only): every default, the digits, silently
        raise ConfigError(f"{path}: empty; expected a mapping of sections (data, model, loss, optim, ...)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    overrides = list(overrides or [])
    tree = apply_overrides(tree, overrides)
    # A bad value may come from the command line rather than the file: name both.
    return build_config(tree, origin=f"{path} with {' '.join(overrides)}" if overrides else str(path))
