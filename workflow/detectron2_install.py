"""Install detectron2 into the running Python, pinned: the transfer evaluation's detector library.

    python -m workflow.detectron2_install [--force] [--wheel FILE | --from-source] [--constraint FILE]
                                          [--record FILE] [--cache-dir DIR] [--quiet]
    mec install-detectron2 ...                                   (the same step)

detectron2 publishes no wheels and is not on the package registry under its own name; its users build it from
source (--from-source: the pinned upstream commit from GitHub, with --no-build-isolation, for GPU clusters that
reach GitHub and have a compiler and CUDA). Where only the package registry is reachable, the step takes the
pinned `sal-detectron2` wheel (genuine detectron2, upstream commit a59f056 plus two small patches, built for
CPython 3.10 only), checks its sha256, and rewrites it into a pure-Python wheel of distribution `detectron2`:
the compiled `_C` extension is dropped (without it: no deformable convolution, no rotated boxes, no fast COCO
evaluation; R50-C4 Faster/Mask R-CNN use torchvision's roi_align/nms, and COCO evaluation must use pycocotools,
use_fast_impl=False), the requirements are fixed (see REQUIREMENT_CHANGES) and the wheel is tagged py3-none-any.
The Apache-2.0 licence stays in its .dist-info, beside a file that states these changes.

A detectron2 that already imports (e.g. built from source on a cluster) is reported and left alone unless
--force. --record FILE writes what is installed as JSON. Every failure is one line and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# ---- Pins: everything this step installs is named here, and only here. --------------------------------------------
# The registry wheel: sal-detectron2 0.7.2 is detectron2 at upstream commit a59f056 (April 2024) with two patches
# (detectron2/data/common.py samples from list(...) instead of a set, which Python 3.11 requires, the same fix as
# upstream's later commit 400a49c; detectron2/utils/testing.py gains a test-skip helper) and __version__ "0.7.2".
SOURCE_DISTRIBUTION = "sal-detectron2"
SOURCE_VERSION = "0.7.2"
SOURCE_WHEEL = "sal_detectron2-0.7.2-cp310-none-any.whl"
SOURCE_WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
# What it is rewritten into.
DISTRIBUTION = "detectron2"
VERSION = "0.7.2+mec.purepython"
# Requirements of the rewritten wheel: the unconditional requirements named on the left are replaced by those on the
# right (conditional ones, e.g. extras, are kept as they are). numpy<2: the pipeline runs numpy 2 (a few code paths
# of detectron2 predate it, e.g. np.int: the pipeline's own paths are tested); black: only LazyConfig.to_py formats
# with it; fvcore and iopath: imported by detectron2, with upstream setup.py's pins at a59f056 (sal's wheel lost
# them); setuptools<82: model_zoo imports pkg_resources, which setuptools 82 removed.
REQUIREMENT_CHANGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "black": (),
}
ADDED_REQUIREMENTS = ("fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "setuptools<82")
# Building from source (GPU clusters): the same upstream commit as the wheel.
UPSTREAM_REPOSITORY = "https://github.com/facebookresearch/detectron2.git"
UPSTREAM_COMMIT = "a59f05630a8f205756064244bf5beb8661f96180"
# --------------------------------------------------------------------------------------------------------------------

REWRITTEN_SOURCE = (f"{SOURCE_DISTRIBUTION}=={SOURCE_VERSION} wheel (sha256 {SOURCE_WHEEL_SHA256}), rewritten "
                    "pure-Python by workflow/detectron2_install.py")
COMPILED_EXTENSION = re.compile(r"^detectron2/_C(\.[^/]*)?\.(so|pyd)$")
CHANGES_FILE = "MEC_PIPELINE_CHANGES.txt"
FIXED_DATE = (2024, 11, 29, 13, 46, 0)  # the files the rewrite writes carry the source wheel's build date
PROG = "detectron2_install"


class InstallError(Exception):
    """A failure of this step, told in one line."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mec-pipeline" / "wheels"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str = SOURCE_WHEEL_SHA256) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise InstallError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


