#!/usr/bin/env python3
"""Where a realtime run's ASR-BLEU goes: the streamed text spoken again in several ways.

Reads a `relais eval` run (results.json: each utterance's reference, streamed translation,
the ASR of its streamed speech, and the timeline of the speech chunks with their text) and
speaks each utterance's streamed text again with the model set's voice, then scores the
same ASR (`relais eval`'s default, Whisper base fp32, beam 5) on it:

- ``whole``: the streamed translation as one text, spoken in one go (no phrasing);
- ``phrases``: the phrases the run spoke, one voice call each, all but the last voiced as
  continuing (as the speaker does before an utterance ends), trimmed and joined as the eval
  joins the received chunks (``--length-scale`` sets the rate of every call; the run itself
  spoke faster under backlog).

A voice prepared by `relais models prepare` / `relais export piper` is deterministic (its noise
is fixed at export), so one repetition is exact; a voice that draws its noise on every call
(Piper's own file) needs ``--reps`` and the median and spread reported. Against the run's BLEU (its text) and its
ASR-BLEU (its speech), this splits the gap into what the text costs when spoken at all
(``whole``), what speaking it phrase by phrase adds (``phrases``), and what the run's
speaking rate and timing add (the run's own ASR-BLEU).

    python tools/asr_bleu_parts.py --run docs/benchmarks/speech-asr/default --length-scale 1.0 --length-scale 0.8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from relais.eval.asr import SpeechRecogniser, default_asr_dir
from relais.eval.scores import bleu, normalise_en
from relais.models.manifest import load_model_set
from relais.pipeline.speaker import opens_next, voice_phrase
from relais.runtime.tts import PiperTts


def speak(voice: PiperTts, phrases: list[str], whole: bool, length_scale: float | None,
          continuing: bool = True) -> np.ndarray:
    """``phrases`` in one call (``whole``), or one call each, trimmed and joined; with ``continuing``, as
    the speaker voices them: all but the last as going on (``PiperTts.synthesize(continues=True)``),
    and each after one that left its sentence open as resuming it (``resumes=True``), the one before it
    trimmed to its last loud frame."""
    if whole:
        return voice.synthesize(" ".join(phrases), length_scale)
    last = len(phrases) - 1
    resumes = [continuing and i > 0 and not opens_next(phrases[i - 1]) for i in range(len(phrases))]
    return np.concatenate([voice_phrase(voice, p, length_scale, continues=continuing and i < last, resumes=resumes[i],
                                        joined=i < last and resumes[i + 1]) for i, p in enumerate(phrases)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a relais eval output directory (results.json)")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--reps", type=int, default=1, help="repetitions of every variant (for a voice that draws noise)")
    p.add_argument("--length-scale", type=float, action="append", default=None,
                   help="speaking rate of the phrases (repeatable; default: the voice's own)")
    args = p.parse_args(argv)

    data = json.loads((args.run / "results.json").read_text(encoding="utf-8"))
    utts = [u for u in data["utterances"] if u.get("reference")]
    phrases = [[e["text"] for e in u["timeline"]["events"] if e["kind"] == "audio"] for u in utts]
    utts = [u for u, ph in zip(utts, phrases) if ph]
    phrases = [ph for ph in phrases if ph]
    if not utts:
        print(f"{args.run}: no utterance with a reference and spoken phrases (was it a realtime run with "
              "speech?)", file=sys.stderr)
        return 2
    refs = [u["reference"] for u in utts]
    models = load_model_set(args.models)
    voice = PiperTts(models.path(models.by_task("tts")[0].name))
    asr = SpeechRecogniser(default_asr_dir(args.models))

    variants = [("whole", True, None)] + [(f"phrases, length scale {s or 'voice'}", False, s)
                                         for s in (args.length_scale or [None])]
    scores: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for rep in range(args.reps):
        for name, whole, scale in variants:  # interleaved, so a slow spell of the host hits all alike
            heard = [asr.transcribe(speak(voice, ph, whole, scale), voice.sample_rate_hz) for ph in phrases]
            scores[name].append(bleu(heard, refs, normalise_en))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {s[-1]:.2f}" for n, s in scores.items()),
              file=sys.stderr, flush=True)

    text_bleu = bleu([u["translation"] for u in utts], refs, normalise_en)
    heard = [u.get("asr_text") or "" for u in utts]
    run_asr = bleu(heard, refs, normalise_en) if any(heard) else None  # None: the run had --no-asr
    print(f"# ASR-BLEU parts: {args.run} ({len(utts)} utterances, {args.reps} reps)\n")
    print("| speech | ASR-BLEU median | min–max | − BLEU of the text |\n|---|---|---|---|")
    print(f"| the text itself (BLEU) | {text_bleu:.1f} | – | – |")
    for name, s in scores.items():
        med = statistics.median(s)
        print(f"| {name} | {med:.1f} | {min(s):.1f}–{max(s):.1f} | {med - text_bleu:+.1f} |")
    if run_asr is not None:
        print(f"| the run's own speech | {run_asr:.1f} | – | {run_asr - text_bleu:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
