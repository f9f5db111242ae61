"""``relais models verify``: re-check a prepared model set without torch.

Checks every file against the manifest's sha256, then re-runs each Whisper model on
the check clips recorded at prepare time: fp32 must reproduce the transformers
reference tokens exactly; other precisions must stay close (token similarity).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import relais
from relais.audio.files import load_audio_16k
from relais.models.manifest import ModelSet, load_model_set

log = logging.getLogger(__name__)

SAMPLES = {"fr_fleurs_1857": Path(relais.__file__).parent / "data" / "samples" / "fr_fleurs_1857.wav"}
MIN_QUANTISED_SIMILARITY = 0.8


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        if self.ok:
            return f"OK: {len(self.checked)} checks passed ({', '.join(self.checked)})"
        return f"FAILED: {len(self.problems)} problem(s): " + "; ".join(self.problems)


def _sample_path(model_set: ModelSet, label: str) -> Path:
    return SAMPLES.get(label) or model_set.root / "samples" / f"{label}.wav"


def _verify_whisper(model_set: ModelSet, name: str, report: VerifyReport) -> None:
    from relais.runtime.whisper import WhisperModel

    entry = model_set.get(name)
    for precision in entry.facts.get("precisions", ["fp32"]):
        model = WhisperModel(model_set.path(name), precision)
        for check in entry.facts.get("checks", []):
            audio = load_audio_16k(_sample_path(model_set, check["sample"]))
            prompt = model.prompt(check["task"], check["language"])
            got = model.greedy(model.encode(audio, pad_to_s=30), prompt).tokens
            ref = check["reference_tokens"]
            label = f"{name}/{precision}/{check['sample']}/{check['task']}"
            if precision == "fp32":
                ok = got == ref
            else:
                ok = difflib.SequenceMatcher(a=ref, b=got).ratio() >= MIN_QUANTISED_SIMILARITY
            (report.checked if ok else report.problems).append(
                label if ok else f"{label}: got {model.tokenizer.decode(got)!r}, reference {model.tokenizer.decode(ref)!r}")


def verify_model_set(root: str | Path | None = None) -> VerifyReport:
    model_set = load_model_set(root)
    report = VerifyReport(ok=True)
    report.problems.extend(model_set.check_files(hashes=True))
    if not report.problems:
        report.checked.append("sha256")
        for entry in model_set.models.values():
            if entry.kind == "whisper":
                _verify_whisper(model_set, entry.name, report)
    report.ok = not report.problems
    return report
