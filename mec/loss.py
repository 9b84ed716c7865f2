"""The Maximum Entropy Coding objective (paper Eq. 1-4, appendix A and E).

Notation: rows are samples. `z1`, `z2` are [m, d] l2-normalised embeddings of two views of the same m
images; m is the GLOBAL batch size (all ranks' rows, see `mec.distributed.gather_with_grad`).

    coding length   L = mu * log det(I_m + lam * z1 @ z2.T)     batch-wise, m x m        (Eq. 1, 3)
                      = mu * log det(I_d + lam * z1.T @ z2)     feature-wise, d x d      (Eq. 4, Sylvester)
    mu = (m + d) / 2,     lam = d / (m * eps^2)                 eps: the allowed distortion
    loss = -L

Taylor form (Eq. 2): log det(I + C) = Tr log(I + C) ~= sum_{k=1..n} (-1)^(k+1) Tr(C^k) / k. It converges
when the spectral radius of C is below 1; for unit rows ||C||_2 <= lam * m = d / eps^2 (appendix E), so
eps^2 > d guarantees it. The released setting (d = 2048, eps^2 = 64: lam * m = 32) breaks that worst-case
bound yet converges on healthy (high effective rank) embeddings, which is why the released code warms lambda
up from 8x smaller (`lambda_scale`).

Low orders recover known objectives (appendix E): order 1 is the SimSiam/BYOL cosine loss scaled by mu * lam
(`simsiam_form`, Eq. 23); order 2 feature-wise is the Barlow-Twins-like Eq. 25 (`barlow_twins_form`).

Multi-crop (appendix, "Pre-training with additional strategies"; Table 7's MEC with multi-crop) compares more
view pairs with the same coding length: `multi_crop_pairs` says which, `MaximumEntropyCodingLoss.multi_crop`
takes the lists of target and student embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mec.distributed import gather_with_grad

# A measured ||C||_2 above this stops training (`mec.train.stop_if_diverged`), whatever
# loss.convergence_check says. The series converges only below 1, yet runs that train well pass it for a while.
# Measured (power-iteration estimate of one pair, every step): the digits default (lambda*m = 8) peaks at 3.5
# at the end of its lambda warm-up (step 23), stays below 1.75 after epoch 10 and ends at 0.67 (whole run,
# H100); the tests' tiny config (lambda*m = 8) peaks at 1.1; a diverged run (eps far too small) measured 344.
DIVERGED_SPECTRAL_NORM = 10.0

SIDES = ("auto", "batch", "feature")
PARAMETRISATIONS = ("paper", "released")


def _check_order(order: int | None, allow_exact: bool) -> None:
    if order is None and allow_exact:
        return
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        expected = "an int >= 1 or None (exact log-determinant)" if allow_exact else "an int >= 1"
        raise ValueError(f"order={order!r} is invalid; expected {expected}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid; expected a finite number > 0")


def _check_square(c: Tensor) -> None:
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"c has shape {tuple(c.shape)}; expected a square matrix")


def _check_embedding_pair(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 have shapes {tuple(z1.shape)} and {tuple(z2.shape)}; expected two [m, d] tensors of one shape"
        )


def taylor_trace(c: Tensor, order: int) -> Tensor:
    """sum_{k=1..order} (-1)^(k+1) Tr(C^k) / k, the truncated Taylor series of Tr log(I + C) (paper Eq. 2).

    Forms only C^1 .. C^ceil(order/2), then Tr(C^k) = Tr(C^a C^b) = sum(C^a * (C^b)^T) with a + b = k: an
    elementwise product costs O(s^2) against O(s^3) for a matrix product. Order 4 needs one matrix product
    (C @ C) where Algorithm 1's loop needs three.
    """
    _check_order(order, allow_exact=False)
    _check_square(c)
    powers = [c]
    for _ in range((order + 1) // 2 - 1):
        powers.append(powers[-1] @ c)
    series = torch.diagonal(c).sum()
    for k in range(2, order + 1):
        low = k // 2
        trace_of_power = (powers[low - 1] * powers[k - low - 1].transpose(0, 1)).sum()
        series = series + trace_of_power / k if k % 2 == 1 else series - trace_of_power / k
    return series


def taylor_trace_loop(c: Tensor, order: int) -> Tensor:
    """The same series as `taylor_trace`, computed as the paper's Algorithm 1 does (order - 1 matrix products).

    Kept as the reference for tests and the speed benchmark.
    """
    _check_order(order, allow_exact=False)
    _check_square(c)
    power = c
    sum_of_powers = torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        if (k + 1) % 2 == 0:
            sum_of_powers = sum_of_powers + power / k
        else:
            sum_of_powers = sum_of_powers - power / k
    return torch.trace(sum_of_powers)


def logdet_exact(c: Tensor) -> Tensor:
    """log |det(I + C)| through `torch.linalg.slogdet`.

    C = lam * z1 @ z2.T is not symmetric, so det(I + C) can be negative; `torch.logdet` then returns NaN,
    while slogdet returns the log of the absolute value. A negative determinant means an eigenvalue of C
    below -1, where the Taylor series diverges anyway.
    """
    _check_square(c)
    identity = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.slogdet(identity + c).logabsdet


def resolve_side(m: int, d: int, side: str) -> str:
    """Which matrix to use: "batch" (m x m) or "feature" (d x d); "auto" picks the smaller, "batch" on a tie."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} is invalid; expected one of {SIDES}")
    if side == "auto":
        return "batch" if m <= d else "feature"
    return side


