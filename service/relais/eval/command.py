"""``relais eval``: quality and latency of a Relais deployment, measured like the papers.

    relais eval --manifest ../shared/eval/fr_en_dev/manifest.tsv --out eval-out        # in-process server
    relais eval --manifest M.tsv --server host:50051 --metrics-url http://host:9090/metrics --mode simulated
    relais eval --manifest M.tsv --concurrency 1,2,4 --lag-bound-s 3       # lag / RTF vs simultaneous streams
    relais eval --manifest ../shared/eval/fr_longform/manifest.tsv --longform  # lag drift, memory over time
    relais eval --manifest M.tsv --latency balanced --profile policy=alignatt,step_s=0.5  # profile overrides
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from relais.console import LATENCY_CHOICES, LATENCY_HELP
from relais.eval.data import Utterance, read_manifest
from relais.eval.machine import machine

if TYPE_CHECKING:
    from relais.eval.results import ConcurrencyLevel, EvalResults

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True,
                   help="TSV: id, path, duration_s, [source text], [reference translation]")
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one in this process)")
    p.add_argument("--metrics-url", help="its Prometheus endpoint (e.g. http://host:9090/metrics), to compare "
                                         "the server's histograms with the client's figures")
    p.add_argument("--server-pid", type=int, help="pid of a server on this machine, to sample its memory")
    p.add_argument("--mode", choices=["realtime", "simulated"], default="realtime",
                   help="realtime: audio at 1x, client arrival times (computation-aware); simulated: as fast as "
                        "possible, server source-time stamps (computation-unaware)")
    p.add_argument("--concurrency", default="1",
                   help="simultaneous streams; a list (1,2,4) sweeps them (quality is scored on the first)")
    p.add_argument("--lag-bound-s", type=float, default=3.0, help="p95 output-lag bound for the concurrency sweep")
    p.add_argument("--retry-refused-s", type=float, default=0.0, metavar="S",
                   help="a stream refused at capacity (RESOURCE_EXHAUSTED) tries again after S seconds, as a "
                        "client backing off would (for up to 2 minutes); default 0: it counts as refused")
    p.add_argument("--out", type=Path, default=Path("eval-out"), help="results directory (default ./eval-out)")
    p.add_argument("--models", type=Path, help="model set (in-process server, offline baseline and ASR model)")
    p.add_argument("--asr-model", type=Path, help="exported Whisper directory for ASR-BLEU (default: the model "
                                                  "set's whisper-base, fp32)")
    p.add_argument("--from", dest="source", default="fr", help="source language (default fr; '' = detect)")
    p.add_argument("--to", dest="target", default="en", help="target language (default en)")
    p.add_argument("--latency", choices=LATENCY_CHOICES, default="balanced", help=LATENCY_HELP)
    p.add_argument("--profile", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]",
                   help="override fields of the --latency profile (relais.pipeline.engine.LatencyProfile, e.g. "
                        "step_s=0.5,phrase_max_words=4) in the in-process server; repeatable")
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--asr-beam", type=int, default=None, metavar="N",
                   help="the ASR of ASR-BLEU decodes with a beam search of N (default 5, as Whisper's own "
                        "transcription; 1: greedy)")
    p.add_argument("--save-audio", action="store_true",
                   help="keep the output speech: OUT/audio/<id>.wav as the client received it (and "
                        "<id>.offline.wav, the offline baseline's)")
    p.add_argument("--no-asr", action="store_true", help="skip ASR-BLEU")
    p.add_argument("--no-offline", action="store_true", help="skip the offline full-utterance baseline")
    p.add_argument("--offline-beam", type=int, default=1, metavar="N",
                   help="the offline baseline decodes with a beam search of N (default 1: greedy; the latency "
                        "modes' final decodes use 3)")
    p.add_argument("--longform", action="store_true", help="plot lag over time for every utterance")


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--concurrency must be N or a list like 1,2,4, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency values must be >= 1, got {text!r}")
    return levels


def _coerce(key: str, text: str, current):
    """``text`` as the type of the profile's current value (bool, int, float, str); a literal guess without one."""
    kind = type(current)
    try:
        if kind is bool or (current is None and text.lower() in ("true", "false")):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        for guess in (int, float):
            try:
                return guess(text)
            except ValueError:
                continue
        return text
    except ValueError:
        raise ValueError(f"--profile {key}: expected {kind.__name__}, got {text!r}") from None


