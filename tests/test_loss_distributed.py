"""The global-batch loss under DistributedDataParallel equals the single-process full-batch loss and gradient.

Two CPU processes with a gloo group each take half of a global batch; the loss gathers embeddings with
gradient. A wrong backward in the gather (or a missing all_reduce) scales the gradient by the world size.
"""

import os
import random
import socket
import stat

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mec import distributed
from mec.loss import MaximumEntropyCodingLoss

GLOBAL_BATCH, IN_FEATURES, EMBEDDING_DIM, WORLD = 16, 10, 6, 2


def global_batch():
    """Two views of a fixed global batch and fixed student and teacher weights (float64)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=generator, dtype=torch.float64)
    view1 = images + 0.3 * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    view2 = images + 0.3 * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    student = torch.randn(EMBEDDING_DIM, IN_FEATURES, generator=generator, dtype=torch.float64)
    teacher = student + 0.1 * torch.randn(student.shape, generator=generator, dtype=torch.float64)
    return view1, view2, student, teacher


def linear_encoder(weight: torch.Tensor) -> torch.nn.Linear:
    encoder = torch.nn.Linear(IN_FEATURES, EMBEDDING_DIM, bias=False, dtype=torch.float64)
    with torch.no_grad():
        encoder.weight.copy_(weight)
    return encoder


def mec_losses(student, teacher_weight, view1, view2):
    """Released form [(p1, z2), (p2, z1)] batch-wise plus the paper's single pair (z1, z2) on the auto side."""
    # One forward for both views: DDP expects one forward per backward.
    z1, z2 = student(torch.cat([view1, view2])).chunk(2)
    with torch.no_grad():
        p1, p2 = view1 @ teacher_weight.T, view2 @ teacher_weight.T
    released = MaximumEntropyCodingLoss(eps=1.5, order=4, side="batch", parametrisation="released")
    paper = MaximumEntropyCodingLoss(eps=1.5, order=4, side="auto", parametrisation="paper")
    released_output = released([(p1, z2), (p2, z1)], lambda_scale=2.0)
    paper_output = paper([(z1, z2)])
    return released_output.loss + paper_output.loss, released_output.m


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    assert distributed.init_distributed("gloo")  # CPU process groups, also on a machine with GPUs
    view1, view2, student_weight, teacher_weight = global_batch()
    model = DistributedDataParallel(linear_encoder(student_weight))
    rows = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    loss, m = mec_losses(model, teacher_weight, view1[rows], view2[rows])
    loss.backward()
    torch.save(
        {
            "loss": loss.detach(),
            "grad": model.module.weight.grad.clone(),
            "m": m,
            "ranks": (distributed.rank(), distributed.world_size(), distributed.is_main_process()),
            "local_rank": distributed.local_rank(),
            "backend": dist.get_backend(),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_gradient_equals_full_batch_gradient(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    view1, view2, student_weight, teacher_weight = global_batch()
    single = linear_encoder(student_weight)
    loss, m = mec_losses(single, teacher_weight, view1, view2)
    loss.backward()

    for rank, result in enumerate(results):
        assert result["m"] == m == GLOBAL_BATCH
        assert result["ranks"] == (rank, WORLD, rank == 0)
        assert result["local_rank"] == rank
        assert result["backend"] == "gloo"
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(result["grad"], single.weight.grad, rtol=1e-8, atol=1e-12)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert not distributed.is_distributed()
    assert distributed.gather_with_grad(x) is x
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)


# --- reading the launcher's environment ---------------------------------------------------------------------------

LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_ID",
    "SLURM_JOB_NUM_NODES",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SUBMITIT_EXECUTOR",
)


@pytest.fixture
def clean_environment(monkeypatch):
    for variable in LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def slurm_job(monkeypatch, nodelist: str, procid: int = 3, ntasks: int = 8, localid: int = 1) -> None:
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
    monkeypatch.setenv("SLURM_LOCALID", str(localid))
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")


def test_no_launcher_means_no_process_group(clean_environment):
    assert distributed.launch_environment() is None
    assert distributed.init_distributed() is False
    assert not distributed.is_distributed()
    assert distributed.local_rank() == 0


def test_torchrun_variables(clean_environment):
    for variable, value in dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="h0", MASTER_PORT="1234").items():
        clean_environment.setenv(variable, value)
    slurm_job(clean_environment, "gpu[01-02]")  # torchrun inside an allocation: its own variables win
    assert distributed.launch_environment() == distributed.LaunchEnvironment(5, 8, 1, "h0", 1234, "torchrun")


def test_slurm_single_host_without_scontrol(clean_environment):
    clean_environment.setattr(distributed.shutil, "which", lambda name: None)
    slurm_job(clean_environment, "node7")
    launch = distributed.launch_environment()
    assert (launch.rank, launch.world_size, launch.local_rank, launch.master_addr) == (3, 8, 1, "node7")
    assert launch.launcher == "slurm"
    # Every rank of the job must derive the same port: it depends on the job id only.
    assert launch.master_port == random.Random("4242").randint(20000, 60000)
    assert distributed.local_rank() == 1
    clean_environment.setenv("MASTER_PORT", "31337")
    assert distributed.launch_environment().master_port == 31337


def test_slurm_several_hosts_need_scontrol_or_master_addr(clean_environment):
    clean_environment.setattr(distributed.shutil, "which", lambda name: None)
    slurm_job(clean_environment, "gpu[01-02]")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        distributed.launch_environment()
    clean_environment.setenv("MASTER_ADDR", "gpu01")
    assert distributed.launch_environment().master_addr == "gpu01"


def test_slurm_hosts_expanded_by_scontrol(clean_environment, tmp_path):
    fake_scontrol = tmp_path / "scontrol"
    fake_scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    fake_scontrol.chmod(fake_scontrol.stat().st_mode | stat.S_IEXEC)
    clean_environment.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    slurm_job(clean_environment, "gpu[07-08]")
    assert distributed.launch_environment().master_addr == "gpu07"


def test_submitit_job_uses_submitit_helper(clean_environment):
    pytest.importorskip("submitit")
    slurm_job(clean_environment, "gpu[01-02]")
    clean_environment.setenv("SUBMITIT_EXECUTOR", "slurm")
    launch = distributed.launch_environment()
    assert launch == distributed.LaunchEnvironment(
        3, 8, 1, "gpu01", random.Random("4242").randint(20000, 60000), "submitit"
    )


def test_bad_backend(clean_environment):
    with pytest.raises(ValueError, match="backend"):
        distributed.init_distributed("smoke-signals")


def test_an_nccl_task_without_its_gpu_is_one_clear_error(clean_environment, monkeypatch):
    # A node showing fewer GPUs than tasks (here: none) must not fail inside CUDA with "invalid device ordinal".
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"task 1 of its node, which shows 1 GPU\(s\): start one task per GPU"):
        distributed.init_distributed("nccl")
