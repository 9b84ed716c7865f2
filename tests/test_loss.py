"""The MEC objective against independent references: exact log-determinants, matrix powers, closed forms."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mec.loss import (
    MaximumEntropyCodingLoss,
    barlow_twins_form,
    check_finite,
    coding_length_series,
    cross_correlation_matrix,
    distortion_lambda,
    logdet_exact,
    resolve_side,
    simsiam_form,
    spectral_norm,
    taylor_trace,
    taylor_trace_loop,
)


def correlated_views(m: int, d: int, noise: float = 0.3, dtype=torch.float64, seed: int = 0):
    """Two l2-normalised views: z2 is z1 plus noise, as two augmentations of one image would be."""
    generator = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(m, d, generator=generator, dtype=dtype), dim=1)
    z2 = F.normalize(z1 + noise * torch.randn(m, d, generator=generator, dtype=dtype), dim=1)
    return z1, z2


def lambda_for_radius(z1, z2, radius: float) -> float:
    """lambda that puts the spectral radius of lam * z1 @ z2.T at `radius`."""
    eigenvalues = torch.linalg.eigvals((z1 @ z2.T).double())
    return radius / eigenvalues.abs().max().item()


def series_by_matrix_power(c: torch.Tensor, order: int) -> torch.Tensor:
    """sum_k (-1)^(k+1) Tr(C^k) / k with every power formed explicitly."""
    return sum((-1) ** (k + 1) * torch.trace(torch.linalg.matrix_power(c, k)) / k for k in range(1, order + 1))


# --- Taylor series against the exact log-determinant ---------------------------------------------------------


@pytest.mark.parametrize(("m", "d"), [(48, 24), (24, 48)])
@pytest.mark.parametrize("side", ["batch", "feature"])
def test_taylor_error_against_exact_logdet_falls_with_order(m, d, side):
    z1, z2 = correlated_views(m, d)
    lam = lambda_for_radius(z1, z2, radius=0.5)
    exact = torch.logdet(torch.eye(d, dtype=torch.float64) + lam * z1.T @ z2)  # positive det here
    assert torch.isfinite(exact)
    errors = [abs((coding_length_series(z1, z2, lam, order, side) - exact) / exact).item() for order in (1, 2, 3, 4, 6)]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3
    assert coding_length_series(z1, z2, lam, None, side).item() == pytest.approx(exact.item(), rel=1e-10)


@pytest.mark.parametrize(("m", "d"), [(40, 16), (16, 40)])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6, None])
def test_batch_and_feature_sides_agree(m, d, order):
    z1, z2 = correlated_views(m, d)
    lam = lambda_for_radius(z1, z2, radius=0.7)
    batch = coding_length_series(z1, z2, lam, order, "batch")
    feature = coding_length_series(z1, z2, lam, order, "feature")
    torch.testing.assert_close(batch, feature, rtol=1e-8, atol=1e-12)


def test_auto_side_picks_the_smaller_matrix():
    assert resolve_side(40, 16, "auto") == "feature"
    assert resolve_side(16, 40, "auto") == "batch"
    assert resolve_side(16, 16, "auto") == "batch"
    assert resolve_side(40, 16, "batch") == "batch"
    z1, z2 = correlated_views(40, 16)
    assert cross_correlation_matrix(z1, z2, 0.1, "auto").shape == (16, 16)
    assert cross_correlation_matrix(z1.T.contiguous(), z2.T.contiguous(), 0.1, "auto").shape == (16, 16)


def test_logdet_exact_survives_a_negative_determinant():
    c = torch.diag(torch.tensor([-3.0, 1.0], dtype=torch.float64))  # det(I + C) = -2 * 2
    assert torch.isnan(torch.logdet(torch.eye(2, dtype=torch.float64) + c))
    assert logdet_exact(c).item() == pytest.approx(math.log(4.0))


# --- trace shortcut -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_trace_shortcut_matches_loop_in_float32(order):
    z1, z2 = correlated_views(64, 32, dtype=torch.float32)
    c = cross_correlation_matrix(z1, z2, lambda_for_radius(z1, z2, 0.6), "batch")
    torch.testing.assert_close(taylor_trace(c, order), taylor_trace_loop(c, order), rtol=1e-5, atol=0)
    reference = series_by_matrix_power(c.double(), order)
    torch.testing.assert_close(taylor_trace(c, order).double(), reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6, 7])
def test_trace_shortcut_on_a_general_matrix(order):
    c = 0.2 * torch.randn(30, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(taylor_trace(c, order), series_by_matrix_power(c, order), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(taylor_trace_loop(c, order), series_by_matrix_power(c, order), rtol=1e-10, atol=1e-12)


def matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_trace_shortcut_forms_only_half_the_powers(order):
    size = 12
    c = torch.randn(size, size)
    one_product = 2 * size**3
    assert matmul_flops(lambda: taylor_trace(c, order)) == (math.ceil(order / 2) - 1) * one_product
    assert matmul_flops(lambda: taylor_trace_loop(c, order)) == (order - 1) * one_product


def test_order_4_series_costs_two_matrix_products_on_the_smaller_side():
    m, d = 20, 8
    z1, z2 = correlated_views(m, d)
    flops = matmul_flops(lambda: coding_length_series(z1, z2, 0.01, 4, "auto"))
    assert flops == 2 * d * m * d + 2 * d**3  # C = lam z1^T z2, then C @ C


# --- the loss module ----------------------------------------------------------------------------------------------


def raw_pairs(m=24, d=16, seed=0):
    """Unnormalised (teacher, student) outputs for the released symmetrised form [(p1, z2), (p2, z1)]."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(m, d, generator=generator, dtype=torch.float64)
    views = [3.0 * (base + 0.4 * torch.randn(m, d, generator=generator, dtype=torch.float64)) for _ in range(4)]
    p1, p2, z1, z2 = views
    return [(p1, z2), (p2, z1)]


