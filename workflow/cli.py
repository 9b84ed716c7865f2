"""mec: pretrain MEC models, evaluate backbones, and rebuild the result tables from MLflow.

  mec pretrain --config digits                        pretrain (or resume) one model
  mec evaluate --backbone FILE --config NAME --protocol knn
                                                      evaluate an existing backbone through the same DAG
  mec tables                                          summary, paper tables and figures from the MLflow runs
  mec install-detectron2                              install detectron2 (pinned) for the transfer evaluation
  mec bench --config imagenet-100ep                   images/s of the step, each input path and the whole loop

Run `mec COMMAND --help` for a command's options.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from evals import PROTOCOLS
from mec.config import ConfigError, load_config, resolve_config_path
from workflow.detectron2_install import add_arguments as detectron2_arguments  # the standard library only


def _pretrain(args: argparse.Namespace) -> int:
    from mec.train import pretrain  # imports torch: keep `mec --help` fast

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        for key, value in cfg.flat().items():
            print(f"{key}={value}")
        return 0
    from mec.tracking import check_tracking_store, resolve_tracking_uri, tracking_uri_source

    # Before data and model are built: a store MLflow cannot open is said at once (the run logger checks again,
    # for the server, when it opens the run).
    configured = cfg.tracking.tracking_uri
    check_tracking_store(resolve_tracking_uri(configured), tracking_uri_source(configured))
    # Run from a shell or a batch script (the DAG's jobs run under submitit, which handles SIGTERM itself): a
    # SIGTERM (`kill`, `timeout`, a scheduler's limit) stops the run as Ctrl-C does, ending it KILLED.
    signal.signal(signal.SIGTERM, _interrupt)
    result = pretrain(cfg, config_file=resolve_config_path(args.config))
    if result.run_id:
        print(f"run {result.run_id}: backbone {result.backbone_path}")
        for key, value in sorted(result.metrics.items()):
            print(f"  {key} = {value:.4f}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class OptionError(ValueError):
    """A command-line option's value cannot be used; the message names the option."""


def _output_folder(option: str, value: str) -> Path:
    """``value`` made a folder, or `OptionError` naming ``option`` (an OSError alone names only a parent)."""
    from mec.tracking import why_not_created

    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{option} {value}: cannot create the folder ({why_not_created(Path(value), exc)})") from None
    return Path(value)


def _tables(args: argparse.Namespace) -> int:
    from workflow.reports.regenerate import regenerate, report_store

    store = report_store(args.tracking_uri)  # before the folders: nothing is made where there is nothing to read
    written = regenerate(args.experiment, store, _output_folder("--out", args.out),
                         _output_folder("--figures", args.figures),
                         log_experiment=None if args.no_log else args.log_experiment)
    for label, path in written.items():
        print(f"{label}: {path}")
    return 0


