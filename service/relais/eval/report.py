"""Aggregate per-utterance figures into the summary, and write results.json, results.md and plots."""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from relais.eval.latency import linear_slope, percentile
from relais.eval.measure import UtteranceFigures
from relais.eval.scores import bleu, chrf, normalise, normalise_en, wer

log = logging.getLogger(__name__)

MEAN_KEYS = ("al_s", "laal_s", "ap", "dal_s", "atd_text_s", "first_text_s", "start_offset_s", "end_offset_s",
             "atd_speech_s", "discontinuities", "discontinuity_s", "rtf", "client_wall_rtf", "lag_mean_s")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def quality(figs: list[UtteranceFigures], target_language: str = "en") -> dict:
    """BLEU / chrF of the text, ASR-BLEU of the speech, source WER: over utterances with a reference."""
    norm = normalise_en if target_language == "en" else normalise
    with_ref = [f for f in figs if f.reference]
    out: dict = {"n_with_reference": len(with_ref)}
    if with_ref:
        refs = [f.reference for f in with_ref]
        out["bleu"] = bleu([f.translation for f in with_ref], refs, norm)
        out["chrf"] = chrf([f.translation for f in with_ref], refs, norm)
        if any(f.asr_text for f in with_ref) or any(f.audio_out_s for f in with_ref):
            out["asr_bleu"] = bleu([f.asr_text for f in with_ref], refs, norm)
            out["asr_chrf"] = chrf([f.asr_text for f in with_ref], refs, norm)
    # the source transcript exists only where the server streams one (SOURCE_FINAL text; the Whisper
    # "translate" task emits the translation alone)
    with_src = [f for f in figs if f.source_text and f.transcript]
    out["source_wer"] = None
    out["n_with_source_transcript"] = len(with_src)
    if with_src:
        out["source_wer"] = wer([f.transcript for f in with_src], [f.source_text for f in with_src])
    return out


def summarise(figs: list[UtteranceFigures], n_failed: int = 0, target_language: str = "en") -> dict:
    lags = [p.lag_s for f in figs for p in f.lags]
    summary = {"n_utterances": len(figs), "n_failed": n_failed, "bleu": None, "asr_bleu": None, "chrf": None,
               **quality(figs, target_language)}
    summary.update({k: _mean(getattr(f, k) for f in figs) for k in MEAN_KEYS})
    summary["lag_p50_s"], summary["lag_p95_s"] = percentile(lags, 50), percentile(lags, 95)
    summary["lag_max_s"] = max(lags) if lags else None
    summary["source_s"] = sum(f.duration_s for f in figs)
    summary["audio_out_s"] = sum(f.audio_out_s for f in figs)
    return summary


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


def max_concurrency_under(levels: list[ConcurrencyLevel], bound_s: float) -> int | None:
    ok = [lv.concurrency for lv in levels if lv.lag_p95_s is not None and lv.lag_p95_s <= bound_s and not lv.n_failed]
    return max(ok) if ok else None


def memory_summary(samples: list[tuple[float, int]]) -> dict:
    if not samples:
        return {}
    ts, mb = [t for t, _ in samples], [b / 2**20 for _, b in samples]
    slope = linear_slope(ts, mb)
    return {"samples": [[t, round(m, 1)] for t, m in zip(ts, mb)], "rss_start_mb": mb[0], "rss_end_mb": mb[-1],
            "rss_max_mb": max(mb), "rss_slope_mb_per_min": slope * 60 if slope is not None else None}


# --- Markdown ------------------------------------------------------------------------------------