def parse_profile(items: list[str] | str, latency_mode: str = "balanced") -> dict:
    """``["step_s=0.5,policy=alignatt", ...]`` -> ``{"step_s": 0.5, "policy": "alignatt"}``: keys are
    fields of the ``latency_mode`` LatencyProfile, values take the type of that profile's value."""
    from dataclasses import fields

    from relais.pipeline.engine import LATENCY_PROFILES, LatencyProfile, split_pairs

    profile = LATENCY_PROFILES[latency_mode]
    known = [f.name for f in fields(LatencyProfile) if f.name != "name"]
    out: dict = {}
    for item in [items] if isinstance(items, str) else items:
        try:
            pairs = split_pairs(item)
        except ValueError as exc:
            raise ValueError(f"--profile {exc}") from None
        for key, value in pairs.items():
            if key not in known:
                raise ValueError(f"--profile: {key!r} is not a latency profile field (known: {', '.join(known)})")
            out[key] = _coerce(key, value, getattr(profile, key))
    if out and hasattr(profile, "with_overrides"):  # the engine's own checks (ranges, policy names)
        try:
            profile.with_overrides(out)
        except ValueError as exc:
            raise ValueError(f"--profile: {exc}") from None
    return out


def run(args) -> int:
    try:
        levels = _levels(args.concurrency)
        if args.retry_refused_s < 0:
            raise ValueError(f"--retry-refused-s must be >= 0 seconds (0 = no retry), got {args.retry_refused_s}")
        if not 1 <= args.offline_beam <= 16:
            raise ValueError(f"--offline-beam must be within 1..16 (1 = greedy), got {args.offline_beam}")
        if args.asr_beam is not None and not 1 <= args.asr_beam <= 16:
            raise ValueError(f"--asr-beam must be within 1..16 (1 = greedy), got {args.asr_beam}")
        if args.asr_beam is not None and args.no_asr:
            raise ValueError("--asr-beam sets the ASR of ASR-BLEU, which --no-asr skips: drop one of them")
        overrides = parse_profile(args.profile, args.latency)
        if overrides and args.server is not None:
            raise ValueError("--profile changes the in-process server's engine; a running --server keeps its own")
        utts = read_manifest(args.manifest)[: args.limit or None]
        if not utts:
            raise ValueError(f"{args.manifest} lists no utterances")
        missing = [u.path for u in utts if not u.path.is_file()]
        if missing:
            raise ValueError(f"audio files not found: {', '.join(map(str, missing[:3]))}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from relais.eval.runner import ProfileError, RequestRefused

    try:
        results = evaluate(args, utts, levels, overrides)
    except (ProfileError, RequestRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from relais.eval.report import markdown, write

    written = write(results, args.out)
    print(markdown(results))
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0 if results.summary.n_failed == 0 else 1


def level_line(level: ConcurrencyLevel) -> str:
    """One concurrency level in a line (what a sweep prints as each level ends)."""
    def s(value: float | None, unit: str = " s") -> str:
        return "–" if value is None else f"{value:.2f}{unit}"

    return (f"x{level.concurrency}: {level.n_utterances} streams ran, {level.n_failed} failed or refused, "
            f"{level.refusals} refusals retried; lag p50 {s(level.lag_p50_s)}, p95 {s(level.lag_p95_s)}; "
            f"RTF {s(level.rtf, '')}; StartOffset {s(level.start_offset_s)}; wall {level.wall_s:.0f} s")


def _recorded_overrides(args, overrides: dict | None) -> dict:
    """The profile keys the run's streams got: an in-process server also applies the environment's
    RELAIS_LATENCY_OVERRIDES (under --profile); a --server's own are not known here."""
    if args.server is not None:
        return dict(overrides or {})
    from relais.server.config import load_config

    return {**load_config(None).latency.parsed(), **(overrides or {})}


def evaluate(args, utts: list[Utterance], levels: list[int], overrides: dict | None = None) -> EvalResults:
    from relais.eval.asr import (LISTENER_BEAM, SpeechRecogniser, default_asr_dir, offline_baseline, save_outputs,
                                 transcribe_outputs)
    from relais.eval.measure import measure
    from relais.eval.prometheus import compare, labelled_mean
    from relais.eval.results import (ConcurrencyLevel, EvalResults, RunMeta, max_concurrency_under, memory_summary,
                                     speech_vs_text, streamed_vs_offline, summarise)
    from relais.eval.runner import MemorySampler, RequestRefused, options_for, scrape, start_server, stream_all

    need_engine = not args.no_offline and any(u.reference for u in utts)
    if args.server is None:
        print("starting an in-process server (loading models)...", file=sys.stderr, flush=True)
    sut = start_server(args.server, models_dir=args.models, metrics_url=args.metrics_url,
                       server_pid=args.server_pid, load_engine=need_engine,
                       max_sessions=max(8, max(levels)), latency_overrides=overrides or None)
    options = options_for(args.mode, source_language=args.source, target_language=args.target,
                          latency_mode=args.latency)
    meta = RunMeta(
        manifest=str(args.manifest), date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=machine(), server=args.server or f"in-process ({sut.address})", mode=args.mode,
        latency_mode=args.latency, source_language=args.source, target_language=args.target,
        chunk_ms=options.chunk_ms, longform=args.longform, latency_overrides=_recorded_overrides(args, overrides),
        command="relais " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None,
        memory_source=("RSS of this process (the in-process server, plus the eval client and models it loaded)"
                       if sut.in_process else f"RSS of pid {sut.pid}" if sut.pid else None),
        normalisation="Whisper English normaliser, then NFKC, lowercase, punctuation stripped; sacrebleu 13a")
    try:
        main_figs, main_batch, levels_out, memory, prom = None, None, [], [], []
        for n in levels:
            before = scrape(sut.metrics_url)
            with MemorySampler(sut.pid) as sampler:
                batch = stream_all(sut.address, utts, options, concurrency=n, mode=args.mode,
                                   desc=f"{args.mode} x{n}", retry_refused_s=args.retry_refused_s)
            after = scrape(sut.metrics_url)
            if batch.invalid and not any(r.result is not None for r in batch.runs):
                raise RequestRefused(f"the server refused the streams as invalid (INVALID_ARGUMENT): {batch.invalid} "
                                     f"(--from {args.source or 'detect'} --to {args.target} --latency {args.latency})")
            figs = [measure(r.result, r.utterance.id, r.utterance.duration_s, args.mode,
                            reference=r.utterance.reference, source_text=r.utterance.source_text,
                            chunk_ms=options.chunk_ms) for r in batch.runs if r.result is not None]
            failed = sum(r.result is None for r in batch.runs)
            s = summarise(figs, failed, args.target, concurrency=n)
            ran = {f.id for f in figs}
            single = summarise([f for f in main_figs or figs if f.id in ran], 0, args.target)
            levels_out.append(ConcurrencyLevel(n, len(figs), failed, s.lag_p50_s, s.lag_p95_s, s.rtf,
                                               s.client_wall_rtf, s.start_offset_s, batch.wall_s,
                                               s.quality.bleu, s.degraded_fraction, single.quality.bleu,
                                               labelled_mean(before, after, "relais_batch_size", stage="decoder"),
                                               sum(r.refusals for r in batch.runs)))
            if len(levels) > 1:  # each level's line as it ends: a sweep cut short keeps what it measured
                print(level_line(levels_out[-1]), file=sys.stderr, flush=True)
            if main_figs is None:
                main_figs, main_batch, memory = figs, batch, sampler.samples
                lags = [p.lag_s for f in figs for p in f.lags] if args.mode == "realtime" else []
                prom = compare(before, after, output_lag_s=lags,
                               first_audio_s=[f.client_first_audio_from_onset_s for f in figs
                                              if f.client_first_audio_from_onset_s is not None])
        audio_dir = args.out / "audio" if args.save_audio else None
        if audio_dir is not None:
            print(f"output speech of {save_outputs(main_batch, audio_dir)} streams kept in {audio_dir}",
                  file=sys.stderr)
        recogniser = None
        if not args.no_asr:
            from relais.server.config import load_config

            # the server's providers (RELAIS_RUNTIME_PROVIDERS), not the default chain
            recogniser = SpeechRecogniser(args.asr_model or default_asr_dir(args.models),
                                          runtime=load_config(None).runtime.runtime_config(),
                                          beam_size=args.asr_beam or LISTENER_BEAM)
            meta = replace(meta, asr_model=recogniser.info.label)
            transcribe_outputs(recogniser, main_batch, main_figs)
        offline = (offline_baseline(sut.engine, utts, recogniser, args.source or None, args.target,
                                    beam_size=args.offline_beam, audio_dir=audio_dir) if need_engine else None)
    finally:
        sut.close()
    failed = sum(r.result is None for r in main_batch.runs)
    sweep = levels_out if len(levels) > 1 else []
    return EvalResults(
        meta=meta, summary=summarise(main_figs, failed, args.target, concurrency=levels[0]), utterances=main_figs,
        errors={r.utterance.id: r.error for r in main_batch.runs if r.error}, memory=memory_summary(memory),
        prometheus_vs_client=prom, offline=offline, concurrency=sweep,
        lag_bound_s=args.lag_bound_s if sweep else None,
        max_concurrency_under_bound=max_concurrency_under(sweep, args.lag_bound_s) if sweep else None,
        bleu_difference=streamed_vs_offline(main_figs, offline, args.target),
        asr_bleu_difference=speech_vs_text(main_figs, args.target))
