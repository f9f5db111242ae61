"""Text normalisation and corpus scores (sacrebleu BLEU/chrF, jiwer WER).

Normalisation (documented, applied to hypotheses and references alike): NFKC,
lowercase, typographic apostrophes folded, punctuation removed except apostrophes
inside words, whitespace squeezed. BLEU then uses sacrebleu's default 13a tokeniser.
"""

from __future__ import annotations

import re
import unicodedata


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu([normalise(h) for h in hypotheses], [[normalise(r) for r in references]]).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf([normalise(h) for h in hypotheses], [[normalise(r) for r in references]]).score


def wer(hypotheses: list[str], references: list[str]) -> float:
    import jiwer

    return jiwer.wer([normalise(r) or "<empty>" for r in references], [normalise(h) for h in hypotheses])
