#!/usr/bin/env python3
"""Stream ../shared/eval/fr_en_dev through a Relais server at real-time speed.

Per clip and overall: committed-text BLEU against the reference next to the same
model's offline BLEU (whole clip, 30 s window, greedy), time to first audio (from
speech onset, server clock), mean and max output lag (arrival of a final text event
at the client minus the end of the source span it covers), and the real-time factor
(server compute / audio). Medians over --runs.

    python tools/bench_streaming.py --runs 3 --out docs/benchmarks/streaming.md
    python tools/bench_streaming.py --server host:50051 --runs 1   # a running server
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_whisper import machine  # noqa: E402

from relais.client import TranslateClient, TranslateOptions
from relais.eval.data import default_eval_dir, load_audio_16k, read_manifest
from relais.eval.latency import average_lagging, speech_timeline, word_delays
from relais.eval.scores import bleu


def clip_metrics(result, duration_s: float, reference: str) -> dict:
    finals = [t for t in result.texts if t.kind == "translation_final"]
    lags = [t.arrival.arrival_s - t.source_end_s for t in finals]
    delays = word_delays([(t.text, t.arrival.arrival_s) for t in finals])
    speech = speech_timeline([(a.arrival.arrival_s, a.duration_s) for a in result.audio_chunks], duration_s)
    s = result.summary
    return {
        "laal_text_s": average_lagging(delays, duration_s, len(reference.split())),
        "start_offset_s": speech.start_offset_s,
        "end_offset_s": speech.end_offset_s,
        "translation": result.translation,
        "first_audio_s": s.first_audio_latency_s if s else None,
        "first_audio_arrival_s": result.timings.first_audio_arrival_s,
        "mean_lag_s": statistics.mean(lags) if lags else None,
        "max_lag_s": max(lags) if lags else None,
        "rtf": s.real_time_factor if s else None,
        "duration_s": duration_s,
    }


def med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help="HOST:PORT of a running server (default: start one in-process)")
    ap.add_argument("--models-dir", type=Path, help="model set (default: $RELAIS_MODELS_DIR or ~/.cache/relais/models)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--latency", default="balanced", choices=["low", "balanced", "quality"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--eval-dir", type=Path, default=default_eval_dir())
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from relais.pipeline.engine import EngineConfig, TranslationEngine
    from relais.server.app import start_in_process
    from relais.server.config import load_config

    clips = read_manifest(args.eval_dir / "fr_en_dev" / "manifest.tsv")
    engine = TranslationEngine(EngineConfig(models_dir=args.models_dir, precision=args.precision))
    engine.warm_up()
    offline = [engine.whisper.transcribe(load_audio_16k(c.path), "translate", "fr").text for c in clips]
    refs = [c.reference for c in clips]
    offline_bleu = bleu(offline, refs)

    server = None
    address = args.server
    if not address:
        cfg = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
        server = start_in_process(cfg, engine=engine)
        address = server.address
    runs = []
    try:
        with TranslateClient(address) as client:
            for run in range(args.runs):
                per_clip = []
                for c in clips:
                    opts = TranslateOptions(target_language="en", source_language="fr", speed=args.speed,
                                            latency_mode=args.latency)
                    per_clip.append(clip_metrics(client.translate_file(c.path, opts), c.duration_s, c.reference))
                streamed_bleu = bleu([m["translation"] for m in per_clip], refs)
                runs.append({"bleu": streamed_bleu, "clips": per_clip})
                print(json.dumps({"run": run, "bleu": round(streamed_bleu, 2),
                                  "first_audio_s": med([m["first_audio_s"] for m in per_clip]),
                                  "mean_lag_s": med([m["mean_lag_s"] for m in per_clip]),
                                  "laal_s": med([m["laal_text_s"] for m in per_clip]),
                                  "rtf": med([m["rtf"] for m in per_clip])}), flush=True)
    finally:
        if server is not None:
            server.close()

    rows = []
    for i, c in enumerate(clips):
        ms = [r["clips"][i] for r in runs]
        rows.append({"id": c.id, "duration_s": c.duration_s, **{k: med([m[k] for m in ms]) for k in
                     ("first_audio_s", "start_offset_s", "end_offset_s", "laal_text_s", "mean_lag_s", "max_lag_s", "rtf")},
                     "translation": ms[-1]["translation"], "offline": offline[i]})
    overall = {
        "streamed_bleu": med([r["bleu"] for r in runs]),
        "offline_bleu": round(offline_bleu, 2),
        "first_audio_s": med([m["first_audio_s"] for r in runs for m in r["clips"]]),
        "mean_lag_s": med([statistics.mean([m["mean_lag_s"] for m in r["clips"] if m["mean_lag_s"] is not None]) for r in runs]),
        "max_lag_s": med([max(m["max_lag_s"] for m in r["clips"] if m["max_lag_s"] is not None) for r in runs]),
        "rtf": med([statistics.mean([m["rtf"] for m in r["clips"]]) for r in runs]),
        **{k: med([statistics.mean([m[k] for m in r["clips"]]) for r in runs])
           for k in ("start_offset_s", "end_offset_s", "laal_text_s")},
    }
    print(json.dumps(overall))
    if args.out:
        lines = [f"Machine: {machine()}; ONNX Runtime {engine.execution_provider}, Whisper base "
                 f"{engine.whisper.precision}; latency mode {args.latency}; audio sent at {args.speed}x real time; "
                 f"median of {args.runs} runs.", "",
                 f"Overall: streamed BLEU **{overall['streamed_bleu']}** vs offline BLEU {overall['offline_bleu']} "
                 f"(ratio {overall['streamed_bleu'] / max(overall['offline_bleu'], 1e-9):.2f}); time to first audio "
                 f"(median over clips) {overall['first_audio_s']} s; mean output lag {overall['mean_lag_s']} s "
                 f"(max {overall['max_lag_s']} s); RTF {overall['rtf']}.", "",
                 f"SimulEval-style, computation-aware (client arrival times, audio sent in real time), mean over "
                 f"clips: StartOffset {overall['start_offset_s']} s, EndOffset {overall['end_offset_s']} s (speech "
                 f"output), LAAL {overall['laal_text_s']} s (text output).", "",
                 "Output lag = arrival of a final text event minus the source time at which the session committed it "
                 "(the words were spoken before that point, so it measures compute and transport delay; LAAL and the "
                 "offsets measure the whole delay).", "",
                 "| clip | dur (s) | first audio from onset (s) | StartOffset (s) | EndOffset (s) | LAAL text (s) | "
                 "mean lag (s) | max lag (s) | RTF |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['duration_s']} | {r['first_audio_s']} | {r['start_offset_s']} | {r['end_offset_s']} | "
                  f"{r['laal_text_s']} | {r['mean_lag_s']} | {r['max_lag_s']} | {r['rtf']} |" for r in rows]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "overall": overall, "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
