"""Weighted kNN on frozen features (InstDisc / DINO protocol): neighbours vote with weight exp(cos / T).

Defaults follow the common SSL protocol: k in {20, 200}, T = 0.07. Features of the training and validation
splits (`evals.FEATURE_SPLITS`) come from `evals.features`: the DAG's features job, or the shared cache, so a
second protocol on the same backbone (t-SNE) does not extract them again.
"""

from __future__ import annotations

from evals import FEATURE_SPLITS
from evals.features import job_features
from evals.job import EvalJob
from mec.monitor import knn_accuracy

DEFAULT_K = (20, 200)
DEFAULT_TEMPERATURE = 0.07


def evaluate(job: EvalJob) -> dict[str, float]:
    job.check_options()
    ks = job.option("k", list(DEFAULT_K))
    ks = [ks] if isinstance(ks, int) else list(ks) if isinstance(ks, list) else [ks]
    temperature = job.number_option("temperature", DEFAULT_TEMPERATURE)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks) or temperature <= 0:
        raise ValueError(f"knn options: k must be positive ints and temperature > 0, got k={ks}, T={temperature}")
    with job.logged() as logger:  # FAILED if anything below fails
        (train, train_reused), (val, val_reused) = (job_features(job, split) for split in FEATURE_SPLITS["knn"])
        metrics = {f"knn/top1_k{k}": knn_accuracy(train, val, k, temperature) for k in ks}
        metrics["knn/features_reused"] = float(train_reused and val_reused)
        logger.log_metrics(metrics, step=0)
    return metrics
