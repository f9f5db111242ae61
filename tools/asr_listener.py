#!/usr/bin/env python3
"""How the listener's decoding moves ASR-BLEU: the same speech heard by the eval's ASR, greedy or beam.

ASR-BLEU charges the speech with whatever its ASR mishears, so a weak listener makes the voice
look worse than it is. This benchmark hears the same audio with each decoding (``--beam``,
repeatable; default 1 and 5) of the eval's ASR model (Whisper base, fp32, as `relais eval` uses):

- ``--wer-manifest``: real English recordings with transcripts (default: ../shared/eval/en_asr).
  The listener's own word error rate, with the paired bootstrap interval of each decoding's WER
  against the first's. This says which decoding hears speech better, whatever Relais produced.
- ``--run``: a `relais eval --save-audio` run (results.json and audio/). Its streamed speech
  (``<id>.wav``) and, where the run kept it, the offline baseline's (``<id>.offline.wav``), heard
  again: ASR-BLEU, and ASR-BLEU - BLEU of the same text with its paired bootstrap interval.

    relais eval --mode realtime --manifest ../shared/eval/fr_en_dev/manifest.tsv --save-audio --out /tmp/run
    python tools/asr_listener.py --run /tmp/run --beam 1 --beam 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

from bench_phrasing import bootstrap, errors
from relais.audio.files import load_audio_16k
from relais.eval.asr import SpeechRecogniser, default_asr_dir
from relais.eval.data import default_eval_dir, read_manifest
from relais.eval.scores import bleu, normalise_en, paired_bootstrap_bleu


def listeners(args) -> list[SpeechRecogniser]:
    model_dir = args.asr_model or default_asr_dir(args.models)
    return [SpeechRecogniser(model_dir, beam_size=b) for b in args.beam or [1, 5]]


def wer_table(asrs: list[SpeechRecogniser], manifest: Path) -> list[str]:
    utts = [u for u in read_manifest(manifest) if u.source_text]
    if not utts:
        raise SystemExit(f"{manifest}: no utterance with a transcript")
    audio = [load_audio_16k(u.path) for u in utts]
    counts, lines = [], [f"Listener WER on {manifest} ({len(utts)} recordings):", "",
                         "| listener | WER | errors / words | − first [95 % CI] | seconds |", "|---|---|---|---|---|"]
    for asr in asrs:
        started = time.monotonic()
        rows = np.array([errors(asr.transcribe(a, 16000), u.source_text) for a, u in zip(audio, utts)])
        took = time.monotonic() - started
        counts.append(rows)
        e, n = rows.sum(0)
        ci = "–" if len(counts) == 1 else "{:+.3f} [{:+.3f}, {:+.3f}]".format(
            e / n - counts[0][:, 0].sum() / counts[0][:, 1].sum(), *bootstrap(counts[0], rows))
        lines.append(f"| {decoding(asr)} | {e / n:.3f} | {e} / {n} | {ci} | {took:.1f} |")
    return lines


def run_table(asrs: list[SpeechRecogniser], run: Path) -> list[str]:
    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    audio_dir = run / "audio"
    streamed = {u["id"]: u for u in data["utterances"] if u.get("reference")}
    offline = {r["id"]: r for r in (data.get("offline") or {}).get("utterances", []) if r.get("reference")}
    sets = [("streamed", streamed, ""), ("offline", offline, ".offline")]
    lines = [f"{run} ({data['meta'].get('machine', '')}):", "",
             "| speech | listener | utterances | BLEU of the text | ASR-BLEU | ASR-BLEU − BLEU [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for name, rows, suffix in sets:
        ids = [i for i in rows if (audio_dir / f"{i}{suffix}.wav").is_file()]
        if not ids:
            if name == "streamed":
                raise SystemExit(f"{audio_dir}: no saved speech (run relais eval with --save-audio)")
            continue
        speech = [soundfile.read(audio_dir / f"{i}{suffix}.wav", dtype="float32") for i in ids]
        texts, refs = [rows[i]["translation"] for i in ids], [rows[i]["reference"] for i in ids]
        for asr in asrs:
            heard = [asr.transcribe(a, rate) for a, rate in speech]
            d = paired_bootstrap_bleu(heard, texts, refs, normalise_en)
            lines.append(f"| {name} | {decoding(asr)} | {len(ids)} | {bleu(texts, refs, normalise_en):.1f} | "
                         f"{d.bleu_a:.1f} | {d.difference:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}] |")
    return lines


def decoding(asr: SpeechRecogniser) -> str:
    return "greedy" if asr.info.beam_size == 1 else f"beam {asr.info.beam_size}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a relais eval --save-audio output directory")
    p.add_argument("--wer-manifest", type=Path, default=None,
                   help="English recordings with transcripts (default ../shared/eval/en_asr/manifest.tsv; "
                        "'none' skips it)")
    p.add_argument("--beam", type=int, action="append", help="listener beam size (repeatable; default 1 and 5)")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--asr-model", type=Path, default=None, help="another exported Whisper directory")
    args = p.parse_args(argv)
    asrs = listeners(args)
    out: list[str] = []
    if str(args.wer_manifest) != "none":
        out += wer_table(asrs, args.wer_manifest or default_eval_dir() / "en_asr" / "manifest.tsv") + [""]
    if args.run is not None:
        out += run_table(asrs, args.run)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
