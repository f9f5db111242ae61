"""Where models go: the model cache and the test model cache honour XDG_CACHE_HOME and
their own variables, and a prepared set can be moved as a whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import prepared_models_dir
from relais.models.manifest import (ModelEntry, ModelSet, default_models_dir, load_model_set,
                                    models_location_help, relais_cache_dir)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("RELAIS_MODELS_DIR", "RELAIS_TEST_MODELS_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_without_variables_models_go_under_home_cache(clean_env, tmp_path):
    home_cache = tmp_path / "home" / ".cache" / "relais"
    assert relais_cache_dir() == home_cache
    assert default_models_dir() == home_cache / "models"
    assert prepared_models_dir() == home_cache / "test-models"


def test_xdg_cache_home_moves_both_caches(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_models_dir() == tmp_path / "xdg" / "relais" / "models"
    assert prepared_models_dir() == tmp_path / "xdg" / "relais" / "test-models"


def test_relative_xdg_cache_home_is_ignored_as_the_spec_says(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", "relative/cache")
    assert default_models_dir() == tmp_path / "home" / ".cache" / "relais" / "models"


def test_own_variables_win_over_xdg(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clean_env.setenv("RELAIS_MODELS_DIR", str(tmp_path / "m"))
    clean_env.setenv("RELAIS_TEST_MODELS_DIR", str(tmp_path / "t"))
    assert default_models_dir() == tmp_path / "m"
    assert prepared_models_dir() == tmp_path / "t"


def test_location_help_names_the_resolved_place_and_how_to_move(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    text = models_location_help()
    assert str(tmp_path / "xdg" / "relais" / "models") in text
    assert "RELAIS_MODELS_DIR" in text and "XDG_CACHE_HOME" in text and "--dir" in text


def test_a_prepared_set_still_loads_after_moving_its_directory(tmp_path):
    root = tmp_path / "before"
    (root / "vad").mkdir(parents=True)
    (root / "vad" / "model.onnx").write_bytes(b"weights")
    from relais.models.manifest import file_entries

    entry = ModelEntry(name="vad", task="vad", kind="silero_vad", dir="vad",
                       files=file_entries(root / "vad", ["model.onnx"]))
    ModelSet(root=root, models={"vad": entry}).save()
    moved = tmp_path / "elsewhere" / "models"
    moved.parent.mkdir()
    root.rename(moved)
    model_set = load_model_set(moved)
    assert model_set.path("vad") == moved / "vad"
    assert model_set.check_files() == []
    assert str(root) not in (moved / "models.yaml").read_text()


def test_metadata_is_read_from_the_file_as_onnxruntime_reads_it(model_set, tmp_path):
    """read_metadata skips the graph; it must give what an onnxruntime session reports, for every
    model of the prepared set, and say which file is broken when one is."""
    import onnxruntime as ort

    from relais.models.metadata import MetadataError, read_metadata, session_metadata

    files = sorted(model_set.root.rglob("*.onnx"))
    assert len(files) >= 6
    for path in files:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        assert read_metadata(path).facts == session_metadata(session, str(path)).facts, path
    decoder = model_set.path("whisper-base") / "decoder.int8.onnx"
    assert read_metadata(decoder).int("decoder_layers") == 6  # Whisper base
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(decoder.read_bytes()[:100_000])  # a download that stopped
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    for broken in (cut, text):
        with pytest.raises(MetadataError, match=f"{broken.name} is not a readable ONNX model"):
            read_metadata(broken)
