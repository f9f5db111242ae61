"""WebVTT subtitles: pure functions from timed text to cue text and back.

    cues = build_cues([(0.0, 2.4, "he added that ..."), (2.4, 3.9, "...")])
    Path("out.vtt").write_text(render_vtt(cues))

A cue's text is word-wrapped to at most ``max_chars`` characters per line and
``max_lines`` lines (42 x 2 is the usual broadcast limit); text that needs more
lines is split into consecutive cues whose durations are proportional to their
share of the characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_CHARS_PER_LINE = 42
MAX_LINES_PER_CUE = 2
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})$")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str  # may hold newlines (one per wrapped line)


def format_timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm`` (rounded to the millisecond; negative values clamp to zero)."""
    total_ms = max(0, int(round(seconds * 1000.0)))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def parse_timestamp(text: str) -> float:
    """Inverse of :func:`format_timestamp` (also accepts the short ``MM:SS.mmm`` form)."""
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"not a WebVTT timestamp: {text!r} (expected HH:MM:SS.mmm)")
    hours, minutes, secs, ms = (int(g) if g else 0 for g in match.groups())
    if minutes >= 60 or secs >= 60:
        raise ValueError(f"not a WebVTT timestamp: {text!r} (minutes and seconds must be < 60)")
    return hours * 3600 + minutes * 60 + secs + ms / 1000.0


def wrap_lines(text: str, max_chars: int = MAX_CHARS_PER_LINE) -> list[str]:
    """Greedy word wrap; a single word longer than ``max_chars`` is cut into pieces."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    lines: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > max_chars:  # cannot fit on any line: hard split
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= max_chars:
            current = f"{current} {word}"
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def balance_lines(text: str, max_chars: int = MAX_CHARS_PER_LINE) -> list[str]:
    """Wrap like :func:`wrap_lines`, but a two-line result is split where the longer line is shortest."""
    lines = wrap_lines(text, max_chars)
    if len(lines) != 2:
        return lines
    words = " ".join(lines).split()
    best = lines
    for i in range(1, len(words)):
        first, second = " ".join(words[:i]), " ".join(words[i:])
        if len(first) <= max_chars and len(second) <= max_chars and \
                max(len(first), len(second)) < max(len(line) for line in best):
            best = [first, second]
    return best


def split_cue(start_s: float, end_s: float, text: str, max_chars: int = MAX_CHARS_PER_LINE,
              max_lines: int = MAX_LINES_PER_CUE) -> list[Cue]:
    """One span of text as one or more cues of at most ``max_lines`` wrapped lines each."""
    if max_lines < 1:
        raise ValueError(f"max_lines must be >= 1, got {max_lines}")
    lines = wrap_lines(text, max_chars)
    if not lines:
        return []
    groups = [balance_lines(" ".join(lines[i:i + max_lines]), max_chars)
              for i in range(0, len(lines), max_lines)]
    weights = [sum(len(line) for line in group) for group in groups]
    total = sum(weights)
    duration_s = max(0.0, end_s - start_s)
    cues: list[Cue] = []
    t = start_s
    for i, (group, weight) in enumerate(zip(groups, weights)):
        t_end = end_s if i == len(groups) - 1 else t + duration_s * weight / total
        cues.append(Cue(t, t_end, "\n".join(group)))
        t = t_end
    return cues


def build_cues(spans: Iterable[tuple[float, float, str]], max_chars: int = MAX_CHARS_PER_LINE,
               max_lines: int = MAX_LINES_PER_CUE) -> list[Cue]:
    """Cues from ``(start_s, end_s, text)`` spans: wrapped, split, monotonic, empty text dropped.

    Spans are taken in time order; a span that starts before the previous one ended is
    moved to start at that end, and spans left with no duration are dropped.
    """
    cues: list[Cue] = []
    last_end_s = 0.0
    for start_s, end_s, text in sorted(spans, key=lambda s: (s[0], s[1])):
        start_s = max(float(start_s), last_end_s)
        end_s = float(end_s)
        if end_s <= start_s or not text.strip():
            continue
        cues.extend(split_cue(start_s, end_s, text, max_chars, max_lines))
        last_end_s = end_s
    return cues


def render_vtt(cues: Iterable[Cue]) -> str:
    """The WebVTT document for ``cues`` (numbered from 1)."""
    blocks = ["WEBVTT"]
    for i, cue in enumerate(cues, start=1):
        blocks.append(f"{i}\n{format_timestamp(cue.start_s)} --> {format_timestamp(cue.end_s)}\n{cue.text}")
    return "\n\n".join(blocks) + "\n"


def parse_vtt(document: str) -> list[Cue]:
    """The cues of a WebVTT document (cue settings and NOTE/STYLE blocks are ignored)."""
    lines = document.replace("\r\n", "\n").split("\n")
    if not lines or not lines[0].lstrip("\ufeff").startswith("WEBVTT"):
        raise ValueError("not a WebVTT document: the first line must start with WEBVTT")
    cues: list[Cue] = []
    for block in "\n".join(lines[1:]).split("\n\n"):
        rows = [row for row in block.split("\n") if row.strip()]
        timing = next((i for i, row in enumerate(rows) if "-->" in row), None)
        if timing is None:
            continue  # header metadata, NOTE, STYLE
        start, _, rest = rows[timing].partition("-->")
        end = rest.split()[0] if rest.split() else ""
        cues.append(Cue(parse_timestamp(start), parse_timestamp(end), "\n".join(rows[timing + 1:])))
    return cues


def merge_spans(spans: Iterable[tuple[float, float, str]], gap_s: float = 0.002) -> list[tuple[float, float, str]]:
    """Join consecutive spans that carry the same text and touch (one phrase sent as several chunks)."""
    merged: list[tuple[float, float, str]] = []
    for start_s, end_s, text in spans:
        if merged and merged[-1][2] == text and abs(start_s - merged[-1][1]) <= gap_s:
            merged[-1] = (merged[-1][0], end_s, text)
        else:
            merged.append((start_s, end_s, text))
    return merged
