"""The submitit launcher: specs from Snakemake resources, in-process / local-subprocess jobs, failures."""

import math
import os

import pytest

from workflow.launch import LaunchError, LaunchSpec, launch, parse_sbatch_options

# Jobs run in other processes, which import the function by name: stdlib functions, not test-module ones.
square = math.factorial
environment = os.getenv
fail = int  # int("bad input 42") raises ValueError


def test_sbatch_options_parse_both_spellings():
    assert parse_sbatch_options("--qos=high --constraint a100 --exclusive") == {
        "qos": "high", "constraint": "a100", "exclusive": ""}
    assert parse_sbatch_options("") == {}
    with pytest.raises(ValueError, match="slurm_extra.*'qos'"):
        parse_sbatch_options("qos high")


def test_spec_from_snakemake_resources_maps_every_cluster_setting(tmp_path):
    resources = {"_cores": 1, "tmpdir": "/tmp", "slurm_partition": "gpu", "slurm_account": "ssl",
                 "runtime": 720, "mem_mb": 65536, "cpus_per_task": 10, "nodes": 2, "gpus_per_node": 4,
                 "slurm_extra": "--qos=high --constraint=a100"}
    spec = LaunchSpec.from_resources(resources, cluster="slurm", folder=tmp_path, job_name="pretrain-x")
    assert (spec.partition, spec.account, spec.timeout_min, spec.mem_gb) == ("gpu", "ssl", 720, 64.0)
    assert (spec.nodes, spec.gpus_per_node, spec.tasks, spec.cpus_per_task) == (2, 4, 4, 10)
    assert spec.extra == {"qos": "high", "constraint": "a100"}
    # the profile's empty strings mean "the cluster's default"
    spec = LaunchSpec.from_resources({"slurm_partition": "", "slurm_account": ""}, cluster="slurm")
    assert spec.partition is None and spec.account is None and spec.tasks == 1


def test_bad_specs_name_the_setting():
    with pytest.raises(ValueError, match="cluster 'auto'"):
        LaunchSpec(cluster="auto")
    with pytest.raises(ValueError, match="nodes=2 needs slurm"):
        LaunchSpec(cluster="local", nodes=2)
    with pytest.raises(ValueError, match="timeout_min"):
        LaunchSpec(timeout_min=0)


def test_inline_launch_calls_in_this_process():
    result, record = launch(square, 5, spec=LaunchSpec(cluster="inline"))
    assert result == 120 and record.cluster == "inline" and record.job_id is None


def test_local_launch_runs_a_submitit_subprocess_and_reports_where(tmp_path):
    seen = []
    result, record = launch(environment, "SUBMITIT_EXECUTOR", spec=LaunchSpec(cluster="local", folder=tmp_path),
                            on_submit=seen.append, poll_s=0.2)
    assert result == "local"  # it ran under submitit's local executor, not here
    assert seen == [record] and record.job_id and record.cluster == "local"
    assert os.path.exists(record.stdout) and os.path.dirname(record.stdout) == str(tmp_path.resolve())


def test_a_failing_job_raises_with_its_id_and_log(tmp_path):
    with pytest.raises(LaunchError, match=r"local job \d+ \(mec\) failed; its log is .*\n(.|\n)*bad input 42"):
        launch(fail, "bad input 42", spec=LaunchSpec(cluster="local", folder=tmp_path), poll_s=0.2)


def test_inside_a_slurm_allocation_the_work_runs_there_instead_of_a_nested_job(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    result, record = launch(square, 3, spec=LaunchSpec(cluster="slurm"))
    assert result == 6 and record.cluster == "slurm-allocation" and record.job_id == "4242"


def test_a_launched_job_computes_with_the_cpus_it_was_given_and_says_so(tmp_path):
    spec = LaunchSpec(cluster="local", folder=tmp_path, cpus_per_task=1)
    threads, record = launch("torch:get_num_threads", spec=spec, poll_s=0.2)
    assert threads == 1
    assert "CPU budget: 1 intra-op thread (cpus_per_task=1)" in open(record.stderr).read()


def test_the_cpu_budget_prefers_slurms_allocation_and_never_exceeds_the_usable_cpus(monkeypatch):
    from mec import threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.delenv(threads.SLURM_CPUS, raising=False)
    assert threads.cpu_budget(4) == (4, "cpus_per_task=4")
    assert threads.cpu_budget(None) == (8, "all usable CPUs")
    assert threads.cpu_budget(16) == (8, "cpus_per_task=16, capped at the 8 usable CPUs")
    monkeypatch.setenv(threads.SLURM_CPUS, "6")
    assert threads.cpu_budget(4) == (6, "SLURM_CPUS_PER_TASK=6")


def test_auto_loader_workers_leave_the_main_process_one_of_the_jobs_cpus(monkeypatch):
    from mec import threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setenv(threads.SLURM_CPUS, "6")
    monkeypatch.setattr(threads, "_job_cpus", None)
    assert threads.loader_workers("auto") == 5  # SLURM's allocation, none set in this process
    assert threads.loader_workers(3) == 3  # a configured number is taken as it is
    monkeypatch.setattr(threads, "_job_cpus", 1)  # what use_cpu_budget(1) records
    assert threads.loader_workers("auto") == 0
