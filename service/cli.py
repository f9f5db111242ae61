"""The ``relais`` command line."""

from __future__ import annotations

import argparse
import logging
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
