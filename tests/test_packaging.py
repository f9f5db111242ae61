"""Packaging: the wheel (what `pip install .` installs) holds every module and data file of
service/relais and export/relais_export; a checkout imports without installing; the
build prints no setuptools warnings.

The wheel is built from a copy of the tree (no build isolation, no dependencies), so
the test takes seconds and never writes build/ or *.egg-info into the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"service": "relais", "export": "relais_export"}
SKIP_PARTS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def tree_files() -> set[str]:
    """Files of both packages in the checkout, as wheel paths (``relais/v1/translator_pb2.pyi``)."""
    found = set()
    for folder, package in PACKAGES.items():
        base = ROOT / folder
        for path in (base / package).rglob("*"):
            rel = path.relative_to(base)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and path.suffix not in SKIP_SUFFIXES:
                found.add(rel.as_posix())
    return found


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory):
    """(wheel path, build output) of `pip wheel --no-deps --no-build-isolation` over a copy of the tree."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--disable-pip-version-check", "-v", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(out.glob("relais-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], done.stdout + done.stderr


def test_wheel_holds_every_module_and_data_file_of_the_tree(wheel_build):
    wheel, _ = wheel_build
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if ".dist-info/" not in n}
    expected = tree_files()
    # the ones that matter most, named so a broken tree walk cannot pass vacuously
    assert {"relais/py.typed", "relais/v1/translator_pb2.pyi", "relais/data/samples/fr_fleurs_1857.wav",
            "relais/cli/__init__.py", "relais/data/samples/README.md",
            "relais_export/whisper/export.py"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"{len(missing)} file(s) of the tree are not in the wheel: {missing[:20]}"
    extra = sorted(names - expected)
    assert not extra, f"the wheel has files the tree does not: {extra[:20]}"


def test_wheel_build_prints_no_setuptools_warnings(wheel_build):
    _, output = wheel_build
    warnings = [line for line in output.splitlines()
                if "SetuptoolsDeprecationWarning" in line or "_Warning" in line or "!!" in line
                or "is absent from the `packages` configuration" in line]
    assert not warnings, "\n".join(warnings[:20])


def test_wheel_declares_the_extras(wheel_build):
    wheel, _ = wheel_build
    with zipfile.ZipFile(wheel) as zf:
        meta = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    extras = {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")}
    assert {"models", "export", "eval", "gpu", "test"} <= extras
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    # the documented pip path never installs silero-vad (its package pulls torch + torchaudio)
    assert not any("silero" in line for line in requires), requires


def test_checkout_imports_without_installing(tmp_path):
    """`PYTHONPATH=service:export python -c "import relais.server, relais_export"` from a checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(["service", "export"])
    code = ("import relais, relais.server, relais_export, relais_export.prepare; "
            "print(relais.__file__); print(relais_export.__file__)")
    # -S: no site-packages .pth files, so an editable install or relais-src.pth cannot help
    # (the dependencies are then found through the venv's site-packages added explicitly)
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env["PYTHONPATH"] += os.pathsep + site
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    relais_file, export_file = done.stdout.split()
    assert Path(relais_file).resolve() == ROOT / "service" / "relais" / "__init__.py"
    assert Path(export_file).resolve() == ROOT / "export" / "relais_export" / "__init__.py"
