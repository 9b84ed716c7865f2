"""On a real one-node SLURM cluster (tests/slurm/cluster.sh): submitit pretraining, requeue with loader workers,
Ctrl-C, a failed submission, the slurm profile.

The cluster is private (its slurm.conf, munge socket, state and logs in a temporary folder, ports 16817/16818),
but it needs root and apt-get (Debian's slurmctld/slurmd/munge), so the tests that use it run only when asked:
MEC_TEST_SLURM=1 (`.ci/run` sets it). Otherwise they are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_tiny_mec_config
from mlflow.tracking import MlflowClient

from workflow import stage, stages

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
ENABLE = ("SLURM cluster tests are off: set MEC_TEST_SLURM=1 to run them (as root; tests/slurm/cluster.sh then "
          "installs slurmctld/slurmd/munge with apt-get if missing and starts a private cluster in a temporary folder)")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A private cluster for this module; every slurm command (tests, launcher, submitit) sees its SLURM_CONF."""
    if os.environ.get("MEC_TEST_SLURM") != "1":
        pytest.skip(ENABLE)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("MEC_TEST_SLURM=1, but the local SLURM cluster needs root and apt-get")
    base = Path(os.environ.get("MEC_SLURM_DIR") or tmp_path_factory.mktemp("slurm"))
    saved = {key: os.environ.get(key) for key in ("MEC_SLURM_DIR", "SLURM_CONF")}
    os.environ |= {"MEC_SLURM_DIR": str(base), "SLURM_CONF": str(base / "slurm.conf")}
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh start failed:\n{proc.stderr[-3000:]}")
    yield base
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=300, check=False)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _experiment(tmp_path: Path, epochs: int = 2, launcher: str = "slurm", per_class: int = 16,
                num_workers: int = 0) -> dict:
    mec_config = write_tiny_mec_config(tmp_path, epochs=epochs, per_class=per_class, deterministic=True,
                                       num_workers=num_workers)
    return {
        "experiment": "slurm-test",
        "output": str(tmp_path / "results"),
        "launcher": launcher,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain": {"a": {"config": str(mec_config), "resources": {"cpus_per_task": 1, "mem_mb": 2000,
                                                                      "runtime": 10}}},
        "evaluate": {"knn": {"runs": ["a"], "options": {"k": [5]}, "resources": {"cpus_per_task": 1}}},
    }


def _experiment_record(tmp_path: Path, tree: dict) -> Path:
    """What the Snakefile's mlflow_experiment rule writes: the MLflow experiment, with the experiment config."""
    path = tmp_path / "results" / "mlflow_experiment.json"
    stages.create_experiment(tree, path)
    return path


def _job_field(job_id: str, field: str, wait_for: str | None = None) -> str:
    """A field of `scontrol show job`; with ``wait_for``, poll up to 60 s until it has that value."""
    deadline = time.monotonic() + 60
    value = _read_job_field(job_id, field)
    while wait_for is not None and value != wait_for and time.monotonic() < deadline:
        time.sleep(0.5)
        value = _read_job_field(job_id, field)
    return value


def _read_job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False).stdout
    for token in out.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return ""


def _jobs_named(prefix: str) -> list[tuple[str, str, str]]:
    """(id, name, state) of every job squeue knows whose name starts with ``prefix``."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i %j %T"], capture_output=True, text=True,
                         check=False).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.split()[1].startswith(prefix)]


def _wait_until_running(run_dir: Path, process: subprocess.Popen) -> str:
    """The id of the job this test's stage submitted (its launches file), once SLURM runs it."""
    deadline = time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline and process.poll() is None, "the pretraining job never ran"
        launches = stage.Launches(run_dir).read()
        if launches and _read_job_field(launches[0]["job_id"], "JobState") == "RUNNING":
            return launches[0]["job_id"]
        time.sleep(1)


RESOURCES = {"runtime": 10, "cpus_per_task": 1, "mem_mb": 2000, "slurm_partition": "", "slurm_account": ""}


def test_submitit_pretraining_job_runs_on_slurm_and_is_recorded(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path)
    record = stage.pretrain(_experiment_record(tmp_path, tree), "a_s0", tmp_path / "pretrain.json", RESOURCES)
    job_id = record["launch"]["job_id"]
    assert record["launch"]["cluster"] == "slurm" and job_id.isdigit()
    assert _job_field(job_id, "JobState", wait_for="COMPLETED") == "COMPLETED"
    assert _job_field(job_id, "JobName") == "pretrain-a_s0"
    assert Path(record["launch"]["stdout"]).exists()
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["launcher.job_id"] == job_id
    assert (run.data.tags["launcher.job_ids"], run.data.tags["launcher.attempts"]) == (job_id, "1")
    assert run.data.tags.get("env.slurm_job_id") == job_id  # the job itself saw SLURM's environment
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(range(1, 9))


