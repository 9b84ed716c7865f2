"""On a real one-node SLURM cluster (tests/slurm/cluster.sh): submitit pretraining, requeue, the slurm profile.

The cluster needs root and apt (Debian's slurmctld/slurmd/munge); `.ci/run` installs the packages. Where it
cannot start, these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_tiny_mec_config
from mlflow.tracking import MlflowClient

from workflow import stages
from workflow.experiment import build_experiment

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and apt-get")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh start failed:\n{proc.stderr[-3000:]}")
    yield
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=300, check=False)


def _experiment(tmp_path: Path, epochs: int = 2, launcher: str = "slurm", per_class: int = 16) -> dict:
    mec_config = write_tiny_mec_config(tmp_path, epochs=epochs, per_class=per_class, deterministic=True)
    return {
        "experiment": "slurm-test",
        "output": str(tmp_path / "results"),
        "launcher": launcher,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain": {"a": {"config": str(mec_config), "resources": {"cpus_per_task": 1, "mem_mb": 2000,
                                                                      "runtime": 10}}},
        "evaluate": {"knn": {"runs": ["a"], "options": {"k": [5]}, "resources": {"cpus_per_task": 1}}},
    }


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


def _resources(tree: dict) -> dict:
    return {"runtime": 10, "cpus_per_task": 1, "mem_mb": 2000, "slurm_partition": "", "slurm_account": ""}


def test_submitit_pretraining_job_runs_on_slurm_and_is_recorded(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path)
    exp = build_experiment(tree)
    stages.create_experiment(exp, tmp_path / "exp.json")
    record = stages.pretrain(exp, "a_s0", tmp_path / "pretrain.json", _resources(tree))
    job_id = record["launch"]["job_id"]
    assert record["launch"]["cluster"] == "slurm" and job_id.isdigit()
    assert _job_field(job_id, "JobState", wait_for="COMPLETED") == "COMPLETED"
    assert _job_field(job_id, "JobName") == "pretrain-a_s0"
    assert Path(record["launch"]["stdout"]).exists()
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["launcher.job_id"] == job_id
    assert run.data.tags.get("env.slurm_job_id") == job_id  # the job itself saw SLURM's environment
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(range(1, 9))


def test_a_requeued_job_resumes_from_its_checkpoint_into_the_same_run(slurm_cluster, tmp_path):
    # 16 steps per epoch, 60 epochs: about 20 s of training, so the job is still running when SLURM's
    # SIGTERM (which submitit ignores) is followed by SIGKILL 5 s later (KillWait).
    tree = _experiment(tmp_path, epochs=60, per_class=64)
    exp = build_experiment(tree)
    stages.create_experiment(exp, tmp_path / "exp.json")
    run_dir = exp.pretrain_dir("a_s0")
    seen: dict = {}

    def requeue_after_first_checkpoint():
        # Runs in a second thread while the stage waits on its job: preempt it once, after epoch 2 is saved.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list((run_dir / "checkpoints").glob("*epoch0002.pt")) and (run_dir / stages.RUN_ID_FILE).exists():
                job_id = json.loads((tmp_path / "job.json").read_text())["job_id"]
                seen["requeue"] = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                                                 check=False)
                return
            time.sleep(0.2)

    import threading

    original = stages._record_launch

    def record_launch(client, run_id):
        inner = original(client, run_id)

        def on_submit(record):
            (tmp_path / "job.json").write_text(json.dumps(record.as_dict()))
            inner(record)

        return on_submit

    stages._record_launch = record_launch
    watcher = threading.Thread(target=requeue_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        record = stages.pretrain(exp, "a_s0", tmp_path / "pretrain.json", _resources(tree))
    finally:
        stages._record_launch = original
    watcher.join(timeout=5)
    assert seen["requeue"].returncode == 0, seen["requeue"].stderr
    job_id = record["launch"]["job_id"]
    assert int(_job_field(job_id, "Restarts") or 0) >= 1
    log = Path(record["launch"]["stdout"]).read_text() + Path(record["launch"]["stderr"]).read_text()
    assert "resuming from" in log
    client = MlflowClient(tree["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss"))
    assert steps == list(range(1, 60 * 16 + 1))  # nothing lost, nothing twice
    assert len(client.search_runs([client.get_experiment_by_name("slurm-test").experiment_id])) == 1


def test_snakemake_profile_slurm_runs_the_dag_through_slurm(slurm_cluster, tmp_path):
    tree = _experiment(tmp_path)
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(tree | {"launcher": "local"}))  # the profile must switch it to slurm
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(REPO / "slurm"), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(config)],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results"
    pre = json.loads((results / "pretrain" / "a_s0" / "pretrain.json").read_text())
    ev = json.loads((results / "eval" / "knn" / "a_s0" / "result.json").read_text())
    for record, name in ((pre, "pretrain-a_s0"), (ev, "knn-a_s0")):
        assert record["launch"]["cluster"] == "slurm"
        assert _job_field(record["launch"]["job_id"], "JobName") == name
        assert _job_field(record["launch"]["job_id"], "JobState", wait_for="COMPLETED") == "COMPLETED"
    listed = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i %j %T"], capture_output=True, text=True,
                            check=False).stdout
    assert f"{pre['launch']['job_id']} pretrain-a_s0 COMPLETED" in listed
    client = MlflowClient(tree["tracking_uri"])
    assert client.get_run(ev["run_id"]).data.tags["mlflow.parentRunId"] == pre["run_id"]
    assert (results / "tables" / "summary.md").exists()


def test_the_profile_is_found_from_the_repository_root_as_written():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrain" in proc.stdout


def test_a_two_task_job_trains_with_ddp_set_up_from_slurms_environment(slurm_cluster, tmp_path):
    # One task per GPU on a real cluster; here two CPU tasks on the one node, joined by gloo.
    tree = _experiment(tmp_path)
    exp = build_experiment(tree)
    stages.create_experiment(exp, tmp_path / "exp.json")
    resources = _resources(tree) | {"tasks_per_node": 2, "cpus_per_task": 1, "mem_mb": 1000}
    record = stages.pretrain(exp, "a_s0", tmp_path / "pretrain.json", resources)
    client = MlflowClient(tree["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.data.tags["env.world_size"] == "2"
    assert run.info.status == "FINISHED"
    # the global batch (8) is split over the two ranks: still 4 steps per epoch, each logged once by rank 0
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(range(1, 9))
