"""Generated data trees (the offline digits, detection scenes, tracking videos), written whole or not at all.

A tree is rendered into a temporary sibling folder, gets ``manifest.json`` (its parameters, their hash and
counts) and is then moved onto its root. A call whose parameters match the manifest (and whose expected paths
exist) does nothing; other parameters replace the tree; a non-empty folder without a manifest is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(root) / MANIFEST_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_current(root: Path, params: dict[str, Any], expected: Iterable[str]) -> bool:
    """``root`` holds the tree of ``params``: its manifest's hash matches and every expected path exists."""
    manifest = read_manifest(root)
    return (
        manifest is not None
        and manifest.get("params_hash") == params_hash(params)
        and all((Path(root) / path).exists() for path in expected)
    )


def _move_into_place(staging: Path, root: Path, current: Callable[[], bool]) -> None:
    """Swap the finished `staging` tree onto `root`; a concurrent writer of the same tree may win the race."""
    retired = None
    if root.exists():
        if current():
            return
        # os.replace cannot overwrite a non-empty directory: move the old tree aside first.
        retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, retired)
    try:
        os.replace(staging, root)
    except OSError:
        if not current():
            raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def write_tree(root: str | Path, params: dict[str, Any], expected: Iterable[str],
               render: Callable[[Path], dict[str, Any]]) -> Path:
    """The tree of ``params`` at ``root``: ``render(folder)`` fills a staging folder and returns its counts."""
    root = Path(root)
    expected = list(expected)
    if is_current(root, params, expected):
        return root
    if root.exists() and read_manifest(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} is not empty and has no {MANIFEST_NAME}: refusing to replace a folder this function did not "
            "write; choose another folder or empty it"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
    try:
        counts = render(staging)
        manifest = {"params": params, "params_hash": params_hash(params), "counts": counts}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _move_into_place(staging, root, lambda: is_current(root, params, expected))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
