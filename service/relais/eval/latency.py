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
* AP (Cho & Esipova, 2016): ``sum_i d_i / (|X| * |Y|)`` (a fraction of the source).
* DAL (Arivazhagan et al., 2019): ``d'_1 = d_1``, ``d'_i = max(d_i, d'_{i-1} + |X|/|Y|)``,
  ``DAL = (1/|Y|) * sum_i (d'_i - (i-1) * |X|/|Y|)`` over all output words.
* ATD (Kano et al., 2023): the source read between successive distinct emission
  times forms a chunk, cut into 300 ms tokens; output text words are tokens of
  length 0, output speech is cut into 300 ms tokens played back to back from their
  emission time. Output token ``t`` of chunk ``c`` is aligned with source token
  ``min(t - max(0, Y_<c - X_<c), X_<=c)`` (``X_<c``: source tokens of earlier chunks);
  ATD is the mean of (output token end - aligned source token end).

:func:`average_lagging` without a reference is Ma et al.'s AL over the hypothesis
length; :func:`simuleval_average_lagging` is SimulEval's AL (reference length).
Unlike SimulEval, :func:`average_lagging` does not return ``d_1`` when the first word
comes after the whole source (it then averages over that one word, which is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TimedText:
    """A piece of output text and its delay (seconds, on the clock the score uses)."""

    text: str
    delay_s: float


@dataclass(frozen=True)
class TimedSpeech:
    """An output audio chunk: its emission delay and how long it plays."""

    delay_s: float
    duration_s: float


def word_delays(pieces: list[TimedText]) -> list[float]:
    """Expand text pieces into one delay per output word."""
    return [p.delay_s for p in pieces for _ in p.text.split()]


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


def speech_timeline(chunks: list[TimedSpeech], source_s: float, gap_tolerance_s: float = 0.01) -> SpeechTimeline:
    """``chunks``: the output audio chunks, in order."""
    if not chunks:
        return SpeechTimeline(0.0, 0.0, 0, 0.0)
    end = 0.0
    gaps, gap_s = 0, 0.0
    for i, chunk in enumerate(chunks):
        start = max(end, chunk.delay_s)
        if i and start - end > gap_tolerance_s:
            gaps += 1
            gap_s += start - end
        end = start + chunk.duration_s
    return SpeechTimeline(chunks[0].delay_s, end - source_s, gaps, gap_s)


def simuleval_average_lagging(delays: list[float], source_s: float, reference_words: int = 0) -> float:
    """AL as SimulEval computes it: ``|Y|`` is the REFERENCE length when one is given (else the hypothesis),
    and a first word emitted after the whole source scores its own delay.

    With a reference shorter than the output this rewards over-generation (the ideal rate
    ``|X|/|Y|`` grows, so later words look early); LAAL (``max`` of both lengths) does not.
    """
    if not delays:
        return 0.0
    if delays[0] > source_s:
        return delays[0]
    n = reference_words or len(delays)
    rate = source_s / n
    tau = next((i + 1 for i, d in enumerate(delays) if d >= source_s), len(delays))
    return sum(delays[i] - i * rate for i in range(tau)) / tau


def average_proportion(delays: list[float], source_s: float) -> float:
    """AP: mean delay as a fraction of the source duration (0 = instant, 1 = waits for everything)."""
    if not delays or source_s <= 0:
        return 0.0
    return sum(delays) / (source_s * len(delays))


def differentiable_average_lagging(delays: list[float], source_s: float) -> float:
    """DAL: AL over every word, each word at least one "ideal word duration" after the previous one."""
    if not delays:
        return 0.0
    step = source_s / len(delays)
    total, previous = 0.0, 0.0
    for i, d in enumerate(delays):
        current = d if i == 0 else max(d, previous + step)
        total += current - i * step
        previous = current
    return total / len(delays)


def _split_tokens(length_s: float, token_s: float) -> list[float]:
    n, rest = int(length_s // token_s), length_s - int(length_s // token_s) * token_s
    return [token_s] * n + ([rest] if rest > 1e-9 else [])


def _average_token_delay(groups: list[tuple[float, list[float]]], source_s: float, token_s: float) -> float:
    """``groups``: (emission delay, output token lengths) per output chunk, in emission order."""
    groups = [(d, lens) for d, lens in groups if lens]
    if not groups:
        return 0.0
    src_sizes, src_end_s = [0], [0.0]  # chunk sizes (index 0: none), end time of every source token (0: start)
    read_s = 0.0
    for delay, _ in groups:
        upto = min(max(delay, read_s), source_s)
        lens = _split_tokens(upto - read_s, token_s)
        for length in lens:
            src_end_s.append(src_end_s[-1] + length)
        src_sizes.append(len(lens))
        read_s = upto
    tgt_sizes = [0] + [len(lens) for _, lens in groups]
    scores, t, out_end = [], 0, 0.0
    for c, (delay, lens) in enumerate(groups, 1):
        acc_x, acc_y = sum(src_sizes[:c]), sum(tgt_sizes[:c])
        for length in lens:
            t += 1
            out_end = max(delay, out_end) + length
            s = min(t - max(0, acc_y - acc_x), acc_x + src_sizes[c])
            scores.append(out_end - src_end_s[max(0, s)])
    return sum(scores) / len(scores)


def average_token_delay_text(delays: list[float], source_s: float, token_s: float = 0.3) -> float:
    """ATD for text output: ``delays`` one per output word (words have no duration)."""
    groups: list[tuple[float, list[float]]] = []
    for d in delays:
        if groups and groups[-1][0] == d:
            groups[-1][1].append(0.0)
        else:
            groups.append((d, [0.0]))
    return _average_token_delay(groups, source_s, token_s)


def average_token_delay_speech(chunks: list[TimedSpeech], source_s: float, token_s: float = 0.3) -> float:
    """ATD for speech output: ``chunks`` are the output audio chunks, in order."""
    groups: list[tuple[float, list[float]]] = []
    for chunk in chunks:
        d = chunk.delay_s
        if groups and groups[-1][0] == d:
            total = sum(groups[-1][1]) + chunk.duration_s
            groups[-1] = (d, _split_tokens(total, token_s))
        else:
            groups.append((d, _split_tokens(chunk.duration_s, token_s)))
    return _average_token_delay(groups, source_s, token_s)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def linear_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (e.g. lag drift, seconds of lag per second of source)."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