def test_a_requeued_job_with_loader_workers_resumes_into_the_same_run(slurm_cluster, tmp_path):
    # Loader workers, as ImageNet runs have: SLURM's SIGTERM reaches them too, and they must leave it to the
    # main process. 16 steps per epoch, 12 epochs, preempted after the second: SLURM's SIGTERM (which submitit
    # ignores) is followed by SIGKILL 5 s later (KillWait); the requeued attempt starts 10 s later. Should the
    # first attempt finish within those 5 s, its result is stale and the launcher must wait for the second.
    tree = _experiment(tmp_path, epochs=12, per_class=64, num_workers=1)
    experiment = _experiment_record(tmp_path, tree)
    run_dir = tmp_path / "results" / "pretrain" / "a_s0"
    seen: dict = {}

    def requeue_after_second_checkpoint():
        # Runs in a second thread while the stage waits on its job: preempt it once, after epoch 2 is saved.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if list((run_dir / "checkpoints").glob("*epoch0002.pt")) and (run_dir / stage.LAUNCHES_FILE).exists():
                job_id = stage.Launches(run_dir).read()[0]["job_id"]
                seen["requeue"] = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                                                 check=False)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=requeue_after_second_checkpoint, daemon=True)
    watcher.start()
    record = stage.pretrain(experiment, "a_s0", tmp_path / "pretrain.json", RESOURCES)
    watcher.join(timeout=5)
    assert seen["requeue"].returncode == 0, seen["requeue"].stderr
    job_id = record["launch"]["job_id"]
    assert int(_job_field(job_id, "Restarts") or 0) == 1
    log = Path(record["launch"]["stdout"]).read_text() + Path(record["launch"]["stderr"]).read_text()
    assert "resuming from" in log and "is killed by signal" not in log
    # the launcher followed the job to its second attempt and recorded both
    assert [(e["event"], e.get("attempt")) for e in record["launches"]] == [("submitted", None), ("restarted", 2)]
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert (run.data.tags["launcher.job_ids"], run.data.tags["launcher.attempts"]) == (job_id, "2")
    steps = sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss"))
    assert steps == list(range(1, 12 * 16 + 1))  # nothing lost, nothing twice
    assert len(client.search_runs([client.get_experiment_by_name("slurm-test").experiment_id])) == 1


