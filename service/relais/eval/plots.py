"""PNG plots of an eval run (matplotlib, Agg backend): per-utterance latency, lag over time,
memory over time, lag vs concurrency."""

from __future__ import annotations

import logging
from pathlib import Path

from relais.eval.results import EvalResults

log = logging.getLogger(__name__)

LONG_S = 30.0  # utterances at least this long get a lag-over-time plot


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_bars(results: EvalResults, path: Path) -> Path:
    plt = _plt()
    utts = results.utterances
    keys = [("first_text_s", "first text"), ("start_offset_s", "StartOffset"), ("laal_s", "LAAL"),
            ("end_offset_s", "EndOffset")]
    fig, ax = plt.subplots(figsize=(max(6, len(utts) * 0.8), 4))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(utts))]
        ax.bar(xs, [getattr(u, key) or 0.0 for u in utts], width, label=label)
    ax.set_xticks(range(len(utts)))
    ax.set_xticklabels([u.id.replace("fleurs_fr_test_", "") for u in utts], rotation=45, ha="right")
    ax.set_ylabel("seconds")
    ax.set_title(f"Per-utterance latency ({results.meta.mode})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def lag_over_time(results: EvalResults, path: Path, force: bool = False) -> Path | None:
    utts = [u for u in results.utterances if u.lags and (force or u.duration_s >= LONG_S)]
    if not utts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for u in utts:
        xs = [p.source_end_s for p in u.lags]
        ys = [p.lag_s for p in u.lags]
        line, = ax.plot(xs, ys, "o-", ms=3, label=f"{u.id} (slope {u.lag_slope or 0:+.3f} s/s)")
        if u.lag_slope is not None and len(xs) > 1:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            ax.plot([xs[0], xs[-1]], [my + u.lag_slope * (xs[0] - mx), my + u.lag_slope * (xs[-1] - mx)],
                    "--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("source time (s)")
    ax.set_ylabel("output lag (s)")
    ax.set_title(f"Output lag over time ({results.meta.mode})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def memory_over_time(results: EvalResults, path: Path) -> Path | None:
    if results.memory is None:
        return None
    samples = results.memory.samples
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot([s.t_s for s in samples], [s.rss_mb for s in samples])
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("Server process RSS over the streaming run")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def lag_vs_concurrency(results: EvalResults, path: Path) -> Path | None:
    levels = results.concurrency
    if len(levels) < 2:
        return None
    plt = _plt()
    fig, (ax, q) = plt.subplots(1, 2, figsize=(10, 4))
    ns = [lv.concurrency for lv in levels]
    ax.plot(ns, [lv.lag_p50_s for lv in levels], "o-", label="lag p50")
    ax.plot(ns, [lv.lag_p95_s for lv in levels], "o-", label="lag p95")
    ax.axhline(results.lag_bound_s, color="grey", ls=":", label=f"bound {results.lag_bound_s} s")
    ax.set_xlabel("simultaneous streams")
    ax.set_ylabel("output lag (s)")
    ax.set_xticks(ns)
    ax.set_title("Lag vs concurrency")
    ax.legend(fontsize=8, loc="upper left")
    q.plot(ns, [lv.bleu for lv in levels], "o-", color="tab:green", label="BLEU")
    q.plot(ns, [lv.bleu_single for lv in levels], "o:", color="tab:green", alpha=0.5,
           label="BLEU of the same clips, 1 stream")
    q.set_xlabel("simultaneous streams")
    q.set_ylabel("BLEU")
    q.set_xticks(ns)
    q2 = q.twinx()
    q2.plot(ns, [lv.degraded_fraction for lv in levels], "s--", color="tab:red", label="decisions skipped")
    q2.plot(ns, [lv.n_failed / max(1, lv.n_failed + lv.n_utterances) for lv in levels], "x:", color="black",
            label="streams refused or failed")
    q2.set_ylabel("share")
    q2.set_ylim(0, 1)
    q.set_title("Quality and degradation vs concurrency")
    h1, l1 = q.get_legend_handles_labels()
    h2, l2 = q2.get_legend_handles_labels()
    q.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    q.grid(alpha=0.3)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def write_plots(results: EvalResults, out_dir: Path) -> list[Path]:
    force = results.meta.longform
    made = [latency_bars(results, out_dir / "latency_per_utterance.png"),
            lag_over_time(results, out_dir / "lag_over_time.png", force),
            memory_over_time(results, out_dir / "memory_over_time.png"),
            lag_vs_concurrency(results, out_dir / "lag_vs_concurrency.png")]
    return [p for p in made if p is not None]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
