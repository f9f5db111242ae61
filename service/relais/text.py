"""Joining the text pieces a stream commits.

Committed text leaves a stream piece by piece, each piece stripped. A piece normally
starts a new word; rarely (a policy committed a word, and the next hypothesis put
punctuation after it) a piece starts with punctuation, which belongs to the previous
word: ", to answer" after "develop". The wire rule, documented in the README: a piece
that starts with punctuation attaches to the previous one without a space.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


def starts_with_punctuation(piece: str) -> bool:
    return bool(piece) and unicodedata.category(piece[0]).startswith("P") and piece[0] not in "(\"'«¿¡[{"


def join_pieces(pieces: Iterable[str]) -> str:
    """The pieces as one text: a space between them, none before a piece that starts with punctuation."""
    parts: list[str] = []
    for piece in (p.strip() for p in pieces):
        if piece:
            if parts and not starts_with_punctuation(piece):
                parts.append(" ")
            parts.append(piece)
    return "".join(parts)  # one join: an hour-long stream's summary is thousands of pieces
