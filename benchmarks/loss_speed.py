"""Time the MEC coding length, forward + backward: trace shortcut vs Algorithm 1's loop vs exact slogdet.

    python benchmarks/loss_speed.py [--device cpu|cuda] [--repeats N]

For each batch size m and embedding dimension d, on the batch-wise side (m x m) and on the side "auto" picks
(the smaller matrix; when that is the batch side the row is marked "batch=auto"), it prints the median
time of `coding_length_series` (the shortcut: ceil(n/2) - 1 matrix products after forming C), of
`taylor_trace_loop` on the same C (n - 1 products) and of the exact log-determinant, all measured in this
process after a warm-up call. Appendix D (Figure 6) of the paper compares the series with the exact value
the same way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from mec.loss import (
    coding_length_series,
    cross_correlation_matrix,
    resolve_side,
    taylor_trace_loop,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024], help="global batch sizes m")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 2048], help="embedding dimensions d")
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4], help="Taylor orders n")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: torch's choice); on a busy machine 1 gives steadier times",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} is invalid; expected an int >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} is invalid; expected an int >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda but torch.cuda.is_available() is False")
    return args


def loop_series(z1: torch.Tensor, z2: torch.Tensor, lam: float, order: int, side: str) -> torch.Tensor:
    """The coding length through the paper's Algorithm 1 loop instead of the trace shortcut."""
    return taylor_trace_loop(cross_correlation_matrix(z1, z2, lam, side), order)


def median_seconds(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], repeats: int) -> float:
    """Median wall time of fn() plus the gradient of its output with respect to `inputs`."""

    def forward_backward() -> None:
        torch.autograd.grad(fn(), inputs)

    def synchronize() -> None:
        if inputs[0].device.type == "cuda":
            torch.cuda.synchronize()

    forward_backward()  # warm-up: allocator, kernel selection
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} (median, forward+backward, milliseconds)"
    )
    header = (
        f"{'m':>5} {'d':>5} {'side':<14} {'order':>5} {'loop':>10} {'shortcut':>10} {'loop/short':>10} {'exact':>10}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for m in args.batch_sizes:
        for d in args.dims:
            z1 = F.normalize(torch.randn(m, d, generator=generator, dtype=dtype), dim=1).to(device)
            z2 = F.normalize(z1.cpu() + 0.3 * torch.randn(m, d, generator=generator, dtype=dtype), dim=1).to(device)
            z1.requires_grad_(True)
            z2.requires_grad_(True)
            inputs = [z1, z2]
            lam = 0.5 / m  # the Taylor series converges for sure below lam * m = 1; the value does not change speed
            auto_side = resolve_side(m, d, "auto")
            sides = {"batch": "batch=auto" if auto_side == "batch" else "batch"}
            if auto_side != "batch":
                sides["feature"] = "auto=feature"
            for side, label in sides.items():
                exact = median_seconds(partial(coding_length_series, z1, z2, lam, None, side), inputs, args.repeats)
                for order in args.orders:
                    shortcut = median_seconds(
                        partial(coding_length_series, z1, z2, lam, order, side), inputs, args.repeats
                    )
                    loop = median_seconds(partial(loop_series, z1, z2, lam, order, side), inputs, args.repeats)
                    print(
                        f"{m:>5} {d:>5} {label:<14} {order:>5} {loop * 1e3:>10.2f} {shortcut * 1e3:>10.2f} "
                        f"{loop / shortcut:>10.2f} {exact * 1e3:>10.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
