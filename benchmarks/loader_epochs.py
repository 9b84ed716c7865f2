"""Seconds per epoch of the per-image pretraining loader, workers started each epoch or kept, in this process.

    python benchmarks/loader_epochs.py [--config digits] [--epochs 6] [--workers 2]

Reads the configured data set (the default: the offline digits, 1,408 pairs of renderings, batch 128: 11 batches
an epoch) through the config's two-view recipe, each batch's views only made, no model.

- ``workers per epoch (before)``: the loader as it was: a generator reseeded each epoch and workers started at
  each epoch's first batch (`persistent_workers=False`), the baseline;
- ``workers kept (mec.data.build_loader)``: what pretraining runs now: each image's draws seeded from (seed,
  epoch, index), so the workers persist across epochs.

Epochs alternate between the two loaders, so that a change of load on the machine falls on both; the first
(worker start, files into the page cache) is left out of both medians; the ratio is baseline over candidate.
Short epochs (small data sets, the offline default) gain most.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from mec.augment import build_pretrain_views, normalise_on_the_device
from mec.config import load_config
from mec.data import build_loader, build_pretrain_dataset, leave_signals_to_the_main_process


def epoch_seconds(loader: DataLoader, epoch: int, start_epoch) -> float:
    started = time.perf_counter()
    start_epoch(epoch)
    for _ in loader:
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digits")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is left out)")
    torch.set_num_threads(1)
    data, batch = (cfg := load_config(args.config)).data, cfg.optim.batch_size
    views, _, _ = normalise_on_the_device(build_pretrain_views(data.augment, data.image_size))
    dataset = build_pretrain_dataset(data.name, data.root, views, download=data.download,
                                     digits_params=data.digits_params(), positives=data.positives,
                                     source_pair_p=data.source_pair_p, verify_checksums=data.verify_checksums)

    before = DataLoader(dataset, batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        generator=torch.Generator(), worker_init_fn=leave_signals_to_the_main_process)
    kept = build_loader(dataset, batch, shuffle=True, drop_last=True, num_workers=args.workers, seed=0,
                        distributed=False)
    loaders = {
        "workers per epoch (before)": (before, lambda epoch: before.generator.manual_seed(epoch)),
        "workers kept (mec.data.build_loader)": (kept, kept.sampler.set_epoch),
    }
    # Epochs alternate between the loaders, so that a load change on the machine falls on both.
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for epoch in range(args.epochs):
        for name, (loader, start_epoch) in loaders.items():
            times[name].append(epoch_seconds(loader, epoch, start_epoch))
    results = {name: statistics.median(seconds[1:]) for name, seconds in times.items()}
    baseline = next(iter(results.values()))
    print(f"{args.config}: {len(dataset)} images, batch {batch}, {args.workers} workers, "
          f"median of epochs 2-{args.epochs} (alternating), torch {torch.__version__}")
    print("| loader | s / epoch | x baseline |\n|---|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {baseline / seconds:.2f} |")


if __name__ == "__main__":
    main()
