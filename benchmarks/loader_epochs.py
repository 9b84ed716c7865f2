"""Seconds per epoch of the per-image pretraining loader, workers started each epoch or kept, in this process.

    python benchmarks/loader_epochs.py [--config digits] [--epochs 6] [--workers 2]

Reads the configured data set (the default: the offline digits, 1,408 training images, batch 128: 11 batches an
epoch) through the config's two-view recipe, each batch's views only made, no model.

- ``workers per epoch (before)``: the loader as it was: a generator reseeded each epoch and workers started at
  each epoch's first batch (`persistent_workers=False`), the baseline;
- ``workers kept (mec.data.build_loader)``: what pretraining runs now: each image's draws seeded from (seed,
  epoch, index), so the workers persist across epochs.

The first epoch (worker start, files into the page cache) is left out of both means; the ratio is baseline over
candidate. Short epochs (small data sets, the offline default) gain most.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from mec.augment import build_pretrain_views, normalise_on_the_device
from mec.config import load_config
from mec.data import build_loader, build_pretrain_dataset, leave_signals_to_the_main_process


def seconds_per_epoch(loader: DataLoader, epochs: int, start_epoch) -> float:
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        start_epoch(epoch)
        for _ in loader:
            pass
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / (epochs - 1)


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
                                     digits_params=data.digits_params())

    before = DataLoader(dataset, batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        generator=torch.Generator(), worker_init_fn=leave_signals_to_the_main_process)
    kept = build_loader(dataset, batch, shuffle=True, drop_last=True, num_workers=args.workers, seed=0,
                        distributed=False)
    results = {
        "workers per epoch (before)": seconds_per_epoch(before, args.epochs, lambda e: before.generator.manual_seed(e)),
        "workers kept (mec.data.build_loader)": seconds_per_epoch(kept, args.epochs, kept.sampler.set_epoch),
    }
    baseline = next(iter(results.values()))
    print(f"{args.config}: {len(dataset)} images, batch {batch}, {args.workers} workers, "
          f"mean of epochs 2-{args.epochs}, torch {torch.__version__}")
    print("| loader | s / epoch | x baseline |\n|---|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {baseline / seconds:.2f} |")


if __name__ == "__main__":
    main()