def cross_correlation_matrix(z1: Tensor, z2: Tensor, lam: float, side: str = "auto") -> Tensor:
    """C = lam * z1 @ z2.T (batch-wise, m x m) or lam * z1.T @ z2 (feature-wise, d x d)."""
    _check_embedding_pair(z1, z2)
    _check_positive("lam", lam)
    if resolve_side(z1.shape[0], z1.shape[1], side) == "batch":
        return lam * (z1 @ z2.transpose(0, 1))
    return lam * (z1.transpose(0, 1) @ z2)


def coding_length_series(z1: Tensor, z2: Tensor, lam: float, order: int | None, side: str = "auto") -> Tensor:
    """log det(I + lam * z1 @ z2.T) for [m, d] embeddings, by its order-`order` Taylor series or exactly.

    Args:
        z1, z2: [m, d] embeddings (rows are samples), normally l2-normalised.
        lam: lambda = d / (m * eps^2).
        order: Taylor order n >= 1, or None for the exact value (slogdet).
        side: "batch" (m x m), "feature" (d x d) or "auto" (the smaller); equal by Sylvester's identity
            (the truncated series too: Tr((AB)^k) = Tr((BA)^k)).
    """
    _check_order(order, allow_exact=True)
    c = cross_correlation_matrix(z1, z2, lam, side)
    return logdet_exact(c) if order is None else taylor_trace(c, order)


def simsiam_form(z1: Tensor, z2: Tensor, lam: float, mu: float) -> Tensor:
    """Order-1 MEC loss in closed form (appendix Eq. 23): -mu * lam * sum_i <z1_i, z2_i>.

    The SimSiam / BYOL negative cosine similarity of normalised rows, scaled by mu * lam.
    """
    _check_embedding_pair(z1, z2)
    return -mu * lam * (z1 * z2).sum()


def barlow_twins_form(z1: Tensor, z2: Tensor, lam: float, mu: float) -> Tensor:
    """Appendix Eq. 25: mu * sum_i (-C_ii + C_ii^2 / 2) + mu / 2 * sum_{i != j} C_ij^2, C = lam * z1.T @ z2.

    The order-2 feature-wise MEC loss is -mu * (Tr C - Tr C^2 / 2), whose off-diagonal part is
    sum_{i != j} C_ij * C_ji; Eq. 25 writes C_ij^2. The two agree exactly when C is symmetric (e.g. z1 = z2);
    otherwise Eq. 25 exceeds the series loss by mu / 4 * sum_{i != j} (C_ij - C_ji)^2.
    """
    c = cross_correlation_matrix(z1, z2, lam, side="feature")
    diagonal = torch.diagonal(c)
    off_diagonal_squares = (c * c).sum() - (diagonal * diagonal).sum()
    return mu * (-diagonal + diagonal * diagonal / 2).sum() + mu / 2 * off_diagonal_squares


