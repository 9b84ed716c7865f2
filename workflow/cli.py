"""The ``mec`` command: ``mec pretrain --config FILE [section.key=value ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mec.config import ConfigError, load_config, resolve_config_path


def _pretrain(args: argparse.Namespace) -> int:
    from mec.train import pretrain  # imports torch: keep `mec --help` fast

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        for key, value in cfg.flat().items():
            print(f"{key}={value}")
        return 0
    result = pretrain(cfg, config_file=resolve_config_path(args.config))
    if result.run_id:
        print(f"run {result.run_id}: backbone {result.backbone_path}")
        for key, value in sorted(result.metrics.items()):
            print(f"  {key} = {value:.4f}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from workflow.reports.paper_tables import write_tables
    from workflow.reports.tables import experiment_runs, write_summary
    from mec.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    names = args.experiment or [e.name for e in MlflowClient(uri).search_experiments()
                                if e.name not in ("Default", TABLES_EXPERIMENT)]
    if not names:
        raise FileNotFoundError(f"no MLflow experiments at {uri}")
    runs = pd.concat([experiment_runs(name, uri) for name in names], ignore_index=True)
    out = Path(args.out)
    written = write_tables(runs, out)
    for name in names:
        written |= {f"summary:{name}": write_summary(name, out / "experiments" / name, uri)["md"]}
    from workflow.reports.figures import probe_curves, training_curves

    client = MlflowClient(uri)
    figures = Path(args.figures)
    for label, path in (("figure:pretraining", training_curves(runs, client, figures / "pretraining_curves.png")),
                        ("figure:linear_probe", probe_curves(runs, client, figures / "linear_probe_curves.png"))):
        if path is not None:
            written[label] = path
    if not args.no_log:
        written["mlflow"] = Path(_log_tables_run(client, out, figures, names))
    for label, path in written.items():
        print(f"{label}: {path}")
    return 0


TABLES_EXPERIMENT = "mec-tables"


def _log_tables_run(client, tables: Path, figures: Path, sources: list[str]) -> str:
    """Record this regeneration as a run of its own (tables and figures as artifacts); returns the run's URI."""
    from mec.tracking import ensure_experiment

    experiment_id = ensure_experiment(client, TABLES_EXPERIMENT)
    run = client.create_run(experiment_id, run_name="tables", tags={"mec.stage": "tables",
                                                                     "mec.source_experiments": ",".join(sources)})
    client.log_artifacts(run.info.run_id, str(tables), "tables")
    if figures.exists():
        client.log_artifacts(run.info.run_id, str(figures), "figures")
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("pretrain", help="pretrain (or resume) an MEC model")
    pre.add_argument("--config", required=True, help="YAML file, or a shipped config name (digits, cifar10, ...)")
    pre.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    pre.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    pre.set_defaults(run=_pretrain)
    tables = commands.add_parser("tables", help="the paper's tables from MLflow runs, beside the published numbers")
    tables.add_argument("--experiment", action="append", help="MLflow experiment(s) to read (default: all)")
    tables.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite results/mlflow.db")
    tables.add_argument("--out", default="results/tables", help="output folder (default: results/tables)")
    tables.add_argument("--figures", default="results/figures", help="figure folder (default: results/figures)")
    tables.add_argument("--no-log", action="store_true", help="do not record the tables and figures in MLflow")
    tables.set_defaults(run=_tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.run(args)
    except (ConfigError, FileNotFoundError, LookupError) as exc:
        print(f"mec: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"mec: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
