"""What ``relais eval`` found: the summaries it aggregates from per-utterance figures, and the
whole run (:class:`EvalResults`), written as results.json by :meth:`EvalResults.to_dict`.

Summaries pool every utterance of a run: quality over the utterances with a reference,
means of the per-utterance latency figures, percentiles of every lag event. The BLEU
difference streamed - offline comes with a paired bootstrap interval over the
utterances both have (:func:`streamed_vs_offline`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace

from relais.eval.latency import linear_slope, percentile
from relais.eval.measure import UtteranceFigures
from relais.eval.prometheus import MetricComparison
from relais.eval.scores import BleuDifference, bleu, chrf, normaliser_for, paired_bootstrap_bleu, wer


@dataclass(frozen=True)
class Quality:
    """BLEU / chrF of the text and ASR-BLEU / ASR-chrF of the speech (over utterances with a reference),
    WER of the source transcript (where the server streams one)."""

    n_with_reference: int = 0
    bleu: float | None = None
    chrf: float | None = None
    asr_bleu: float | None = None
    asr_chrf: float | None = None
    n_with_source_transcript: int = 0
    source_wer: float | None = None

    def without_asr(self) -> Quality:
        return replace(self, asr_bleu=None, asr_chrf=None)


def quality(figs: list[UtteranceFigures], target_language: str = "en") -> Quality:
    norm = normaliser_for(target_language)
    with_ref = [f for f in figs if f.reference]
    q = Quality(n_with_reference=len(with_ref))
    if with_ref:
        refs = [f.reference for f in with_ref]
        hyps = [f.translation for f in with_ref]
        q = replace(q, bleu=bleu(hyps, refs, norm), chrf=chrf(hyps, refs, norm))
        if any(f.asr_text for f in with_ref):  # ASR ran (not --no-asr) and heard something
            asr = [f.asr_text for f in with_ref]
            q = replace(q, asr_bleu=bleu(asr, refs, norm), asr_chrf=chrf(asr, refs, norm))
    # the source transcript exists only where the server streams one (SOURCE_FINAL text; the Whisper
    # "translate" task emits the translation alone)
    with_src = [f for f in figs if f.source_text and f.transcript]
    q = replace(q, n_with_source_transcript=len(with_src))
    if with_src:
        q = replace(q, source_wer=wer([f.transcript for f in with_src], [f.source_text for f in with_src]))
    return q


@dataclass(frozen=True)
class StreamSummary:
    """A streamed run: quality, the per-utterance figures averaged, lag percentiles over every event."""

    n_utterances: int
    n_failed: int
    quality: Quality
    # means over utterances (None where no utterance has the figure)
    al_s: float | None = None
    laal_s: float | None = None
    ap: float | None = None
    dal_s: float | None = None
    atd_text_s: float | None = None
    first_text_s: float | None = None
    start_offset_s: float | None = None
    end_offset_s: float | None = None
    atd_speech_s: float | None = None
    discontinuities: float | None = None
    discontinuity_s: float | None = None
    rtf: float | None = None
    client_wall_rtf: float | None = None
    lag_mean_s: float | None = None
    degraded_fraction: float | None = None
    # every lag event of every utterance
    lag_p50_s: float | None = None
    lag_p95_s: float | None = None
    lag_max_s: float | None = None
    source_s: float = 0.0
    audio_out_s: float = 0.0
    concurrency: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"n_utterances": d.pop("n_utterances"), "n_failed": d.pop("n_failed"), **d.pop("quality"), **d}


# the StreamSummary fields that are means of the UtteranceFigures field of the same name
MEAN_FIELDS = ("al_s", "laal_s", "ap", "dal_s", "atd_text_s", "first_text_s", "start_offset_s", "end_offset_s",
               "atd_speech_s", "discontinuities", "discontinuity_s", "rtf", "client_wall_rtf", "lag_mean_s",
               "degraded_fraction")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def summarise(figs: list[UtteranceFigures], n_failed: int = 0, target_language: str = "en",
              concurrency: int = 1) -> StreamSummary:
    lags = [p.lag_s for f in figs for p in f.lags]
    return StreamSummary(
        n_utterances=len(figs), n_failed=n_failed, quality=quality(figs, target_language),
        **{name: _mean(getattr(f, name) for f in figs) for name in MEAN_FIELDS},
        lag_p50_s=percentile(lags, 50), lag_p95_s=percentile(lags, 95), lag_max_s=max(lags) if lags else None,
        source_s=sum(f.duration_s for f in figs), audio_out_s=sum(f.audio_out_s for f in figs),
        concurrency=concurrency)


@dataclass(frozen=True)
class ConcurrencyLevel:
    concurrency: int
    n_utterances: int
    n_failed: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    rtf: float | None  # mean server compute RTF per stream
    client_wall_rtf: float | None  # mean per-stream wall time / source time
    start_offset_s: float | None
    wall_s: float
    bleu: float | None = None  # over the streams that ran (refused ones are n_failed)
    degraded_fraction: float | None = None  # mean share of decisions skipped under load
    bleu_single: float | None = None  # the first level's BLEU on the same utterances (what `bleu` compares to)
    decoder_batch_mean: float | None = None  # streams per decoder call on the server (relais_batch_size)
    refusals: int = 0  # refusals that were retried (--retry-refused-s); those that never ran are in n_failed


def max_concurrency_under(levels: list[ConcurrencyLevel], bound_s: float) -> int | None:
    ok = [lv.concurrency for lv in levels if lv.lag_p95_s is not None and lv.lag_p95_s <= bound_s and not lv.n_failed]
    return max(ok) if ok else None


@dataclass(frozen=True)
class MemorySample:
    t_s: float  # since sampling started
    rss_bytes: int

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / 2**20


@dataclass(frozen=True)
class MemorySummary:
    samples: list[MemorySample]
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float
    rss_slope_mb_per_min: float | None

    def to_dict(self) -> dict:
        return {"samples": [[s.t_s, round(s.rss_mb, 1)] for s in self.samples], "rss_start_mb": self.rss_start_mb,
                "rss_end_mb": self.rss_end_mb, "rss_max_mb": self.rss_max_mb,
                "rss_slope_mb_per_min": self.rss_slope_mb_per_min}


def memory_summary(samples: list[MemorySample]) -> MemorySummary | None:
    if not samples:
        return None
    mb = [s.rss_mb for s in samples]
    slope = linear_slope([s.t_s for s in samples], mb)
    return MemorySummary(samples, mb[0], mb[-1], max(mb), slope * 60 if slope is not None else None)


@dataclass(frozen=True)
class OfflineRow:
    id: str
    translation: str
    asr_text: str
    reference: str
    audio_out_s: float


@dataclass(frozen=True)
class OfflineSummary:
    n_utterances: int
    rtf: float | None  # compute seconds / source seconds
    quality: Quality

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"n_utterances": d.pop("n_utterances"), "rtf": d.pop("rtf"), **d.pop("quality")}


@dataclass(frozen=True)
class OfflineResults:
    """The full-utterance baseline: the same models without a policy or latency."""

    summary: OfflineSummary
    utterances: list[OfflineRow]
    what: str
    beam_size: int = 1  # 1: greedy

    def to_dict(self) -> dict:
        return {"summary": self.summary.to_dict(), "utterances": [asdict(r) for r in self.utterances],
                "what": self.what, "beam_size": self.beam_size}


def streamed_vs_offline(figs: list[UtteranceFigures], offline: OfflineResults | None, target_language: str = "en",
                        n_resamples: int = 1000, seed: int = 12345) -> BleuDifference | None:
    """BLEU streamed - offline with its paired bootstrap 95 % interval, over the utterances with a reference
    that both runs translated (same normaliser and scorer as :func:`quality`)."""
    if offline is None:
        return None
    norm = normaliser_for(target_language)
    rows = {r.id: r for r in offline.utterances}
    pairs = [(f, rows[f.id]) for f in figs if f.reference and f.id in rows]
    if not pairs:
        return None
    return paired_bootstrap_bleu([f.translation for f, _ in pairs], [r.translation for _, r in pairs],
                                 [f.reference for f, _ in pairs], norm, n_resamples=n_resamples, seed=seed)


def speech_vs_text(figs: list[UtteranceFigures], target_language: str = "en", n_resamples: int = 1000,
                   seed: int = 12345) -> BleuDifference | None:
    """ASR-BLEU - BLEU of the streamed output with its paired bootstrap 95 % interval: what the spoken
    translation loses against its own text (the voice, its speaking rate and the ASR together), over the
    utterances :func:`quality` scores. None when ASR did not run (or heard nothing at all)."""
    norm = normaliser_for(target_language)
    rows = [f for f in figs if f.reference]
    if not any(f.asr_text for f in rows):
        return None
    return paired_bootstrap_bleu([f.asr_text for f in rows], [f.translation for f in rows],
                                 [f.reference for f in rows], norm, n_resamples=n_resamples, seed=seed)


@dataclass(frozen=True)
class RunMeta:
    manifest: str
    date: str
    machine: str
    server: str
    mode: str  # realtime | simulated
    latency_mode: str
    source_language: str
    target_language: str
    chunk_ms: int
    longform: bool
    command: str | None
    memory_source: str | None
    normalisation: str
    asr_model: str | None = None  # "path (precision, decoding)" when ASR-BLEU was scored
    latency_overrides: dict = field(default_factory=dict)  # --profile: LatencyProfile fields over latency_mode


@dataclass
class EvalResults:
    meta: RunMeta
    summary: StreamSummary  # the first concurrency level (quality is scored on it)
    utterances: list[UtteranceFigures]
    errors: dict[str, str] = field(default_factory=dict)  # utterance id -> why its stream failed
    memory: MemorySummary | None = None
    prometheus_vs_client: list[MetricComparison] = field(default_factory=list)
    offline: OfflineResults | None = None
    concurrency: list[ConcurrencyLevel] = field(default_factory=list)  # a sweep: more than one level
    lag_bound_s: float | None = None
    max_concurrency_under_bound: int | None = None
    bleu_difference: BleuDifference | None = None  # streamed - offline, paired bootstrap
    asr_bleu_difference: BleuDifference | None = None  # streamed ASR-BLEU - BLEU, paired bootstrap

    def to_dict(self) -> dict:
        out: dict = {"meta": asdict(self.meta)}
        if self.offline is not None:
            out["offline"] = self.offline.to_dict()
        if self.bleu_difference is not None:
            out["bleu_streamed_minus_offline"] = self.bleu_difference.to_dict()
        if self.asr_bleu_difference is not None:
            out["asr_bleu_minus_bleu"] = self.asr_bleu_difference.to_dict()
        out.update(summary=self.summary.to_dict(), utterances=[f.to_dict() for f in self.utterances],
                   errors=dict(self.errors))
        if len(self.concurrency) > 1:
            out.update(concurrency=[asdict(lv) for lv in self.concurrency], lag_bound_s=self.lag_bound_s,
                       max_concurrency_under_bound=self.max_concurrency_under_bound)
        out.update(memory=self.memory.to_dict() if self.memory is not None else {},
                   prometheus_vs_client=[c.to_dict() for c in self.prometheus_vs_client])
        return out
