"""Text normalisation and corpus scores (sacrebleu BLEU/chrF, jiwer WER).

Normalisation (documented, applied to hypotheses and references alike): NFKC,
lowercase, typographic apostrophes folded, punctuation removed except apostrophes
inside words, whitespace squeezed. BLEU then uses sacrebleu's default 13a tokeniser.

:func:`normalise_en` (for English output, used by ``relais eval``) first applies
Whisper's English text normaliser (package ``whisper-normalizer``: spelled-out
numbers to digits, British to American spelling, contractions expanded, "mr" ->
"mister", filler words and bracketed text removed), then :func:`normalise`. Without
that package it falls back to :func:`normalise` alone (logged once).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable

log = logging.getLogger(__name__)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def _english_normaliser() -> Callable[[str], str] | None:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        log.warning("whisper-normalizer is not installed (pip install 'relais[eval]'): English text is only "
                    "lowercased and stripped of punctuation")
        return None
    return EnglishTextNormalizer()


def normalise_en(text: str) -> str:
    """Whisper's English normaliser, then :func:`normalise`."""
    english = _english_normaliser()
    return normalise(english(text) if english is not None else text)


Normaliser = Callable[[str], str]


def bleu(hypotheses: list[str], references: list[str], normaliser: Normaliser = normalise) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu([normaliser(h) for h in hypotheses],
                                 [[normaliser(r) for r in references]], tokenize="13a").score


def chrf(hypotheses: list[str], references: list[str], normaliser: Normaliser = normalise) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf([normaliser(h) for h in hypotheses], [[normaliser(r) for r in references]]).score


def wer(hypotheses: list[str], references: list[str], normaliser: Normaliser = normalise) -> float:
    import jiwer

    return jiwer.wer([normaliser(r) or "<empty>" for r in references], [normaliser(h) for h in hypotheses])
