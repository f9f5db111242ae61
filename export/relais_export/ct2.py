"""Reader for CTranslate2 ``model.bin`` files (binary format version 6).

Layout: uint32 version, string spec name, uint32 spec revision, uint32 variable
count, then per variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype,
uint32 byte count, raw bytes; then uint32 alias count and (alias, target) string
pairs. Strings are uint16 length (including a trailing NUL) + UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relais_export.errors import ExportError

_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
SUPPORTED_BINARY_VERSIONS = (5, 6)


@dataclass
class Ct2Model:
    spec_name: str
    spec_revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise ExportError(f"CTranslate2 model has no variable '{name}'") from None

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()))

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


class _Cursor:
    def __init__(self, data: memoryview, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ExportError(
                f"{self.source} is truncated (needed {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)}); re-install the package or re-join all parts"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        raw = bytes(self.take(n))
        return raw.rstrip(b"\0").decode("utf-8")


def join_parts(parts: list[Path]) -> bytes:
    """Join a model.bin split into byte ranges (part1, part2, ...)."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ExportError(f"model.bin part(s) missing: {', '.join(missing)}")
    return b"".join(p.read_bytes() for p in parts)


def read_model_bin(source: Path | list[Path]) -> Ct2Model:
    """Parse a CTranslate2 model.bin (or its byte-split parts, joined in order)."""
    if isinstance(source, list):
        data = join_parts(source)
        label = " + ".join(str(p) for p in source)
    else:
        if not Path(source).is_file():
            raise ExportError(f"{source}: no such file (expected a CTranslate2 model.bin)")
        data = Path(source).read_bytes()
        label = str(source)
    return parse_model_bin(data, label)


def parse_model_bin(data: bytes, label: str = "model.bin") -> Ct2Model:
    cur = _Cursor(memoryview(data), label)
    if len(data) < 4:
        raise ExportError(f"{label} is empty or truncated")
    (version,) = cur.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ExportError(
            f"{label}: unsupported CTranslate2 binary version {version} "
            f"(supported: {SUPPORTED_BINARY_VERSIONS}); is this really a model.bin?"
        )
    spec_name = cur.string()
    (revision,) = cur.unpack("I")
    (count,) = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cur.string()
        (rank,) = cur.unpack("B")
        dims = cur.unpack(f"{rank}I") if rank else ()
        (dtype_id,) = cur.unpack("B")
        (nbytes,) = cur.unpack("I")
        if dtype_id not in _DTYPES:
            raise ExportError(f"{label}: variable {name} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_DTYPES[dtype_id])
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise ExportError(f"{label}: variable {name} has {nbytes} bytes, expected {expected}")
        raw = cur.take(nbytes)
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(dims)
    aliases: dict[str, str] = {}
    if cur.pos < len(data):
        (n_alias,) = cur.unpack("I")
        for _ in range(n_alias):
            alias = cur.string()
            aliases[alias] = cur.string()
    return Ct2Model(
        spec_name=spec_name,
        spec_revision=revision,
        binary_version=version,
        variables=variables,
        aliases=aliases,
        sha256=hashlib.sha256(data).hexdigest(),
    )
