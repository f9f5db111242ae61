"""Soak: a long real-time French stream through `relais serve`, seen through a real Prometheus.

Starts `relais serve` (subprocess) and Debian's Prometheus scraping it every 2 s, streams
the fr_longform monologues back to back in real time through one stream for --minutes,
then reads from Prometheus's query API (query_range) what an operator's dashboard would
show: output lag p50/p95 over the last minute, the live worst lag, speech backlog and
time-without-commit gauges, compute rate, open sessions and server RSS. Writes
results.json, results.md and a plot into --out (default docs/benchmarks/soak-metrics).

With --churn-pause-s (issue 15's soak), a second client runs short streams beside the long
one for the whole time: the fr_en_dev clips in turn, in real time, one after another with
that pause between them, every --cancel-every'th one cancelled by the client halfway.
Each short stream's outcome and lag are recorded, and the long stream's own lag is taken
from its final texts as they arrive (arrival minus the source end of the text's span), so
its drift is measured without the short streams' lag mixed in.

    python tools/soak_metrics.py --minutes 20 [--models-dir DIR] [--out DIR]
    python tools/soak_metrics.py --minutes 60 --churn-pause-s 2 --out docs/benchmarks/soak-churn
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' `relais serve` launcher

from serving import free_port, relais_serve  # noqa: E402

from relais.client import TranslateClient, TranslateOptions  # noqa: E402
from relais.audio.files import load_audio_16k  # noqa: E402
from relais.eval.data import default_eval_dir, read_manifest  # noqa: E402
from relais.eval.machine import machine  # noqa: E402
from relais.models.manifest import default_models_dir  # noqa: E402

STEP_S = 10  # query_range resolution
QUERIES = {
    "output_lag_p50_s": "histogram_quantile(0.5, sum by (le) (rate(relais_output_lag_seconds_bucket[1m])))",
    "output_lag_p95_s": "histogram_quantile(0.95, sum by (le) (rate(relais_output_lag_seconds_bucket[1m])))",
    "stream_lag_max_s": "max_over_time(relais_stream_lag_max_seconds[10s])",
    "speech_backlog_max_s": "max_over_time(relais_speech_backlog_max_seconds[10s])",
    "uncommitted_max_s": "max_over_time(relais_uncommitted_speech_max_seconds[10s])",
    "compute_cores": "sum(rate(relais_compute_seconds_total[1m]))",
    "rss_mb": "process_resident_memory_bytes / 1e6",
    "sessions_active": "relais_sessions_active",
}


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _range(prometheus: str, expr: str, start: float, end: float) -> list[tuple[float, float]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    result = _get(f"{prometheus}/api/v1/query_range?{q}")["data"]["result"]
    return [(float(t) - start, float(v)) for t, v in result[0]["values"] if v not in ("NaN", "+Inf")] if result else []


def _start_prometheus(work: Path, metrics_port: int) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("prometheus")
    if exe is None:
        sys.exit("prometheus not found: bash tools/install.sh --test installs Debian's package")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s}\nscrape_configs:\n"
        f"  - job_name: relais\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    port = free_port()
    proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    sys.exit("Prometheus did not become ready")


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 5:
        return None
    t, v = np.array(points).T
    return float(np.polyfit(t, v, 1)[0])


class _Cancelled(Exception):
    """Raised from a short stream's event callback: the client cancels its stream halfway."""


def _long_stream_lags(events: list) -> list[tuple[float, float]]:
    """(seconds since the soak started, lag) per final translation of the long stream."""
    return [(e.arrival.arrival_s, e.arrival.arrival_s - e.source_end_s) for e in events]


def _churn(address: str, clips: list, pause_s: float, cancel_every: int, stop: threading.Event,
           start: float, out: list[dict]) -> None:
    """Short streams one after another until ``stop``: each clip in real time, every
    ``cancel_every``'th cancelled by the client once half the clip has been sent."""
    import grpc

    with TranslateClient(address) as client:
        n = 0
        while not stop.is_set():
            clip = clips[n % len(clips)]
            samples = load_audio_16k(clip.path)
            cancel = cancel_every > 0 and n % cancel_every == cancel_every - 1
            half_s = len(samples) / 32000

            def maybe_cancel(event) -> None:
                if cancel and getattr(event, "arrival", None) and event.arrival.sent_source_s >= half_s:
                    raise _Cancelled

            began = time.time()
            row = {"n": n, "clip": clip.id, "start_s": began - start, "audio_s": len(samples) / 16000,
                   "cancelled_by_client": cancel}
            try:
                result = client.translate_audio(samples, 16000, TranslateOptions(
                    target_language="en", source_language="fr", speed=1.0, return_audio=True), on_event=maybe_cancel)
                row.update(status="OK", mean_output_lag_s=result.summary.mean_output_lag_s,
                           max_output_lag_s=result.summary.max_output_lag_s,
                           degraded_fraction=result.summary.degraded_fraction, words=len(result.translation.split()))
            except _Cancelled:
                row.update(status="CANCELLED")
            except grpc.RpcError as err:
                row.update(status=err.code().name, details=err.details())
            row["end_s"] = time.time() - start
            out.append(row)
            n += 1
            stop.wait(pause_s)


