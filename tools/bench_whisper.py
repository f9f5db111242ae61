#!/usr/bin/env python3
"""Offline accuracy and speed of each exported Whisper variant on ../shared/eval.

For every model x precision x encoder window it decodes the clips greedily and
reports BLEU (fr->en translate vs reference), WER (French transcribe vs the French
transcript; English transcribe vs transcript) and the real-time factor (compute
seconds / audio seconds, median over --runs repetitions).

Encoder windows: "30" pads every clip to Whisper's 30 s window (the reference),
"exact" encodes only the audio present, "+N" pads N seconds of silence.

    python tools/bench_whisper.py --models-dir ~/.cache/relais/models --runs 3 \
        --out docs/benchmarks/whisper-offline.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from relais.audio.files import load_audio_16k
from relais.eval.data import default_eval_dir, read_manifest
from relais.eval.machine import machine
from relais.eval.scores import bleu, wer
from relais.runtime.ort import RuntimeConfig
from relais.runtime.whisper import WhisperModel


def pad_for(window: str, duration_s: float) -> float | None:
    if window == "30":
        return 30.0
    if window == "exact":
        return None
    if window.startswith("+"):
        return duration_s + float(window[1:])
    raise ValueError(f"unknown window {window!r} (use 30, exact or +N)")


def run_task(model: WhisperModel, clips, audios, task: str, language: str, window: str) -> tuple[list[str], float]:
    texts, compute_s = [], 0.0
    for clip, audio in zip(clips, audios):
        start = time.perf_counter()
        enc = model.encode(audio, pad_for(window, clip.duration_s))
        texts.append(model.greedy(enc, model.prompt(task, language)).text)
        compute_s += time.perf_counter() - start
    return texts, compute_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["whisper-base", "whisper-tiny.en"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8", "fp32/int8"],
                    help="precision of both graphs, or ENCODER/DECODER (e.g. fp32/int8)")
    ap.add_argument("--windows", nargs="+", default=["30", "exact", "+1"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--eval-dir", type=Path, default=default_eval_dir())
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write a Markdown report here (and .json beside it)")
    args = ap.parse_args()

    fr = read_manifest(args.eval_dir / "fr_en_dev" / "manifest.tsv")
    en = read_manifest(args.eval_dir / "en_asr" / "manifest.tsv")
    fr_audio = [load_audio_16k(c.path) for c in fr]
    en_audio = [load_audio_16k(c.path) for c in en]
    rows = []
    for name in args.models:
        multilingual = "tiny.en" not in name
        tasks = ([("translate", "fr", fr, fr_audio), ("transcribe", "fr", fr, fr_audio)] if multilingual else []) + \
                [("transcribe", "en", en, en_audio)]
        for precision in args.precisions:
            encoder, _, decoder = precision.rpartition("/")
            model = WhisperModel(args.models_dir / name, decoder, RuntimeConfig(providers=("cpu",), intra_op_threads=args.threads),
                                 encoder_precision=encoder or None)
            for window in args.windows:
                for task, lang, clips, audios in tasks:
                    rtfs, texts = [], []
                    for _ in range(args.runs):
                        texts, compute_s = run_task(model, clips, audios, task, lang, window)
                        rtfs.append(compute_s / sum(c.duration_s for c in clips))
                    if task == "translate":
                        metric, score = "BLEU", bleu(texts, [c.reference for c in clips])
                    else:
                        metric, score = "WER", wer(texts, [c.source_text for c in clips])
                    row = dict(model=name, precision=precision, window=window, task=f"{task} {lang}",
                               metric=metric, score=round(score, 4 if metric == "WER" else 2),
                               rtf_median=round(statistics.median(rtfs), 4), rtf_runs=[round(r, 4) for r in rtfs], texts=texts)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "texts"}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"Machine: {machine()}; ONNX Runtime CPU; greedy decoding; median of {args.runs} runs.", "",
                 "| model | precision | window | task | metric | score | RTF (median) |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['precision']} | {r['window']} | {r['task']} | {r['metric']} | {r['score']} | {r['rtf_median']} |"
                  for r in rows]
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
