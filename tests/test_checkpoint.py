"""Checkpoints: round trip, crash safety, resuming past bad files, weights_only safety, backbone loading."""

from __future__ import annotations

import io
import logging
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from mec.checkpoint import (
    CheckpointLoadError,
    MissingBackboneKeysError,
    capture_rng_state,
    checkpoint_path,
    export_backbone,
    find_resumable,
    list_checkpoints,
    load_backbone,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)


def _leave_marker(path: str) -> None:
    Path(path).write_text("code ran while loading a checkpoint")


class ArbitraryCode:
    """Pickles as a call of _leave_marker: loading it without weights_only would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (str(self.marker),))


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def _sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(inputs).square().mean().backward()
    optimizer.step()


def _minimal_state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"weight": torch.full((2,), float(epoch))}}


def _random_draws() -> tuple:
    return (
        torch.rand(4),
        torch.randn(3),
        np.random.rand(4),
        np.random.randn(3),
        [random.random() for _ in range(4)],
        random.gauss(0.0, 1.0),
    )


def _assert_same_draws(actual: tuple, expected: tuple) -> None:
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    np.testing.assert_array_equal(actual[2], expected[2])
    np.testing.assert_array_equal(actual[3], expected[3])
    assert actual[4] == expected[4] and actual[5] == expected[5]


# ------------------------------------------------------------------------------------- round trip


def test_round_trip_restores_model_optimizer_rng_and_run_id(tmp_path: Path) -> None:
    torch.manual_seed(0)
    inputs = torch.randn(8, 4)
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _sgd_step(model, optimizer, inputs)
    assert all("momentum_buffer" in state for state in optimizer.state_dict()["state"].values())

    random.seed(1)
    np.random.seed(2)
    # An odd number of Gaussian draws leaves a cached Gaussian in both numpy's and python's state.
    np.random.randn(1)
    random.gauss(0.0, 1.0)
    rng = capture_rng_state()
    expected_draws = _random_draws()

    path = save_checkpoint(
        checkpoint_path(tmp_path, 3),
        {
            "epoch": 3,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedules": {"lambda_inv": 32.0, "iteration": 120, "warmup": (0, 10)},
            "rng": rng,
            "mlflow_run_id": "0123abcd",
        },
    )
    assert path.name == "checkpoint_epoch0003.pt"
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert load_checkpoint(path, required_keys=("epoch", "model")).keys() == loaded.keys()
    assert loaded["epoch"] == 3 and loaded["mlflow_run_id"] == "0123abcd"
    assert loaded["schedules"] == {"lambda_inv": 32.0, "iteration": 120, "warmup": (0, 10)}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor), name
    for index, state in optimizer.state_dict()["state"].items():
        assert torch.equal(loaded["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])

    # The reference: the original run continuing one step; the resumed copy must take the same step.
    restored_model = _tiny_model()
    restored_model.load_state_dict(loaded["model"])
    restored_optimizer = torch.optim.SGD(restored_model.parameters(), lr=0.5)
    restored_optimizer.load_state_dict(loaded["optimizer"])
    _sgd_step(model, optimizer, inputs)
    _sgd_step(restored_model, restored_optimizer, inputs)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored_model.state_dict()[name], tensor), name

    restore_rng_state(loaded["rng"])
    _assert_same_draws(_random_draws(), expected_draws)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the warning for CUDA states on a CPU-only run")
def test_restore_rng_state_without_cuda_warns_about_saved_cuda_states(caplog) -> None:
    state = capture_rng_state()
    state["cuda"] = [torch.get_rng_state()]
    with caplog.at_level(logging.WARNING, logger="mec.checkpoint"):
        restore_rng_state(state)
    assert "CUDA RNG states for 1 devices" in caplog.text


def test_restore_rng_state_rejects_incomplete_state() -> None:
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state({"torch": torch.get_rng_state(), "python": {}})


# ------------------------------------------------------------------------------------- crash safety


def test_crash_during_save_keeps_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch) -> None:
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, _minimal_state(1))
    previous_bytes = path.read_bytes()
    real_save = torch.save

    def save_half_then_crash(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, _minimal_state(2))
    fresh_target = checkpoint_path(tmp_path, 2)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(fresh_target, _minimal_state(2))
    monkeypatch.undo()

    assert path.read_bytes() == previous_bytes
    assert load_checkpoint(path)["epoch"] == 1
    assert not fresh_target.exists()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [path.name]


# ------------------------------------------------------------------------------------- resumption


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    for epoch in (1, 2):
        save_checkpoint(checkpoint_path(tmp_path, epoch), _minimal_state(epoch))
    newest = checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    with caplog.at_level(logging.WARNING, logger="mec.checkpoint"):
        found = find_resumable(tmp_path)

    assert found is not None
    path, state = found
    assert path == checkpoint_path(tmp_path, 1)
    assert state["epoch"] == 1 and torch.equal(state["model"]["weight"], torch.full((2,), 1.0))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and newest.name in warnings[0]


def test_resume_skips_checkpoint_without_required_keys_and_orders_by_epoch_number(tmp_path, caplog) -> None:
    save_checkpoint(tmp_path / "checkpoint_epoch0009.pt", _minimal_state(9))
    save_checkpoint(tmp_path / "checkpoint_epoch10000.pt", {"epoch": 10000})  # no "model"
    save_checkpoint(tmp_path / "checkpoint_epoch0010.pt", _minimal_state(10))
    with caplog.at_level(logging.WARNING, logger="mec.checkpoint"):
        path, state = find_resumable(tmp_path)
    assert path.name == "checkpoint_epoch0010.pt" and state["epoch"] == 10
    assert "checkpoint_epoch10000.pt" in caplog.text and "model" in caplog.text


def test_find_resumable_returns_none_without_checkpoints_and_refuses_unusable_ones(tmp_path) -> None:
    assert find_resumable(tmp_path / "absent") is None
    assert find_resumable(tmp_path) is None
    checkpoint_path(tmp_path, 1).write_bytes(b"not a zip file")
    checkpoint_path(tmp_path, 2).write_bytes(b"")
    with pytest.raises(CheckpointLoadError, match=rf"^none of the 2 checkpoint\(s\) in {tmp_path} loads \(the newest: "
                                                  r".*checkpoint_epoch0002.pt: empty file.*move them away"):
        find_resumable(tmp_path)


def test_load_checkpoint_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint_epoch0004.pt"):
        load_checkpoint(checkpoint_path(tmp_path, 4))
    broken = checkpoint_path(tmp_path, 5)
    broken.write_bytes(b"garbage")
    with pytest.raises(CheckpointLoadError, match="checkpoint_epoch0005.pt"):
        load_checkpoint(broken)


def _torch_saved(path: Path, legacy: bool = False) -> bytes:
    torch.save(_minimal_state(1) | {"filler": torch.zeros(5000)}, path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


def test_files_torch_save_did_not_write_get_one_line_naming_the_file_and_what_it_is(tmp_path) -> None:
    cases = {
        "empty.pt": (b"", "empty file (0 bytes)"),
        "notes.pt": (b"not a checkpoint, just text\n", "not a PyTorch checkpoint (it starts with b'not a ch')"),
        "list.pt": (pickle.dumps([1, 2]), "a Python pickle, not a file torch.save writes"),
        "protocol2.pt": (pickle.dumps({"epoch": 1}, protocol=2), "a Python pickle, not a file torch.save writes"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointLoadError) as caught:
            load_checkpoint(tmp_path / name)
        assert str(caught.value) == f"{tmp_path / name}: {reason}"
        assert caught.value.__cause__ is None  # callers that re-word a chained torch error keep this line


def test_cut_short_checkpoint_says_so_in_one_line(tmp_path) -> None:
    whole = _torch_saved(tmp_path / "whole.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[:20000])
    with pytest.raises(CheckpointLoadError) as caught:
        load_checkpoint(cut)
    assert str(caught.value) == f"{cut}: cut short or damaged (a zip archive without its end, 20000 bytes)"

    legacy = _torch_saved(tmp_path / "legacy.pt", legacy=True)
    assert load_checkpoint(tmp_path / "legacy.pt")["epoch"] == 1  # the legacy format still loads
    cut.write_bytes(legacy[: len(legacy) // 2])
    with pytest.raises(CheckpointLoadError, match=r"cut\.pt: cut short or damaged \(the legacy torch\.save "
                                                  r"format, \d+ bytes: RuntimeError: unexpected EOF") as caught:
        load_checkpoint(cut)
    assert "\n" not in str(caught.value)

    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("weights.txt", "1 2 3")
    with pytest.raises(CheckpointLoadError, match=r"other\.pt: a zip archive, but not one torch\.save writes"):
        load_checkpoint(other)


# ------------------------------------------------------------------------------------- weights_only safety


def test_checkpoint_with_pickled_object_is_refused_and_skipped(tmp_path, caplog) -> None:
    marker = tmp_path / "code_ran"
    save_checkpoint(checkpoint_path(tmp_path, 4), _minimal_state(4))
    unsafe = checkpoint_path(tmp_path, 5)
    torch.save({"epoch": 5, "model": {}, "payload": ArbitraryCode(marker)}, unsafe)

    with pytest.raises(CheckpointLoadError) as caught:
        load_checkpoint(unsafe)
    message = str(caught.value)
    assert message.startswith(f"{unsafe}: torch.load(weights_only=True) refuses it")
    assert "test_checkpoint._leave_marker" in message and "\n" not in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    with caplog.at_level(logging.WARNING, logger="mec.checkpoint"):
        path, state = find_resumable(tmp_path)
    assert path == checkpoint_path(tmp_path, 4) and state["epoch"] == 4
    assert unsafe.name in caplog.text
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(np.float64(0.5), "numpy.float64"), (np.arange(3), "numpy.ndarray"), (Path("x"), "Path")],
)
def test_save_checkpoint_refuses_what_weights_only_loading_refuses(tmp_path, value, type_name) -> None:
    # The reference: plain torch.save accepts the value, loading it back with weights_only fails.
    plain = tmp_path / "plain.pt"
    torch.save({"value": value}, plain)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(plain, weights_only=True)

    target = tmp_path / "run" / "checkpoint_epoch0001.pt"
    state = {"epoch": 1, "model": {}, "metrics": {"history": [1.0, {"loss": value}]}}
    with pytest.raises(ValueError, match=r"\['metrics'\]\['history'\]\[1\]\['loss'\]") as error:
        save_checkpoint(target, state)
    assert type_name in str(error.value)
    assert not target.parent.exists() or not any(target.parent.iterdir())


def test_save_checkpoint_accepts_every_weights_only_safe_type(tmp_path) -> None:
    state = {
        "epoch": 2,
        "model": OrderedDict(weight=torch.ones(2), bias=nn.Parameter(torch.zeros(1))),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
        "flags": [True, None, 1.5, "text"],
    }
    path = save_checkpoint(tmp_path / "safe.pt", state)
    loaded = torch.load(path, weights_only=True)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["optimizer"]["state"][0]["step"].item() == 3.0
    assert loaded["flags"] == [True, None, 1.5, "text"]
    assert torch.equal(loaded["model"]["bias"], torch.zeros(1))


# ------------------------------------------------------------------------------------- naming, pruning


def test_checkpoint_path_naming_and_validation(tmp_path) -> None:
    assert checkpoint_path(tmp_path, 7) == tmp_path / "checkpoint_epoch0007.pt"
    with pytest.raises(ValueError, match="epoch"):
        checkpoint_path(tmp_path, -1)


def test_prune_keeps_the_newest_checkpoints_only(tmp_path) -> None:
    for epoch in (1, 2, 3, 9, 10, 11):
        save_checkpoint(checkpoint_path(tmp_path, epoch), _minimal_state(epoch))
    (tmp_path / "notes.txt").write_text("unrelated")
    (tmp_path / "checkpoint_epoch0005.tmp-999").write_bytes(b"left by a crashed save")
    (tmp_path / "checkpoint_epoch0012.tmp-999").write_bytes(b"a save in progress")

    deleted = prune_checkpoints(tmp_path, keep=2)

    remaining = sorted(entry.name for entry in tmp_path.iterdir())
    assert remaining == [
        "checkpoint_epoch0010.pt",
        "checkpoint_epoch0011.pt",
        "checkpoint_epoch0012.tmp-999",
        "notes.txt",
    ]
    assert len(deleted) == 5
    assert [epoch for epoch, _ in list_checkpoints(tmp_path)] == [11, 10]
    with pytest.raises(ValueError, match="keep"):
        prune_checkpoints(tmp_path, keep=0)


# ------------------------------------------------------------------------------------- backbone loading


@pytest.fixture(scope="module")
def trained_backbone() -> dict[str, torch.Tensor]:
    """A resnet18 backbone state dict (no fc) whose BN statistics differ from a fresh network's."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("fc.")}


