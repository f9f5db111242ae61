#!/usr/bin/env python3
"""Latency of Riva's speech-to-speech path against the native relais.v1 path, each through its own client.

Every clip of a manifest (fr_en_dev by default) is translated twice per run, alternating
the order: with ``relais.client.TranslateClient`` (``Translate``) and with
``riva.client.NeuralMachineTranslationClient`` (``StreamingTranslateSpeechToSpeech``). Both
send the same 100 ms PCM16 chunks at 16 kHz, paced in real time against absolute deadlines,
and ask for speech at the voice's own rate (22050 Hz), so only the path differs. Timed on
the client, from the moment the first audio chunk is handed to gRPC:

    first_audio_s   when the first translated speech arrived
    end_offset_s    when a listener playing the speech as it arrives (back to back) finishes,
                    after the end of the source clip
    speech_s        seconds of speech received

The spoken text of the two paths must be the same (one pipeline); the table gives the mean
of each figure, and of the per-clip differences (riva - native) with their standard
deviation. On a shared machine, differences within that spread are noise.

    python tools/bench_riva.py --models-dir ~/.cache/relais/models --runs 1 --out out/bench-riva.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from relais.audio.files import read_pcm16
from relais.eval.data import default_eval_dir, read_manifest
from relais.eval.machine import machine

CHUNK_S = 0.1
OUTPUT_RATE_HZ = 22050


@dataclass(frozen=True)
class Heard:
    """One path's run of one clip, timed on the client."""

    path: str
    clip: str
    duration_s: float
    first_audio_s: float
    end_offset_s: float
    speech_s: float
    text: str


def listened(arrivals: list[tuple[float, float]], duration_s: float) -> tuple[float, float]:
    """(first audio, end offset) for (arrival s, seconds of speech) pieces played back to back as they arrive."""
    end = 0.0
    for arrival_s, seconds in arrivals:
        end = max(end, arrival_s) + seconds
    return arrivals[0][0], end - duration_s


def run_native(address: str, pcm: np.ndarray, clip: str) -> Heard:
    from relais.client import TranslateClient, TranslateOptions

    options = TranslateOptions(target_language="en", source_language="fr", speed=1.0,
                               chunk_ms=int(CHUNK_S * 1000), output_sample_rate_hz=OUTPUT_RATE_HZ)
    with TranslateClient(address) as client:
        result = client.translate_audio(pcm, 16000, options)
    chunks = [a for a in result.audio_chunks if a.duration_s > 0]
    first, end = listened([(a.arrival.arrival_s, a.duration_s) for a in chunks], len(pcm) / 16000)
    return Heard("native", clip, len(pcm) / 16000, first, end, sum(a.duration_s for a in chunks),
                 " ".join(a.text for a in chunks))


def run_riva(address: str, pcm: np.ndarray, clip: str) -> Heard:
    import riva.client
    from riva.client.proto import riva_asr_pb2 as rasr
    from riva.client.proto import riva_nmt_pb2 as rnmt

    config = rnmt.StreamingTranslateSpeechToSpeechConfig(
        asr_config=rasr.StreamingRecognitionConfig(config=rasr.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000, language_code="fr-FR")),
        translation_config=rnmt.TranslationConfig(source_language_code="fr-FR", target_language_code="en-US"),
        tts_config=rnmt.SynthesizeSpeechConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                               sample_rate_hz=OUTPUT_RATE_HZ, language_code="en-US"))
    step = int(16000 * CHUNK_S)
    clock: dict[str, float] = {}

    def paced():
        for i in range(0, len(pcm), step):
            if "t0" in clock:
                delay = clock["t0"] + i / 16000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            else:
                clock["t0"] = time.monotonic()
            yield pcm[i:i + step].astype("<i2").tobytes()

    nmt = riva.client.NeuralMachineTranslationClient(riva.client.Auth(uri=address))
    arrivals, texts = [], []
    for response in nmt.streaming_s2s_response_generator(paced(), config):
        if response.speech.audio:
            arrivals.append((time.monotonic() - clock["t0"], len(response.speech.audio) / 2 / OUTPUT_RATE_HZ))
            texts.append(response.speech.meta.text)
    first, end = listened(arrivals, len(pcm) / 16000)
    return Heard("riva", clip, len(pcm) / 16000, first, end, sum(s for _, s in arrivals), " ".join(texts))


