"""Soak: a long real-time French stream through `relais serve`, seen through a real Prometheus.

Starts `relais serve` (subprocess) and Debian's Prometheus scraping it every 2 s, streams
the fr_longform monologues back to back in real time through one stream for --minutes,
then reads from Prometheus's query API (query_range) what an operator's dashboard would
show: output lag p50/p95 over the last minute, the live worst lag, speech backlog and
time-without-commit gauges, compute rate and server RSS. Writes results.json, results.md
and a plot into --out (default docs/benchmarks/soak-metrics).

    python tools/soak_metrics.py --minutes 20 [--models-dir DIR] [--out DIR]
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


def _plot(series: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for key in ("output_lag_p50_s", "output_lag_p95_s", "stream_lag_max_s"):
        axes[0].plot(*zip(*series[key]), label=key) if series[key] else None
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    for key in ("speech_backlog_max_s", "uncommitted_max_s"):
        axes[1].plot(*zip(*series[key]), label=key) if series[key] else None
    axes[1].set_ylabel("seconds")
    axes[1].legend()
    if series["rss_mb"]:
        axes[2].plot(*zip(*series["rss_mb"]), label="server RSS (MB)")
    axes[2].set_ylabel("MB")
    axes[2].set_xlabel("seconds since the stream started (from Prometheus)")
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "soak-metrics")
    args = parser.parse_args()
    clips = read_manifest(default_eval_dir() / "fr_longform" / "manifest.tsv")
    once = np.concatenate([load_audio_16k(c.path) for c in clips])
    seconds = args.minutes * 60
    audio = np.tile(once, int(np.ceil(seconds * 16000 / len(once))))[: int(seconds * 16000)]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, \
            relais_serve(args.models_dir or default_models_dir(), Path(tmp)) as served:
        prom, url = _start_prometheus(Path(tmp), served.metrics_port)
        try:
            result = {}
            start = time.time()
            print(f"streaming {seconds / 60:.0f} min of French in real time...", flush=True)
            with TranslateClient(f"127.0.0.1:{served.port}") as client:
                run = threading.Thread(target=lambda: result.update(r=client.translate_audio(
                    audio, 16000, TranslateOptions(target_language="en", source_language="fr", speed=1.0,
                                                   return_audio=True))), daemon=True)
                run.start()
                run.join()
            end = time.time()
            time.sleep(3)
            series = {k: _range(url, q, start, end) for k, q in QUERIES.items()}
        finally:
            prom.terminate()
            prom.wait(10)
    summary = result["r"].summary
    warm = [(t, v) for t, v in series["rss_mb"] if t >= 120]
    lag = series["output_lag_p95_s"]
    report = {
        "machine": machine(), "minutes": args.minutes, "date": time.strftime("%Y-%m-%d"),
        "server_summary": {"mean_output_lag_s": summary.mean_output_lag_s, "max_output_lag_s": summary.max_output_lag_s,
                           "real_time_factor": summary.real_time_factor, "audio_in_s": summary.audio_in_s,
                           "audio_out_s": summary.audio_out_s},
        "lag_p95_first_5min_median_s": float(np.median([v for t, v in lag if t < 300])) if lag else None,
        "lag_p95_last_5min_median_s": float(np.median([v for t, v in lag if t > seconds - 300])) if lag else None,
        "lag_p95_slope_s_per_min": (_slope(lag) or 0.0) * 60 if lag else None,
        "rss_mb_after_warmup": {"min": min(v for _, v in warm), "max": max(v for _, v in warm)} if warm else None,
        "rss_slope_mb_per_min_after_warmup": (_slope(warm) or 0.0) * 60 if warm else None,
        "backlog_max_s": max((v for _, v in series["speech_backlog_max_s"]), default=None),
        "series": series,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    _plot(series, args.out / "soak.png", f"{args.minutes:g}-minute real-time French stream, from Prometheus")
    lines = [f"# Soak: {args.minutes:g} minutes of live French through one stream, seen by Prometheus", "",
             f"{report['date']}, {report['machine']}. `python tools/soak_metrics.py --minutes {args.minutes:g}`.", "",
             "| figure | value |", "|---|---|"]
    for key in ("lag_p95_first_5min_median_s", "lag_p95_last_5min_median_s", "lag_p95_slope_s_per_min",
                "rss_mb_after_warmup", "rss_slope_mb_per_min_after_warmup", "backlog_max_s"):
        lines.append(f"| {key} | {report[key]} |")
    lines += [f"| server summary | {report['server_summary']} |", "", "![soak](soak.png)", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