def test_paper_parametrisation_is_minus_mu_times_the_series():
    pairs = raw_pairs()
    eps = 3.0
    m, d = pairs[0][0].shape
    lam = d / (m * eps**2)
    output = MaximumEntropyCodingLoss(eps, order=4, side="batch", parametrisation="paper", gather_distributed=False)(
        pairs
    )
    series = [series_by_matrix_power(lam * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, 4) for a, b in pairs]
    f = (series[0] + series[1]) / 2
    mu = (m + d) / 2
    assert (output.m, output.d, output.mu) == (m, d, mu)
    assert output.lam == pytest.approx(lam)
    torch.testing.assert_close(output.loss, -mu * f, rtol=1e-12, atol=0)
    torch.testing.assert_close(output.coding_length, mu * f, rtol=1e-12, atol=0)
    assert not output.coding_length.requires_grad


def released_closed_form(p, z, lam):
    """-(1/m) [Tr G - lam Tr G^2/2 + lam^2 Tr G^3/3 - lam^3 Tr G^4/4], G the cosine matrix (released code)."""
    g = F.normalize(p, dim=1) @ F.normalize(z, dim=1).T
    traces = [torch.trace(torch.linalg.matrix_power(g, k)) for k in range(1, 5)]
    bracket = traces[0] - lam * traces[1] / 2 + lam**2 * traces[2] / 3 - lam**3 * traces[3] / 4
    return -bracket / p.shape[0]


@pytest.mark.parametrize("side", ["batch", "feature", "auto"])
def test_released_parametrisation_matches_its_closed_form(side):
    pairs = raw_pairs()
    eps = 2.0
    m, d = pairs[0][0].shape
    lam = d / (m * eps**2)
    loss = MaximumEntropyCodingLoss(eps, order=4, side=side, parametrisation="released", gather_distributed=False)
    expected = (released_closed_form(*pairs[0], lam) + released_closed_form(*pairs[1], lam)) / 2
    torch.testing.assert_close(loss(pairs).loss, expected, rtol=1e-10, atol=0)


def test_lambda_scale_divides_lambda():
    pairs = raw_pairs()
    m, d = pairs[0][0].shape
    eps = 2.0
    warm = MaximumEntropyCodingLoss(eps, gather_distributed=False)(pairs, lambda_scale=8.0)
    assert warm.lam == pytest.approx(d / (m * eps**2) / 8)
    # lambda 8x smaller is a distortion sqrt(8)x larger
    same = MaximumEntropyCodingLoss(eps * math.sqrt(8.0), gather_distributed=False)(pairs)
    torch.testing.assert_close(warm.loss, same.loss, rtol=1e-12, atol=0)
    expected = (released_closed_form(*pairs[0], warm.lam) + released_closed_form(*pairs[1], warm.lam)) / 2
    torch.testing.assert_close(warm.loss, expected, rtol=1e-10, atol=0)


