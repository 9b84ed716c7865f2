"""Packaging: every import is declared (the check CI runs, .ci/check_imports.py), imports point one way, and CI's
constraints file pins everything pyproject.toml declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / ".ci" / "check_imports.py"
CONSTRAINTS = ROOT / "constraints" / "ci.txt"


def check_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True, timeout=120)


def write_project(root: Path, dependencies: list[str], test: tuple[str, ...] = (), files: dict | None = None) -> Path:
    def quoted(names):
        return ", ".join(f'"{n}"' for n in names)

    (root / "pyproject.toml").write_text(f'[project]\nname = "p"\ndependencies = [{quoted(dependencies)}]\n'
                                         f"[project.optional-dependencies]\ntest = [{quoted(test)}]\n")
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def requirement_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]).lower()


def test_the_project_declares_every_import_it_makes() -> None:
    result = check_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_undeclared_import_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    # The case of openTSNE: imported inside a function by shipped code, present in no [project] list.
    write_project(tmp_path, ["pyyaml==6.*"], files={
        "evals/__init__.py": "",
        "evals/tsne.py": "import yaml\n\n\ndef embed():\n    from openTSNE import TSNE\n    return TSNE\n",
    })
    result = check_imports(tmp_path)
    assert result.returncode == 1
    assert "evals/tsne.py:5: imports openTSNE" in result.stdout
    assert "yaml" not in result.stdout  # module yaml comes from distribution pyyaml, which is declared


def test_shipped_code_may_not_rely_on_the_test_extra(tmp_path: Path) -> None:
    write_project(tmp_path, [], test=["pytest>=9"], files={
        "mec/__init__.py": "",
        "mec/train.py": "import pytest\n",
        "tests/test_x.py": "import pytest\nimport conftest\n",
        "tests/conftest.py": "",
    })
    result = check_imports(tmp_path)
    assert result.returncode == 1
    assert result.stdout.count("imports pytest") == 1
    assert "mec/train.py:1: imports pytest" in result.stdout


def test_snakefile_imports_are_checked(tmp_path: Path) -> None:
    write_project(tmp_path, [], files={"workflow/rules/a.smk": "rule a:\n    run:\n        import pandas as pd\n"})
    result = check_imports(tmp_path)
    assert "workflow/rules/a.smk:3: imports pandas" in result.stdout


def test_the_method_does_not_import_evaluations_or_orchestration(tmp_path: Path) -> None:
    write_project(tmp_path, [], files={
        "mec/__init__.py": "", "evals/__init__.py": "", "workflow/__init__.py": "",
        "mec/loss.py": "def f():\n    from evals import knn\n",
        "evals/knn.py": "import mec.loss\nfrom workflow import stages\n",
        "workflow/stages.py": "import evals.knn\nimport mec.loss\n",
    })
    result = check_imports(tmp_path)
    assert result.returncode == 1
    problems = sorted(line.split(" (imports point")[0] for line in result.stdout.splitlines()[:-1])
    assert problems == [
        "evals/knn.py:2: imports workflow, but evals/ must not import workflow",
        "mec/loss.py:2: imports evals, but mec/ must not import evals or workflow",
    ]


def test_ci_constraints_pin_every_declared_distribution() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{CONSTRAINTS.name}: '{line}' is not an exact pin (name==version)"
            pinned[requirement_name(name)] = version
    assert declared - pinned.keys() == set(), f"regenerate {CONSTRAINTS} (see its header)"
