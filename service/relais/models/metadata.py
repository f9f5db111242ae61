"""Read the facts an exported ONNX file carries in ``metadata_props``.

The exporter (relais_export.metadata) writes ``relais.<key>`` entries; values are
plain strings or JSON (:func:`encode_value`, read back by :func:`decode_value`). Nothing
about a model is hard-coded twice: the runtime asks these facts for layer counts, token
ids and sample rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys are namespaced so they never collide with metadata another tool wrote.
PREFIX = "relais."


class MetadataError(ValueError):
    """A model file lacks a fact the runtime needs, or carries a malformed one."""


def encode_value(value: Any) -> str:
    """A fact as a metadata string: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def decode_value(value: str) -> Any:
    """The inverse of :func:`encode_value` (a string that is not JSON stays a string)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class ModelFacts:
    path: str
    facts: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.facts.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.facts:
            raise MetadataError(
                f"{self.path} has no '{PREFIX}{key}' metadata; re-export it with `relais models prepare`"
            )
        return self.facts[key]

    def int(self, key: str) -> int:
        value = self.require(key)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise MetadataError(f"{self.path}: metadata {key}={value!r} is not an integer") from None


def facts_from_map(path: str, props: dict[str, str]) -> ModelFacts:
    facts = {k[len(PREFIX):]: decode_value(v) for k, v in props.items() if k.startswith(PREFIX)}
    return ModelFacts(path=path, facts=facts)


def read_metadata(path: str | Path) -> ModelFacts:
    """Read relais.* metadata of an ONNX file (a CPU session with optimisation off)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session_metadata(session, str(path))


def session_metadata(session, path: str = "") -> ModelFacts:
    """Facts from an existing onnxruntime.InferenceSession (no second file read)."""
    return facts_from_map(path, dict(session.get_modelmeta().custom_metadata_map))