def test_released_defaults_give_lambda_one_over_32():
    assert distortion_lambda(8.0, 1024, 2048) == 1 / 32
    assert MaximumEntropyCodingLoss.convergence_bound(8.0, 1024, 2048) == 32.0
    assert MaximumEntropyCodingLoss.convergence_bound(8.0, 1024, 2048, lambda_scale=8.0) == 4.0
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1024, 2048, generator=generator) for _ in range(2))
    output = MaximumEntropyCodingLoss(8.0, gather_distributed=False)([(a, b)])
    assert output.lam == 1 / 32
    assert output.mu == 1536.0
    assert torch.isfinite(output.loss)


def test_order_1_is_the_scaled_simsiam_loss():
    z1, z2 = correlated_views(24, 16)
    eps = 0.5
    lam, mu = 16 / (24 * eps**2), (24 + 16) / 2
    cosine_sum = sum(torch.dot(z1[i], z2[i]) for i in range(24))
    output = MaximumEntropyCodingLoss(eps, order=1, parametrisation="paper", gather_distributed=False)([(z1, z2)])
    torch.testing.assert_close(output.loss, -mu * lam * cosine_sum, rtol=1e-12, atol=0)
    torch.testing.assert_close(simsiam_form(z1, z2, lam, mu), -mu * lam * cosine_sum, rtol=1e-12, atol=0)


def barlow_twins_by_loops(z1, z2, lam, mu):
    c = lam * z1.T @ z2
    size = c.shape[0]
    on = sum(-c[i, i] + c[i, i] ** 2 / 2 for i in range(size))
    off = sum(c[i, j] ** 2 for i in range(size) for j in range(size) if i != j)
    return mu * on + mu / 2 * off


def test_order_2_feature_wise_is_the_barlow_twins_form():
    z1, z2 = correlated_views(12, 6)
    lam, mu = 0.2, 9.0
    torch.testing.assert_close(barlow_twins_form(z1, z2, lam, mu), barlow_twins_by_loops(z1, z2, lam, mu))
    # Eq. 25 is the order-2 loss exactly when C is symmetric ...
    series_loss_same_view = -mu * coding_length_series(z1, z1, lam, 2, "feature")
    torch.testing.assert_close(barlow_twins_form(z1, z1, lam, mu), series_loss_same_view, rtol=1e-12, atol=0)
    # ... and above it by mu/4 * sum_{i != j} (C_ij - C_ji)^2 otherwise.
    c = lam * z1.T @ z2
    asymmetry = mu / 4 * ((c - c.T) ** 2).sum()
    series_loss = -mu * coding_length_series(z1, z2, lam, 2, "feature")
    torch.testing.assert_close(barlow_twins_form(z1, z2, lam, mu) - asymmetry, series_loss, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", [4, None])
def test_gradients_pass_gradcheck(order):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: coding_length_series(x, y, 0.1, order, "batch"), (a, b))
    loss = MaximumEntropyCodingLoss(1.0, order=order, parametrisation="paper", gather_distributed=False)
    assert torch.autograd.gradcheck(lambda x, y: loss([(x, y), (y, x)]).loss, (a, b))


def test_half_precision_inputs_are_computed_in_float32():
    pairs = [(a.float(), b.float()) for a, b in raw_pairs()]
    loss = MaximumEntropyCodingLoss(2.0, gather_distributed=False)
    reference = loss(pairs).loss
    in_bfloat16 = loss([(a.bfloat16(), b.bfloat16()) for a, b in pairs]).loss
    assert in_bfloat16.dtype == torch.float32
    torch.testing.assert_close(in_bfloat16, reference, rtol=2e-2, atol=0)


