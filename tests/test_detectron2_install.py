"""detectron2's install step (workflow/detectron2_install.py): the rewrite of the pinned sal-detectron2 wheel into a
pure-Python `detectron2` wheel, its checks, the CLI's already-installed path, and the built-dependencies declaration
that .ci/check_imports.py reads. No network: the wheels here are small fakes with the real one's layout."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workflow import detectron2_install as d2

ROOT = Path(__file__).resolve().parent.parent
OLD_INFO = "sal_detectron2-0.7.2.dist-info"
NEW_INFO = f"detectron2-{d2.VERSION}.dist-info"
SO_NAME = "detectron2/_C.cpython-310-x86_64-linux-gnu.so"
# The real wheel's METADATA (sal_detectron2-0.7.2-cp310-none-any.whl), requirements included.
SAL_METADATA = """Metadata-Version: 2.1
Name: sal-detectron2
Version: 0.7.2
Summary: Segmenant Anything in Lidar (SAL) package of: Detectron2 is FAIR's next-generation research platform for \
object detection and segmentation.
Home-page: https://github.com/facebookresearch/detectron2
Author: FAIR
Requires-Python: >=3.8
License-File: LICENSE
Requires-Dist: Pillow>=7.1
Requires-Dist: matplotlib
Requires-Dist: pycocotools>=2.0.2
Requires-Dist: termcolor>=1.1
Requires-Dist: yacs>=0.1.8
Requires-Dist: tabulate
Requires-Dist: cloudpickle
Requires-Dist: tqdm>4.29.0
Requires-Dist: tensorboard
Requires-Dist: numpy<2
Requires-Dist: dataclasses; python_version < "3.7"
Requires-Dist: omegaconf<2.4,>=2.1
Requires-Dist: hydra-core>=1.1
Requires-Dist: black
Requires-Dist: packaging
Provides-Extra: all
Requires-Dist: fairscale; extra == "all"
Requires-Dist: timm; extra == "all"
Requires-Dist: scipy>1.5.1; extra == "all"
Requires-Dist: shapely; extra == "all"
Requires-Dist: pygments>=2.2; extra == "all"
Requires-Dist: psutil; extra == "all"
Provides-Extra: dev
Requires-Dist: flake8==6.0.0; extra == "dev"
Requires-Dist: isort==5.12.0; extra == "dev"
Requires-Dist: flake8-bugbear; extra == "dev"
Requires-Dist: flake8-comprehensions; extra == "dev"
Requires-Dist: black==23.3.0; extra == "dev"
"""
SAL_WHEEL = """Wheel-Version: 1.0
Generator: setuptools (75.6.0)
Root-Is-Purelib: false
Tag: cp310-cp310-linux_x86_64
"""
LICENSE = "                                 Apache License\n                           Version 2.0, January 2004\n"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fake_sal_wheel(folder: Path, *, license_file: bool = True) -> Path:
    """A small wheel laid out like sal_detectron2-0.7.2-cp310-none-any.whl (RECORD first-hand, as setuptools wrote)."""
    files = {
        "tools/__init__.py": b"",
        "tools/train_net.py": b"import detectron2\n",
        "detectron2/__init__.py": b'__version__ = "0.7.2"\n',
        "detectron2/config/__init__.py": b"def get_cfg():\n    return {}\n",
        "detectron2/model_zoo/configs/PascalVOC-Detection/faster_rcnn_R_50_C4.yaml": b"MODEL: {}\n",
        SO_NAME: b"\x7fELF not really a shared object",
        f"{OLD_INFO}/METADATA": SAL_METADATA.encode(),
        f"{OLD_INFO}/WHEEL": SAL_WHEEL.encode(),
        f"{OLD_INFO}/top_level.txt": b"detectron2\ntools\n",
    }
    if license_file:
        files[f"{OLD_INFO}/LICENSE"] = LICENSE.encode()
    rows = [f"{name},{record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{OLD_INFO}/RECORD"] = ("\n".join([*rows, f"{OLD_INFO}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / d2.SOURCE_WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def read_wheel(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as wheel:
        return {name: wheel.read(name) for name in wheel.namelist()}


def requirements(metadata: str) -> list[str]:
    return [line.partition(": ")[2] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]


@pytest.fixture
def rewritten(tmp_path: Path) -> tuple[d2.RewriteResult, dict[str, bytes]]:
    result = d2.rewrite_wheel(fake_sal_wheel(tmp_path / "in"), tmp_path / "out")
    return result, read_wheel(result.wheel)


def test_the_rewrite_drops_the_compiled_extension_and_renames_the_distribution(rewritten) -> None:
    result, files = rewritten
    assert result.wheel.name == f"detectron2-{d2.VERSION}-py3-none-any.whl"
    assert result.dropped == (SO_NAME,)
    assert not [name for name in files if name.endswith((".so", ".pyd"))]
    assert not [name for name in files if name.startswith(OLD_INFO)]
    assert {name.split("/")[0] for name in files} == {"detectron2", "tools", NEW_INFO}
    assert files["detectron2/__init__.py"] == b'__version__ = "0.7.2"\n'  # the Python code is untouched
    metadata = files[f"{NEW_INFO}/METADATA"].decode()
    assert "Name: detectron2\n" in metadata and f"Version: {d2.VERSION}\n" in metadata
    wheel = files[f"{NEW_INFO}/WHEEL"].decode()
    assert "Root-Is-Purelib: true" in wheel
    assert [line for line in wheel.splitlines() if line.startswith("Tag:")] == ["Tag: py3-none-any"]


def test_the_rewrite_fixes_the_requirements(rewritten) -> None:
    _, files = rewritten
    required = requirements(files[f"{NEW_INFO}/METADATA"].decode())
    assert "numpy<2" not in required and "numpy" in required
    assert "black" not in required
    assert 'black==23.3.0; extra == "dev"' in required  # an extra's requirements are left as they were
    for added in ("fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "setuptools<82"):
        assert added in required
    assert len(required) == len(set(required))
    unconditional = [r for r in required if ";" not in r]
    assert required.index(unconditional[-1]) < required.index('fairscale; extra == "all"')


def test_the_rewritten_record_lists_every_file_with_its_hash(rewritten) -> None:
    _, files = rewritten
    rows = list(csv.reader(io.StringIO(files[f"{NEW_INFO}/RECORD"].decode())))
    listed = {name: (digest, size) for name, digest, size in rows}
    assert set(listed) == set(files)
    assert listed[f"{NEW_INFO}/RECORD"] == ("", "")
    for name, data in files.items():
        if name != f"{NEW_INFO}/RECORD":
            assert listed[name] == (record_hash(data), str(len(data))), name


def test_the_licence_is_kept_and_the_changes_are_stated(rewritten) -> None:
    _, files = rewritten
    assert files[f"{NEW_INFO}/LICENSE"] == LICENSE.encode()
    changes = files[f"{NEW_INFO}/{d2.CHANGES_FILE}"].decode()
    for fact in ("Apache-2.0", d2.UPSTREAM_COMMIT, d2.SOURCE_WHEEL_SHA256, SO_NAME, "numpy<2", "black",
                 "py3-none-any", "--from-source"):
        assert fact in changes, fact


def test_the_rewrite_gives_the_same_bytes_each_time(tmp_path: Path, rewritten) -> None:
    result, _ = rewritten
    again = d2.rewrite_wheel(fake_sal_wheel(tmp_path / "in2"), tmp_path / "out2")
    assert d2.file_sha256(again.wheel) == d2.file_sha256(result.wheel)


def test_a_wheel_without_its_licence_or_not_a_wheel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(d2.InstallError, match="no sal_detectron2-0.7.2.dist-info/LICENSE"):
        d2.rewrite_wheel(fake_sal_wheel(tmp_path / "a", license_file=False), tmp_path / "out")
    junk = tmp_path / "junk.whl"
    junk.write_text("not a zip")
    with pytest.raises(d2.InstallError, match="is not a readable wheel"):
        d2.rewrite_wheel(junk, tmp_path / "out")


def run_step(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, for the paths that end before any download or install."""
    base = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "workflow.cli", "install-detectron2", *args], cwd=ROOT,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=300)


