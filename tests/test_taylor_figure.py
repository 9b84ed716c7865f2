"""Figure 6 by lambda * m (issue 13): Taylor errors against lambda * m on synthetic and trained embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_mec_config

from mec.config import load_config
from mec.loss import MaximumEntropyCodingLoss
from workflow.cli import main
from workflow.reports import figures
from workflow.reports.figures import (
    paper_crossings,
    synthetic_views,
    taylor_by_lambda_table,
    taylor_error_by_lambda,
    trained_embeddings,
)


def pair(m: int, d: int, aligned: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_views(m, d, torch.Generator().manual_seed(seed), aligned=aligned)


def errors(table: pd.DataFrame) -> pd.DataFrame:
    """rel_error with a row per lambda_m and a column per order."""
    return table.pivot(index="lambda_m", columns="order", values="rel_error").sort_index()


@pytest.mark.parametrize("aligned", [False, True])
def test_the_error_grows_with_lambda_m_and_falls_with_the_order(aligned):
    z1, z2 = pair(64, 64, aligned)
    table = taylor_error_by_lambda(z1, z2, [2.0**k for k in range(-2, 8)])
    norms = table.groupby("lambda_m")["spectral_norm"].first().sort_index()
    assert np.all(np.diff(norms.to_numpy()) > 0)
    converging = errors(table).loc[norms[norms < 0.8].index]
    assert len(converging) >= 6
    for order in (1, 2, 4):
        assert np.all(np.diff(converging[order].to_numpy()) > 0), converging
    assert (converging[1] > converging[2]).all() and (converging[2] > converging[4]).all(), converging


def test_order_one_matches_its_closed_form_and_order_n_scales_as_lambda_m_to_the_n():
    z1, z2 = pair(64, 48)
    # Order 1 is Tr C; the exact value is Tr C - Tr C^2 / 2 + ..., so at small lambda the relative error is
    # lambda Tr(G^2) / (2 Tr G), G = z1 z2^T (the batch side here: m > d gives the same for every side).
    g = (z1 @ z2.T).double()
    slope = float((g * g.T).sum() / (2 * torch.trace(g)))
    small = taylor_error_by_lambda(z1, z2, [1e-3])
    order1 = small[small["order"] == 1].iloc[0]
    assert order1["rel_error"] == pytest.approx(order1["lam"] * slope, rel=1e-3)
    # The order-n error is the first dropped term, ~ (lambda m)^n relative to the order-1 value.
    grid = [0.25, 0.5]
    table = errors(taylor_error_by_lambda(z1, z2, grid))
    for order in (1, 2, 4):
        exponent = math.log(table.loc[grid[1], order] / table.loc[grid[0], order]) / math.log(2)
        assert exponent == pytest.approx(order, abs=0.05), (order, exponent)


def test_the_values_are_the_loss_modules_coding_length():
    z1, z2 = (z.double() for z in pair(40, 24, aligned=True))
    m, d = z1.shape
    lambda_m = 6.0
    table = taylor_error_by_lambda(z1, z2, [lambda_m], orders=(2, 4))
    eps = math.sqrt(d / lambda_m)  # lambda * m = d / eps^2
    for order in (None, 2, 4):
        loss = MaximumEntropyCodingLoss(eps=eps, order=order, parametrisation="paper", gather_distributed=False)
        out = loss([(z1, z2)])
        assert out.lam * m == pytest.approx(lambda_m, rel=1e-12)
        column, rows = ("exact", table) if order is None else ("approx", table[table["order"] == order])
        assert rows[column].iloc[0] == pytest.approx(float(out.coding_length) / out.mu, rel=1e-10)


def test_both_sides_give_the_same_errors():
    z1, z2 = pair(48, 32)
    batch = taylor_error_by_lambda(z1, z2, [1.0, 8.0], side="batch")
    feature = taylor_error_by_lambda(z1, z2, [1.0, 8.0], side="feature")
    assert set(batch["side"]) == {"batch"} and set(feature["side"]) == {"feature"}
    np.testing.assert_allclose(batch["rel_error"], feature["rel_error"], rtol=1e-7)
    # z1 z2^T and z1^T z2 share their eigenvalues (what decides convergence), not their singular values.
    assert not np.allclose(batch["spectral_norm"], feature["spectral_norm"], rtol=1e-3)


def test_paper_crossings_interpolate_where_the_curve_reaches_the_paper():
    table = taylor_by_lambda_table(dim=32, lambda_m=tuple(2.0**k for k in range(-4, 10)))
    crossings = paper_crossings(table)
    assert set(crossings["source"]) == {"synthetic", "synthetic, aligned"}
    for row in crossings.itertuples():
        assert math.isfinite(row.lambda_m)
        assert getattr(row, f"rel_error_order{row.order}") == pytest.approx(row.paper_rel_error, rel=1e-9)
    # The aligned views' C has the larger trace (cosine 0.89 against 0.33 at d = 32): it gets there first.
    first = crossings.set_index(["source", "order"])["lambda_m"]
    assert first["synthetic, aligned", 1] < first["synthetic", 1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A one-epoch pretraining run of the tests' tiny config (the asymmetric net with its EMA teacher)."""
    from mec.train import pretrain

    tmp = tmp_path_factory.mktemp("taylor_run")
    config = write_tiny_mec_config(tmp, epochs=1, per_class=8)  # 16 images, 2 steps
    pretrain(load_config(config, [f"train.output_dir={tmp / 'run'}", "tracking.experiment=taylor",
                                  f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"]))
    return tmp / "run"


def test_trained_embeddings_come_from_the_checkpoint_at_its_recipe(tiny_run):
    before = torch.get_rng_state()
    trained = trained_embeddings(tiny_run)  # the run folder: its newest checkpoint
    assert torch.equal(torch.get_rng_state(), before)
    assert trained.checkpoint == tiny_run / "checkpoints" / "checkpoint_epoch0001.pt"
    assert trained.epoch == 1 and trained.name == "tiny" and trained.side == "auto"
    assert trained.z1.shape == trained.z2.shape == (8, 32)  # the run's batch of its d = 32 embeddings
    assert trained.recipe_lambda_m == pytest.approx(32 / 2.0**2)  # d / eps^2 with eps = 2
    assert torch.equal(trained_embeddings(trained.checkpoint).z1, trained.z1)  # the file itself; seeded
    other = trained_embeddings(tiny_run / "checkpoints", n=12, seed=1)
    assert other.z1.shape == (12, 32) and not torch.equal(other.z1[:8], trained.z1)
    # The asymmetric pair: teacher projector output against student predictor output, two different maps.
    assert not torch.allclose(trained.z1, trained.z2)
    table = taylor_error_by_lambda(trained.z1, trained.z2, [0.5, trained.recipe_lambda_m])
    assert np.isfinite(table["rel_error"]).all() and (table["m"] == 8).all()


def test_the_cli_writes_both_figures_with_the_trained_curve(tiny_run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    by_dimension = figures.taylor_figure
    monkeypatch.setattr(figures, "taylor_figure", lambda png: by_dimension(png, dims=(32,), repeats=1))
    png = tmp_path / "figures" / "taylor_error.png"
    assert main(["taylor-figure", "--out", str(png), "--dim", "32",
                 "--checkpoint", str(tiny_run / "checkpoints")]) == 0
    for path in (png, png.with_suffix(".csv"), tmp_path / "figures" / "taylor_error_by_lambda.png",
                 tmp_path / "figures" / "taylor_error_by_lambda.csv"):
        assert path.is_file(), path
    table = pd.read_csv(tmp_path / "figures" / "taylor_error_by_lambda.csv")
    assert list(dict.fromkeys(table["source"])) == ["synthetic", "synthetic, aligned", "trained: tiny epoch 1"]
    recipe = table[table["recipe"]]
    assert sorted(set(recipe["lambda_m"].round(6))) == [8.0, round(1 / 0.06, 6)]
    assert set(table.loc[table["source"].str.startswith("trained"), "m"]) == {8}
    with Image.open(tmp_path / "figures" / "taylor_error_by_lambda.png") as image:
        assert image.size[0] > 2 * image.size[1]  # three panels and the ||C||_2 one
    out = capsys.readouterr().out
    assert "figure:taylor_by_lambda:csv" in out and "trained: tiny epoch 1: order 1" in out

    plain = tmp_path / "plain" / "taylor_error.png"
    assert main(["taylor-figure", "--out", str(plain), "--dim", "32"]) == 0
    assert set(pd.read_csv(plain.with_name("taylor_error_by_lambda.csv"))["source"]) == {
        "synthetic", "synthetic, aligned"}
    assert set(pd.read_csv(plain.with_suffix(".csv"))["d"]) == {32}


@pytest.mark.parametrize("kind", ["missing", "garbage", "backbone", "empty folder"])
def test_a_bad_checkpoint_is_one_error_line(tiny_run, tmp_path, capsys, kind):
    path = {"missing": tmp_path / "nowhere.pt", "garbage": tmp_path / "garbage.pt",
            "backbone": tiny_run / "backbone.pt", "empty folder": tmp_path / "empty"}[kind]
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint")
    if kind == "empty folder":
        path.mkdir()
    png = tmp_path / "out" / "taylor_error.png"
    assert main(["taylor-figure", "--out", str(png), "--dim", "16", "--checkpoint", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mec: error: ") and str(path) in lines[0], lines
    if kind == "backbone":
        assert "not a pretraining checkpoint" in lines[0]
    assert not png.parent.exists()  # nothing measured or written
