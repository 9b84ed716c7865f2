"""What a new user gets wrong with the Snakemake layer: paths with spaces, schema mistakes, an experiment named on
the command line, the SLURM profile off a cluster. Each ends in one line naming what was expected."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def _one_line_error(proc) -> str:
    """The error a failed planning printed: exactly one line, no schema dump, no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, "\n".join(lines[:40])
    return lines[0]


TOP_KEYS = "datasets, evaluate, experiment, launcher, miniature, output, pretrain, scale, tracking_uri"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"launcherr": "local"}, rf"config .*bad\.yaml: unknown key 'launcherr' \(allowed: {TOP_KEYS}\)$"),
        ({"seeds": 0}, r"bad\.yaml: unknown key 'seeds' \(allowed: "),
        ({"pretrain": {"a": {"config": "digits", "resources": {"gpu": 1}}}},
         r"bad\.yaml: pretrain\.a\.resources: unknown key 'gpu' \(allowed: cpus_per_task, gpus_per_node, mem_mb, "),
        ({"scale": "tiny"}, r"bad\.yaml: scale: 'tiny' is not one of \['full', 'miniature'\]$"),
        ({"evaluate": {"knn": {"fraction": 1.5}}},
         r"bad\.yaml: evaluate\.knn\.fraction: 1\.5 is greater than the maximum of 1$"),
        ({"pretrain": {"a": {"seeds": [0]}}}, r"bad\.yaml: pretrain\.a: missing key 'config'$"),
        ({"evaluate": {"knn": {"runs": ["b"]}}}, r"bad\.yaml: evaluate\.knn\.runs: unknown pretrain groups \['b'\]"),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_file_and_the_key(tmp_path, change, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"experiment": "e", "pretrain": {"a": {"config": "digits"}}} | change))
    line = _one_line_error(run_snakemake(tmp_path, "-n", "--configfile", str(config)))
    assert re.search(message, line), line


def test_a_config_value_on_the_command_line_is_named_as_such(tmp_path):
    line = _one_line_error(run_snakemake(tmp_path, "-n", "--config", "scale=tiny"))
    assert re.search(r"default\.yaml --config scale=tiny: scale: 'tiny' is not one of", line), line


def test_the_schemas_defaults_still_reach_the_stages(tmp_path):
    """The schema stays the one definition of the defaults: the config the commands get has them filled in."""
    dry = run_snakemake(tmp_path, "-n", "-p")
    assert dry.returncode == 0, dry.stderr[-3000:]
    command = next(c for c in _shell_commands(dry.stdout + dry.stderr) if " experiment --config " in c)
    arguments = shlex.split(command)
    config = json.loads(arguments[arguments.index("--config") + 1])
    assert config["launcher"] == "local" and config["scale"] == "full" and config["tracking_uri"] is None


def test_an_experiment_named_on_the_command_line_is_the_shipped_one(tmp_path):
    """`--config experiment=NAME` without --configfile ran nothing but a schema dump ('pretrain' is required)."""
    by_file = run_snakemake(tmp_path, "-n", "--config", "experiment=table1", "scale=miniature")
    assert by_file.returncode == 0, by_file.stderr[-3000:]
    assert "Plan of mec-table1-miniature (miniature scale, launcher local)" in by_file.stderr
    by_mlflow_name = run_snakemake(tmp_path, "-n", "--config", "experiment=mec-digits")
    assert by_mlflow_name.returncode == 0, by_mlflow_name.stderr[-3000:]
    assert "Plan of mec-digits (full scale" in by_mlflow_name.stderr


def test_an_unknown_experiment_name_lists_the_shipped_ones(tmp_path):
    line = _one_line_error(run_snakemake(tmp_path, "-n", "--config", "experiment=my-exp"))
    shipped = ", ".join(sorted(p.stem for p in (REPO / "workflow" / "experiments").glob("*.yaml")))
    assert line == (f"--config experiment=my-exp: no shipped experiment of that name (workflow/experiments/: "
                    f"{shipped}); for a config of your own: --configfile FILE")


def test_launcher_slurm_needs_slurms_commands_and_other_launchers_none():
    from workflow.dag import missing_launcher_commands

    def which(*present: str):
        return lambda command: f"/usr/bin/{command}" if command in present else None

    assert missing_launcher_commands("slurm", which("sbatch", "srun")) is None
    assert missing_launcher_commands("local", which()) is None
    assert missing_launcher_commands("slurm", which("sbatch")) == (
        "launcher slurm: srun not found on PATH; run on a SLURM login node, or use launcher=local")


def test_the_slurm_launcher_off_a_cluster_stops_before_any_rule(tmp_path):
    """Every heavy rule failed on its own with submitit's 'Could not detect "srun"'; now one line before any job,
    while a dry run still plans the campaign (its GPU budget) on any machine."""
    tools = tmp_path / "bin"  # a PATH without SLURM: what Snakemake itself runs (its shell, `which`) and Python
    tools.mkdir()
    for name in ("bash", "which"):
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"no {name} on PATH")
        (tools / name).symlink_to(found)
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{tools}{os.pathsep}{Path(sys.executable).parent}"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--cores", "1", "--config", "launcher=slurm"]
    dry = subprocess.run([*command, "-n"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert dry.returncode == 0, dry.stderr[-3000:]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode != 0
    assert lines[-1] == "launcher slurm: sbatch not found on PATH; run on a SLURM login node, or use launcher=local"
    assert not (tmp_path / "results").exists()  # no rule ran, not even the light ones
