"""Text normalisation and corpus scores (sacrebleu BLEU/chrF, jiwer WER).

Normalisation (documented, applied to hypotheses and references alike): NFKC,
lowercase, typographic apostrophes folded, punctuation removed except apostrophes
inside words, whitespace squeezed. BLEU then uses sacrebleu's default 13a tokeniser.

:func:`normalise_en` (for English output, used by ``relais eval``) first applies
Whisper's English text normaliser (package ``whisper-normalizer``: spelled-out
numbers to digits, British to American spelling, contractions expanded, "mr" ->
"mister", filler words and bracketed text removed), then :func:`normalise`. Without
that package it falls back to :func:`normalise` alone (logged once).

:func:`paired_bootstrap_bleu`: the BLEU difference of two systems on the same
utterances, with a paired bootstrap confidence interval (Koehn, 2004).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass

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


def normaliser_for(language: str) -> Normaliser:
    """How text in ``language`` is normalised before scoring: Whisper's English rules for English."""
    return normalise_en if language == "en" else normalise


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


@dataclass(frozen=True)
class BleuDifference:
    """Corpus BLEU of system A minus system B on the same utterances, with a paired bootstrap interval."""

    n_utterances: int
    n_resamples: int
    seed: int
    bleu_a: float
    bleu_b: float
    difference: float  # on the whole set: bleu_a - bleu_b
    mean_difference: float  # over the resamples
    ci_low: float  # 2.5th percentile of the resampled differences
    ci_high: float  # 97.5th
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def _bleu_stats(hypotheses: list[str], references: list[str], normaliser: Normaliser):
    """sacrebleu's sufficient statistics per sentence: matches[4], totals[4], hypothesis length, reference length."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="13a")
    rows = []
    for h, r in zip(hypotheses, references):
        s = metric.corpus_score([normaliser(h)], [[normaliser(r)]])
        rows.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
    return np.array(rows, dtype=np.int64).reshape(len(rows), 10)


def _bleu_from_stats(total) -> float:
    from sacrebleu.metrics import BLEU

    t = [int(x) for x in total]  # corpus_bleu's defaults: exp smoothing, order 4
    return BLEU.compute_bleu(t[0:4], t[4:8], t[8], t[9], smooth_method="exp").score


def paired_bootstrap_bleu(hypotheses_a: list[str], hypotheses_b: list[str], references: list[str],
                          normaliser: Normaliser = normalise, n_resamples: int = 1000,
                          seed: int = 12345, confidence: float = 0.95) -> BleuDifference:
    """Resample utterances with replacement (the same draw for both systems), recompute corpus BLEU of
    each on every resample (as :func:`bleu` scores it) and take the percentile interval of A - B.

    (sacrebleu's ``PairedTest`` reports a p-value and a per-system interval, not one on the difference.)
    """
    import numpy as np

    if not len(hypotheses_a) == len(hypotheses_b) == len(references) or not references:
        raise ValueError("paired bootstrap needs the same, non-zero number of hypotheses for both systems "
                         f"and references (got {len(hypotheses_a)}, {len(hypotheses_b)}, {len(references)})")
    stats_a = _bleu_stats(hypotheses_a, references, normaliser)
    stats_b = _bleu_stats(hypotheses_b, references, normaliser)
    n = len(references)
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    diffs = np.array([_bleu_from_stats(stats_a[p].sum(0)) - _bleu_from_stats(stats_b[p].sum(0)) for p in picks])
    a, b = _bleu_from_stats(stats_a.sum(0)), _bleu_from_stats(stats_b.sum(0))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return BleuDifference(n, n_resamples, seed, a, b, a - b, float(diffs.mean()), float(low), float(high), confidence)
