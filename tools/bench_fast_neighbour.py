"""A real-time stream beside one sent 20x faster than real time: does the fast one take its CPU?

Starts an in-process server (default config but load shedding and admission by load off, so
that the real-time clips' text is deterministic and they are never refused: what changes is
only how long their model calls wait; other `RELAIS_*` variables apply), then plays the
fr_en_dev clips one after another in real time through one stream per clip, twice: alone, and
with a second client streaming the fr_longform monologues at --speed x real time the whole
time. Reports each pass's mean output lag and queue wait (the server's Summary) and the fast
stream's throughput. Run it on two checkouts back to back to compare schedulers.

    python tools/bench_fast_neighbour.py [--clips 6] [--speed 20] [--out docs/benchmarks/fast-neighbour]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from relais.audio.files import load_audio_16k  # noqa: E402
from relais.client import TranslateClient, TranslateOptions  # noqa: E402
from relais.eval.data import default_eval_dir, read_manifest  # noqa: E402
from relais.eval.machine import machine  # noqa: E402
from relais.server.app import start_in_process  # noqa: E402


def _pass(address: str, clips: list) -> list[dict]:
    rows = []
    with TranslateClient(address) as client:
        for clip in clips:
            result = client.translate_audio(load_audio_16k(clip.path), 16000, TranslateOptions(
                target_language="en", source_language="fr", speed=1.0))
            s = result.summary
            rows.append({"clip": clip.id, "mean_output_lag_s": s.mean_output_lag_s,
                         "max_output_lag_s": s.max_output_lag_s, "queue_wait_s": s.queue_wait_s,
                         "degraded_fraction": s.degraded_fraction, "translation": result.translation})
    return rows


def _fast(address: str, audio: np.ndarray, speed: float, stop: threading.Event, out: list[dict]) -> None:
    with TranslateClient(address) as client:
        while not stop.is_set():
            began = time.monotonic()
            result = client.translate_audio(audio, 16000, TranslateOptions(
                target_language="en", source_language="fr", speed=speed))
            out.append({"audio_s": len(audio) / 16000, "wall_s": time.monotonic() - began,
                        "words": len(result.translation.split())})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="fr_en_dev clips per pass")
    parser.add_argument("--speed", type=float, default=20.0, help="the fast stream's speed (x real time)")
    parser.add_argument("--label", default="", help="names this checkout in the report")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    os.environ.update(RELAIS_LOAD_SHED_WAIT_S="0", RELAIS_LOAD_ADMIT_MAX_LOAD="0")
    eval_dir = default_eval_dir()
    clips = read_manifest(eval_dir / "fr_en_dev" / "manifest.tsv")[: args.clips]
    fast_audio = np.concatenate([load_audio_16k(u.path) for u in read_manifest(eval_dir / "fr_longform" / "manifest.tsv")])
    with start_in_process() as server:
        alone = _pass(server.address, clips)
        stop, fast_rows = threading.Event(), []
        fast = threading.Thread(target=_fast, args=(server.address, fast_audio, args.speed, stop, fast_rows), daemon=True)
        fast.start()
        time.sleep(2.0)  # the fast stream has its backlog queued
        beside = _pass(server.address, clips)
        stop.set()
        fast.join(600)
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    report = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "label": args.label, "speed": args.speed,
        "alone": {"mean_output_lag_s": mean(alone, "mean_output_lag_s"), "queue_wait_s": mean(alone, "queue_wait_s")},
        "beside_fast": {"mean_output_lag_s": mean(beside, "mean_output_lag_s"),
                        "queue_wait_s": mean(beside, "queue_wait_s")},
        "same_text": sum(a["translation"] == b["translation"] for a, b in zip(alone, beside)),
        "fast_stream": {"runs": len(fast_rows), "audio_s": sum(r["audio_s"] for r in fast_rows),
                        "wall_s": sum(r["wall_s"] for r in fast_rows)},
        "rows": {"alone": alone, "beside_fast": beside, "fast": fast_rows},
    }
    print(f"{args.label or 'this checkout'}: real-time clips' mean output lag alone "
          f"{report['alone']['mean_output_lag_s']:.2f} s, beside a {args.speed:g}x stream "
          f"{report['beside_fast']['mean_output_lag_s']:.2f} s (queue wait {report['alone']['queue_wait_s']:.2f} -> "
          f"{report['beside_fast']['queue_wait_s']:.2f} s per clip); same text {report['same_text']}/{len(clips)}; "
          f"fast stream: {len(fast_rows)} whole runs, {report['fast_stream']['audio_s']:.0f} s of audio in "
          f"{report['fast_stream']['wall_s']:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"results{'-' + args.label if args.label else ''}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
