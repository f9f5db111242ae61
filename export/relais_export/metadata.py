"""Write a model's facts into ONNX ``metadata_props`` (read back by relais.models.metadata,
which owns the key prefix and the value encoding)."""

from __future__ import annotations

from typing import Any

from relais.models.metadata import PREFIX, encode_value
from relais_export import EXPORT_VERSION


def set_metadata(model, facts: dict[str, Any]) -> None:
    """Replace relais.* metadata on an onnx.ModelProto with ``facts`` (+ export version)."""
    facts = {"export_version": EXPORT_VERSION, **facts}
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in facts.items():
        model.metadata_props.add(key=PREFIX + key, value=encode_value(value))