def assert_one_line_error(rc: int, stdout: str, stderr: str, *fragments: str) -> None:
    assert rc == 1, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detectron2_install: error: "), stderr
    assert "Traceback" not in stdout + stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step in this process, seeing no detectron2, with the registry out of reach and installs forbidden (so a
    test can never change this environment)."""
    monkeypatch.setattr(d2, "probe", lambda: {"importable": False})
    real_pip = d2._pip

    def pip(args: list[str], *, capture: bool) -> subprocess.CompletedProcess:
        assert args[0] == "download", f"the test would run pip {args[0]}"
        return real_pip(args, capture=capture)

    monkeypatch.setattr(d2, "_pip", pip)
    for key, value in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)


def test_a_wheel_whose_hash_differs_is_one_line_naming_both_hashes(tmp_path: Path, absent, capsys) -> None:
    wheel = fake_sal_wheel(tmp_path / "in")
    rc = d2.main(["--wheel", str(wheel), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err, f"sha256 mismatch for {wheel}",
                          f"expected {d2.SOURCE_WHEEL_SHA256}", f"got {d2.file_sha256(wheel)}")
    assert not list(tmp_path.rglob("detectron2-*.whl"))


def test_a_cached_wheel_whose_hash_differs_is_refused_too(tmp_path: Path, absent, capsys) -> None:
    fake_sal_wheel(tmp_path / "cache")  # stored under the pinned file name
    rc = d2.main(["--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err, f"sha256 mismatch for {tmp_path / 'cache' / d2.SOURCE_WHEEL}")


def test_no_registry_is_one_line(tmp_path: Path, absent, capsys) -> None:
    rc = d2.main(["--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err,
                          f"pip download {d2.SOURCE_DISTRIBUTION}=={d2.SOURCE_VERSION} failed", "--wheel FILE")


def test_a_missing_wheel_or_constraints_file_is_one_line(tmp_path: Path, absent, capsys) -> None:
    rc = d2.main(["--wheel", str(tmp_path / "nothing.whl")])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err, "no such wheel")
    rc = d2.main(["--wheel", str(tmp_path / "nothing.whl"), "--constraint", str(tmp_path / "c.txt")])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err, "no such constraints file")


class FakePip:
    """Stands in for pip: records each call, installs nothing."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], *, capture: bool) -> subprocess.CompletedProcess:
        self.calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")


