"""Evaluation protocols for MEC backbones: one small entry point per protocol, `evaluate(job) -> metrics`."""

from __future__ import annotations

import importlib
from typing import Any

# protocol name -> module whose `evaluate(EvalJob)` runs it
PROTOCOLS = {
    "knn": "evals.knn",
    "linear_probe": "evals.linear_probe",
    "finetune": "evals.finetune",
    "tsne": "evals.tsne",
    "transfer": "evals.transfer",
}


def run_protocol(job: Any) -> dict[str, float]:
    """Entry point of an evaluation job (what the launcher pickles): import the protocol and run it."""
    if job.protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {job.protocol!r}; known: {sorted(PROTOCOLS)}")
    return importlib.import_module(PROTOCOLS[job.protocol]).evaluate(job)
