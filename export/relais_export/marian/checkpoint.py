"""Validate and load a Hugging Face MarianMTModel checkpoint directory.

A usable directory holds config.json (model_type "marian"), the weights
(model.safetensors or pytorch_model.bin, possibly sharded) and the tokenizer files
that MarianTokenizer reads: source.spm, target.spm, vocab.json (+ target_vocab.json
when the tokenizer uses separate vocabularies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from relais_export.errors import ExportError, require

log = logging.getLogger(__name__)

WEIGHT_GLOBS = ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin", "pytorch_model-*-of-*.bin")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
# Copied next to the ONNX files when present (the runtime tokeniser reads them).
OPTIONAL_TOKENIZER_FILES = ("target_vocab.json", "tokenizer_config.json")
# Opus-MT directory names: opus-mt-en-de, opus-mt-tc-big-en-fr, ...
_OPUS_NAME = re.compile(r"opus-mt-(?:tc-(?:big|base)-)?([A-Za-z_]+)-([A-Za-z_]+)$")


@dataclass
class MarianCheckpoint:
    model: object  # transformers.MarianMTModel, fp32, eval mode
    directory: Path
    tokenizer_files: list[Path] = field(default_factory=list)
    separate_vocabs: bool = False
    source_language: str = ""
    target_language: str = ""
    max_length: int = 0  # generation_config.json / config.json max_length; 0 when neither sets it
    source_sha256: str = ""
    provenance: str = ""


def _weight_files(path: Path) -> list[Path]:
    for pattern in WEIGHT_GLOBS:
        found = sorted(path.glob(pattern))
        if found:
            return found
    return []


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _languages(path: Path, tok_cfg: dict) -> tuple[str, str]:
    source, target = tok_cfg.get("source_lang") or "", tok_cfg.get("target_lang") or ""
    if not (source and target) and (m := _OPUS_NAME.search(path.resolve().name)):
        source, target = source or m.group(1), target or m.group(2)
    return str(source), str(target)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_checkpoint_dir(path: Path) -> dict:
    """Fail early, with what to fix, unless ``path`` looks like a Marian checkpoint. Returns config.json."""
    if not path.is_dir():
        raise ExportError(
            f"Marian checkpoint directory {path} not found; pass the folder holding config.json, "
            "model.safetensors, source.spm, target.spm and vocab.json (e.g. a Helsinki-NLP/opus-mt-* download)"
        )
    config_json = path / "config.json"
    if not config_json.is_file():
        raise ExportError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{config_json} is not valid JSON ({exc}); re-download the checkpoint") from None
    model_type = config.get("model_type")
    if model_type != "marian":
        raise ExportError(
            f"{path} is a {model_type!r} checkpoint, not Marian (config.json model_type must be 'marian'); "
            "use the exporter for that model family instead"
        )
    if not _weight_files(path):
        raise ExportError(f"{path} has no weights (model.safetensors or pytorch_model.bin); re-download the checkpoint")
    missing = [name for name in TOKENIZER_FILES if not (path / name).is_file()]
    if missing:
        raise ExportError(
            f"{path} lacks tokenizer file(s) {missing}; copy source.spm, target.spm and vocab.json "
            "from the original Opus-MT checkpoint (MarianTokenizer.save_pretrained writes them)"
        )
    return config


def load_marian_checkpoint(
    path: str | Path,
    source_language: str | None = None,
    target_language: str | None = None,
    provenance: str = "",
) -> MarianCheckpoint:
    """Load a MarianMTModel checkpoint directory in fp32 with its tokenizer files."""
    path = Path(path)
    config = check_checkpoint_dir(path)
    tok_cfg = _read_json(path / "tokenizer_config.json")
    # transformers fills an unset max_length with 20; only an explicit value counts here.
    max_length = _read_json(path / "generation_config.json").get("max_length") or config.get("max_length") or 0
    separate_vocabs = bool(tok_cfg.get("separate_vocabs", False))
    if separate_vocabs and not (path / "target_vocab.json").is_file():
        raise ExportError(f"{path}: tokenizer_config.json sets separate_vocabs but target_vocab.json is missing")

    transformers = require("transformers")
    torch = require("torch")
    model = transformers.MarianMTModel.from_pretrained(str(path), dtype=torch.float32)
    model.eval()

    src, tgt = _languages(path, tok_cfg)
    files = [path / n for n in TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES if (path / n).is_file()]
    return MarianCheckpoint(
        model=model,
        directory=path,
        tokenizer_files=files,
        separate_vocabs=separate_vocabs,
        source_language=source_language or src,
        target_language=target_language or tgt,
        max_length=int(max_length),
        source_sha256=_sha256(_weight_files(path)),
        provenance=provenance or f"huggingface:{path}",
    )