def installed_after(monkeypatch: pytest.MonkeyPatch, before: dict) -> None:
    states = iter([before, {"importable": True, "location": "/site/detectron2", "distribution": "detectron2",
                            "version": d2.VERSION, "has_C": False}])
    monkeypatch.setattr(d2, "probe", lambda: next(states))


def test_the_wheel_path_installs_the_rewritten_wheel_with_the_constraints(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    pip = FakePip()
    monkeypatch.setattr(d2, "_pip", pip)
    monkeypatch.setattr(d2, "obtain_wheel", lambda cache, wheel: fake_sal_wheel(tmp_path / "in"))  # hash not pinned
    installed_after(monkeypatch, {"importable": False})
    constraints = tmp_path / "ci.txt"
    constraints.write_text("numpy==2.4.6\n")
    record = tmp_path / "record.json"
    rc = d2.main(["--constraint", str(constraints), "--cache-dir", str(tmp_path / "cache"), "--record", str(record)])
    assert rc == 0, capsys.readouterr().err
    wheel = tmp_path / "cache" / "rewritten" / f"detectron2-{d2.VERSION}-py3-none-any.whl"
    assert pip.calls == [["install", "--constraint", str(constraints), str(wheel)]]
    written = json.loads(record.read_text())
    assert written["version"] == d2.VERSION and written["source"] == d2.REWRITTEN_SOURCE


def test_from_source_builds_the_pinned_commit_without_build_isolation(tmp_path: Path, monkeypatch, capsys) -> None:
    pip = FakePip()
    monkeypatch.setattr(d2, "_pip", pip)
    installed_after(monkeypatch, {"importable": True, "location": "/site/detectron2",
                                  "distributions": ["sal-detectron2"]})
    assert d2.main(["--from-source", "--force", "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert pip.calls == [
        ["uninstall", "--yes", "sal-detectron2"],  # what provided detectron2 before goes first (--force)
        ["install", "--quiet", "--no-build-isolation", f"git+{d2.UPSTREAM_REPOSITORY}@{d2.UPSTREAM_COMMIT}"],
    ]
    assert len(d2.UPSTREAM_COMMIT) == 40
    assert not (tmp_path / "cache").exists()


def test_a_failed_pip_install_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(d2, "_pip", lambda args, capture: subprocess.CompletedProcess(args, 1, "", "ERROR: boom"))
    monkeypatch.setattr(d2, "probe", lambda: {"importable": False})
    rc = d2.main(["--from-source"])
    out = capsys.readouterr()
    assert_one_line_error(rc, out.out, out.err, "pip install git+", "failed (exit 1)")


def test_an_installed_detectron2_is_reported_and_left_alone(tmp_path: Path) -> None:
    # A detectron2 on PYTHONPATH (as a from-source build on a cluster would be importable): no install happens.
    site = tmp_path / "site"
    (site / "detectron2").mkdir(parents=True)
    (site / "detectron2" / "__init__.py").write_text('__version__ = "0.6"\n')
    record = tmp_path / "out" / "detectron2.json"
    result = run_step("--record", str(record), "--cache-dir", str(tmp_path / "cache"),
                      env={"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already installed, left alone" in result.stdout
    assert not (tmp_path / "cache").exists()
    written = json.loads(record.read_text())
    assert written["location"] == str(site / "detectron2")
    assert written["module_version"] == "0.6"
    assert written["has_C"] is False
    assert set(written) >= {"distribution", "version", "location", "has_C", "source"}


def test_a_detectron2_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "detectron2").mkdir(parents=True)
    (site / "detectron2" / "__init__.py").write_text("raise ImportError('broken build')\n")
    result = run_step(env={"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    assert_one_line_error(result.returncode, result.stdout, result.stderr, "does not import", "broken build",
                          "--force")


def test_pip_accepts_the_rewritten_wheel(tmp_path: Path, rewritten) -> None:
    result, _ = rewritten
    target = tmp_path / "target"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                              "--target", str(target), str(result.wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / NEW_INFO / d2.CHANGES_FILE).is_file()
    assert not list(target.rglob("*.so"))
    code = "import importlib.metadata as m, sys; sys.path.insert(0, sys.argv[1]); print(m.version('detectron2'))"
    show = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert show.stdout.strip() == d2.VERSION, show.stderr


# ---- The real wheel and the real installation ------------------------------------------------------------------------

def real_wheel() -> Path | None:
    for candidate in (os.environ.get("MEC_SAL_DETECTRON2_WHEEL"), d2.default_cache_dir() / d2.SOURCE_WHEEL):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.slow
@pytest.mark.skipif(real_wheel() is None,
                    reason=f"no downloaded {d2.SOURCE_WHEEL} (the cache, or $MEC_SAL_DETECTRON2_WHEEL)")
def test_the_real_wheel_verifies_rewrites_and_installs(tmp_path: Path) -> None:
    wheel = d2.obtain_wheel(tmp_path / "cache", real_wheel())
    result = d2.rewrite_wheel(wheel, tmp_path / "out")
    assert result.dropped == (SO_NAME,)
    with zipfile.ZipFile(wheel) as original:
        kept = {n for n in original.namelist() if not n.startswith(OLD_INFO) and n != SO_NAME}
    files = read_wheel(result.wheel)
    assert {n for n in files if not n.startswith(NEW_INFO)} == kept
    target = tmp_path / "target"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                              "--target", str(target), str(result.wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    configs = target / "detectron2" / "model_zoo" / "configs"
    assert (configs / "PascalVOC-Detection" / "faster_rcnn_R_50_C4.yaml").is_file()


def test_the_installed_detectron2_is_pure_python_and_builds_a_config() -> None:
    detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (mec install-detectron2)")
    from detectron2.config import get_cfg

    cfg = get_cfg()
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    state = d2.probe()
    assert state["importable"] and state["location"] == str(Path(detectron2.__file__).parent)
    if state.get("distribution") == d2.DISTRIBUTION and state["version"] == d2.VERSION:
        assert state["has_C"] is False  # the rewritten wheel carries no _C


# ---- The declaration .ci/check_imports.py reads ---------------------------------------------------------------------

def check_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "check_imports.py"), str(root)], capture_output=True,
                          text=True, timeout=120)


def test_pyproject_declares_detectron2_as_built_by_this_step() -> None:
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mec-pipeline"]
    assert tool["built-dependencies"] == {"detectron2": "workflow/detectron2_install.py"}


def test_check_imports_accepts_a_built_dependency_and_only_its_modules(tmp_path: Path) -> None:
    # Declared as built: PyYAML (installed here, its module is yaml) and one installed nowhere (its module counts as
    # its own name, as detectron2 before the step has run).
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = []\n[tool.mec-pipeline]\n'
        'built-dependencies = { PyYAML = "workflow/install.py", mec_not_installed = "workflow/install.py" }\n')
    files = {
        "workflow/__init__.py": "", "workflow/install.py": "", "evals/__init__.py": "",
        # numpy is a requirement of neither, and not a module either provides: it needs its own declaration.
        "evals/det.py": "import yaml\nimport mec_not_installed.config\nimport numpy\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = check_imports(tmp_path)
    assert result.returncode == 1
    assert [line.split(" (")[0] for line in result.stdout.splitlines()[:-1]] == ["evals/det.py:3: imports numpy"]
    (tmp_path / "workflow" / "install.py").unlink()
    assert "names workflow/install.py as the installer of mec-not-installed, but there is no such file" in \
        check_imports(tmp_path).stdout
