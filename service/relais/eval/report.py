"""Write an eval run: results.json, results.md (the tables ``relais eval`` also prints) and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from relais.eval.results import EvalResults
from relais.eval.scores import BleuDifference

log = logging.getLogger(__name__)


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _clock(mode: str) -> str:
    if mode == "realtime":
        return "computation-aware: client arrival times, audio at 1x"
    return "computation-unaware: server source_received_s, audio as fast as possible"


def latency_label(mode: str, overrides: dict) -> str:
    """``balanced``, or ``balanced + policy=alignatt, step_s=0.5`` with --profile overrides."""
    return mode + (" + " + ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "")


def bleu_difference_line(d: BleuDifference, what: str = "BLEU streamed − offline") -> str:
    verdict = ("the interval excludes 0" if d.excludes_zero
               else "the interval includes 0: no significant difference")
    return (f"{what}: {d.difference:+.1f} (bootstrap mean {d.mean_difference:+.1f}, "
            f"{d.confidence:.0%} CI {d.ci_low:+.1f} to {d.ci_high:+.1f}; paired bootstrap, {d.n_resamples} "
            f"resamples of {d.n_utterances} utterances, seed {d.seed}): {verdict}")


def markdown(results: EvalResults) -> str:
    s, q, meta = results.summary, results.summary.quality, results.meta
    lines = [f"# relais eval: {meta.manifest}", "",
             f"{meta.date} · {meta.machine} · server {meta.server} · mode **{meta.mode}** ({_clock(meta.mode)})"
             f" · latency {latency_label(meta.latency_mode, meta.latency_overrides)}"
             f" · ASR for ASR-BLEU: {meta.asr_model or '–'}", "",
             "| | BLEU | ASR-BLEU | chrF | StartOffset (s) | EndOffset (s) | AL (s) | LAAL (s) | first text (s) | "
             "RTF | lag p50 (s) | lag p95 (s) | n |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| streamed | {_f(q.bleu, 1)} | {_f(q.asr_bleu, 1)} | {_f(q.chrf, 1)} | "
             f"{_f(s.start_offset_s)} | {_f(s.end_offset_s)} | {_f(s.al_s)} | {_f(s.laal_s)} | "
             f"{_f(s.first_text_s)} | {_f(s.rtf)} | {_f(s.lag_p50_s)} | {_f(s.lag_p95_s)} | {s.n_utterances} |"]
    if results.offline is not None:
        off, beam = results.offline.summary, results.offline.beam_size
        label = "offline (same models)" if beam == 1 else f"offline (same models, beam {beam})"
        lines.append(f"| {label} | {_f(off.quality.bleu, 1)} | {_f(off.quality.asr_bleu, 1)} | "
                     f"{_f(off.quality.chrf, 1)} | – | – | – | – | – | {_f(off.rtf)} | – | – | {off.n_utterances} |")
    if results.bleu_difference is not None:
        lines += ["", bleu_difference_line(results.bleu_difference)]
    if results.asr_bleu_difference is not None:
        lines += ["", bleu_difference_line(results.asr_bleu_difference, "ASR-BLEU − BLEU (streamed speech vs its text)")]
    lines += ["", f"AP {_f(s.ap, 3)} · DAL {_f(s.dal_s)} s · ATD text {_f(s.atd_text_s)} s · "
                  f"ATD speech {_f(s.atd_speech_s)} s · discontinuities {_f(s.discontinuities, 1)} per "
                  f"utterance, {_f(s.discontinuity_s)} s · source WER {_f(q.source_wer, 3)} · "
                  f"client wall RTF {_f(s.client_wall_rtf)}", ""]
    lines += ["| utterance | dur (s) | StartOffset | EndOffset | AL | LAAL | first text | lag mean | lag slope | "
              "RTF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for u in results.utterances:
        lines.append(f"| {u.id} | {_f(u.duration_s, 1)} | {_f(u.start_offset_s)} | {_f(u.end_offset_s)} | "
                     f"{_f(u.al_s)} | {_f(u.laal_s)} | {_f(u.first_text_s)} | {_f(u.lag_mean_s)} | "
                     f"{_f(u.lag_slope, 3)} | {_f(u.rtf)} |")
    if len(results.concurrency) > 1:
        lines += ["", f"Concurrency (lag bound {results.lag_bound_s} s on p95; largest N within it: "
                      f"**{_f(results.max_concurrency_under_bound)}**)", "",
                  "| N | lag p50 (s) | lag p95 (s) | BLEU (same clips at N=1) | decisions skipped | RTF | "
                  "wall/source per stream | StartOffset (s) | streams per decoder call | failed or refused |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for lv in results.concurrency:
            lines.append(f"| {lv.concurrency} | {_f(lv.lag_p50_s)} | {_f(lv.lag_p95_s)} | {_f(lv.bleu, 1)} "
                         f"({_f(lv.bleu_single, 1)}) | {_f(lv.degraded_fraction)} | {_f(lv.rtf)} | "
                         f"{_f(lv.client_wall_rtf)} | {_f(lv.start_offset_s)} | {_f(lv.decoder_batch_mean)} | "
                         f"{lv.n_failed}{f' ({lv.refusals} refusals retried)' if lv.refusals else ''} |")
    mem = results.memory
    if mem is not None:
        lines += ["", f"Server RSS ({meta.memory_source}): {_f(mem.rss_start_mb, 0)} -> "
                      f"{_f(mem.rss_end_mb, 0)} MB (max {_f(mem.rss_max_mb, 0)}), slope "
                      f"{_f(mem.rss_slope_mb_per_min)} MB/min"]
    if results.prometheus_vs_client:
        lines += ["", "| server histogram vs client | n server | n client | mean server (s) | mean client (s) | "
                      "client - server (s) | p50 server (bucketed) | p50 client | p95 server (bucketed) | p95 client |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results.prometheus_vs_client:
            lines.append(f"| {r.name} | {r.server_count:.0f} | {r.client_count} | {_f(r.server_mean_s, 3)} | "
                         f"{_f(r.client_mean_s, 3)} | {_f(r.mean_difference_s, 3)} | {_f(r.server_p50_s)} | "
                         f"{_f(r.client_p50_s)} | {_f(r.server_p95_s)} | {_f(r.client_p95_s)} |")
    return "\n".join(lines) + "\n"


def write(results: EvalResults, out_dir: Path) -> list[Path]:
    from relais.eval.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results.to_dict(), indent=1, default=str))
    (out_dir / "results.md").write_text(markdown(results))
    written = [out_dir / "results.json", out_dir / "results.md"]
    try:
        written += write_plots(results, out_dir)
    except ImportError as exc:
        log.warning("no plots: %s (pip install 'relais[eval]')", exc)
    return written