def test_a_submission_to_a_missing_partition_fails_the_run_with_the_reason(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path)
    experiment = _experiment_record(tmp_path, tree)
    with pytest.raises(stage.StageError, match="nosuchpartition|[Ii]nvalid partition"):
        stage.pretrain(experiment, "a_s0", tmp_path / "pretrain.json",
                       RESOURCES | {"slurm_partition": "nosuchpartition"})
    client = MlflowClient(tree["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("slurm-test").experiment_id])
    assert run.info.status == "FAILED"
    assert "partition" in run.data.tags["mec.failure"].lower()
    (attempt,) = stage.Launches(tmp_path / "results" / "pretrain" / "a_s0").read()
    assert attempt["event"] == "submission failed" and "partition" in attempt["error"].lower()
    assert not (tmp_path / "pretrain.json").exists()


def _profile_command(tmp_path: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", str(REPO / "slurm"), "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(tmp_path), "--configfile", str(config)]


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_snakemake_profile_slurm_runs_the_dag_through_slurm(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path)
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(tree | {"launcher": "local"}))  # the profile must switch it to slurm
    proc = subprocess.run(_profile_command(tmp_path, config), capture_output=True, text=True, timeout=900,
                          env=_environment(), check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results"
    pre = json.loads((results / "pretrain" / "a_s0" / "pretrain.json").read_text())
    ev = json.loads((results / "eval" / "knn" / "a_s0" / "result.json").read_text())
    for record, name in ((pre, "pretrain-a_s0"), (ev, "knn-a_s0")):
        assert record["launch"]["cluster"] == "slurm"
        assert _job_field(record["launch"]["job_id"], "JobName") == name
        assert _job_field(record["launch"]["job_id"], "JobState", wait_for="COMPLETED") == "COMPLETED"
    assert (pre["launch"]["job_id"], "pretrain-a_s0", "COMPLETED") in _jobs_named("pretrain-")
    client = MlflowClient(tree["tracking_uri"])
    assert client.get_run(ev["run_id"]).data.tags["mlflow.parentRunId"] == pre["run_id"]
    assert (results / "tables" / "summary.md").exists()
    # what a newcomer sees: the job and its log when it starts, its epochs while it runs, where results landed
    shown = proc.stdout + proc.stderr
    assert f"submitted slurm job {pre['launch']['job_id']} (pretrain-a_s0); log {pre['launch']['stdout']}" in shown
    assert "mec.train: epoch 2/2" in shown
    assert "mlflow ui --backend-store-uri" in shown and str((results / "tables").resolve()) in shown


# A terminal's foreground job takes Ctrl-C's default action. Tests started from a background shell (`nohup
# .ci/run &`) inherit SIGINT ignored, and a Python started so never raises KeyboardInterrupt (CI failed so, twice,
# with Snakemake and the rule both still running): exec the command with SIGINT's default action restored.
WITH_DEFAULT_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execv(sys.argv[1], sys.argv[1:])"]


def _why_still_running(snakemake: subprocess.Popen, rule_log: Path) -> str:
    """What a Snakemake session that has not ended after Ctrl-C is doing: its processes, then the stacks each
    Python process prints on SIGABRT (PYTHONFAULTHANDLER), the rule's log and the session's output."""
    processes = subprocess.run(["ps", "-ww", "-s", str(snakemake.pid), "-o", "pid,ppid,stat,etime,wchan:24,args"],
                               capture_output=True, text=True, check=False).stdout
    os.killpg(snakemake.pid, signal.SIGABRT)
    try:
        output, _ = snakemake.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(snakemake.pid, signal.SIGKILL)
        output, _ = snakemake.communicate()
    log = rule_log.read_text()[-3000:] if rule_log.exists() else "(no rule log)"
    return (f"Snakemake still running 180 s after SIGINT. Processes of its session:\n{processes}\n"
            f"rule log:\n{log}\noutput, with stacks after SIGABRT:\n{output[-12000:]}")


def test_ctrl_c_on_snakemake_profile_slurm_cancels_its_jobs(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path, epochs=200, per_class=64)  # minutes of training: only Ctrl-C ends it early
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(tree))
    # PYTHONFAULTHANDLER: if the processes do not end, SIGABRT makes each print its threads' stacks (below).
    snakemake = subprocess.Popen(WITH_DEFAULT_SIGINT + _profile_command(tmp_path, config), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=_environment() | {"PYTHONFAULTHANDLER": "1"},
                                 start_new_session=True)
    run_dir = tmp_path / "results" / "pretrain" / "a_s0"
    try:
        job_id = _wait_until_running(run_dir, snakemake)
        os.killpg(snakemake.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        try:
            output, _ = snakemake.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(_why_still_running(snakemake, tmp_path / "results" / "logs" / "pretrain" / "a_s0.log"))
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    assert snakemake.returncode != 0
    assert _job_field(job_id, "JobState", wait_for="CANCELLED") == "CANCELLED"
    assert [(e["event"], e["job_id"]) for e in stage.Launches(run_dir).read()] == [("submitted", job_id),
                                                                                  ("cancelled", job_id)]
    client = MlflowClient(tree["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("slurm-test").experiment_id])
    assert run.info.status == "KILLED"
    log = (tmp_path / "results" / "logs" / "pretrain" / "a_s0.log").read_text()
    assert "interrupted: cancelled slurm job" in log, output[-3000:]


def test_the_profile_is_found_from_the_repository_root_as_written(tmp_path):
    # As the README has it (`snakemake --profile slurm` in the repository root), but writing into tmp_path:
    # whatever the checkout's results/ holds, the default DAG is planned, and no .snakemake/ lands in the repo.
    had_snakemake_dir = (REPO / ".snakemake").exists()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--directory", str(tmp_path),
                           "--snakefile", str(REPO / "Snakefile")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrain" in proc.stdout and "Nothing to be done" not in proc.stdout + proc.stderr
    assert (tmp_path / ".snakemake").exists()
    assert (REPO / ".snakemake").exists() == had_snakemake_dir


def test_a_two_task_job_trains_with_ddp_set_up_from_slurms_environment(slurm_cluster, tmp_path):
    # One task per GPU on a real cluster; here two CPU tasks on the one node, joined by gloo.
    tree = _experiment(tmp_path)
    resources = RESOURCES | {"tasks_per_node": 2, "cpus_per_task": 1, "mem_mb": 1000}
    record = stage.pretrain(_experiment_record(tmp_path, tree), "a_s0", tmp_path / "pretrain.json", resources)
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.data.tags["env.world_size"] == "2"
    assert run.info.status == "FINISHED"
    # the global batch (8) is split over the two ranks: still 4 steps per epoch, each logged once by rank 0
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(range(1, 9))


def test_a_rerun_reattaches_to_the_job_its_killed_rule_left_running(slurm_cluster, tmp_path):
    # The login session dies (the rule's process is killed outright) while its job runs on: the rerun follows
    # that job instead of submitting a second one on the same checkpoints and MLflow run.
    tree = _experiment(tmp_path, epochs=20)
    experiment = _experiment_record(tmp_path, tree)
    command = [sys.executable, "-m", "workflow.stage", "pretrain", "--experiment", str(experiment), "--run", "a_s0",
               "--resources", json.dumps(RESOURCES), "--output", str(tmp_path / "pretrain.json")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_environment())
    try:
        job_id = _wait_until_running(tmp_path / "results" / "pretrain" / "a_s0", first)
    finally:
        first.kill()
        first.wait()
    record = stage.pretrain(experiment, "a_s0", tmp_path / "pretrain.json", RESOURCES)
    assert [(e["event"], e["job_id"]) for e in record["launches"]] == [("submitted", job_id), ("attached", job_id)]
    assert record["launch"]["job_id"] == job_id and _job_field(job_id, "JobState") == "COMPLETED"
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["launcher.attempts"] == "1"
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(range(1, 81))