def record_hash(data: bytes) -> str:
    """A RECORD hash: sha256=<urlsafe base64, no padding> (the wheel format, PEP 376/427)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1]


def _pip(args: list[str], *, capture: bool) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args]
    try:
        return subprocess.run(command, capture_output=capture, text=True)
    except OSError as exc:
        raise InstallError(f"cannot run {' '.join(command[:3])}: {exc}") from exc


# ---- The registry wheel -------------------------------------------------------------------------------------------

def obtain_wheel(cache_dir: Path, wheel: Path | None = None) -> Path:
    """The pinned sal-detectron2 wheel, verified: the given file, else the cached copy, else one pip downloads."""
    if wheel is not None:
        if not wheel.is_file():
            raise InstallError(f"no such wheel: {wheel}")
        verify_sha256(wheel)
        return wheel
    cached = cache_dir / SOURCE_WHEEL
    if not cached.is_file():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InstallError(f"cannot create the wheel cache {cache_dir}: {exc}") from exc
        requirement = f"{SOURCE_DISTRIBUTION}=={SOURCE_VERSION}"
        print(f"{PROG}: downloading {requirement} into {cache_dir}", flush=True)
        # The wheel exists for CPython 3.10 only; its Python code is what is kept, whatever Python runs this.
        result = _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
                       "--implementation", "cp", "--dest", str(cache_dir), requirement], capture=True)
        if result.returncode != 0:
            raise InstallError(f"pip download {requirement} failed (exit {result.returncode}): "
                               f"{_last_line(result.stderr + result.stdout)}; on a machine without the registry, "
                               f"download {SOURCE_WHEEL} elsewhere and pass --wheel FILE")
        if not cached.is_file():
            raise InstallError(f"pip download {requirement} did not write {cached}")
    verify_sha256(cached)
    return cached


@dataclass(frozen=True)
class RewriteResult:
    wheel: Path
    dropped: tuple[str, ...]
    requirements: tuple[str, ...]


def _requirement_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]).lower()


def _rewrite_metadata(text: str) -> tuple[str, tuple[str, ...]]:
    """METADATA with the new name, version, summary and requirements (the description body, if any, is kept)."""
    head, sep, body = text.partition("\n\n")
    out: list[str] = []
    kept: list[str] = []
    last_requirement = None
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        if key == "Name":
            line = f"Name: {DISTRIBUTION}"
        elif key == "Version":
            line = f"Version: {VERSION}"
        elif key == "Summary":
            line = (f"Summary: detectron2 (upstream {UPSTREAM_COMMIT[:7]}) from the {SOURCE_DISTRIBUTION} "
                    f"{SOURCE_VERSION} wheel, pure Python (no _C extension); see {CHANGES_FILE}")
        elif key == "Requires-Dist" and ";" not in value:
            name = _requirement_name(value)
            if name in REQUIREMENT_CHANGES:
                replacement = [f"Requires-Dist: {r}" for r in REQUIREMENT_CHANGES[name]]
                out.extend(replacement)
                kept.extend(r.partition(": ")[2] for r in replacement)
                last_requirement = len(out)
                continue
            kept.append(value)
            out.append(line)
            last_requirement = len(out)
            continue
        out.append(line)
    if last_requirement is None:
        raise InstallError("the wheel's METADATA lists no requirements: not the sal-detectron2 wheel")
    present = {_requirement_name(r) for r in kept}
    added = [r for r in ADDED_REQUIREMENTS if _requirement_name(r) not in present]
    out[last_requirement:last_requirement] = [f"Requires-Dist: {r}" for r in added]
    return "\n".join(out) + "\n" + (sep + body if sep else ""), tuple(kept + added)


def _changes_text(source: Path, dropped: list[str], requirements: tuple[str, ...]) -> str:
    lines = [
        "This is detectron2 (https://github.com/facebookresearch/detectron2, Apache-2.0, see LICENSE) as shipped in",
        f"the {SOURCE_DISTRIBUTION} {SOURCE_VERSION} wheel ({source.name},",
        f"sha256 {SOURCE_WHEEL_SHA256}): upstream commit {UPSTREAM_COMMIT} plus two",
        "small patches by the sal-detectron2 authors (detectron2/data/common.py samples from a list instead of a set;",
        "detectron2/utils/testing.py adds a test-skip helper; __version__ reads 0.7.2).",
        "",
        "The MEC pipeline (workflow/detectron2_install.py) rewrote that wheel, changing only its packaging:",
        f"- distribution renamed {SOURCE_DISTRIBUTION} -> {DISTRIBUTION}, version {VERSION};",
        f"- removed the compiled extension, built for CPython 3.10 only: {', '.join(dropped) or '(none found)'}.",
        "  Without it, deformable convolution, rotated boxes and detectron2's fast COCO evaluation are unavailable;",
        "  R50-C4 Faster/Mask R-CNN use torchvision's roi_align/nms, and COCO evaluation uses pycocotools",
        "  (use_fast_impl=False);",
        "- requirements: numpy<2 -> numpy (the pipeline runs numpy 2), black dropped (only LazyConfig.to_py uses it),",
        "  fvcore and iopath added with upstream setup.py's pins, setuptools<82 added (model_zoo imports",
        "  pkg_resources). Now: " + "; ".join(requirements) + ";",
        "- WHEEL: Root-Is-Purelib true, tag py3-none-any; RECORD recomputed.",
        "No Python source file was changed.",
        "Why: detectron2 publishes no wheels, its users build it from source from GitHub, and machines that reach only",
        "the package registry cannot. Where GitHub and a compiler are available, build it from source instead:",
        f"  python -m workflow.detectron2_install --from-source   (pip install --no-build-isolation "
        f"'git+{UPSTREAM_REPOSITORY}@{UPSTREAM_COMMIT}')",
    ]
    return "\n".join(lines) + "\n"


def rewrite_wheel(source: Path, out_dir: Path) -> RewriteResult:
    """Rewrite the sal-detectron2 wheel into a pure-Python `detectron2` wheel in out_dir (the same bytes each time)."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstallError(f"{source} is not a readable wheel: {exc}") from exc
    with archive:
        names = archive.namelist()
        info_dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        old_info = f"{SOURCE_DISTRIBUTION.replace('-', '_')}-{SOURCE_VERSION}.dist-info"
        if info_dirs != {old_info} or f"{old_info}/METADATA" not in names or f"{old_info}/WHEEL" not in names:
            raise InstallError(f"{source} is not the {SOURCE_DISTRIBUTION} {SOURCE_VERSION} wheel "
                               f"(its .dist-info: {', '.join(sorted(info_dirs)) or 'none'})")
        if "detectron2/__init__.py" not in names:
            raise InstallError(f"{source} holds no detectron2/__init__.py")
        new_info = f"{DISTRIBUTION}-{VERSION}.dist-info"
        metadata, requirements = _rewrite_metadata(archive.read(f"{old_info}/METADATA").decode())
        dropped = sorted(n for n in names if COMPILED_EXTENSION.match(n))
        wheel_text = archive.read(f"{old_info}/WHEEL").decode()
        generator = next((line.partition(": ")[2] for line in wheel_text.splitlines()
                          if line.startswith("Generator: ")), "unknown")
        replaced = {
            f"{new_info}/METADATA": metadata,
            f"{new_info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: {generator}; rewritten by the MEC pipeline's "
                                  "workflow/detectron2_install.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        }
        if f"{old_info}/LICENSE" not in names:
            raise InstallError(f"{source} has no {old_info}/LICENSE: refusing to rewrite an unlicensed copy")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{DISTRIBUTION}-{VERSION}-py3-none-any.whl"
        partial = target.with_name(target.name + ".partial")
        record_rows: list[list[str]] = []
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
            def add(name: str, data: bytes, date_time: tuple = FIXED_DATE, mode: int = 0o644,
                    record: bool = True) -> None:
                info = zipfile.ZipInfo(name, date_time)  # fixed dates and modes: the same bytes each time
                info.external_attr = (mode & 0xFFFF) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(info, data)
                if record:
                    record_rows.append([name, record_hash(data), str(len(data))])

            for item in archive.infolist():
                name = item.filename
                if item.is_dir() or name in dropped or name == f"{old_info}/RECORD":
                    continue
                if name.startswith(old_info + "/"):
                    name = new_info + name[len(old_info):]
                data = replaced[name].encode() if name in replaced else archive.read(item)
                add(name, data, item.date_time, (item.external_attr >> 16) or 0o644)
            add(f"{new_info}/{CHANGES_FILE}", _changes_text(source, dropped, requirements).encode())
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerows(record_rows)
            writer.writerow([f"{new_info}/RECORD", "", ""])
            add(f"{new_info}/RECORD", buffer.getvalue().encode(), record=False)
        partial.replace(target)
    return RewriteResult(target, tuple(dropped), requirements)


# ---- What is installed ----------------------------------------------------------------------------------------------

# Run in a fresh interpreter (the running one may hold an older import): prints one JSON line.
_PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json, pathlib
out = {"importable": False}
spec = importlib.util.find_spec("detectron2")
if spec is not None and spec.origin:  # an empty folder (a namespace package) is not an installation
    out["location"] = str(pathlib.Path(spec.origin).parent)
    try:
        import detectron2
        out["importable"] = True
        out["module_version"] = getattr(detectron2, "__version__", None)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    try:
        importlib.import_module("detectron2._C")
        out["has_C"] = True
    except Exception:
        out["has_C"] = False
    names = sorted(set(md.packages_distributions().get("detectron2", [])))
    out["distributions"] = names
    if names:
        dist = md.distribution(names[0])
        out["distribution"], out["version"] = dist.metadata["Name"], dist.version
        if dist.read_text(__CHANGES__) is not None:
            out["source"] = __REWRITTEN__
        else:
            url = json.loads(dist.read_text("direct_url.json") or "{}")
            commit = url.get("vcs_info", {}).get("commit_id")
            out["source"] = (url.get("url", "") + (f"@{commit}" if commit else "")) or "a package index"
    else:
        out["source"] = "a folder on sys.path (no distribution metadata)"
print(json.dumps(out))
"""


def probe() -> dict:
    """What `import detectron2` finds in this interpreter's environment, asked of a fresh interpreter."""
    code = _PROBE.replace("__CHANGES__", repr(CHANGES_FILE)).replace("__REWRITTEN__", repr(REWRITTEN_SOURCE))
    try:
        # -P: not the current folder first (a detectron2 clone there is not an installation).
        result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot ask {sys.executable} about detectron2: {exc}") from exc
    if result.returncode != 0:
        raise InstallError(f"asking {sys.executable} about detectron2 failed: {_last_line(result.stderr)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(state: dict) -> str:
    version = state.get("version") or state.get("module_version") or "unknown version"
    name = state.get("distribution") or "no distribution metadata"
    c_ext = "with its _C extension" if state.get("has_C") else "without _C (pure Python)"
    return f"detectron2 {version} ({name}) at {state.get('location')}, {c_ext}; source: {state.get('source', '?')}"


def write_record(path: Path, state: dict) -> None:
    record = {key: state.get(key) for key in ("distribution", "version", "module_version", "location", "has_C",
                                              "source")}
    record["python"] = sys.executable
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise InstallError(f"cannot write the record {path}: {exc}") from exc


# ---- The step -------------------------------------------------------------------------------------------------------

def install(args: argparse.Namespace) -> int:
    state = probe()
    if state.get("location") and not state.get("importable") and not args.force:
        raise InstallError(f"detectron2 at {state['location']} does not import ({state.get('error')}); "
                           "--force replaces it")
    if state.get("importable") and not args.force:
        print(f"{PROG}: already installed, left alone (--force replaces it): {describe(state)}")
        if args.record:
            write_record(args.record, state)
        return 0
    constraints = [arg for c in args.constraint for arg in ("--constraint", str(c))]
    for c in args.constraint:
        if not c.is_file():
            raise InstallError(f"no such constraints file: {c}")
    if args.from_source:
        target = f"git+{UPSTREAM_REPOSITORY}@{UPSTREAM_COMMIT}"
        source = target
    else:
        wheel = obtain_wheel(args.cache_dir, args.wheel)
        rewritten = rewrite_wheel(wheel, args.cache_dir / "rewritten")
        print(f"{PROG}: {wheel.name} (sha256 verified) -> {rewritten.wheel.name}, dropped "
              f"{', '.join(rewritten.dropped) or 'nothing'}", flush=True)
        target = str(rewritten.wheel)
        source = REWRITTEN_SOURCE
    if state.get("distributions"):  # --force: what provided detectron2 goes first (sal-detectron2 shares its files)
        print(f"{PROG}: uninstalling {', '.join(state['distributions'])}", flush=True)
        result = _pip(["uninstall", "--yes", *state["distributions"]], capture=True)
        if result.returncode != 0:
            raise InstallError(f"pip uninstall {' '.join(state['distributions'])} failed (exit {result.returncode}): "
                               f"{_last_line(result.stderr + result.stdout)}")
    build = ["--no-build-isolation"] if args.from_source else []
    print(f"{PROG}: pip install {target}", flush=True)
    result = _pip(["install", *(["--quiet"] if args.quiet else []), *build, *constraints, target], capture=False)
    if result.returncode != 0:
        raise InstallError(f"pip install {target} failed (exit {result.returncode}); pip's messages are above")
    state = probe()
    if not state.get("importable"):
        raise InstallError(f"installed, but detectron2 does not import: {state.get('error', 'not found')}")
    state["source"] = source
    print(f"{PROG}: installed {describe(state)}")
    if args.record:
        write_record(args.record, state)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--force", action="store_true",
                        help="install even if detectron2 already imports (what provided it is uninstalled first)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--wheel", type=Path, metavar="FILE",
                     help=f"a downloaded copy of {SOURCE_WHEEL} (offline clusters); its sha256 is checked")
    how.add_argument("--from-source", action="store_true",
                     help=f"build upstream commit {UPSTREAM_COMMIT[:7]} from GitHub with --no-build-isolation "
                          "(GPU clusters: needs GitHub, a compiler, and torch already installed); keeps _C")
    parser.add_argument("--constraint", "-c", type=Path, action="append", default=[], metavar="FILE",
                        help="pip constraints file for the install (CI passes constraints/ci.txt); repeatable")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="write what is installed as JSON (version, location, has_C, source)")
    parser.add_argument("--quiet", "-q", action="store_true", help="pip install without its progress (CI)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), metavar="DIR",
                        help="where the downloaded and rewritten wheels are kept (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    """The step; a failure is one line on stderr and exit status 1."""
    try:
        return install(args)
    except InstallError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=f"python -m workflow.{PROG}", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
