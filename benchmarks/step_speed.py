"""Training-step throughput of a shipped recipe on synthetic views: float32 against bf16 autocast (+ channels_last).

    python benchmarks/step_speed.py                          # imagenet-100ep on CUDA, digits on the CPU
    python benchmarks/step_speed.py --config cifar10 --batch 256 --steps 20

One process, one model per variant, the same synthetic views already on the device (the input pipeline is not
measured here); each variant runs the recipe's real step: forward of both views, the recipe's loss pairing,
backward, optimizer step, teacher update. Prints images/s and the ratio to the float32 baseline of the same
run, and peak GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch

from mec.config import load_config
from mec.loss import MaximumEntropyCodingLoss
from mec.optim import build_optimizer
from mec.train import build_model

VARIANTS = (("float32", False, False), ("bf16 autocast", True, False), ("bf16 autocast + channels_last", True, True))


def step_rate(cfg, device: torch.device, batch: int, steps: int, amp: bool, channels_last: bool) -> tuple[float, float]:
    """(images per second, peak memory in GiB) of `steps` timed steps after a short warm-up."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = MaximumEntropyCodingLoss(eps=cfg.loss.eps, order=cfg.loss.order, side=cfg.loss.side,
                                       parametrisation=cfg.loss.parametrisation)
    optimizer = build_optimizer(model, cfg.optim, cfg.lr)
    size = cfg.data.image_size
    views = [torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt) for _ in range(2)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def step() -> None:
        with autocast:
            p1, p2, z1, z2 = model(*views)
        pairs = [(z1, z2)] if model.symmetric else [(z1, p2), (z2, p1)]
        out = loss_fn(pairs, lambda_scale=1.0)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if cfg.model.use_teacher:
            model.update_teacher(0.996)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return batch * steps / seconds, peak


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="imagenet-100ep" if cuda else "digits")
    parser.add_argument("--batch", type=int, default=128 if cuda else 64, help="images per step (per view)")
    parser.add_argument("--steps", type=int, default=20 if cuda else 5)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.config}, batch {args.batch}, {args.steps} steps, {name}, torch {torch.__version__}")
    print(f"{'variant':<32} {'img/s':>9} {'x float32':>10} {'peak GiB':>9}")
    baseline = None
    for label, amp, channels_last in VARIANTS:
        if not cuda and channels_last:
            continue  # channels_last is a CUDA layout optimisation (train.channels_last applies it on CUDA only)
        rate, peak = step_rate(cfg, device, args.batch, args.steps, amp, channels_last)
        baseline = baseline or rate
        print(f"{label:<32} {rate:>9.1f} {rate / baseline:>10.2f} {peak:>9.1f}", flush=True)
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
