"""Read the facts an exported ONNX file carries in ``metadata_props``.

The exporter (relais_export.metadata) writes ``relais.<key>`` entries; values are
plain strings or JSON (:func:`encode_value`, read back by :func:`decode_value`). Nothing
about a model is hard-coded twice: the runtime asks these facts for layer counts, token
ids and sample rates.
"""

from __future__ import annotations

import io
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


# ONNX's ModelProto keeps its metadata in field 14 (repeated StringStringEntryProto: key = 1,
# value = 2). Protobuf's wire format gives every top-level field's length, so the metadata can be
# read without reading the graph (field 7, nearly all of the file), nor loading it into a session.
_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def read_metadata(path: str | Path) -> ModelFacts:
    """Read relais.* metadata of an ONNX file without loading the model (its other fields are
    skipped, so a Whisper large file costs no more than a tiny one)."""
    props: dict[str, str] = {}
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        try:
            while f.tell() < size:
                field, wire = divmod(_varint(f), 8)
                if wire == _VARINT:
                    _varint(f)
                elif wire in (_FIXED64, _FIXED32):
                    f.seek(8 if wire == _FIXED64 else 4, 1)
                elif wire == _LENGTH:
                    length = _varint(f)
                    if f.tell() + length > size:
                        raise ValueError("a field runs past the end of the file")
                    if field == _METADATA_PROPS:
                        key, value = _string_pair(f.read(length))
                        props[key] = value
                    else:
                        f.seek(length, 1)
                else:
                    raise ValueError(f"wire type {wire} is not used by ONNX")
        except (ValueError, EOFError, UnicodeDecodeError) as exc:
            raise MetadataError(f"{path} is not a readable ONNX model ({exc}); re-export it with "
                                "`relais models prepare`") from None
    return facts_from_map(str(path), props)


def _varint(f) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _string_pair(data: bytes) -> tuple[str, str]:
    """(key, value) of a StringStringEntryProto."""
    buf, pair = io.BytesIO(data), {1: "", 2: ""}
    while buf.tell() < len(data):
        field, wire = divmod(_varint(buf), 8)
        if wire != _LENGTH:
            raise ValueError("a metadata entry with a non-string field")
        length = _varint(buf)
        chunk = buf.read(length)
        if len(chunk) != length:
            raise ValueError("a metadata entry runs past its end")
        if field in pair:
            pair[field] = chunk.decode("utf-8")
    return pair[1], pair[2]


def session_metadata(session, path: str = "") -> ModelFacts:
    """Facts from an existing onnxruntime.InferenceSession (no second file read)."""
    return facts_from_map(path, dict(session.get_modelmeta().custom_metadata_map))
