"""What every evaluation entry point shares: the job description, the backbone loader and the run logger.

A workflow rule creates the evaluation's MLflow run (nested under the pretraining run it evaluates), then
launches the protocol with an `EvalJob`; the protocol logs into that run through its journal, so metrics
survive a tracking server that is away, and returns its final metrics. `logged` wraps that run so that a
failed protocol ends it FAILED (`mec.run.logged_run`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from evals import PROTOCOL_OPTIONS
from mec import checkpoint as ckpt
from mec.config import Config, build_config
from mec.models import build_backbone
from mec.run import logged_run
from mec.tracking import RunLogger


@dataclass(frozen=True)
class EvalJob:
    """One protocol on one backbone. Plain values only: it is pickled into submitit jobs."""

    protocol: str
    backbone: str  # exported backbone file (or a pretraining checkpoint)
    config: dict[str, Any]  # the pretraining run's resolved `mec` config: data set, image size, architecture
    output_dir: str  # the protocol's checkpoints and journal
    feature_cache: str  # shared by all protocols of an experiment: features extracted once per backbone
    # split -> the feature file the DAG's features rule wrote for this backbone (`evals.features.job_features`);
    # a split not named here comes from the content-keyed cache under feature_cache
    features: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # MLflow run created by the rule
    tracking_uri: str | None = None
    experiment: str = "mec"

    @property
    def cfg(self) -> Config:
        return build_config(self.config)

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    def check_options(self) -> None:
        """Refuse options this protocol does not read (`evals.PROTOCOL_OPTIONS`), naming them: a misspelt one
        would run on the default."""
        allowed = PROTOCOL_OPTIONS[self.protocol]
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(f"{self.protocol}: unknown options {unknown}; allowed: {sorted(allowed)}")

    def number_option(self, name: str, default: float | int, kind: type[float] | type[int] = float) -> Any:
        """Option ``name`` as a ``kind`` (default ``default``), or one error naming it and the value given."""
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{self.protocol}: options.{name} must be {'an int' if kind is int else 'a number'}, "
                             f"got {value!r}")
        return kind(value)

    def open_logger(self) -> RunLogger:
        return RunLogger.open(
            experiment=self.experiment,
            run_name=f"{self.protocol}",
            journal=Path(self.output_dir) / "metrics.jsonl",
            resume_run_id=self.run_id,
            tracking_uri=self.tracking_uri,
        )

    def logged(self) -> AbstractContextManager[RunLogger]:
        """``with job.logged() as logger:`` the evaluation's run, closed FINISHED, or FAILED on any error."""
        return logged_run(self.open_logger)


def load_frozen_backbone(path: str | Path, cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of ``cfg.model`` with every weight loaded from ``path`` (missing keys raise, naming the file)."""
    m = cfg.model
    backbone = build_backbone(m.arch, width=m.width, cifar_stem=m.cifar_stem, zero_init_residual=False)
    summary = ckpt.load_backbone(backbone, Path(path), ignore=("fc.",))
    return backbone, summary