def spectral_norm(c: Tensor, iters: int = 20) -> float:
    """Estimate ||C||_2 by power iteration on C^T C (a lower estimate that rises with `iters`).

    It bounds the spectral radius that decides whether the Taylor series converges; cheap enough to log each
    step on the smaller side's C (see `cross_correlation_matrix`).
    """
    _check_square(c)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r} is invalid; expected an int >= 1")
    with torch.no_grad():
        matrix = c.detach()
        if matrix.dtype in (torch.float16, torch.bfloat16):
            matrix = matrix.float()
        # A fixed seed keeps the logged value reproducible; a random start is almost surely not orthogonal
        # to the top singular vector.
        generator = torch.Generator(device=matrix.device).manual_seed(0)
        vector = torch.randn(matrix.shape[1], 1, generator=generator, device=matrix.device, dtype=matrix.dtype)
        for _ in range(iters):
            vector = matrix.transpose(0, 1) @ (matrix @ vector)
            vector = vector / vector.norm().clamp_min(torch.finfo(matrix.dtype).tiny)
        return float((matrix @ vector).norm())


def distortion_lambda(eps: float, m: int, d: int) -> float:
    """lambda = d / (m * eps^2), eps being the paper's distortion (the released `--eps 64` is eps^2)."""
    _check_positive("eps", eps)
    return d / (m * eps**2)


