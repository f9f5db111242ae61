#!/usr/bin/env python3
"""Where a stream's compute goes: every clip of a manifest through one engine session at a
time, fed in 100 ms chunks as fast as possible (no server, no pacing), with the model
scheduler's observer adding up compute seconds by stage (vad, encoder, decoder, language,
tts). Prints each stage as a real-time factor (compute seconds / source seconds).

The decode grid is the one a real-time stream follows (it depends on source time only), so
the per-stage figures are a real-time stream's, without the waiting.

    python tools/profile_stages.py --latency balanced
    python tools/profile_stages.py --latency balanced --profile first_step_s=1.0
    python tools/profile_stages.py --first-decision   # per clip: the chunk that commits its first words
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from relais.audio.files import load_audio_16k
from relais.eval.command import parse_profile
from relais.eval.data import default_eval_dir, read_manifest
from relais.eval.machine import machine
from relais.pipeline.engine import LATENCY_PROFILES, TranslationEngine
from relais.pipeline.events import TextKind, TextSegment
from relais.server.config import load_config

CHUNK = 1600  # 100 ms at 16 kHz
STAGES = ("encoder", "decoder", "tts", "vad")  # the columns of --first-decision


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=None, help="default: ../shared/eval/fr_en_dev")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--latency", choices=sorted(LATENCY_PROFILES), default="balanced")
    p.add_argument("--profile", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]")
    p.add_argument("--encoder-precision", default="auto", help="models.encoder_precision (auto, fp32, fp16, int8)")
    p.add_argument("--from", dest="source", default="fr")
    p.add_argument("--to", dest="target", default="en")
    p.add_argument("--first-decision", action="store_true",
                   help="per clip, the compute of the chunk whose step commits the first words (what a "
                        "real-time stream adds to the policy's StartOffset, before the network), then stop")
    args = p.parse_args(argv)
    manifest = args.manifest or default_eval_dir() / "fr_en_dev" / "manifest.tsv"
    # the server's settings (RELAIS_RUNTIME_PROVIDERS and the other RELAIS_* variables too)
    server = load_config(None).engine_config()
    engine = TranslationEngine(dataclasses.replace(server, models_dir=args.models or server.models_dir,
                                                   encoder_precision=args.encoder_precision,
                                                   latency_overrides=parse_profile(args.profile, args.latency)))
    engine.warm_up()
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def observe(stage: str, seconds: float) -> None:
        spent[stage] += seconds
        calls[stage] += 1

    scheduler = engine.new_scheduler(observer=observe)
    if args.first_decision:
        return first_decisions(engine, scheduler, manifest, args, spent)
    source_s, start = 0.0, time.perf_counter()
    for utt in read_manifest(manifest):
        audio = load_audio_16k(utt.path)
        source_s += len(audio) / 16000
        session = new_session(engine, scheduler, args)
        for i in range(0, len(audio), CHUNK):
            session.push_audio(audio[i:i + CHUNK])
        session.finish()
    wall = time.perf_counter() - start
    print(f"{machine()}; {manifest}; Whisper {engine.whisper.precision_label} on {engine.whisper.encoder.provider}; latency {args.latency} {args.profile or ''}")
    print(f"source {source_s:.1f} s, wall {wall:.1f} s, RTF {wall / source_s:.3f}")
    print("| stage | compute (s) | RTF | calls | ms per call |\n|---|---|---|---|---|")
    for stage, seconds in spent.most_common():
        print(f"| {stage} | {seconds:.2f} | {seconds / source_s:.3f} | {calls[stage]} | "
              f"{seconds / calls[stage] * 1000:.0f} |")
    return 0


def new_session(engine: TranslationEngine, scheduler, args: argparse.Namespace):
    cfg = engine.session_config(source_language=args.source, target_language=args.target, latency_mode=args.latency)
    return engine.new_session(cfg, scheduler)


def first_decisions(engine: TranslationEngine, scheduler, manifest: Path, args: argparse.Namespace,
                    spent: collections.Counter[str]) -> int:
    """Each clip up to the chunk after which its first committed text (and that text's speech) comes out:
    that chunk's wall time and its compute by stage."""
    print(f"{machine()}; {manifest}; Whisper {engine.whisper.precision_label}; latency {args.latency} {args.profile or ''}")
    print("| clip | chunk ends at (s) | first words | wall (ms) | " + " | ".join(f"{s} (ms)" for s in STAGES) + " |")
    print("|---|---|---|---|" + "---|" * len(STAGES))
    walls = []
    for utt in read_manifest(manifest):
        audio = load_audio_16k(utt.path)
        session = new_session(engine, scheduler, args)
        for i in range(0, len(audio), CHUNK):
            spent.clear()
            t0 = time.perf_counter()
            events = session.push_audio(audio[i:i + CHUNK])
            wall = time.perf_counter() - t0
            first = next((e for e in events if isinstance(e, TextSegment) and e.kind == TextKind.TRANSLATION_FINAL), None)
            if first is not None:
                walls.append(wall)
                stages = " | ".join(f"{spent[s] * 1000:.0f}" for s in STAGES)
                print(f"| {utt.id} | {min(i + CHUNK, len(audio)) / 16000:.1f} | {first.text} | {wall * 1000:.0f} | {stages} |")
                break
        session.finish()
    if walls:
        print(f"\nmedian wall {statistics.median(walls) * 1000:.0f} ms over {len(walls)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
