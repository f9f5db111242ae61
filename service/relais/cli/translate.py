"""``relais translate IN --to en``: stream a file through a server, write OUT.wav / .txt / .vtt, print a summary.

Everything that can be refused is checked before any work (the options, the output
path, the input file, the model set of an in-process server), so a mistake costs no
model loading and leaves nothing on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from relais.cli.common import refuse
from relais.console import LATENCY_CHOICES, LATENCY_HELP
from relais.translation_files import OUTPUT_FORMATS

if TYPE_CHECKING:
    from relais.client import ClientTls, TranslateOptions
    from relais.server.config import ServerConfig
    from relais.translation_files import OutputPaths


TOKEN_ENV = "RELAIS_API_TOKEN"  # the bearer token, when --token-file is not given (docs/security.md)


def add_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("translate", help="translate an audio file through a server (in-process unless --server)")
    tr.add_argument("input", type=Path, help="audio file (anything soundfile reads: wav, flac, ogg, mp3...)")
    tr.add_argument("--to", required=True, help="target language (ISO 639-1, e.g. en)")
    tr.add_argument("--from", dest="source", default="", help="source language (default: detect)")
    tr.add_argument("-o", "--output", type=Path,
                    help=f"output audio, {' or '.join(OUTPUT_FORMATS)} (default: ./INPUT_STEM.<to>.wav); "
                         f".txt and .vtt are written next to it")
    tr.add_argument("--server", help="HOST:PORT of a running server (default: start one in this process)")
    tr.add_argument("--speed", type=float, default=1.0,
                    help="x real time (default 1; 0 = as fast as possible, and the summary's lag is then "
                         "computation-unaware)")
    tr.add_argument("--latency", choices=LATENCY_CHOICES, default="balanced", help=LATENCY_HELP)
    tr.add_argument("--voice", default="", help="voice name (default: the target language's default voice)")
    tr.add_argument("--sample-rate", type=int, default=0, help="output rate in Hz (default 0: the voice's rate)")
    tr.add_argument("--chunk-ms", type=int, default=100, help="audio chunk size sent (default 100 ms)")
    tls = tr.add_argument_group("TLS (with --server; docs/security.md)")
    tls.add_argument("--tls", action="store_true", help="connect over TLS (implied by --ca, --cert, --key)")
    tls.add_argument("--ca", default="", help="PEM CA that signs the server's certificate (default: system CAs)")
    tls.add_argument("--cert", default="", help="mutual TLS: this client's PEM certificate")
    tls.add_argument("--key", default="", help="mutual TLS: this client's PEM private key")
    tls.add_argument("--server-name", default="", help="name to check the server's certificate against "
                                                       "(default: the host of --server)")
    tr.add_argument("--token-file", type=Path,
                    help=f"file holding the bearer token for a server with auth (default: ${TOKEN_ENV} if set)")
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from relais.client import TranslateOptions
    from relais.translation_files import check_audio_file, plan_outputs

    try:
        options = TranslateOptions(target_language=args.to, source_language=args.source, speed=args.speed,
                                   chunk_ms=args.chunk_ms, latency_mode=args.latency, voice=args.voice,
                                   output_sample_rate_hz=args.sample_rate, client_id="relais-cli").validate()
        paths = plan_outputs(args.output, args.input, args.to)
        check_audio_file(args.input)
        tls = _client_tls(args)
        token = _token(args)
        local_config = None if args.server else _local_server_config()
    except ValueError as exc:
        return refuse(str(exc))
    return _stream(args, options, paths, local_config, tls, token)


def _token(args: argparse.Namespace) -> str:
    """The bearer token: --token-file, else $RELAIS_API_TOKEN, else none (a token on the command line
    would show in the process list, so there is no --token)."""
    import os

    if args.token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip()
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--token-file {args.token_file}: cannot read: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"--token-file {args.token_file} is empty")
    return token


def _client_tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings asked for (None: plaintext); TLS options only make sense with --server."""
    from relais.client import ClientTls

    if not (args.tls or args.ca or args.cert or args.key or args.server_name):
        return None
    if not args.server:
        raise ValueError("--tls/--ca/--cert/--key/--server-name need --server HOST:PORT (the in-process server "
                         "is plaintext on loopback)")
    return ClientTls(ca_file=args.ca, cert_file=args.cert, key_file=args.key,
                     server_name=args.server_name).validate()


def _local_server_config() -> ServerConfig:
    """Settings of the in-process server; its model set must exist (checked without loading it)."""
    from relais.models.manifest import load_model_set
    from relais.server.config import load_config

    config = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
    load_model_set(config.engine_config().models_dir)  # ManifestError (a ValueError) names the fix
    return config


def _stream(args: argparse.Namespace, options: TranslateOptions, paths: OutputPaths,
            local_config: ServerConfig | None, tls: ClientTls | None = None, token: str = "") -> int:
    import grpc

    from relais.client import TranslateClient
    from relais.console import LiveText, quiet_library_logs, summary_line
    from relais.translation_files import write_outputs

    display = LiveText()
    try:
        with quiet_library_logs(args.verbose):
            address, server = args.server, None
            try:
                if local_config is not None:
                    from relais.server.app import start_in_process

                    print("starting an in-process server (loading models; use --server HOST:PORT for a "
                          "running one)...", file=sys.stderr, flush=True)
                    server = start_in_process(local_config)
                    address = server.address
                with TranslateClient(address, tls=tls, token=token) as client:
                    result = client.translate_file(args.input, options, on_event=display)
            finally:
                if server is not None:
                    server.close()
    except grpc.RpcError as exc:
        display.clear()
        return refuse(f"{exc.code().name}: {exc.details()}{_tls_hint(exc, tls)}")
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        display.clear()
        return refuse(str(exc))
    except KeyboardInterrupt:
        display.clear()
        print("interrupted", file=sys.stderr)
        return 130
    display.clear()
    write_outputs(result, paths)
    if not result.translation.strip():
        print("warning: no translation was produced (silence, or speech the model could not follow?)",
              file=sys.stderr)
    print(summary_line(result, args.speed), file=sys.stderr)
    print(f"wrote {paths.audio} ({result.output_sample_rate_hz} Hz), {paths.text.name}, {paths.subtitles.name}",
          file=sys.stderr)
    return 0


def _tls_hint(exc, tls: ClientTls | None) -> str:
    """A plaintext client at a TLS port (or the reverse) sees a bare UNAVAILABLE: say what to try."""
    import grpc

    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return ""
    if tls is None:
        return " (if the server uses TLS, add --tls, and --ca if its certificate is not from a system CA)"
    return (" (check that the server uses TLS, that --ca signs its certificate and --server-name matches it, "
            "and for mutual TLS pass --cert and --key)")
