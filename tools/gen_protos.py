#!/usr/bin/env python3
"""Generate the Python API code (messages, gRPC stubs, .pyi) from protos/.

    python tools/gen_protos.py           # regenerate service/relais/v1/ (commit the result)
    python tools/gen_protos.py --check   # exit 1 if the committed files are stale

protoc runs with ``-Iprotos`` into a temporary directory, so ``relais/v1/x.proto``
becomes ``relais/v1/x_pb2.py`` there, importing ``relais.v1.x_pb2``; those files
are then copied into ``service/relais/v1/`` (the ``relais.v1`` package). Needs
grpcio-tools (the ``test`` extra). The generated code embeds the protoc and grpcio
versions that made it and refuses older runtimes; ``--check`` ignores those
version stamps, so a newer patch release of grpcio-tools does not fail CI.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("gen_protos")

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("relais") / "v1"  # inside PROTO_ROOT
OUT_DIR = ROOT / "service" / "relais" / "v1"  # import name relais.v1
INIT_TEXT = '"""Generated gRPC/protobuf code for the Relais v1 API (tools/gen_protos.py; do not edit)."""\n'

# Lines that only record which generator/runtime version produced the file.
_VERSION_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
]


def _protoc_main(args: list[str]) -> int:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is not installed: pip install 'relais[test]' (or pip install grpcio-tools)")
    include = str(Path(grpc_tools.__file__).parent / "_proto")  # google/protobuf/*.proto
    return protoc.main(["grpc_tools.protoc", f"-I{include}", *args])


def proto_files() -> list[Path]:
    files = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    return files


def generate() -> dict[str, str]:
    """Run protoc; return {file name: text} of everything that belongs in OUT_DIR."""
    with tempfile.TemporaryDirectory(prefix="relais-protos-") as tmp:
        rel = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
        rc = _protoc_main([f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                           f"--grpc_python_out={tmp}", *rel])
        if rc != 0:
            raise SystemExit(f"protoc failed (exit {rc}) on {rel}")
        gen_dir = Path(tmp) / PROTO_PACKAGE
        out = {p.name: p.read_text() for p in sorted(gen_dir.iterdir()) if p.suffix in (".py", ".pyi")}
    out["__init__.py"] = INIT_TEXT
    return out


def _normalise(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub("<version>", text)
    return text


def stale_files(expected: dict[str, str]) -> list[str]:
    """Human-readable problems: missing, differing or extra files in OUT_DIR."""
    problems = []
    for name, text in expected.items():
        path = OUT_DIR / name
        if not path.is_file():
            problems.append(f"{path.relative_to(ROOT)} is missing")
            continue
        have = path.read_text()
        if _normalise(have) != _normalise(text):
            diff = difflib.unified_diff(have.splitlines(), text.splitlines(), "committed", "generated",
                                        lineterm="", n=1)
            problems.append(f"{path.relative_to(ROOT)} differs:\n" + "\n".join(list(diff)[:20]))
    generated_like = {p.name for p in OUT_DIR.glob("*_pb2*.py*")} if OUT_DIR.is_dir() else set()
    for extra in sorted(generated_like - set(expected)):
        problems.append(f"{(OUT_DIR / extra).relative_to(ROOT)} has no .proto source any more")
    return problems


def write(expected: dict[str, str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for extra in {p.name for p in OUT_DIR.glob("*_pb2*.py*")} - set(expected):
        (OUT_DIR / extra).unlink()
    for name, text in expected.items():
        (OUT_DIR / name).write_text(text)
    log.info("wrote %s: %s", OUT_DIR.relative_to(ROOT), ", ".join(sorted(expected)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if service/relais/v1/ is stale instead of writing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    expected = generate()
    if not args.check:
        write(expected)
        return 0
    problems = stale_files(expected)
    if problems:
        log.error("generated protobuf code is stale; run `python tools/gen_protos.py` and commit:\n%s",
                  "\n".join(problems))
        return 1
    log.info("service/relais/v1 is up to date with protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
