"""The committed generated code in service/relais/v1 matches protos/ (CI fails when stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) generates the code")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_modules_import():
    from relais.v1 import translator_pb2, translator_pb2_grpc

    assert translator_pb2.DESCRIPTOR.services_by_name["SpeechTranslator"].full_name == "relais.v1.SpeechTranslator"
    assert hasattr(translator_pb2_grpc, "add_SpeechTranslatorServicer_to_server")
