#!/usr/bin/env python3
"""Checks that every third-party module the project imports is declared in pyproject.toml, and that imports point
one way (workflow -> evals -> mec).

    python .ci/check_imports.py [PROJECT_ROOT]

Reads every Python file, Snakefile and *.smk under the root (imports inside functions and rule bodies too) and
maps each imported top-level module to its distribution through the installed packages' metadata (the Python
that runs this script: CI runs it in the fresh virtual environment it installed the project into). Code that
ships (mec/, evals/, workflow/, Snakefile, *.smk) must import only [project] dependencies; tests and benchmarks
may also use the `test` extra. A distribution pip cannot resolve from the package registry (detectron2) is declared
instead in [tool.mec-pipeline] built-dependencies, naming the project file that installs it: the modules that
distribution provides count as declared everywhere. A module installed nowhere counts as its own distribution
name, so it is reported unless declared under that name. Prints one line per problem and exits with status 1 when
there is one.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

# Folders that hold no project source: data, run outputs, virtual environments, caches.
SKIP_DIRS = {".git", "results", "data", "build", "dist", ".snakemake", "mlruns", "__pycache__", ".ruff_cache",
             ".pytest_cache", "node_modules"}
SHIPPED_PACKAGES = ("mec", "evals", "workflow")
TEST_EXTRA = "test"
TOOL_TABLE, BUILT_KEY = "mec-pipeline", "built-dependencies"
# What each layer must not import: the method knows nothing of evaluations or orchestration.
FORBIDDEN = {"mec": {"evals", "workflow"}, "evals": {"workflow"}}
SNAKEMAKE_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+(.+))")


def normalise(name: str) -> str:
    """A distribution name as the packaging standards compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0])


def declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """The distributions shipped code may use, and those tests may use besides."""
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    runtime = {requirement_name(r) for r in project.get("dependencies", [])}
    test = {requirement_name(r) for r in project.get("optional-dependencies", {}).get(TEST_EXTRA, [])}
    return runtime | set(built_dependencies(pyproject)), test


def built_dependencies(pyproject: Path) -> dict[str, str]:
    """[tool.mec-pipeline] built-dependencies: distribution -> the project file that installs it."""
    tool = tomllib.loads(pyproject.read_text()).get("tool", {}).get(TOOL_TABLE, {})
    return {normalise(name): installer for name, installer in tool.get(BUILT_KEY, {}).items()}


def sources(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        # Prune data, outputs and caches, and any virtual environment (a folder holding pyvenv.cfg).
        subfolders[:] = sorted(d for d in subfolders
                               if d not in SKIP_DIRS and not (Path(folder, d) / "pyvenv.cfg").exists())
        for name in sorted(files):
            if name.endswith((".py", ".smk")) or name == "Snakefile":
                yield Path(folder, name)


def python_imports(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))  # a file that does not parse fails the check
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def snakemake_imports(path: Path) -> Iterator[tuple[str, int]]:
    """Snakemake's language is not Python; its import statements are, one per line."""
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        match = SNAKEMAKE_IMPORT.match(line.split("#", 1)[0])
        if match and match.group(1):
            if not match.group(1).startswith("."):  # a relative import names the project's own files
                yield match.group(1), lineno
        elif match:
            for name in match.group(2).strip("() \\").split(","):
                if name.strip():
                    yield name.split()[0], lineno


def own_modules(root: Path) -> set[str]:
    """Top-level names that resolve to the project's own files: its packages, and modules tests import."""
    own = {p.name for p in root.iterdir() if (p / "__init__.py").exists()} | {p.stem for p in root.glob("*.py")}
    for folder in ("tests", "benchmarks"):
        own |= {folder} | {p.stem for p in (root / folder).rglob("*.py")}
    return own


def problems(root: Path) -> Iterator[str]:
    runtime, test = declared(root / "pyproject.toml")
    for name, installer in built_dependencies(root / "pyproject.toml").items():
        if not (root / installer).is_file():
            yield (f"pyproject.toml: [tool.{TOOL_TABLE}] {BUILT_KEY} names {installer} as the installer of {name}, "
                   "but there is no such file")
    distributions = metadata.packages_distributions()
    own = own_modules(root)
    for path in sources(root):
        relative = path.relative_to(root)
        layer = relative.parts[0] if len(relative.parts) > 1 else ""
        ships = layer in SHIPPED_PACKAGES or path.suffix == ".smk" or path.name == "Snakefile"
        allowed, section = (runtime, "[project] dependencies") if ships else (
            runtime | test, f"[project] dependencies or the '{TEST_EXTRA}' extra")
        found = snakemake_imports(path) if path.suffix == ".smk" or path.name == "Snakefile" else python_imports(path)
        for module, lineno in found:
            top = module.split(".")[0]
            if top in FORBIDDEN.get(layer, ()):
                yield (f"{relative}:{lineno}: imports {module}, but {layer}/ must not import "
                       f"{' or '.join(sorted(FORBIDDEN[layer]))} (imports point workflow -> evals -> mec)")
            if top == "__future__" or top in sys.stdlib_module_names or top in own:
                continue
            names = distributions.get(top) or [top]
            if not {normalise(n) for n in names} & allowed:
                installed = "" if top in distributions else " (not installed here)"
                yield (f"{relative}:{lineno}: imports {top} (distribution {', '.join(sorted(set(names)))}){installed}, "
                       f"which pyproject.toml does not declare in {section}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent)
    root = parser.parse_args(argv).root.resolve()
    if not (root / "pyproject.toml").is_file():
        print(f"check_imports: no pyproject.toml in {root}", file=sys.stderr)
        return 1
    found = list(problems(root))
    for line in found:
        print(line)
    print(f"check_imports: {len(found)} problem(s) in {root}" if found else f"check_imports: every import in {root} "
          "is declared and points one way")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