def table(heard: list[Heard]) -> str:
    figures = ("first_audio_s", "end_offset_s", "speech_s")
    by_clip: dict[tuple[str, int], dict[str, Heard]] = {}
    for i, h in enumerate(heard):
        by_clip.setdefault((h.clip, i // 2), {})[h.path] = h
    pairs = [p for p in by_clip.values() if len(p) == 2]
    lines = ["| clip | s | " + " | ".join(f"native {f} | riva {f}" for f in figures) + " | same text |",
             "|---|---|" + "---|---|" * len(figures) + "---|"]
    for p in pairs:
        n, r = p["native"], p["riva"]
        cells = " | ".join(f"{getattr(n, f):.2f} | {getattr(r, f):.2f}" for f in figures)
        lines.append(f"| {n.clip} | {n.duration_s:.1f} | {cells} | {'yes' if n.text == r.text else 'NO'} |")
    means = " | ".join(f"{statistics.mean(getattr(p['native'], f) for p in pairs):.2f} | "
                       f"{statistics.mean(getattr(p['riva'], f) for p in pairs):.2f}" for f in figures)
    lines.append(f"| **mean** | | {means} | {sum(p['native'].text == p['riva'].text for p in pairs)}/{len(pairs)} |")
    lines.append("")
    for f in figures:
        diffs = [getattr(p["riva"], f) - getattr(p["native"], f) for p in pairs]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(f"- {f}: riva - native = {statistics.mean(diffs):+.3f} s on average "
                     f"(per-clip sd {spread:.3f} s, n={len(diffs)})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help="host:port of a running relais serve (default: start one in-process)")
    ap.add_argument("--models-dir", type=Path, help="model set of the in-process server (default: the usual place)")
    ap.add_argument("--manifest", type=Path, default=default_eval_dir() / "fr_en_dev" / "manifest.tsv")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the Markdown table here (and the raw runs as .json beside it)")
    args = ap.parse_args()

    clips = read_manifest(args.manifest)
    audio = {c.id: read_pcm16(c.path) for c in clips}
    for clip_id, data in audio.items():
        if data.sample_rate_hz != 16000 or data.samples.shape[1] != 1:
            sys.exit(f"{clip_id}: this benchmark sends 16 kHz mono clips as they are")
    handle = None
    address = args.server
    if address is None:
        from relais.server.app import start_in_process
        from relais.server.config import load_config

        overrides = {"server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0}}
        if args.models_dir is not None:
            overrides["models"] = {"dir": str(args.models_dir)}
        handle = start_in_process(load_config().replace(**overrides))
        address = handle.address
    heard: list[Heard] = []
    started = time.monotonic()
    try:
        for run in range(args.runs):
            for i, clip in enumerate(clips):
                pcm = audio[clip.id].samples[:, 0]
                order = (run_native, run_riva) if (i + run) % 2 == 0 else (run_riva, run_native)
                pair = {h.path: h for h in (fn(address, pcm, clip.id) for fn in order)}
                heard += [pair["native"], pair["riva"]]
                print(f"run {run + 1} {clip.id}: first audio native {pair['native'].first_audio_s:.2f} s, "
                      f"riva {pair['riva'].first_audio_s:.2f} s; end offset native {pair['native'].end_offset_s:.2f} s, "
                      f"riva {pair['riva'].end_offset_s:.2f} s", flush=True)
    finally:
        if handle is not None:
            handle.close()
    report = (f"Riva S2S vs native Translate, {len(clips)} clips of {args.manifest.parent.name} x {args.runs} run(s), "
              f"real-time 100 ms chunks, speech at {OUTPUT_RATE_HZ} Hz; {machine()}; "
              f"{time.monotonic() - started:.0f} s in all\n\n{table(heard)}\n")
    print("\n" + report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps([asdict(h) for h in heard], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