def check_finite(loss: Tensor, context: str) -> None:
    """Raise FloatingPointError naming the value and `context` when `loss` is NaN or infinite.

    Callers add what they know: the loss module passes lambda, m, d, order and the remedies; a training
    loop can catch the error and re-raise it with the step number in front.
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(f"MEC loss is not finite (value {loss.detach().flatten()[0].item()}): {context}")


def multi_crop_pairs(
    targets: Sequence[Tensor], students: Sequence[Tensor], symmetric: bool = False
) -> list[tuple[Tensor, Tensor]]:
    """The (target, student) pairs of multi-crop MEC: each student view against every target view but its own.

    `targets` are the embeddings of the global views only (the EMA teacher's, or the stop-gradient targets);
    `students` are those of every view, the global ones first in the same order, then the local ones
    (`students[i]` and `targets[i]` are views of one crop for i < len(targets)). This is SwAV's and DINO's
    multi-crop rule: the target sees only the global views, and each student view is compared with every
    target global view except its own crop. Returned target-major:

        [(targets[i], students[j]) for i in range(G) for j in range(V) if j != i]      G*(V-1) pairs

    With two global views and no local ones that is [(z1, p2), (z2, p1)], exactly the released code's
    symmetrised pairs (reference.md §1); with N local views there are 2 + 2N. The loss is the MEAN of the pairs'
    coding lengths (`MaximumEntropyCodingLoss.forward`), the released code's 0.5 * (f(p1, z2) + f(p2, z1))
    generalised, so the two-view loss is reproduced exactly and the loss scale (and the lr tuned for it) does
    not grow with the number of crops; it is the pairs' summed coding length divided by their number, as
    DINO divides its summed cross-entropies by the number of terms.

    symmetric: Algorithm 1's symmetric net, where targets and students are the same embeddings (all with
    gradient). The global pair appears in both orders, (g1, g2) and (g2, g1), whose coding lengths are equal
    (det(I + lam A B^T) = det(I + lam B A^T), and every Tr(C^k) of the series is transpose-invariant); both are
    written (g1, g2) so that the loss computes it once (it caches identical pairs) and the two-view symmetric
    loss is its single pair (z1, z2) exactly.
    """
    if len(targets) == 0 or len(students) < len(targets):
        raise ValueError(f"got {len(targets)} target and {len(students)} student embeddings; expected at least "
                         "one target (global) view and a student embedding for each of them, then the local ones")
    pairs = []
    for i in range(len(targets)):
        for j in range(len(students)):
            if j == i:
                continue
            if symmetric and j < len(targets):  # a global pair: written (lower index, higher index)
                pairs.append((targets[min(i, j)], students[max(i, j)]))
            else:
                pairs.append((targets[i], students[j]))
    return pairs


@dataclass(frozen=True)
class CodingLengthOutput:
    """What one MEC loss evaluation returns.

    Attributes:
        loss: the scalar to back-propagate.
        coding_length: mu * f, detached, with f the mean (over pairs) of log det(I + lam * a @ b.T): the
            paper's coding length of the batch in nats, for logging.
        lam: lambda actually used (already divided by lambda_scale).
        mu: (m + d) / 2.
        m: global batch size (rows after gathering).
        d: embedding dimension.
        pairs: how many (a, b) pairs the mean ran over.
    """

    loss: Tensor
    coding_length: Tensor
    lam: float
    mu: float
    m: int
    d: int
    pairs: int = 1


class MaximumEntropyCodingLoss(nn.Module):
    """Negative coding length of pairs of embeddings: the MEC objective.

    For pairs (a_i, b_i) of [m_local, d] embeddings, rows are l2-normalised, gathered from all ranks
    (m = global rows), and

        f_i = log det(I + lam_eff * a_i @ b_i.T)   (order-n Taylor series, or exact when order is None)
        f   = mean_i f_i
        lam_eff = d / (m * eps^2) / lambda_scale,   mu = (m + d) / 2

        parametrisation "paper":     loss = -mu * f                            (paper Eq. 1-3, Algorithm 1)
        parametrisation "released":  loss = -f / (lam_eff * m)                 (the authors' released code)
                                          = -(1/m) [Tr G - lam Tr G^2 / 2 + lam^2 Tr G^3 / 3 - ...]  (order 4)
                                     with G = a @ b.T the cosine matrix.

    The paper's Algorithm 1 passes one pair (z1, z2); the released code passes [(p1, z2), (p2, z1)] with p
    the EMA teacher's outputs (no gradient) and z the student predictor's. Under
    DistributedDataParallel every rank computes the same full-batch loss; `gather_with_grad` and DDP's
    gradient averaging together give the exact full-batch gradient.

    Computed in float32 at least, with autocast off: the series sums m^2 products of powers, which half
    precision would round away.

    Args:
        eps: the distortion epsilon (> 0). The released `--eps 64` is eps^2: eps = 8, lam = 1/32 at d = 2048,
            m = 1024.
        order: Taylor order (>= 1), or None for the exact log-determinant.
        side: "batch", "feature" or "auto" (the smaller matrix).
        parametrisation: "paper" or "released" (see above).
        gather_distributed: gather embeddings across ranks before the loss (no effect in one process).
        check_finite: raise FloatingPointError in every call whose loss is not finite. Reading the value waits
            for the device; a training loop that reads losses only now and then passes False and calls
            `check_output` on each step's output when it reads them.
    """

    def __init__(
        self,
        eps: float,
        order: int | None = 4,
        side: str = "auto",
        parametrisation: str = "released",
        gather_distributed: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("eps", eps)
        _check_order(order, allow_exact=True)
        if side not in SIDES:
            raise ValueError(f"side={side!r} is invalid; expected one of {SIDES}")
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r} is invalid; expected one of {PARAMETRISATIONS}")
        self.eps = float(eps)
        self.order = order
        self.side = side
        self.parametrisation = parametrisation
        self.gather_distributed = gather_distributed
        self.check_finite = bool(check_finite)

    @staticmethod
    def convergence_bound(eps: float, m: int, d: int, lambda_scale: float = 1.0) -> float:
        """lam * m, appendix E's bound on ||C||_2 for unit rows; below 1 the Taylor series surely converges."""
        _check_positive("lambda_scale", lambda_scale)
        return distortion_lambda(eps, m, d) / lambda_scale * m

    def convergent_loss_bound(self, out: CodingLengthOutput) -> float:
        """The largest |loss| an order-n series can give while it converges (||C||_2 <= 1): beyond it the loss
        is the divergent series' artefact. For ||C||_2 <= 1, |Tr(C^k)| <= min(m, d), so
        |f| <= min(m, d) * sum_{k<=n} 1/k, and the loss is -f / (lam m) (released) or -mu f (paper).
        """
        harmonic = sum(1.0 / k for k in range(1, (self.order or 1) + 1))
        scale = 1.0 / (out.lam * out.m) if self.parametrisation == "released" else out.mu
        return min(out.m, out.d) * harmonic * scale

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, order={self.order}, side={self.side!r}, parametrisation={self.parametrisation!r}, "
            f"gather_distributed={self.gather_distributed}, check_finite={self.check_finite}"
        )

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = F.normalize(x, dim=1)
        return gather_with_grad(x) if self.gather_distributed else x

    def multi_crop(
        self, targets: Sequence[Tensor], students: Sequence[Tensor], lambda_scale: float = 1.0,
        symmetric: bool = False,
    ) -> CodingLengthOutput:
        """MEC loss over the multi-crop pairs of `multi_crop_pairs(targets, students, symmetric)`: the mean of
        their coding lengths. Two targets and two students give the two-view loss exactly."""
        return self(multi_crop_pairs(targets, students, symmetric), lambda_scale=lambda_scale)

    def forward(self, pairs: Sequence[tuple[Tensor, Tensor]], lambda_scale: float = 1.0) -> CodingLengthOutput:
        """MEC loss of `pairs` (each (a, b) of [m_local, d] embeddings), lambda divided by `lambda_scale`.

        A tensor that appears in several pairs (a multi-crop target) is normalised and gathered once, and a
        pair that appears twice (the same two tensors) has its coding length computed once.
        """
        _check_positive("lambda_scale", lambda_scale)
        if len(pairs) == 0:
            raise ValueError("pairs is empty; expected at least one (a, b) pair of [m, d] embeddings")
        shape = pairs[0][0].shape
        for a, b in pairs:
            if a.ndim != 2 or a.shape != shape or b.shape != shape:
                raise ValueError(
                    f"pairs hold shapes {[(tuple(a.shape), tuple(b.shape)) for a, b in pairs]}; "
                    "expected [m, d] tensors of one shape"
                )
        with torch.autocast(device_type=pairs[0][0].device.type, enabled=False):
            prepared: dict[int, Tensor] = {}  # by id(): the pairs keep every tensor alive meanwhile
            for x in (x for pair in pairs for x in pair):
                if id(x) not in prepared:
                    prepared[id(x)] = self._prepare(x)
            m, d = prepared[id(pairs[0][0])].shape
            lam = distortion_lambda(self.eps, m, d) / lambda_scale
            mu = (m + d) / 2
            lengths: dict[tuple[int, int], Tensor] = {}
            for a, b in pairs:
                if (id(a), id(b)) not in lengths:
                    lengths[id(a), id(b)] = coding_length_series(
                        prepared[id(a)], prepared[id(b)], lam, self.order, self.side)
            f = torch.stack([lengths[id(a), id(b)] for a, b in pairs]).mean()
            loss = -mu * f if self.parametrisation == "paper" else -f / (lam * m)
        out = CodingLengthOutput(loss=loss, coding_length=(mu * f).detach(), lam=lam, mu=mu, m=m, d=d,
                                 pairs=len(pairs))
        if self.check_finite:
            self.check_output(out)
        return out

    def check_output(self, out: CodingLengthOutput) -> None:
        """Raise FloatingPointError, naming lambda, m, d, the order and the remedies, if `out.loss` is not
        finite (reads the value: waits for the device)."""
        check_finite(
            out.loss,
            f"lambda={out.lam:.6g} (lambda*m={out.lam * out.m:.4g}; the Taylor series surely converges only below "
            f"1), m={out.m}, d={out.d}, order={self.order}. Use a larger eps, a longer lambda warm-up, a lower "
            "learning rate or order=None (exact log-determinant)",
        )
