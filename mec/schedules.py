"""Per-iteration schedules of the released code, as pure functions of the global step.

Being functions of the step alone, they need no state of their own: a resumed run recomputes them from the
step stored in its checkpoint.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final`` (appendix C)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lambda_warmup_scale(step: int, warmup_steps: int, factor: float) -> float:
    """Multiplier of 1/lambda: ``factor`` at step 0 falling linearly to 1 at ``warmup_steps`` (released code).

    A smaller lambda early keeps the Taylor series of the coding length convergent while the embeddings
    are still nearly collapsed (reference.md, section 1).
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return factor - (factor - 1.0) * step / warmup_steps


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """EMA momentum rising from ``base`` at step 0 to 1 at ``total_steps`` on a cosine (BYOL; appendix C)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}], got {step!r}")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base must be in [0, 1], got {base!r}")
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0
