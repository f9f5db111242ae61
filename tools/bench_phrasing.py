#!/usr/bin/env python3
"""How well speech spoken phrase by phrase is heard: voicing the pieces as sentences or as continuing.

The pipeline speaks a sentence in pieces (its first committed word alone, then a few words per
commit). Each piece is one voice call. This benchmark takes English sentences that no run
produced (the transcripts and references of eval manifests), cuts each one the way the speaker
does, speaks the pieces one call each (trimmed and joined, as `relais eval` joins the received
chunks) and transcribes the result with `relais eval`'s ASR model (Whisper base, fp32). Its
word error rate against the sentence says how much of the text a listener's ASR recovers:

- ``sentence``: every piece voiced as a sentence of its own (before 2026-12-01);
- ``continues``: as the speaker voices them: a piece its sentence goes on after ends with a word
  boundary (``PiperTts.synthesize(..., continues=True)``) and, since 2026-12-01's seventh session,
  a piece that goes on with an open sentence begins with one (``resumes=True``);
- ``whole``: the sentence in one call (no pieces), for reference.

Cuts (repeatable ``--cut``): ``first1+N`` speaks the first word alone and then N words at a time,
``N`` N words at a time; every cut also ends at a comma or a sentence end. The WER difference
between renderings comes with a paired bootstrap interval over the sentences.

    python tools/bench_phrasing.py --manifest ../shared/eval/en_asr/manifest.tsv:transcript_en \\
        --manifest ../shared/eval/fr_en_dev/manifest.tsv:reference_en --cut first1+4 --cut 3 --cut first1+2
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np

from relais.eval.asr import SpeechRecogniser, default_asr_dir
from relais.eval.scores import normalise_en
from relais.models.manifest import load_model_set
from relais.runtime.tts import CLAUSE_END, PiperTts

from asr_bleu_parts import speak  # tools/: the phrases one call each, as the speaker voices them

RENDERINGS = ("sentence", "continues")


def sentences(spec: str) -> list[str]:
    """``PATH:COLUMN`` of a TSV manifest -> its texts as sentences (capitalised, closed with a full stop)."""
    path, _, column = spec.rpartition(":")
    with open(path, encoding="utf-8", newline="") as f:
        texts = [row[column].strip() for row in csv.DictReader(f, delimiter="\t") if row.get(column, "").strip()]
    return [t[0].upper() + t[1:] + ("" if re.search(r"[.!?]$", t) else ".") for t in texts]


def cut(sentence: str, spec: str) -> list[str]:
    words = sentence.split()
    first_alone, _, n = spec.rpartition("+")
    if first_alone not in ("", "first1") or not n.isdigit() or int(n) < 1:
        raise SystemExit(f"--cut {spec!r}: use N or first1+N (N >= 1)")
    pieces, current = ([[words[0]]], []) if first_alone else ([], [])
    for w in words[1 if first_alone else 0:]:
        current.append(w)
        if len(current) >= int(n) or CLAUSE_END.search(w):
            pieces.append(current)
            current = []
    return [" ".join(p) for p in pieces + ([current] if current else [])]


def errors(heard: str, text: str) -> tuple[int, int]:
    import jiwer

    out = jiwer.process_words(normalise_en(text), normalise_en(heard) or "<empty>")
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 12345) -> tuple[float, float]:
    """95 % interval of WER(b) - WER(a), resampling sentences. ``a``, ``b``: [sentence, ..., (errors,
    words)]; the axes between are summed (several cuts of the same sentences)."""
    a, b = a.reshape(len(a), -1, 2).sum(1), b.reshape(len(b), -1, 2).sum(1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    diff = b[idx, 0].sum(1) / b[idx, 1].sum(1) - a[idx, 0].sum(1) / a[idx, 1].sum(1)
    return float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, help="PATH:COLUMN of a TSV with English text")
    p.add_argument("--cut", action="append", default=None, help="N or first1+N (repeatable; default first1+4)")
    p.add_argument("--models", type=Path, default=None)
    args = p.parse_args(argv)

    texts = [s for spec in args.manifest for s in sentences(spec)]
    models = load_model_set(args.models)
    voice = PiperTts(models.path(models.by_task("tts")[0].name))
    asr = SpeechRecogniser(default_asr_dir(args.models))
    hear = lambda audio: asr.transcribe(audio, voice.sample_rate_hz)  # noqa: E731

    whole = np.array([errors(hear(voice.synthesize(t)), t) for t in texts])
    print(f"# Phrase-by-phrase speech: ASR word errors ({len(texts)} sentences, {whole[:, 1].sum()} words)\n")
    print("| cut | sentence WER | continues WER | difference [95 % CI] | sentences better / worse |")
    print("|---|---|---|---|---|")
    every: dict[str, list[np.ndarray]] = {r: [] for r in RENDERINGS}
    for spec in args.cut or ["first1+4"]:
        got = {r: np.array([errors(hear(speak(voice, cut(t, spec), False, None, continuing=r == "continues")), t)
                            for t in texts]) for r in RENDERINGS}
        a, b = got["sentence"], got["continues"]
        low, high = bootstrap(a, b)
        wer_a, wer_b = a[:, 0].sum() / a[:, 1].sum(), b[:, 0].sum() / b[:, 1].sum()
        print(f"| {spec} | {wer_a:.3f} | {wer_b:.3f} | {wer_b - wer_a:+.3f} [{low:+.3f}, {high:+.3f}] | "
              f"{(b[:, 0] < a[:, 0]).sum()} / {(b[:, 0] > a[:, 0]).sum()} |", flush=True)
        for r in RENDERINGS:
            every[r].append(got[r])
    a, b = (np.stack(every[r], axis=1) for r in RENDERINGS)  # [sentence, cut, (errors, words)]
    low, high = bootstrap(a, b)
    (ea, wa), (eb, wb) = a.sum((0, 1)), b.sum((0, 1))
    print(f"| all cuts | {ea / wa:.3f} ({ea}/{wa}) | {eb / wb:.3f} ({eb}/{wb}) | {eb / wb - ea / wa:+.3f} "
          f"[{low:+.3f}, {high:+.3f}] | – |")
    print(f"\nWhole sentences, one call each: WER {whole[:, 0].sum() / whole[:, 1].sum():.3f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
