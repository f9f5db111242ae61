"""Riva's names <-> the engine's: BCP-47 language codes, model names and voice names.

Riva clients speak BCP-47 ("fr-FR", "en-US"; pipecat may send a bare "fr"), the engine
ISO 639-1 ("fr"). NVIDIA's model and voice names ("parakeet-1.1b-en-US-asr-streaming",
"English-US.Female-1", "Magpie-Multilingual.EN-US.Aria") mean nothing here: an unknown one
falls back to the default, logged once per name, so that a client written for Riva works
unchanged.
"""

from __future__ import annotations

import logging

from relais.errors import InvalidRequest
from relais.pipeline.engine import TranslationEngine

log = logging.getLogger(__name__)

AUTO = "auto"  # Riva's "multi": detect the spoken language
# The region Riva's own models use for a language, for the codes this server reports.
_REGIONS = {"ar": "AR", "de": "DE", "en": "US", "es": "ES", "fr": "FR", "hi": "IN", "it": "IT", "ja": "JP",
            "ko": "KR", "nl": "NL", "pl": "PL", "pt": "BR", "ru": "RU", "sv": "SE", "tr": "TR", "uk": "UA",
            "zh": "CN"}
_REPORTED: set[tuple[str, str]] = set()  # (field, name) already logged


def language_of(code: str, field: str, default: str = "") -> str:
    """ISO 639-1 for a BCP-47 code: "fr-FR", "fr_FR" and "FR" give "fr"; "multi" gives ``AUTO``;
    an empty code gives ``default`` (or is refused when there is none)."""
    code = code.strip()
    if not code:
        if default:
            return default
        raise InvalidRequest(f'{field} is required (a BCP-47 code such as "fr-FR")')
    primary = code.replace("_", "-").split("-", 1)[0].lower()
    if primary in ("multi", AUTO):
        return AUTO
    if not (primary.isascii() and primary.isalpha() and 2 <= len(primary) <= 3):
        raise InvalidRequest(f'{field} {code!r} is not a BCP-47 language code (such as "fr-FR" or "en-US")')
    return primary


def bcp47(language: str) -> str:
    """The code this server reports for an engine language: "fr" -> "fr-FR" (bare when no region is known)."""
    region = _REGIONS.get(language)
    return f"{language}-{region}" if region else language


def check_source(engine: TranslationEngine, language: str, field: str, code: str) -> None:
    """Refuse a language the recogniser does not know, naming Riva's field."""
    if language != AUTO and language not in engine.source_languages():
        known = ", ".join(bcp47(lang) for lang in engine.source_languages())
        raise InvalidRequest(f"{field} {code!r} is not supported; this server recognises {known}")


def voice_name(engine: TranslationEngine, requested: str, field: str) -> str:
    """The engine voice a Riva ``voice_name`` means: one of ours (also as "name." or "name.subvoice", the way
    NVIDIA's talk.py lists voices), else "" (the default voice of the language), logged once per name."""
    name = requested.strip()
    for candidate in (name, name.split(".", 1)[0]):
        if candidate in engine.voice_info:
            return candidate
    if name:
        _report(field, name, "not a voice of this server; using the default voice of the language "
                             f"(voices: {', '.join(sorted(engine.voice_info))})")
    return ""


def note_model(engine: TranslationEngine, requested: str, field: str) -> None:
    """Riva model names select nothing here (one recogniser serves every language): log an unknown one once."""
    name = requested.strip()
    if name and not name.startswith("relais-") and name != engine.config.asr_model:
        _report(field, name, f"is not a model of this server; using {engine.config.asr_model}")


def _report(field: str, name: str, what: str) -> None:
    if (field, name) not in _REPORTED:
        _REPORTED.add((field, name))
        log.info("Riva %s %r: %s", field, name, what)
