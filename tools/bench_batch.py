#!/usr/bin/env python3
"""What batching model calls across streams would buy: throughput of the exported Whisper
encoder and decoder at batch 1, 2, 4, 8 on this machine.

Each row stacks B copies of the same work into one call (the graphs' batch axis), which
is the best case for cross-stream batching (no padding): the gain shown is an upper bound.

- encoder: B clips of --audio-s seconds of real French speech (+1 s pad, as the streaming
  recogniser encodes them): calls/s and audio seconds encoded per second;
- decoder: one cached step (one new token per row) after a --context-tokens prompt, over
  B rows of encoded audio: steps/s and tokens/s.

Then what the scheduler really runs (``WhisperModel.greedy_batch``): whole greedy decodes of
B different fr_en_dev clips (their first 1.5-6 s, each with its own audio length, as
streams' hypotheses have), alone one after another vs B rows sharing each decoder call
(padded and masked), with a check that every row gets the tokens it gets alone.

    python tools/bench_batch.py --runs 7 --out docs/benchmarks/batching-cpu.md
    python tools/bench_batch.py --batches 1,3,6,12   # rows of beam-3 steps, one to four streams
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from relais.audio.files import load_audio_16k
from relais.eval.data import default_eval_dir, read_manifest
from relais.eval.machine import machine
from relais.models.manifest import default_models_dir
from relais.runtime.whisper import GreedyRequest, WhisperModel
from relais.server.config import load_config

BATCHES = (1, 2, 4, 8)


def _median_s(fn, runs: int) -> float:
    fn()  # warm: first calls of a shape allocate
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_whisper(model: WhisperModel, audio: np.ndarray, context_tokens: int, runs: int,
                  batches: tuple[int, ...] = BATCHES) -> list[dict]:
    mel = model.features(audio, len(audio) / model.sample_rate_hz + 1.0)[None]
    one = model.encode(audio, len(audio) / model.sample_rate_hz + 1.0)
    prompt = model.prompt("translate", "fr")
    tokens = (prompt + [model.tokenizer.encode(" the")[0]] * context_tokens)[:context_tokens]
    first = model.step(np.array([tokens]), 0, *model.empty_cache(), one)
    rows = []
    for b in batches:
        mels = np.repeat(mel, b, axis=0)
        enc_s = _median_s(lambda: model.encoder.session.run(None, {"mel": mels}), runs)
        wide = type(one)(np.repeat(one.cross_k, b, axis=1), np.repeat(one.cross_v, b, axis=1), one.duration_s)
        k, v = np.repeat(first.self_k, b, axis=1), np.repeat(first.self_v, b, axis=1)
        step = np.full((b, 1), tokens[-1])
        dec_s = _median_s(lambda: model.step(step, len(tokens), k, v, wide), runs)
        rows.append({"batch": b, "encoder_call_s": enc_s, "encoder_calls_per_s": b / enc_s,
                     "audio_s_per_s": b * len(audio) / model.sample_rate_hz / enc_s,
                     "decoder_step_s": dec_s, "tokens_per_s": b / dec_s})
    return rows


def bench_greedy_rows(model: WhisperModel, clips: list[np.ndarray], runs: int,
                      batches: tuple[int, ...] = BATCHES) -> list[dict]:
    """Greedy decodes of different clips: alone in turn vs B per batch; same tokens required."""
    requests = []
    for i, audio in enumerate(clips):
        audio = audio[: int((1.5 + 0.5 * (i % 10)) * 16000)]  # 1.5..6 s: rows differ in length
        enc = model.encode(audio, len(audio) / model.sample_rate_hz + 1.0)
        requests.append(GreedyRequest(enc, model.prompt("translate", "fr")))
    alone = [model.greedy_batch([r])[0] for r in requests]
    tokens = sum(len(r.tokens) + 1 for r in alone)  # + the end-of-text step
    alone_s = _median_s(lambda: [model.greedy_batch([r]) for r in requests], runs)
    rows = []
    for b in batches:
        groups = [requests[i:i + b] for i in range(0, len(requests), b)]
        together = [r for group in groups for r in model.greedy_batch(group)]
        same = sum(t.tokens == a.tokens for t, a in zip(together, alone))
        batched_s = _median_s(lambda: [model.greedy_batch(group) for group in groups], runs)
        rows.append({"batch": b, "decodes": len(requests), "tokens": tokens, "seconds": batched_s,
                     "tokens_per_s": tokens / batched_s, "gain": alone_s / batched_s, "same_tokens": same})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--precision", default="int8")
    p.add_argument("--audio-s", type=float, default=5.0, help="seconds of speech per encoder row")
    p.add_argument("--context-tokens", type=int, default=40, help="prompt + committed tokens before the step")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--decodes", type=int, default=16, help="greedy decodes of different clips (batched B at a time)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   help="batch sizes, comma-separated, the first the baseline (default %(default)s)")
    p.add_argument("--out", type=Path, help="write a markdown table here")
    args = p.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        p.error(f"--batches takes whole numbers separated by commas, got {args.batches!r}")
    if not batches or min(batches) < 1:
        p.error(f"--batches must be >= 1, got {args.batches!r}")
    models = args.models_dir or default_models_dir()
    # the server's providers (RELAIS_RUNTIME_PROVIDERS=cuda,cpu on a GPU, else the default chain)
    model = WhisperModel(models / "whisper-base", args.precision, load_config(None).runtime.runtime_config())
    eval_dir = default_eval_dir()
    utt = max(read_manifest(eval_dir / "fr_en_dev" / "manifest.tsv"), key=lambda u: u.duration_s)
    audio = load_audio_16k(utt.path)[: int(args.audio_s * 16000)]
    rows = bench_whisper(model, audio, args.context_tokens, args.runs, batches)
    lines = [f"# Batched model calls on {machine()}", "",
             f"whisper-base {args.precision}, ONNX Runtime {model.encoder.provider.upper()}; {args.audio_s:g} s "
             f"of speech (+1 s pad) per encoder row ({utt.id}); one cached decoder step after {args.context_tokens} tokens; median of {args.runs} "
             f"calls each. Rows are identical copies (no padding): an upper bound for cross-stream batching.", "",
             "| batch | encoder call (ms) | encoder rows/s | audio s encoded / s | gain | decoder step (ms) | "
             "tokens/s | gain |", "|---|---|---|---|---|---|---|---|"]
    base = rows[0]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['encoder_call_s'] * 1000:.0f} | {r['encoder_calls_per_s']:.1f} | "
                     f"{r['audio_s_per_s']:.1f} | {r['encoder_calls_per_s'] / base['encoder_calls_per_s']:.2f}x | "
                     f"{r['decoder_step_s'] * 1000:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x |")
    clips = [load_audio_16k(u.path) for u in read_manifest(eval_dir / "fr_en_dev" / "manifest.tsv")]
    greedy = bench_greedy_rows(model, (clips * 2)[: args.decodes], args.runs, batches)
    lines += ["", f"Whole greedy decodes (`WhisperModel.greedy_batch`) of {args.decodes} different fr_en_dev clips "
              f"(their first 1.5-6 s, translate fr -> en, so rows differ in audio length and in when they end), "
              f"B at a time; median of {args.runs} passes over all of them; gain against each decode alone.", "",
              "| batch | pass (s) | tokens/s | gain | rows with the tokens they get alone |", "|---|---|---|---|---|"]
    for r in greedy:
        lines.append(f"| {r['batch']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['gain']:.2f}x | "
                     f"{r['same_tokens']} of {r['decodes']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
