"""An existing backbone file as a pretraining run: the authors' released checkpoint, another lab's model, a
backbone exported by an earlier campaign. The run group's ``backbone:`` names the file, its ``config:`` the
architecture and data; the file is loaded strictly into that architecture and exported into the run folder like
a trained backbone, so every evaluation reads it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE_TAG = "mec.source_backbone"
SHA256_TAG = "mec.source_backbone_sha256"


def import_backbone_job(config_tree: dict[str, Any], run_id: str, source: str | Path) -> dict[str, Any]:
    """Load ``source`` strictly into the config's backbone, export it as the run's ``backbone.pt``, tag the run.

    Accepts what `mec.checkpoint.load_backbone` reads (an exported backbone, a pretraining checkpoint, the
    released code's ``{"state_dict": {"module.encoder.*"}}``); a file missing weights stops naming the file and
    the keys. Returns ``{"run_id", "backbone", "metrics"}`` like the other pretraining jobs.
    """
    from mlflow.tracking import MlflowClient

    from mec import checkpoint as ckpt
    from mec.config import build_config
    from mec.models import build_backbone
    from mec.tracking import resolve_tracking_uri

    cfg = build_config(config_tree)
    source = Path(source).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"backbone file {source} does not exist")
    m = cfg.model
    backbone = build_backbone(m.arch, width=m.width, cifar_stem=m.cifar_stem, zero_init_residual=False)
    loaded = ckpt.load_backbone(backbone, source, ignore=("fc.",))
    sha256 = ckpt.file_sha256(source)
    path = Path(cfg.train.output_dir) / "backbone.pt"
    ckpt.export_backbone(backbone.state_dict(), path, {
        "arch": m.arch, "width": m.width, "cifar_stem": m.cifar_stem, "feature_dim": backbone.feature_dim,
        "source_checkpoint": str(source), "source_sha256": sha256, "loaded_keys": loaded["loaded_keys"],
        "mlflow_run_id": run_id, "config_name": cfg.name,
    })
    client = MlflowClient(resolve_tracking_uri(cfg.tracking.tracking_uri))
    client.set_tag(run_id, SOURCE_TAG, str(source))
    client.set_tag(run_id, SHA256_TAG, sha256)
    return {"run_id": run_id, "backbone": str(path), "metrics": {}}
