"""What a new user gets wrong with the Snakemake layer: paths with spaces, schema mistakes, an experiment named on
the command line, the SLURM profile off a cluster. Each ends in one line naming what was expected."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from conftest import run_snakemake

REPO = Path(__file__).resolve().parents[1]


def _shell_commands(dry_run_output: str) -> list[str]:
    return [line.split("Shell command: ", 1)[1] for line in dry_run_output.splitlines() if "Shell command: " in line]


def test_every_rule_quotes_its_files_in_its_shell_command():
    """An output folder with a space split every path into two arguments (`invalid choice: 'res/logs/...'`)."""
    unquoted = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name in re.findall(r"\{((?:log|output|input)(?:\.\w+)?)\}", path.read_text()):
            unquoted.append(f"{path.name}: {{{name}}}")
    assert unquoted == []


def test_an_output_folder_with_a_space_reaches_each_command_as_one_argument(tmp_path):
    out = tmp_path / "my res"
    config = tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "space", "output": str(out), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain": {"a": {"config": "digits"}}, "evaluate": {"knn": {}},
    }))
    dry = run_snakemake(tmp_path, "-n", "-p", "--configfile", str(config))
    assert dry.returncode == 0, dry.stderr[-3000:]
    commands = _shell_commands(dry.stdout + dry.stderr)
    assert len(commands) >= 4  # mlflow_experiment, pretrain, features, evaluate, figure, tables
    for command in commands:
        arguments = shlex.split(command)
        assert command.count(str(out)) == sum(str(out) in a for a in arguments), command
    # And for real, the first rule (a few seconds): it creates the experiment and writes its record there.
    run = run_snakemake(tmp_path, str(out / "mlflow_experiment.json"), "--cores", "1", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "mlflow_experiment.json").is_file()
