"""Evaluation manifests (TSV: id, path, duration_s, optional source text / reference)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

SOURCE_COLUMNS = ("source_text", "source_text_fr", "transcript_en", "transcript")
REFERENCE_COLUMNS = ("reference", "reference_en", "translation")


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    duration_s: float
    source_text: str = ""
    reference: str = ""


def _first(row: dict, columns: tuple[str, ...]) -> str:
    return next((row[c] for c in columns if row.get(c)), "")


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} not found")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and not {"id", "path"} <= set(rows[0]):
        raise ValueError(f"{path}: a manifest needs at least the columns id and path (tab-separated)")
    return [
        Utterance(
            id=r["id"], path=(path.parent / r["path"]).resolve(),
            duration_s=float(r.get("duration_s") or 0.0),
            source_text=_first(r, SOURCE_COLUMNS), reference=_first(r, REFERENCE_COLUMNS),
        )
        for r in rows
    ]


def default_eval_dir() -> Path:
    """$RELAIS_EVAL_DIR, else ../shared/eval beside the repository checkout."""
    if env := os.environ.get("RELAIS_EVAL_DIR"):
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "eval"
