"""`mec evaluate`: an existing backbone file through the same protocols and DAG as a pretrained one.

It writes a small experiment config (one run group importing the file, one evaluation per protocol) to
``<output>/experiment.yaml`` and runs the repository's Snakefile on it; the imported group's run is the
backbone, loaded strictly and exported like a trained one (`workflow.imported`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from evals import PROTOCOLS
from mec.checkpoint import file_sha256
from mec.config import ConfigError, load_config, parse_override
from workflow.experiment import build_experiment

REPO = Path(__file__).resolve().parents[1]


def parse_options(options: list[str], protocols: list[str]) -> dict[str, dict[str, Any]]:
    """``key=value`` for every protocol, ``protocol.key=value`` for one; values are YAML."""
    parsed: dict[str, dict[str, Any]] = {protocol: {} for protocol in protocols}
    for option in options:
        path, value = parse_override(option)
        if len(path) > 1 and path[0] in PROTOCOLS:
            if path[0] not in parsed:
                raise ConfigError(f"--option {option!r}: protocol {path[0]!r} is not among --protocol {protocols}")
            parsed[path[0]][".".join(path[1:])] = value
        else:
            for chosen in parsed.values():
                chosen[".".join(path)] = value
    return parsed


def experiment_config(backbone: Path, config: str, protocols: list[str], options: dict[str, dict[str, Any]],
                      overrides: dict[str, Any], name: str, output: Path, tracking_uri: str | None,
                      launcher: str) -> dict[str, Any]:
    """The experiment tree: one group importing ``backbone``, one evaluation per protocol on it."""
    group = re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone.stem).strip("-._") or "backbone"
    return {
        "experiment": name,
        "output": str(output),
        "launcher": launcher,
        "tracking_uri": tracking_uri,
        "pretrain": {group: {"config": config, "backbone": str(backbone), "overrides": overrides}},
        "evaluate": {protocol: {"protocol": protocol, "runs": [group], "options": options[protocol]}
                     for protocol in protocols},
    }


def evaluate_backbone(backbone: Path, config: str, protocols: list[str], options: list[str], overrides: list[str],
                      experiment: str | None, output: str | None, tracking_uri: str | None, cores: int,
                      launcher: str = "local") -> int:
    """Check the request (one line for a missing file, an unknown protocol or config key), write the experiment
    config and run Snakemake on it; print where the results and the MLflow runs are. Returns the exit code."""
    if not backbone.is_file():
        raise FileNotFoundError(f"--backbone {backbone}: no such file")
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ConfigError(f"--protocol {', '.join(unknown)}: unknown; protocols: {sorted(PROTOCOLS)}")
    protocols = list(dict.fromkeys(protocols))
    cfg = load_config(config, overrides)  # a bad config name or key stops here, in one line
    # The file's hash in the default name: another file of the same name is another experiment, never a
    # finished one whose records would make Snakemake skip the new file.
    name = experiment or f"evaluate-{backbone.stem}-{file_sha256(backbone)[:8]}"
    out = Path(output or Path("results") / name).resolve()
    config_ref = config if not Path(config).is_file() else str(Path(config).resolve())
    tree = experiment_config(backbone.resolve(), config_ref, protocols, parse_options(options, protocols),
                             {".".join(path): value for path, value in map(parse_override, overrides)}, name, out,
                             tracking_uri, launcher)
    exp = build_experiment(tree)
    config_file = out / "experiment.yaml"
    _check_same_backbone(config_file, tree)
    out.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    print(f"mec evaluate: {backbone} as {cfg.model.arch} ({cfg.name}), protocols {', '.join(protocols)}; "
          f"experiment config {config_file}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(config_file), "--cores", str(cores)], check=False, env=os.environ.copy())
    if proc.returncode != 0:
        print(f"mec: error: the evaluation DAG failed (snakemake exit {proc.returncode}); its output is above, "
              f"the job logs under {out}", file=sys.stderr)
        return 1
    _print_results(exp, tracking_uri)
    return 0


def _check_same_backbone(config_file: Path, tree: dict[str, Any]) -> None:
    """An output folder evaluated one backbone and config: its finished records must not stand for another."""
    if not config_file.exists():
        return
    before = yaml.safe_load(config_file.read_text()).get("pretrain")
    if before != tree["pretrain"]:
        raise ConfigError(f"{config_file.parent} holds the evaluation of {before}; for {tree['pretrain']} choose "
                          "another --experiment or --output")


def _print_results(exp: Any, tracking_uri: str | None) -> None:
    import json

    from mec.tracking import resolve_tracking_uri

    for evaluation in exp.evaluations.values():
        for run in evaluation.runs:
            record = json.loads(exp.eval_record(evaluation.name, run).read_text())
            metrics = ", ".join(f"{k} = {v:.4f}" for k, v in sorted(record["metrics"].items())
                                if isinstance(v, int | float))
            print(f"{evaluation.name}: {metrics} (MLflow run {record['run_id']})")
    print(f"results: {exp.output} (summary: {exp.output / 'tables' / 'summary.md'})")
    print(f"MLflow: experiment {exp.name!r} at {resolve_tracking_uri(tracking_uri)}")