def _taylor_figure(args: argparse.Namespace) -> int:
    from mec.checkpoint import CheckpointLoadError
    from workflow.reports.figures import paper_crossings, taylor_by_lambda_figure_files, taylor_figure

    out = Path(args.out)
    try:  # first: a bad checkpoint stops before anything is measured
        by_lambda = taylor_by_lambda_figure_files(out, args.checkpoint, dim=args.dim, samples=args.samples)
    except (CheckpointLoadError, ValueError) as exc:
        print(f"mec: error: {exc}", file=sys.stderr)
        return 2
    for label, path in (taylor_figure(out) | by_lambda).items():
        print(f"{label}: {path}")
    import pandas as pd

    table = pd.read_csv(by_lambda["figure:taylor_by_lambda:csv"])
    for row in paper_crossings(table).itertuples():
        paper = f"the paper's {100 * row.paper_rel_error:g}% (d = 2048)"
        if pd.isna(row.lambda_m):
            print(f"{row.source}: order {row.order} does not cross {paper} between lambda*m = "
                  f"{table['lambda_m'].min():.3g} and {table['lambda_m'].max():.3g}")
        else:
            print(f"{row.source}: order {row.order} reaches {paper} at lambda*m = {row.lambda_m:.4g} "
                  f"(||C||_2 = {row.spectral_norm:.3g})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from workflow.evaluate import evaluate_backbone

    return evaluate_backbone(
        backbone=Path(args.backbone), config=args.config, protocols=args.protocol, options=args.option or [],
        overrides=args.overrides, experiment=args.experiment, output=args.output, tracking_uri=args.tracking_uri,
        cores=args.cores, launcher=args.launcher,
    )


def _bench(args: argparse.Namespace) -> int:
    import tempfile

    from mec.bench import describe_machine, format_results, run_bench, write_jpeg_tree
    from mec.run import select_device

    with tempfile.TemporaryDirectory() as scratch:
        # Without --data the JPEGs go to the scratch folder, written once the config gives the batch size.
        data = Path(scratch) if args.data is None else args.data
        cfg = load_config(args.config, [*args.overrides, "data.name=imagefolder", f"data.root={data}"])
        if args.steps < 1 or args.warmup < 0 or (args.images is not None and args.images < 1):
            raise OptionError(f"--steps must be >= 1, --warmup >= 0 and --images >= 1; got {args.steps}, "
                              f"{args.warmup}, {args.images}")
        if args.data is None:
            # Pairs of renderings of one source (the digits' same_source) read two files an item.
            per_item = 2 if cfg.data.positives == "same_source" else 1
            images = args.images or (args.warmup + args.steps) * cfg.optim.batch_size * per_item
            write_jpeg_tree(data, images)
            print(f"mec bench: wrote {images} JPEGs of about 400 x 350 px to {data}")
        results = run_bench(cfg, steps=args.steps, warmup=args.warmup)
    print(format_results(results, cfg, describe_machine(select_device(cfg.train.device))))
    return 0


def _install_detectron2(args: argparse.Namespace) -> int:
    from workflow.detectron2_install import run  # a failure is one line and exit status 1

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pre = commands.add_parser(
        "pretrain", help="pretrain (or resume) an MEC model",
        description="Pretrain an MEC model from a config, or resume it from its newest checkpoint into the same "
                    "MLflow run; at the end the backbone is exported to <train.output_dir>/backbone.pt.")
    pre.add_argument("--config", required=True, help="YAML file, or a shipped config name (digits, cifar10, ...)")
    pre.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (YAML values)")
    pre.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    pre.set_defaults(run=_pretrain)

    ev = commands.add_parser(
        "evaluate", help="evaluate an existing backbone file (no pretraining)",
        description="Evaluate an existing backbone (the authors' released checkpoint, an exported backbone, another "
                    "lab's ResNet) with the pipeline's protocols: writes a one-group experiment config to "
                    "<output>/experiment.yaml and runs the repository's Snakemake DAG on it, so the results, "
                    "MLflow runs and tables are the same as for a pretrained run.")
    ev.add_argument("--backbone", required=True, help="the backbone file (.pt)")
    ev.add_argument("--config", required=True,
                    help="a shipped config name or YAML giving its architecture and data (e.g. imagenet-800ep for "
                         "the released ResNet-50)")
    ev.add_argument("--protocol", action="append", required=True,
                    help=f"evaluation protocol ({', '.join(PROTOCOLS)}); repeat for several")
    ev.add_argument("--option", action="append", metavar="key=value",
                    help="protocol option (YAML value) for every chosen protocol, or protocol.key=value for one "
                         "(e.g. knn.k=[20,200]); repeatable")
    ev.add_argument("overrides", nargs="*", metavar="section.key=value",
                    help="config overrides (e.g. data.root=/datasets/imagenet)")
    ev.add_argument("--experiment", help="MLflow experiment name (default: evaluate-<backbone file name>)")
    ev.add_argument("--output", help="results folder (default: results/<experiment>)")
    ev.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite results/mlflow.db")
    ev.add_argument("--launcher", default="local", help="inline | debug | local | slurm (default: local)")
    ev.add_argument("--cores", type=int, default=2, help="cores Snakemake may use (default: 2)")
    ev.set_defaults(run=_evaluate)

    tables = commands.add_parser(
        "tables", help="summary, paper tables and figures, read back from MLflow",
        description="Read the runs of one or more MLflow experiments and write: <out>/summary.md and summary.csv "
                    "(protocol x pretraining run), <out>/paper/ (the paper's tables beside the published numbers), "
                    "and <figures>/ (pretraining curves, linear-probe curves, t-SNE panels). Only runs that "
                    "differ by seed are averaged; a cell fed by differing recipes reports a conflict. The output "
                    "is recorded as a run 'tables' of --log-experiment.")
    tables.add_argument("--experiment", action="append", help="MLflow experiment(s) to read (default: all)")
    tables.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite results/mlflow.db")
    tables.add_argument("--out", default="results/tables", help="output folder (default: results/tables)")
    tables.add_argument("--figures", default="results/figures", help="figure folder (default: results/figures)")
    tables.add_argument("--log-experiment", default="mec-tables",
                        help="MLflow experiment that records the tables and figures (default: mec-tables)")
    tables.add_argument("--no-log", action="store_true", help="do not record the tables and figures in MLflow")
    tables.set_defaults(run=_tables)

    taylor = commands.add_parser(
        "taylor-figure", help="paper Figure 6 measured on this machine",
        description="Relative error and time of the order-1/2/4 Taylor coding length against the exact "
                    "log-determinant, by dimension: a PNG and a CSV beside it (with a device column). Also the "
                    "relative errors by lambda*m (= d/eps^2) with the measured ||C||_2, for synthetic embeddings "
                    "(m = d = --dim) and, with --checkpoint, a pretrained model's own embeddings: "
                    "<out stem>_by_lambda.png and .csv, and the lambda*m at which each order reaches the "
                    "paper's error (2.56%, 0.22%, 0.07% at d = 2048).")
    taylor.add_argument("--out", default="results/figures/taylor_error.png", help="the PNG (the CSV goes beside)")
    taylor.add_argument("--checkpoint", metavar="PATH",
                        help="a pretraining checkpoint (checkpoint_epochNNNN.pt, or the run folder or its "
                             "checkpoints/ folder: the newest one): its model embeds two augmented views of "
                             "training images of its own data, as its loss compares them")
    taylor.add_argument("--samples", type=int, metavar="N",
                        help="images the checkpoint's model embeds (default: its batch size, the loss's m)")
    taylor.add_argument("--dim", type=int, default=2048,
                        help="m = d of the synthetic embeddings of the by-lambda figure (default: 2048, the "
                             "paper's)")
    taylor.set_defaults(run=_taylor_figure)

    bench = commands.add_parser(
        "bench", help="measure the training step, each input path and the whole loop (images/s)",
        description="Images/s, side by side in one process: the training step on synthetic views on the device, "
                    "each input path alone (per_image: workers decode and augment; device: the device decodes "
                    "and augments the batch), the configured loop end to end, and its busy fraction (mec/bench.py).")
    bench.add_argument("--config", default="imagenet-100ep", help="YAML file or shipped config (default: "
                       "imagenet-100ep, the released recipe)")
    bench.add_argument("--data", type=Path, help="an ImageFolder root (with train/); default: JPEGs of ImageNet's "
                       "average size written to a temporary folder")
    bench.add_argument("--images", type=int, help="JPEGs to write without --data (default: enough batches)")
    bench.add_argument("--steps", type=int, default=10, help="timed batches per figure (default: 10)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed batches first (default: 3)")
    bench.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="config overrides, e.g. optim.batch_size=32 train.compile=true")
    bench.set_defaults(run=_bench)

    d2 = commands.add_parser(
        "install-detectron2", help="install detectron2 (pinned) into this Python",
        description="Install detectron2 for the transfer evaluation (workflow/detectron2_install.py). A detectron2 "
                    "that already imports is reported and left alone. Otherwise the pinned sal-detectron2 wheel "
                    "(upstream a59f056) is downloaded, its sha256 checked, rewritten as the pure-Python "
                    "distribution detectron2 (no _C extension) and installed; --from-source builds the pinned "
                    "upstream commit from GitHub instead (GPU clusters).")
    detectron2_arguments(d2)
    d2.set_defaults(run=_install_detectron2)
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
    # ConnectionError: mec.tracking.TrackingStoreError, a store that cannot be used as configured (a malformed
    # URI, a missing driver, a SQLite file that cannot be made, a server that is away or is not MLflow).
    except (ConfigError, FileNotFoundError, LookupError, ConnectionError, OptionError) as exc:
        print(f"mec: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"mec: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        resumes = "; run the same command again to resume from its newest checkpoint" if args.run is _pretrain else ""
        print(f"mec: interrupted ({exc or 'Ctrl-C'}){resumes}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from mec.checkpoint import CheckpointLoadError  # torch is loaded by whatever raised it

        if not isinstance(exc, CheckpointLoadError):
            raise
        print(f"mec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
