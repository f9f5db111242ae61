"""The files of ``relais translate``: input and output paths checked before any work, outputs written after.

    paths = plan_outputs(args.output, input_path, "en")   # ValueError: bad extension, a directory...
    check_audio_file(input_path)                          # ValueError: missing, not audio
    ... translate ...
    write_outputs(result, paths)                          # OUT.wav, OUT.txt, OUT.vtt

Nothing is created on disk until :func:`write_outputs`, so a refused command leaves
no empty directory behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relais.client import ClientResult

# Output audio is 16-bit PCM; these containers hold it losslessly (soundfile format names).
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
DEFAULT_OUTPUT_RATE_HZ = 22050  # when the server named no rate (no audio came back)


@dataclass(frozen=True)
class OutputPaths:
    audio: Path  # OUT.wav (or .flac): the translated speech
    text: Path  # OUT.txt: the translation
    subtitles: Path  # OUT.vtt: WebVTT cues timed on the output audio

    @property
    def audio_format(self) -> str:
        return OUTPUT_FORMATS[self.audio.suffix.lower()]


def supported_input_formats() -> list[str]:
    """What soundfile (libsndfile) reads here, as lower-case names (wav, flac, ogg, mp3...)."""
    import soundfile as sf

    return sorted(name.lower() for name in sf.available_formats() if name != "RAW")  # RAW needs a layout


def check_audio_file(path: Path) -> None:
    """A ValueError saying what is wrong unless ``path`` is an audio file soundfile can read."""
    import soundfile as sf

    if not path.exists():
        raise ValueError(f"input file {path} not found")
    if not path.is_file():
        raise ValueError(f"input {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"input file {path} is not readable (permissions)")
    try:
        with _c_stderr_silenced():  # libmpg123 prints "Note: Illegal Audio-MPEG-Header" itself
            info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        raise ValueError(f"{path} is not an audio file soundfile can read "
                         f"(supported: {', '.join(supported_input_formats())})") from None
    if info.frames <= 0:
        raise ValueError(f"{path} holds no audio (0 frames)")


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment (C libraries write there directly)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def plan_outputs(output: Path | None, input_path: Path, target_language: str) -> OutputPaths:
    """Where the outputs go (default ./INPUT_STEM.<to>.wav); a ValueError if they cannot go there."""
    audio = output if output is not None else Path.cwd() / f"{input_path.stem}.{target_language}.wav"
    if audio.suffix.lower() not in OUTPUT_FORMATS:
        got = f"{audio.suffix!r}" if audio.suffix else "no extension"
        raise ValueError(f"-o {audio}: the output audio must end in {' or '.join(OUTPUT_FORMATS)} (got {got}); "
                         f"the .txt and .vtt files are written next to it")
    if audio.is_dir():
        raise ValueError(f"-o {audio} is a directory; name the output file, e.g. {audio / 'out.wav'}")
    _check_writable_dir(audio.parent)
    return OutputPaths(audio, audio.with_suffix(".txt"), audio.with_suffix(".vtt"))


def _check_writable_dir(directory: Path) -> None:
    """``directory`` exists and is writable, or could be created (its nearest existing ancestor is)."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write outputs under {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write outputs under {directory}: {existing} is not writable")


def write_outputs(result: ClientResult, paths: OutputPaths) -> None:
    """The speech (16-bit PCM), the translation text and WebVTT subtitles timed on the speech."""
    import soundfile as sf

    from relais.subtitles import build_cues, merge_spans, render_vtt

    paths.audio.parent.mkdir(parents=True, exist_ok=True)
    rate_hz = result.output_sample_rate_hz or DEFAULT_OUTPUT_RATE_HZ
    sf.write(str(paths.audio), result.audio, rate_hz, format=paths.audio_format, subtype="PCM_16")
    translation = result.translation.strip()
    paths.text.write_text(translation + "\n" if translation else "")
    spans = merge_spans((c.output_start_s, c.output_end_s, c.text) for c in result.audio_chunks)
    paths.subtitles.write_text(render_vtt(build_cues(spans)))
