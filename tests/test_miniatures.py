"""Every campaign's miniature runs through the whole DAG on this machine and fills its paper table.

The miniature is what `snakemake --cores 2 --configfile workflow/experiments/<campaign>.yaml --config
scale=miniature` runs: the campaign's DAG shape and evaluations on the offline digits (and the trees the DAG renders
from them), with tiny budgets. The tables stage then regenerates the paper's tables from MLflow: every cell of
the campaign's table must hold a number read from a run of this miniature, marked "(miniature)", with the
published number beside it where the paper's text gives one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_snakemake

EXPERIMENTS = REPO / "workflow" / "experiments"
MINIATURES = sorted(p for p in EXPERIMENTS.glob("*.yaml")
                    if p.stem.startswith(("table", "figure")) and "miniature" in yaml.safe_load(p.read_text()))


def _run_miniature(workdir: Path, campaign: Path) -> Path:
    """The campaign's miniature run to its end in ``workdir``; its output folder.

    Jobs run in their stage process (launcher inline) rather than a submitit subprocess each: some 200 jobs over
    all miniatures, each saving a process start, an unpickling and a poll interval; the local launcher is the
    default experiment's (tests/test_workflow.py)."""
    done = run_snakemake(workdir, "--cores", "2", "--configfile", str(campaign),
                         "--config", "scale=miniature", "miniature={launcher: inline}", timeout=2400)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-6000:])
    name = yaml.safe_load(campaign.read_text())["experiment"]
    return workdir / "results" / f"{name}-miniature"


def _paper_table(output: Path, campaign: str) -> pd.DataFrame:
    (csv,) = (output / "tables" / "paper").glob(f"{campaign}_*.csv")
    return pd.read_csv(csv)


@pytest.mark.slow
@pytest.mark.parametrize("campaign", [p for p in MINIATURES if p.stem.startswith("table")], ids=lambda p: p.stem)
def test_the_miniature_runs_through_the_dag_and_fills_its_table(tmp_path, campaign):
    table = _paper_table(_run_miniature(tmp_path, campaign), campaign.stem)
    empty = table[table["mean"].isna()]
    assert empty.empty, f"{campaign.stem}: cells left empty:\n{empty[['row', 'column']].to_string()}"
    assert table["ours"].str.endswith("(miniature)").all(), table["ours"].tolist()
    assert (table["runs"] >= 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("campaign", [p for p in MINIATURES if p.stem.startswith("figure")], ids=lambda p: p.stem)
def test_the_figure_miniature_draws_its_panels_with_the_measured_scores(tmp_path, campaign):
    output = _run_miniature(tmp_path, campaign)
    assert (output / "figures" / "tsne.png").stat().st_size > 0
    summary = pd.read_csv(output / "tables" / "summary.csv")
    runs = set(summary["run"])
    assert len(runs) == 2, runs  # one per eps
    for metric in ("knn/top1_k20", "tsne/knn_top1", "tsne/uniformity"):
        assert set(summary.loc[summary["metric"] == metric, "run"]) == runs, metric
