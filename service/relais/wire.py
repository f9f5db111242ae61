"""The one table between the wire API's enums (relais.v1) and the names the code uses.

Server and client both translate through here, so a new text kind or latency mode is
added in one place.
"""

from __future__ import annotations

from relais.pipeline.events import TextKind
from relais.v1 import translator_pb2 as pb

DEFAULT_LATENCY_MODE = "balanced"
LATENCY_MODE_TO_PB = {"low": pb.LOW_LATENCY, "balanced": pb.BALANCED, "quality": pb.HIGH_QUALITY}
_PB_TO_LATENCY_MODE = {v: k for k, v in LATENCY_MODE_TO_PB.items()}

TEXT_KIND_TO_PB = {TextKind.SOURCE_PARTIAL: pb.TextEvent.SOURCE_PARTIAL,
                   TextKind.SOURCE_FINAL: pb.TextEvent.SOURCE_FINAL,
                   TextKind.TRANSLATION_PARTIAL: pb.TextEvent.TRANSLATION_PARTIAL,
                   TextKind.TRANSLATION_FINAL: pb.TextEvent.TRANSLATION_FINAL}
_PB_TO_TEXT_KIND = {v: k for k, v in TEXT_KIND_TO_PB.items()}


def latency_mode_name(value: int) -> str:
    """The latency mode a StreamConfig asks for (unspecified or unknown: the default)."""
    return _PB_TO_LATENCY_MODE.get(value, DEFAULT_LATENCY_MODE)


def text_kind_name(value: int) -> str:
    """``source_partial`` ... ``translation_final`` for a TextEvent.Kind (``unspecified`` otherwise)."""
    kind = _PB_TO_TEXT_KIND.get(value)
    return kind.value if kind is not None else "unspecified"