def _assert_loaded(model: nn.Module, backbone: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for name, tensor in backbone.items():
        assert torch.equal(state[name], tensor), name


def test_exported_backbone_loads_into_fresh_resnet18(tmp_path, trained_backbone) -> None:
    metadata = {"arch": "resnet18", "feature_dim": 512, "mlflow_run_id": "r1"}
    path = export_backbone(trained_backbone, tmp_path / "backbone.pt", metadata)
    fresh = torchvision.models.resnet18(weights=None)
    summary = load_backbone(fresh, path, ignore=("fc.",))

    _assert_loaded(fresh, trained_backbone)
    assert summary["loaded_keys"] == summary["expected_keys"] == len(trained_backbone)
    assert summary["unexpected_keys"] == [] and summary["ignored_keys"] == []
    assert summary["metadata"] == {
        "arch": "resnet18",
        "feature_dim": 512,
        "mlflow_run_id": "r1",
        "source": str(path),
    }
    with pytest.raises(KeyError, match="fc.weight"):
        load_backbone(torchvision.models.resnet18(weights=None), path)


def test_backbone_missing_a_layer_fails_with_file_name_and_counts(tmp_path, trained_backbone) -> None:
    without_layer4 = {
        name: tensor for name, tensor in trained_backbone.items() if not name.startswith("layer4.")
    }
    dropped = len(trained_backbone) - len(without_layer4)
    assert dropped > 0
    path = export_backbone(without_layer4, tmp_path / "partial.pt", {"arch": "resnet18"})

    with pytest.raises(MissingBackboneKeysError) as error:
        load_backbone(torchvision.models.resnet18(weights=None), path, ignore=("fc.",))
    message = str(error.value)
    assert isinstance(error.value, KeyError)
    assert "partial.pt" in message
    assert f"{len(without_layer4)} of {len(trained_backbone)}" in message
    assert f"missing {dropped}" in message and "layer4.0.conv1.weight" in message


def test_backbone_shape_mismatch_fails(tmp_path, trained_backbone) -> None:
    wrong_stem = dict(trained_backbone, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    path = export_backbone(wrong_stem, tmp_path / "cifar_stem.pt", {"arch": "resnet18", "cifar_stem": True})
    expected = r"cifar_stem\.pt.*conv1\.weight \(file \(64, 3, 3, 3\), model \(64, 3, 7, 7\)\)"
    with pytest.raises(ValueError, match=expected):
        load_backbone(torchvision.models.resnet18(weights=None), path, ignore=("fc.",))


def test_released_code_checkpoint_with_module_encoder_prefix_loads(tmp_path, trained_backbone) -> None:
    state_dict = {f"module.encoder.{name}": tensor for name, tensor in trained_backbone.items()}
    state_dict["module.encoder.fc.0.weight"] = torch.randn(16, 512)  # the projector replaces fc
    state_dict["module.predictor.0.weight"] = torch.randn(4, 16)
    state_dict["module.teacher.conv1.weight"] = torch.randn(64, 3, 7, 7)
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": state_dict, "optimizer": {"state": {}}}, path)

    fresh = torchvision.models.resnet18(weights=None)
    summary = load_backbone(fresh, path, ignore=("fc.",))

    _assert_loaded(fresh, trained_backbone)
    assert summary["loaded_keys"] == len(trained_backbone)
    assert sorted(summary["unexpected_keys"]) == ["module.predictor.0.weight", "module.teacher.conv1.weight"]
    assert summary["ignored_keys"] == ["module.encoder.fc.0.weight"]
    assert summary["metadata"] == {"epoch": 100, "arch": "resnet18", "source": str(path)}


def test_pretraining_checkpoint_backbone_entry_loads(tmp_path, trained_backbone) -> None:
    path = save_checkpoint(
        checkpoint_path(tmp_path, 3),
        {"epoch": 3, "model": {}, "backbone": trained_backbone, "mlflow_run_id": "run7"},
    )
    fresh = torchvision.models.resnet18(weights=None)
    summary = load_backbone(fresh, path, ignore=("fc.",))
    _assert_loaded(fresh, trained_backbone)
    assert summary["metadata"] == {"epoch": 3, "mlflow_run_id": "run7", "source": str(path)}


def test_backbone_keys_that_collide_after_prefix_stripping_fail(tmp_path, trained_backbone) -> None:
    doubled = dict(trained_backbone, **{"module.conv1.weight": trained_backbone["conv1.weight"]})
    path = export_backbone(doubled, tmp_path / "doubled.pt", {})
    with pytest.raises(ValueError, match="both give the weight 'conv1.weight'"):
        load_backbone(torchvision.models.resnet18(weights=None), path, ignore=("fc.",))
