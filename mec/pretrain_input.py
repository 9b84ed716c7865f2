"""What pretraining reads: a loader, and what turns each of its batches into views on the job's device.

Two paths, chosen by ``data.loader`` (`mec.config.resolve_loader`):

- ``per_image``: DataLoader workers decode each file with Pillow and augment it with torchvision's per-image
  transforms (`mec.augment`); a batch arrives as uint8 views, copied to the device and normalised there
  (`mec.augment.normalise_on_the_device`). The CPU path, and the default without a GPU.
- ``device``: workers only read the files' bytes (`mec.encoded.EncodedImages`); the main process decodes the
  batch on the job's device (nvJPEG on a GPU, `mec.encoded.ImageDecoder`) and augments it there as one batch
  with per-sample parameters (`mec.batch_augment`), through the `mec.encoded.DecodedLoader` the evaluations
  use. Measured on an H100 (issue 14): 15 workers running the per-image path fed 155 images/s to a model that
  steps 1,325 images/s; nvJPEG decoded 16,300 images/s.

Determinism across a resume: every epoch sets the sampler's epoch (the shuffle). On the per-image path each
image's draws are seeded from (train.seed, epoch, index) (`mec.data.build_loader`), whatever the workers; on
the device path the host generator of the batched augmentations is reseeded from (seed, epoch, rank)
(`mec.train.epoch_seed`). Workers persist across epochs on both. Both paths skip unreadable files (one warning
naming each, counted in ``data/skipped_images``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from mec.augment import build_pretrain_views, normalise_on_the_device
from mec.batch_augment import BatchTwoView, batch_imagenet_two_view, batch_multi_crop, normalize, to_float
from mec.config import Config, ConfigError, resolve_loader
from mec.data import build_loader, build_pretrain_dataset
from mec.encoded import DecodedLoader, build_encoded_dataset, collate_encoded, skipped_images
from mec.run import JobProcess
from mec.threads import loader_workers

log = logging.getLogger(__name__)


@dataclass
class PretrainInput:
    """The loader, yielding (views, labels) on either path, and `views`, which makes a batch's views normalised
    on the device; `start_epoch` before each epoch."""

    loader: DataLoader | DecodedLoader  # a DecodedLoader on the device path
    device: torch.device
    # Per-image path: workers send uint8 views, normalised here with these once on the device.
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def path(self) -> str:
        return "device" if isinstance(self.loader, DecodedLoader) else "per_image"

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Start ``epoch``: the sampler's order and, on the device path, its host generator seeded with `seed`
        ((seed, epoch, rank), `mec.train.epoch_seed`); the per-image path seeds each image from its index."""
        if isinstance(self.loader, DecodedLoader):
            self.loader.set_epoch(epoch, seed)
        else:  # each image's draws are seeded from (train.seed, epoch, index) (`mec.data.SeededItems`)
            self.loader.sampler.set_epoch(epoch)

    def views(self, batch) -> tuple[torch.Tensor, ...]:
        """The batch's views ([batch, 3, H, W] each: two global, then any local ones), normalised on the device."""
        views, _ = batch
        if self.mean_std is None:
            return views
        mean, std = self.mean_std
        return tuple(normalize(to_float(v.to(self.device, non_blocking=True)), mean, std) for v in views)

    def skipped_images(self) -> int:
        """Files skipped as unreadable so far (this process and its workers)."""
        return skipped_images(self.loader)


def _batch_views(cfg: Config) -> BatchTwoView:
    crops = cfg.data.multi_crop
    if crops.local_crops:
        return batch_multi_crop(cfg.data.image_size, local_crops=crops.local_crops, local_size=crops.local_size,
                                local_scale=crops.local_scale)
    return batch_imagenet_two_view(cfg.data.image_size)


def build_pretrain_input(cfg: Config, proc: JobProcess) -> PretrainInput:
    """The pretraining loader of `cfg` on `proc`'s device, by the path `data.loader` resolves to."""
    data = cfg.data
    path = resolve_loader(data, proc.device.type)
    if path == "device" and data.augment_options:
        raise ConfigError(f"data.loader=device: data.augment_options={data.augment_options} are options of the "
                          "per-image recipe; use data.loader=per_image")
    workers = loader_workers(data.num_workers)
    batch_size = proc.local_batch(cfg.optim.batch_size, "optim.batch_size")
    if path == "device":
        dataset = build_encoded_dataset(data.name, data.root, "train", data.digits_params())
        encoded = build_loader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                               seed=cfg.train.seed, distributed=proc.distributed, collate_fn=collate_encoded,
                               seeded_items=False)
        result = PretrainInput(DecodedLoader(encoded, proc.device, _batch_views(cfg)), proc.device)
    else:
        crops = data.multi_crop
        views, mean, std = normalise_on_the_device(build_pretrain_views(
            data.augment, data.image_size, local_crops=crops.local_crops, local_size=crops.local_size,
            local_scale=crops.local_scale, **data.augment_options))
        dataset = build_pretrain_dataset(
            data.name, data.root, views, download=data.download, digits_params=data.digits_params(),
            positives=data.positives, source_pair_p=data.source_pair_p, verify_checksums=data.verify_checksums,
        )
        loader = build_loader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                              seed=cfg.train.seed, distributed=proc.distributed)
        result = PretrainInput(loader, proc.device, mean_std=(mean, std))
    if len(result.loader) == 0:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is larger than the data set ({len(dataset)} images "
            f"in {data.root}); lower optim.batch_size"
        )
    log.info("input: %s path (data.loader=%s), %d loader worker%s", path, data.loader, workers,
             "" if workers == 1 else "s")
    return result