def _f(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    s, meta = results["summary"], results["meta"]
    lines = [f"# relais eval: {meta['manifest']}", "",
             f"{meta['date']} · {meta['machine']} · server {meta['server']} · mode **{meta['mode']}** "
             f"({'computation-aware: client arrival times, audio at 1x' if meta['mode'] == 'realtime' else 'computation-unaware: server source_received_s, audio as fast as possible'})"
             f" · latency {meta['latency_mode']} · ASR for ASR-BLEU: {meta.get('asr_model') or '–'}", "",
             "| | BLEU | ASR-BLEU | chrF | StartOffset (s) | EndOffset (s) | AL (s) | LAAL (s) | first text (s) | "
             "RTF | lag p50 (s) | lag p95 (s) | n |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| streamed | {_f(s.get('bleu'), 1)} | {_f(s.get('asr_bleu'), 1)} | {_f(s.get('chrf'), 1)} | "
             f"{_f(s['start_offset_s'])} | {_f(s['end_offset_s'])} | {_f(s['al_s'])} | {_f(s['laal_s'])} | "
             f"{_f(s['first_text_s'])} | {_f(s['rtf'])} | {_f(s['lag_p50_s'])} | {_f(s['lag_p95_s'])} | "
             f"{s['n_utterances']} |"]
    off = results.get("offline", {}).get("summary")
    if off:
        lines.append(f"| offline (same models) | {_f(off.get('bleu'), 1)} | {_f(off.get('asr_bleu'), 1)} | "
                     f"{_f(off.get('chrf'), 1)} | – | – | – | – | – | {_f(off.get('rtf'))} | – | – | "
                     f"{off.get('n_utterances')} |")
    lines += ["", f"AP {_f(s['ap'], 3)} · DAL {_f(s['dal_s'])} s · ATD text {_f(s['atd_text_s'])} s · "
                  f"ATD speech {_f(s['atd_speech_s'])} s · discontinuities {_f(s['discontinuities'], 1)} per "
                  f"utterance, {_f(s['discontinuity_s'])} s · source WER {_f(s.get('source_wer'), 3)} · "
                  f"client wall RTF {_f(s['client_wall_rtf'])}", ""]
    lines += ["| utterance | dur (s) | StartOffset | EndOffset | AL | LAAL | first text | lag mean | lag slope | "
              "RTF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for u in results["utterances"]:
        lines.append(f"| {u['id']} | {_f(u['duration_s'], 1)} | {_f(u['start_offset_s'])} | {_f(u['end_offset_s'])} | "
                     f"{_f(u['al_s'])} | {_f(u['laal_s'])} | {_f(u['first_text_s'])} | {_f(u['lag_mean_s'])} | "
                     f"{_f(u['lag_slope'], 3)} | {_f(u['rtf'])} |")
    if results.get("concurrency"):
        lines += ["", f"Concurrency (lag bound {results['lag_bound_s']} s on p95; largest N within it: "
                      f"**{_f(results.get('max_concurrency_under_bound'))}**)", "",
                  "| N | lag p50 (s) | lag p95 (s) | RTF | wall/source per stream | StartOffset (s) | failed |",
                  "|---|---|---|---|---|---|---|"]
        for lv in results["concurrency"]:
            lines.append(f"| {lv['concurrency']} | {_f(lv['lag_p50_s'])} | {_f(lv['lag_p95_s'])} | {_f(lv['rtf'])} | "
                         f"{_f(lv['client_wall_rtf'])} | {_f(lv['start_offset_s'])} | {lv['n_failed']} |")
    mem = results.get("memory") or {}
    if mem:
        lines += ["", f"Server RSS ({meta.get('memory_source')}): {_f(mem['rss_start_mb'], 0)} -> "
                      f"{_f(mem['rss_end_mb'], 0)} MB (max {_f(mem['rss_max_mb'], 0)}), slope "
                      f"{_f(mem['rss_slope_mb_per_min'])} MB/min"]
    prom = results.get("prometheus_vs_client") or []
    if prom:
        lines += ["", "| server histogram vs client | n server | n client | mean server (s) | mean client (s) | "
                      "client - server (s) | p50 server (bucketed) | p50 client | p95 server (bucketed) | p95 client |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in prom:
            lines.append(f"| {r['name']} | {r['server_count']:.0f} | {r['client_count']} | {_f(r['server_mean_s'], 3)} | "
                         f"{_f(r['client_mean_s'], 3)} | {_f(r['mean_difference_s'], 3)} | {_f(r['server_p50_s'])} | "
                         f"{_f(r['client_p50_s'])} | {_f(r['server_p95_s'])} | {_f(r['client_p95_s'])} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: Path) -> list[Path]:
    from relais.eval.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "results.md").write_text(markdown(results))
    written = [out_dir / "results.json", out_dir / "results.md"]
    try:
        written += write_plots(results, out_dir)
    except ImportError as exc:
        log.warning("no plots: %s (pip install 'relais[eval]')", exc)
    return written
