"""Simultaneous-translation latency scores, after SimulEval's definitions.

Delays are in seconds of source time: for computation-unaware scores, how much
source audio had been received when an output word was emitted; for
computation-aware scores, the wall-clock time (since the first audio was sent, with
audio sent in real time) at which the client received it.

* AL (Ma et al., 2019) and LAAL (Papi et al., 2022) over output words:
  ``(1/tau) * sum_{i<=tau} (d_i - (i-1) * |X| / n)``, where ``tau`` is the index of the
  first word emitted once the whole source was read (else the last word), ``|X|`` the
  source duration, and ``n`` the hypothesis length (AL) or
  ``max(hypothesis, reference)`` length (LAAL).
* StartOffset: delay of the first output; EndOffset: end of the last output minus
  the source duration. For speech output each chunk is placed at
  ``max(previous end, its emission time)`` and played for its duration.
"""

from __future__ import annotations

from dataclasses import dataclass


def word_delays(pieces: list[tuple[str, float]]) -> list[float]:
    """Expand (text, delay) pieces into one delay per output word."""
    return [delay for text, delay in pieces for _ in text.split()]


def average_lagging(delays: list[float], source_s: float, reference_words: int = 0) -> float:
    """AL; with ``reference_words`` given, LAAL (length-adaptive)."""
    if not delays:
        return 0.0
    n = max(len(delays), reference_words) if reference_words else len(delays)
    rate = source_s / n
    tau = next((i + 1 for i, d in enumerate(delays) if d >= source_s), len(delays))
    return sum(delays[i] - i * rate for i in range(tau)) / tau


@dataclass(frozen=True)
class SpeechTimeline:
    start_offset_s: float  # first audio out, from the start of the source
    end_offset_s: float  # end of the last audio (played back to back) minus source duration
    discontinuities: int  # gaps where playback had to wait for the next chunk
    discontinuity_s: float  # their total length


def speech_timeline(chunks: list[tuple[float, float]], source_s: float, gap_tolerance_s: float = 0.01) -> SpeechTimeline:
    """``chunks``: (emission delay, duration) of each output audio chunk, in order."""
    if not chunks:
        return SpeechTimeline(0.0, 0.0, 0, 0.0)
    end = 0.0
    gaps, gap_s = 0, 0.0
    for i, (emitted, duration) in enumerate(chunks):
        start = max(end, emitted)
        if i and start - end > gap_tolerance_s:
            gaps += 1
            gap_s += start - end
        end = start + duration
    return SpeechTimeline(chunks[0][0], end - source_s, gaps, gap_s)
