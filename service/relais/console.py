"""What ``relais translate`` shows on a terminal: live text while it streams, one summary line after.

The summary's lag says which clock it is on. At ``--speed`` > 0 the audio is paced
like a speaker, and the server's wall-clock lag (a phrase's end heard -> its
translation sent) is what a listener waits. At ``--speed 0`` the whole file arrives at
once, so wall-clock lag measures the queue of not-yet-processed audio, not the
system; the line then shows the computation-unaware lag instead: how many seconds of
source the server had read past a phrase's end when it committed the translation
(the figure ``relais eval --mode simulated`` reports).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from relais.client import ClientEvent, ClientResult


# ``--latency`` of `relais translate` and `relais eval`: what each mode does (the engine's
# LATENCY_PROFILES and the README's table say the same; a test keeps them in step).
LATENCY_CHOICES = ("low", "balanced", "quality")
LATENCY_HELP = ("how soon translation is committed and spoken: low = AlignAtt (commits what the audio heard so "
                "far supports) up to 0.68 s from the audio's end, every 1 s (every 0.5 s until an utterance's "
                "first words), beam search at each pause, groups speech at commas, sentence ends or every 4 words; "
                "balanced = AlignAtt up to 0.72 s from the end, every 1 s (every 0.5 s until an utterance's first "
                "words), beam search for every hypothesis and at each pause, commas, sentence ends or every 4 words; "
                "quality = AlignAtt up to 0.8 s from the end, every 1 s (every 0.5 s until an utterance's first "
                "words), beam search for every hypothesis and at each pause, sentence ends only. "
                "Waiting words are spoken at once whenever nothing is playing (default: balanced)")


class LiveText:
    """Shows translation as it arrives: partials on one updating stderr line (TTY only), finals on stdout."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.live = self.err.isatty()
        self._shown = False

    def __call__(self, event: ClientEvent) -> None:
        from relais.client import TextReceived

        if not isinstance(event, TextReceived) or not event.kind.startswith("translation"):
            return
        if event.kind == "translation_partial":
            if self.live:
                width = max(20, shutil.get_terminal_size((100, 20)).columns - 4)
                text = event.text.strip()
                text = text if len(text) <= width else "…" + text[-(width - 1):]
                self.err.write(f"\r\x1b[K\x1b[2m{text}\x1b[0m")
                self.err.flush()
                self._shown = bool(text)
            return
        self.clear()
        if event.text.strip():
            print(event.text.strip(), file=self.out, flush=True)

    def clear(self) -> None:
        if self.live and self._shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._shown = False


@contextlib.contextmanager
def quiet_library_logs(verbose: bool) -> Iterator[None]:
    """INFO logs of an in-process server would scribble over the live text: keep WARNING+ unless -v."""
    logger = logging.getLogger("relais")
    previous = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def lag_figure(result: ClientResult, speed: float) -> str:
    """The mean output lag, labelled with what it measures at this ``speed``."""
    if speed > 0:
        if result.summary is None:
            return "mean lag -"
        return (f"mean lag {result.summary.mean_output_lag_s:.2f} s "
                f"(wall clock: a phrase's end heard -> its translation)")
    finals = [t for t in result.texts if t.kind == "translation_final" and t.text.strip()]
    if not finals:
        return "mean lag -"
    lag_s = statistics.mean(max(0.0, t.emitted_source_received_s - t.source_end_s) for t in finals)
    return (f"mean lag {lag_s:.2f} s of source (computation-unaware: source read past a phrase's end "
            f"before its translation; at --speed 0 wall-clock lag only measures the queue)")


def summary_line(result: ClientResult, speed: float) -> str:
    s, t = result.summary, result.timings
    first_audio_s = s.first_audio_latency_s if s is not None and s.first_audio_latency_s else t.first_audio_arrival_s
    parts = [f"audio in {t.audio_in_s:.1f} s, out {result.audio_out_s:.1f} s",
             f"first audio {first_audio_s:.2f} s" if first_audio_s is not None else "first audio -",
             lag_figure(result, speed),
             f"RTF {s.real_time_factor:.2f}" if s is not None else f"wall/audio {t.client_rtf:.2f}"]
    if s is not None and s.degraded_fraction > 0:
        parts.append(f"server loaded: {s.degraded_fraction:.0%} of decisions skipped")
    return " | ".join(parts)
