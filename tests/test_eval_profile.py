"""`relais eval --profile key=value,...`: parsing, the engine config it builds, and where it is recorded."""

import dataclasses

import pytest

from relais.cli import main
from relais.eval.command import parse_profile
from relais.eval.runner import ProfileError, engine_config
from relais.pipeline.engine import EngineConfig

HAS_OVERRIDES = "latency_overrides" in {f.name for f in dataclasses.fields(EngineConfig)}


def test_pairs_take_the_type_of_the_profile_field():
    assert parse_profile(["step_s=0.5, phrase_max_words=4", "agreement=3"], "low") == \
        {"step_s": 0.5, "phrase_max_words": 4, "agreement": 3}
    got = parse_profile("step_s=2")
    assert got == {"step_s": 2.0} and isinstance(got["step_s"], float)
    assert parse_profile([]) == {} and parse_profile(["", " , "]) == {}


@pytest.mark.parametrize("items, message", [
    ("colour=blue", "'colour' is not a latency profile field"),
    ("name=fast", "'name' is not a latency profile field"),
    ("step_s", "key=value pairs"),
    ("step_s=", "key=value pairs"),
    ("step_s=soon", "step_s: expected float, got 'soon'"),
    ("agreement=2.5", "agreement: expected int"),
])
def test_bad_pairs_are_refused_clearly(items, message):
    with pytest.raises(ValueError, match=message):
        parse_profile(items)


@pytest.mark.skipif(not HAS_OVERRIDES, reason="EngineConfig has no latency_overrides in this tree")
def test_the_engine_checks_values_and_receives_the_overrides():
    with pytest.raises(ValueError, match="--profile: policy must be one of"):
        parse_profile("policy=fastest")
    overrides = parse_profile("policy=alignatt,frame_threshold=12")
    assert engine_config(None, overrides).latency_overrides == {"policy": "alignatt", "frame_threshold": 12}
    assert engine_config(None, None).latency_overrides == {}
    with pytest.raises(ProfileError, match="--profile: "):
        engine_config(None, {"step_s": 99.0})


def test_cli_refuses_bad_profiles_before_loading_anything(tmp_path, capsys):
    manifest = tmp_path / "none.tsv"
    assert main(["eval", "--manifest", str(manifest), "--profile", "colour=blue"]) == 2
    assert "error: --profile: 'colour' is not a latency profile field" in capsys.readouterr().err
    assert main(["eval", "--manifest", str(manifest), "--server", "127.0.0.1:1", "--profile", "step_s=0.5"]) == 2
    assert "a running --server keeps its own" in capsys.readouterr().err


def test_overrides_are_recorded_in_results_json_and_the_markdown_header(tmp_path):
    import json

    from relais.eval.report import write
    from relais.eval.results import EvalResults, RunMeta, summarise

    meta = RunMeta("m.tsv", "2026-01-01T00:00:00", "cpu", "in-process", "realtime", "balanced", "fr", "en", 100,
                   False, None, None, "norm", latency_overrides={"policy": "alignatt", "step_s": 0.5})
    write(EvalResults(meta, summarise([]), []), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["latency_overrides"] == \
        {"policy": "alignatt", "step_s": 0.5}
    assert " · latency balanced + policy=alignatt, step_s=0.5 · " in (tmp_path / "results.md").read_text()


def test_the_speech_ramp_is_a_profile_key_that_reaches_the_speaker():
    """speedup_from_s / speedup_full_s / min_length_factor: the backlog ramp of the speaking rate."""
    from relais.pipeline.engine import LATENCY_PROFILES

    profile = LATENCY_PROFILES["balanced"].with_overrides(parse_profile("speedup_from_s=1.5,speedup_full_s=4"))
    speech = profile.speech_settings()
    assert (speech.speedup_from_s, speech.speedup_full_s) == (1.5, 4.0)
    assert speech.length_factor(1.5) == 1.0 and speech.length_factor(4.0) == pytest.approx(profile.min_length_factor)
    with pytest.raises(ValueError, match="speedup_from_s < speedup_full_s"):
        LATENCY_PROFILES["balanced"].with_overrides({"speedup_from_s": 3.0})
    # resume_phrases: every mode voices a phrase of an open sentence as resuming it; 0 turns that off
    assert all(p.speech_settings().resume_phrases for p in LATENCY_PROFILES.values())
    assert not LATENCY_PROFILES["balanced"].with_overrides(parse_profile("resume_phrases=0")).speech_settings(
    ).resume_phrases
    with pytest.raises(ValueError, match="resume_phrases must be 0 or 1, got 2"):
        LATENCY_PROFILES["balanced"].with_overrides({"resume_phrases": 2})


def test_the_first_commit_keys_are_profile_keys_that_every_mode_leaves_off():
    """first_frame_threshold / first_commit_words: an utterance's first commit (docs/streaming.md)."""
    from relais.pipeline.engine import LATENCY_PROFILES

    assert all(p.first_frame_threshold == 0 and p.first_commit_words == 0 for p in LATENCY_PROFILES.values())
    profile = LATENCY_PROFILES["balanced"].with_overrides(parse_profile("first_frame_threshold=20,first_commit_words=1"))
    assert (profile.first_frame_threshold, profile.first_commit_words) == (20, 1)
    with pytest.raises(ValueError, match="first_commit_words"):
        LATENCY_PROFILES["balanced"].with_overrides({"first_commit_words": -1})


@pytest.mark.skipif(not HAS_OVERRIDES, reason="EngineConfig has no latency_overrides in this tree")
def test_the_in_process_server_keeps_the_environments_overrides_under_profile(monkeypatch):
    """RELAIS_LATENCY_OVERRIDES applies to the eval's in-process server as to `relais serve`; --profile
    goes on top, and results.json records what the streams got."""
    import argparse

    from relais.eval.command import _recorded_overrides

    monkeypatch.setenv("RELAIS_LATENCY_OVERRIDES", "first_commit_words=1,frame_threshold=40")
    assert engine_config(None, None).latency_overrides == {"first_commit_words": 1, "frame_threshold": 40}
    merged = engine_config(None, {"frame_threshold": 30}).latency_overrides
    assert merged == {"first_commit_words": 1, "frame_threshold": 30}
    assert _recorded_overrides(argparse.Namespace(server=None), {"frame_threshold": 30}) == merged
    assert _recorded_overrides(argparse.Namespace(server="host:1"), {}) == {}  # a running server's own: unknown
