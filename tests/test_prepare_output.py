"""What `relais models prepare` prints: a progress line per model and a summary; the
onnxruntime quantiser's per-node INFO lines (thousands per Whisper model) are silenced
unless --verbose."""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
import pytest

from relais_export.console import ConsoleProgress
from relais_export.prepare import PrepareProgress
from relais_export.quiet import import_quietly, quiet_logs


def _event(stage: str, fraction: float, done: bool = False) -> PrepareProgress:
    return PrepareProgress(index=3, total=4, model="whisper-base", stage=stage, fraction=fraction,
                           elapsed_s=12.0, done=done)


def test_progress_off_a_terminal_is_one_line_per_model():
    out = io.StringIO()
    show = ConsoleProgress(out, live=False)
    show(_event("exporting ONNX", 0.1))
    show(_event("parity check 1/2", 0.6))
    show(_event("ready", 1.0, done=True))
    assert out.getvalue() == "[3/4] whisper-base     [########################] ready (12 s)\n"


def test_progress_on_a_terminal_redraws_one_line_and_ends_it():
    out = io.StringIO()
    show = ConsoleProgress(out, live=True)
    show(_event("exporting ONNX (fp32, int8)", 0.1))
    show(_event("ready", 1.0, done=True))
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert last.startswith("[3/4] whisper-base") and "ready" in last
    assert len(last.rstrip("\n")) >= len(text.split("\r")[1])  # padded over the longer stage text


def _tiny_matmul_model(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _noise(records):
    return [r for r in records if r.levelno < logging.WARNING
            and (r.name.startswith("onnxruntime") or r.name == "root")]


def test_int8_quantisation_logs_nothing_below_warning(tmp_path, caplog):
    pytest.importorskip("onnx_ir")
    from relais_export.whisper.export import _to_int8

    _tiny_matmul_model(tmp_path / "m.onnx")
    caplog.set_level(logging.INFO)
    _to_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    assert (tmp_path / "m.int8.onnx").is_file()
    assert _noise(caplog.records) == []
    assert logging.getLogger("onnxruntime").level == logging.NOTSET  # restored


def test_verbose_keeps_the_details(caplog):
    caplog.set_level(logging.DEBUG)
    with quiet_logs():  # the relais_export logger is at DEBUG: --verbose
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").info("skip to quantize /Relu ...")
        logging.info("root-level detail")
    assert len(_noise(caplog.records)) == 2


def test_quiet_logs_drops_info_but_keeps_warnings(caplog):
    caplog.set_level(logging.INFO)
    with quiet_logs(verbose=False):
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").info("skip to quantize /Relu ...")
        logging.info("root-level detail")
        logging.getLogger("relais.runtime.ort").info("loaded x.onnx on cpu")
        logging.getLogger("onnxruntime").warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
    logging.getLogger("relais.runtime.ort").info("after the block")
    assert caplog.records[-1].getMessage() == "after the block"


def test_import_quietly_keeps_an_import_time_basicconfig_off_the_root_logger(tmp_path, monkeypatch):
    (tmp_path / "chatty_module_for_test.py").write_text(
        "import logging\nlogging.basicConfig(level=logging.INFO)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    level = root.level
    import_quietly("chatty_module_for_test")
    assert root.handlers == [] and root.level == level
    sys.modules.pop("chatty_module_for_test", None)