def _plot(series: dict, long_lags: list, churn: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    if long_lags:
        axes[0].plot(*zip(*long_lags), ".", ms=2, alpha=0.4, label="long stream: lag of each final text")
    for key in ("output_lag_p50_s", "output_lag_p95_s"):
        axes[0].plot(*zip(*series[key]), label=f"{key} (all streams, 1-min window)") if series[key] else None
    done = [r for r in churn if r["status"] == "OK"]
    if done:
        axes[0].plot([r["end_s"] for r in done], [r["mean_output_lag_s"] for r in done], "x", ms=4,
                     label="short streams: mean output lag")
    axes[0].set_ylabel("seconds")
    axes[0].legend(fontsize=7)
    for key in ("speech_backlog_max_s", "uncommitted_max_s"):
        axes[1].plot(*zip(*series[key]), label=key) if series[key] else None
    axes[1].set_ylabel("seconds")
    axes[1].legend(fontsize=7)
    if series["rss_mb"]:
        axes[2].plot(*zip(*series["rss_mb"]), label="server RSS (MB)")
    axes[2].set_ylabel("MB")
    axes[2].legend(fontsize=7)
    if series["sessions_active"]:
        axes[3].step(*zip(*series["sessions_active"]), where="post", label="relais_sessions_active")
    axes[3].set_ylabel("sessions")
    axes[3].set_xlabel("seconds since the soak started")
    axes[3].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def _median_between(points: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    values = [v for t, v in points if lo <= t < hi]
    return float(np.median(values)) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "soak-metrics")
    parser.add_argument("--churn-pause-s", type=float, default=None,
                        help="run short streams beside the long one, this many seconds apart (default: none)")
    parser.add_argument("--cancel-every", type=int, default=4, help="the client cancels every Nth short stream")
    parser.add_argument("--warmup-min", type=float, default=5.0, help="minutes left out of the memory/drift fits")
    args = parser.parse_args()
    clips = read_manifest(default_eval_dir() / "fr_longform" / "manifest.tsv")
    short_clips = read_manifest(default_eval_dir() / "fr_en_dev" / "manifest.tsv")
    once = np.concatenate([load_audio_16k(c.path) for c in clips])
    seconds = args.minutes * 60
    warm_s = args.warmup_min * 60
    audio = np.tile(once, int(np.ceil(seconds * 16000 / len(once))))[: int(seconds * 16000)]
    args.out.mkdir(parents=True, exist_ok=True)
    churn: list[dict] = []
    finals: list = []
    # the long stream must outlive the soak: server.max_session_s (1 h by default) would end it
    with tempfile.TemporaryDirectory() as tmp, \
            relais_serve(args.models_dir or default_models_dir(), Path(tmp),
                         f"max_session_s: {int(seconds) + 1800}") as served:
        prom, url = _start_prometheus(Path(tmp), served.metrics_port)
        address = f"127.0.0.1:{served.port}"
        try:
            result = {}
            stop = threading.Event()
            start = time.time()
            print(f"streaming {seconds / 60:.0f} min of French in real time"
                  + (f", short streams beside it every {args.churn_pause_s:g} s" if args.churn_pause_s is not None
                     else "") + "...", flush=True)
            churner = threading.Thread(target=_churn, args=(address, short_clips, args.churn_pause_s,
                                                            args.cancel_every, stop, start, churn), daemon=True)
            if args.churn_pause_s is not None:
                churner.start()
            with TranslateClient(address) as client:
                def on_event(event) -> None:
                    if getattr(event, "kind", "") == "translation_final":
                        finals.append(event)

                def long_stream() -> None:
                    try:
                        result["r"] = client.translate_audio(audio, 16000, TranslateOptions(
                            target_language="en", source_language="fr", speed=1.0, return_audio=True),
                            on_event=on_event)
                    except Exception as exc:  # keep what Prometheus saw: report the failure, do not lose the run
                        result["error"] = repr(exc)

                run = threading.Thread(target=long_stream, daemon=True)
                run.start()
                run.join()
            stop.set()
            if churner.is_alive():
                churner.join(120)
            end = time.time()
            time.sleep(5)
            series = {k: _range(url, q, start, end + 4) for k, q in QUERIES.items()}
        finally:
            prom.terminate()
            prom.wait(10)
    summary = result["r"].summary if "r" in result else None
    # the long stream's clock starts with its first sample, a moment after `start`: close enough at minute scale
    long_lags = _long_stream_lags(finals)
    warm = [(t, v) for t, v in series["rss_mb"] if t >= warm_s]
    lag = series["output_lag_p95_s"]
    steady = [(t, v) for t, v in long_lags if t >= warm_s]
    outcomes: dict[str, int] = {}
    for row in churn:
        outcomes[row["status"]] = outcomes.get(row["status"], 0) + 1
    short_lags = [(r["end_s"], r["mean_output_lag_s"]) for r in churn if r["status"] == "OK"]
    sessions = series["sessions_active"]
    report = {
        "machine": machine(), "minutes": args.minutes, "date": time.strftime("%Y-%m-%d"),
        "churn_pause_s": args.churn_pause_s, "cancel_every": args.cancel_every, "warmup_min": args.warmup_min,
        "server_summary": {"mean_output_lag_s": summary.mean_output_lag_s, "max_output_lag_s": summary.max_output_lag_s,
                           "real_time_factor": summary.real_time_factor, "audio_in_s": summary.audio_in_s,
                           "audio_out_s": summary.audio_out_s, "degraded_fraction": summary.degraded_fraction}
        if summary else {"error": result.get("error")},
        "lag_p95_first_5min_median_s": _median_between(lag, warm_s, warm_s + 300) if lag else None,
        "lag_p95_last_5min_median_s": _median_between(lag, seconds - 300, seconds + 60) if lag else None,
        "lag_p95_slope_s_per_min": (_slope([p for p in lag if p[0] >= warm_s]) or 0.0) * 60 if lag else None,
        "long_stream_lag_first_10min_after_warmup_median_s": _median_between(long_lags, warm_s, warm_s + 600),
        "long_stream_lag_last_10min_median_s": _median_between(long_lags, seconds - 600, seconds + 60),
        "long_stream_lag_slope_s_per_min": (_slope(steady) or 0.0) * 60,
        "long_stream_lag_drift_over_run_s": (_slope(steady) or 0.0) * (seconds - warm_s),
        "rss_mb_after_warmup": {"min": min(v for _, v in warm), "max": max(v for _, v in warm)} if warm else None,
        "rss_mb_at": {f"{m} min": _median_between(series["rss_mb"], m * 60 - 30, m * 60 + 30)
                      for m in (5, 15, 30, 45, int(args.minutes)) if m <= args.minutes},
        "rss_slope_mb_per_min_after_warmup": (_slope(warm) or 0.0) * 60 if warm else None,
        "backlog_max_s": max((v for _, v in series["speech_backlog_max_s"]), default=None),
        "sessions_active_max": max((v for _, v in sessions), default=None),
        "sessions_active_at_end": sessions[-1][1] if sessions else None,
        "short_streams": len(churn), "short_stream_outcomes": outcomes,
        "short_stream_mean_lag_median_s": float(np.median([v for _, v in short_lags])) if short_lags else None,
        "short_stream_mean_lag_slope_s_per_min": (_slope(short_lags) or 0.0) * 60 if short_lags else None,
        "series": series, "long_stream_lags": long_lags, "short_stream_rows": churn,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    what = "one stream" + (" plus churn of short streams" if args.churn_pause_s is not None else "")
    _plot(series, long_lags, churn, args.out / "soak.png",
          f"{args.minutes:g}-minute real-time French through {what}, from Prometheus and the clients")
    command = f"python tools/soak_metrics.py --minutes {args.minutes:g}" + (
        f" --churn-pause-s {args.churn_pause_s:g} --cancel-every {args.cancel_every}"
        if args.churn_pause_s is not None else "")
    lines = [f"# Soak: {args.minutes:g} minutes of live French through {what}", "",
             f"{report['date']}, {report['machine']}. `{command}`. Fits leave out the first "
             f"{args.warmup_min:g} min (warm-up).", "", "| figure | value |", "|---|---|"]
    for key, value in report.items():
        if key not in ("machine", "date", "series", "long_stream_lags", "short_stream_rows", "server_summary"):
            lines.append(f"| {key} | {round(value, 3) if isinstance(value, float) else value} |")
    lines += [f"| server summary (long stream) | {report['server_summary']} |", "", "![soak](soak.png)", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