def test_spectral_norm_estimate():
    z1, z2 = correlated_views(40, 24)
    c = cross_correlation_matrix(z1, z2, 0.05, "batch")
    exact = torch.linalg.matrix_norm(c, ord=2).item()
    assert spectral_norm(c, iters=200) == pytest.approx(exact, rel=1e-6)
    assert spectral_norm(c) == pytest.approx(exact, rel=5e-2)
    assert spectral_norm(c) <= exact * (1 + 1e-9)


# --- argument checks and the non-finite guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": 1.0, "order": 0}, "order"),
        ({"eps": 1.0, "order": 2.0}, "order"),
        ({"eps": 1.0, "order": True}, "order"),
        ({"eps": 1.0, "side": "rows"}, "side"),
        ({"eps": 1.0, "parametrisation": "mine"}, "parametrisation"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MaximumEntropyCodingLoss(**kwargs)


def test_bad_call_arguments():
    z1, z2 = correlated_views(8, 4)
    loss = MaximumEntropyCodingLoss(1.0, gather_distributed=False)
    with pytest.raises(ValueError, match="lambda_scale"):
        loss([(z1, z2)], lambda_scale=0.0)
    with pytest.raises(ValueError, match="pairs"):
        loss([])
    with pytest.raises(ValueError, match="pairs"):
        loss([(z1, z2[:4])])
    with pytest.raises(ValueError, match="order"):
        coding_length_series(z1, z2, 0.1, 0)
    with pytest.raises(ValueError, match="side"):
        coding_length_series(z1, z2, 0.1, 2, side="diagonal")
    with pytest.raises(ValueError, match="lam"):
        coding_length_series(z1, z2, -0.1, 2)
    with pytest.raises(ValueError, match="z1 and z2"):
        coding_length_series(z1, z2.T, 0.1, 2)
    with pytest.raises(ValueError, match="square"):
        taylor_trace(z1, 2)
    with pytest.raises(ValueError, match="iters"):
        spectral_norm(z1 @ z1.T, iters=0)


def test_non_finite_loss_raises_with_its_context():
    z1, z2 = correlated_views(8, 4)
    z1[0, 0] = float("nan")
    loss = MaximumEntropyCodingLoss(1.0, order=4, gather_distributed=False)
    with pytest.raises(FloatingPointError, match=r"nan.*lambda=0\.5.*m=8, d=4, order=4.*larger eps"):
        loss([(z1, z2)])
    with pytest.raises(FloatingPointError, match="inf.*step 12"):
        check_finite(torch.tensor(float("inf")), "step 12")
    check_finite(torch.tensor(1.0), "never shown")


@pytest.mark.parametrize("parametrisation", ["released", "paper"])
def test_the_divergence_bound_holds_for_a_convergent_series_and_not_for_a_diverged_one(parametrisation):
    torch.manual_seed(0)
    z1 = torch.randn(16, 8)
    z2 = z1 + 0.01 * torch.randn(16, 8)
    # lambda * m = d / eps^2 just below 1: the series converges, whatever the embeddings
    convergent = MaximumEntropyCodingLoss(eps=math.sqrt(8) * 1.001, order=4, parametrisation=parametrisation)
    out = convergent([(z1, z2)])
    assert spectral_norm(cross_correlation_matrix(F.normalize(z1, dim=1), F.normalize(z2, dim=1), out.lam)) < 1
    assert abs(out.loss.item()) <= convergent.convergent_loss_bound(out)
    diverged = MaximumEntropyCodingLoss(eps=0.3, order=4, parametrisation=parametrisation)  # lambda * m = 89
    out = diverged([(z1, z2)])
    assert abs(out.loss.item()) > diverged.convergent_loss_bound(out)


def test_a_loss_built_not_to_check_each_call_leaves_the_check_to_check_output():
    """A training loop that reads losses only now and then (mec.train.check_steps) builds the loss this way."""
    from mec.loss import MaximumEntropyCodingLoss

    z = torch.full((4, 3), float("nan"))
    unchecked = MaximumEntropyCodingLoss(eps=1.0, check_finite=False)
    out = unchecked([(z, z)])
    assert not torch.isfinite(out.loss)
    with pytest.raises(FloatingPointError, match=r"not finite .*lambda=.*m=4, d=3, order=4"):
        unchecked.check_output(out)
    with pytest.raises(FloatingPointError, match="not finite"):
        MaximumEntropyCodingLoss(eps=1.0)([(z, z)])
