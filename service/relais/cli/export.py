"""``relais export whisper|marian|piper|tensorrt``: convert your own checkpoints (needs relais[export])."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relais.cli.common import EXIT_FAILED, missing_extras, refuse, whisper_precisions
from relais.runtime.ort import PRECISIONS

EXTRAS = ("export",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("export", help="export your own checkpoints to ONNX / TensorRT")
    kinds = exp.add_subparsers(dest="kind", required=True)
    w = kinds.add_parser("whisper", help="Whisper (Hugging Face dir or CTranslate2 model.bin) -> ONNX")
    source = w.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", type=Path, help="Hugging Face WhisperForConditionalGeneration checkpoint directory")
    source.add_argument("--ct2", nargs="+", type=Path,
                        help="CTranslate2 model.bin, or its byte-split parts in order")
    w.add_argument("--bundle", type=Path, help="directory with config.json + tokenizer.json (CTranslate2)")
    w.add_argument("--precision", action="append", choices=PRECISIONS,
                   help="precisions to export (repeatable; default fp32 and int8; fp32 is always written)")
    w.add_argument("--out", type=Path, required=True)
    w.set_defaults(func=run, export=_whisper)
    m = kinds.add_parser("marian", help="Marian / Opus-MT (Hugging Face dir) -> ONNX")
    m.add_argument("--hf", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.set_defaults(func=run, export=_marian)
    p = kinds.add_parser("piper", help="validate a Piper voice and stamp its metadata")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--json", type=Path, help="voice config (default: ONNX path + .json)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run, export=_piper)
    t = kinds.add_parser("tensorrt", help="build TensorRT engines for a model directory (needs a GPU)")
    t.add_argument("--model-dir", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True, help="engine cache directory")
    t.set_defaults(func=run, export=_tensorrt)


def run(args: argparse.Namespace) -> int:
    if message := missing_extras(*EXTRAS, command=f"relais export {args.kind}"):
        return refuse(message)
    from relais_export.errors import ExportError

    try:
        files = args.export(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.out}: {', '.join(files)}")
    return 0


def _whisper(args: argparse.Namespace) -> list[str]:
    from relais_export.whisper.checkpoint import load_ct2_bundle, load_hf_checkpoint
    from relais_export.whisper.export import export_whisper

    if args.hf:
        ckpt = load_hf_checkpoint(args.hf)
    else:
        parts: list[Path] = args.ct2
        ckpt = load_ct2_bundle(parts if len(parts) > 1 else parts[0], args.bundle or parts[-1].parent)
    result = export_whisper(ckpt, args.out, precisions=whisper_precisions(args.precision))
    return sorted(p.name for p in result.files.values())


def _marian(args: argparse.Namespace) -> list[str]:
    from relais_export.marian.export import export_marian

    export_marian(args.hf, args.out)
    return sorted(p.name for p in Path(args.out).iterdir())


def _piper(args: argparse.Namespace) -> list[str]:
    from relais_export.piper import prepare_piper_voice

    json_path = args.json or Path(str(args.onnx) + ".json")
    info = prepare_piper_voice(args.onnx, json_path, args.out)
    return sorted(Path(p).name for p in info.files)


def _tensorrt(args: argparse.Namespace) -> list[str]:
    from relais_export.tensorrt import build_engines

    return sorted(str(p) for p in build_engines(args.model_dir, cache_dir=args.out))
