"""Fault isolation (issue 15): a model call that runs past load.call_timeout_s is terminated inside
ONNX Runtime, raises ModelCallTimeout (DEADLINE_EXCEEDED) for its stream, and frees the model slot.

Plumbing tests on tiny generated ONNX models (named as such): one that never ends (a Loop of
10^12 additions) and one that adds two numbers.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from relais.errors import DeadlineExceeded, ModelCallTimeout
from relais.pipeline.scheduler import ModelScheduler
from relais.runtime.ort import RuntimeConfig, create_session
from relais.server.config import load_config
from relais.server.interceptor import status_for

CPU = RuntimeConfig(providers=("cpu",))


def _tiny_endless_loop_model(path) -> str:
    """Tiny generated model: v = v0 + 1, 10^12 times (minutes of work: it stands for a stuck call)."""
    from onnx import TensorProto, helper, save

    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [scalar("i", TensorProto.INT64), scalar("cond_in", TensorProto.BOOL), scalar("v_in", TensorProto.FLOAT)],
        [scalar("cond_out", TensorProto.BOOL), scalar("v_out", TensorProto.FLOAT)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond", "v0"], ["v"], body=body)], "tiny_endless_loop",
        [scalar("v0", TensorProto.FLOAT)], [scalar("v", TensorProto.FLOAT)],
        [helper.make_tensor("n", TensorProto.INT64, [], [10**12]), helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _tiny_add_model(path) -> str:
    """Tiny generated model: c = a + b."""
    from onnx import TensorProto, helper, save

    vec = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "tiny_add", [vec("a"), vec("b")], [vec("c")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_a_model_call_past_its_bound_is_terminated_and_frees_the_slot(tmp_path):
    stuck = create_session(_tiny_endless_loop_model(tmp_path / "tiny_endless_loop.onnx"), CPU)
    add = create_session(_tiny_add_model(tmp_path / "tiny_add.onnx"), CPU)
    scheduler = ModelScheduler(max_concurrent_calls=1, call_timeout_s=0.5)
    other: dict[str, float] = {}

    def second_stream() -> None:  # queues behind the stuck call, then runs as soon as it is stopped
        time.sleep(0.1)
        asked = time.monotonic()
        out = scheduler.run("vad", add.run, None, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
        other.update(waited=time.monotonic() - asked, value=float(out.value[0][0]))

    neighbour = threading.Thread(target=second_stream)
    neighbour.start()
    started = time.monotonic()
    with pytest.raises(ModelCallTimeout, match=r"a model call \(decoder\) ran past load.call_timeout_s=0.5 s"):
        scheduler.run("decoder", stuck.run, None, {"v0": np.array(0, np.float32)})
    stopped_after = time.monotonic() - started
    neighbour.join(10)
    assert 0.5 <= stopped_after < 3.0, stopped_after
    assert other["value"] == 2.0 and other["waited"] < 3.0, other  # the slot was freed for the next stream
    # the next call of the stream that timed out is not terminated: the bound is per call
    assert scheduler.run("vad", add.run, None, {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}).value[0][0] == 1.0


def test_call_timeout_is_deadline_exceeded_and_configurable():
    err = ModelCallTimeout("a model call (decoder) ran past load.call_timeout_s=30 s")
    assert isinstance(err, DeadlineExceeded)
    assert status_for(err) == (grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
    assert load_config(env={}).engine_config().call_timeout_s == 30.0
    assert load_config(env={"RELAIS_LOAD_CALL_TIMEOUT_S": "0"}).engine_config().call_timeout_s == 0.0
    with pytest.raises(ValueError, match="load.call_timeout_s: must be >= 0 seconds"):
        load_config(env={"RELAIS_LOAD_CALL_TIMEOUT_S": "-1"})
