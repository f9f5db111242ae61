"""Many streams on one machine (issue 12): a loaded server sheds decisions instead of falling
behind, says so per stream (Summary, metrics), and refuses a stream past its measured capacity.

The rules are tested without models; the behaviour on real in-process servers over the prepared
model set, with real French clips sent as fast as possible (so that streams queue for the one
model slot on any machine).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent import futures

import grpc
import pytest

from conftest import load_audio, load_manifest
from relais.client import TranslateClient, TranslateOptions
from relais.pipeline.recognizer import LoadShedding
from relais.pipeline.scheduler import DEFAULT_LANE, LOAD_WINDOW_S, FairSlots, ModelScheduler, StreamCalls
from relais.server.app import start_in_process
from relais.server.report import StreamReport
from relais.server.streams import capacity_refusal
from relais.server.config import ServerConfig, load_config

LOCAL = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}


# --- rules (no models) -----------------------------------------------------------------------------

def test_load_keys_defaults_become_the_engine_and_validation_names_the_key():
    cfg = load_config(env={})
    assert (cfg.load.shed_wait_s, cfg.load.shed_lag_s, cfg.load.shed_max_stretch, cfg.load.admit_max_load,
            cfg.load.new_stream_cost) == (0.25, 1.0, 3.0, 0.9, 0.4)
    assert cfg.engine_config().load_shedding == LoadShedding(wait_high_s=0.25, max_stretch=3.0, lag_high_s=1.0)
    assert load_config(env={"RELAIS_LOAD_SHED_WAIT_S": "0"}).engine_config().load_shedding is None  # off
    for key, value, rule in (("shed_wait_s", "-1", "must be >= 0 seconds"), ("shed_max_stretch", "0.5", "1..10"),
                             ("shed_lag_s", "-0.5", "must be >= 0 seconds"),
                             ("admit_max_load", "1.5", "0..1"), ("new_stream_cost", "-0.1", "0..1")):
        with pytest.raises(ValueError, match=f"load.{key}: .*{re.escape(rule)}"):
            load_config(env={f"RELAIS_LOAD_{key.upper()}": value})


def test_shedding_stretches_while_calls_queue_and_relaxes_when_they_stop():
    rule = LoadShedding(wait_high_s=0.2, factor=1.5, max_stretch=3.0)
    stretch, seen = 1.0, []
    for waited in (0.5, 0.5, 0.5, 0.5, 0.15, 0.0, 0.0, 0.0, 0.0):
        stretch = rule.next_stretch(stretch, waited)
        seen.append(round(stretch, 3))
    # up by 1.5x per loaded step to the cap, held in the dead band (0.1..0.2 s), down to 1 when idle
    assert seen == [1.5, 2.25, 3.0, 3.0, 3.0, 2.0, 1.333, 1.0, 1.0]
    with pytest.raises(ValueError, match="factor > 1"):
        LoadShedding(factor=1.0)


def test_shedding_with_a_lag_bound_leaves_streams_that_keep_up_on_their_grid():
    rule = LoadShedding(wait_high_s=0.2, factor=1.5, max_stretch=3.0, lag_high_s=1.0)
    # queueing while the stream keeps up (its oldest audio waited under a second): no shedding
    assert rule.next_stretch(1.0, waited_s=0.5, lag_s=0.8) == 1.0
    stretch, seen = 1.0, []
    for waited, lag in ((0.5, 1.4), (0.5, 1.6), (0.5, 0.9), (0.5, 0.4), (0.5, 0.3), (0.5, 1.2)):
        stretch = rule.next_stretch(stretch, waited, lag)
        seen.append(round(stretch, 3))
    # behind: up; within the bound but not yet under half of it: held; caught up (< 0.5 s): down,
    # even while it still queues
    assert seen == [1.5, 2.25, 2.25, 1.5, 1.0, 1.5]
    # no server to say how far behind (None): the queue wait alone decides, as with lag_high_s 0
    assert rule.next_stretch(1.0, 0.5, None) == LoadShedding(wait_high_s=0.2).next_stretch(1.0, 0.5, 0.1) == 1.5
    with pytest.raises(ValueError, match="lag_high_s >= 0"):
        LoadShedding(lag_high_s=-1.0)


def test_scheduler_utilisation_is_compute_over_slot_time_in_the_window():
    scheduler = ModelScheduler(max_concurrent_calls=2)
    start = scheduler._created
    assert scheduler.utilisation(now=start + 1.0) == 0.0
    with scheduler._lock:  # calls that ended at known times: 3 s of compute in the last 10 s
        scheduler._calls[DEFAULT_LANE].extend([(start + 1.0, 1.0), (start + 5.0, 2.0), (start + 12.0, 3.0)])
    assert scheduler.utilisation(now=start + 4.0) == pytest.approx(1.0 / (4.0 * 2))  # younger than the window
    assert scheduler.utilisation(now=start + LOAD_WINDOW_S + 3.0) == pytest.approx((2.0 + 3.0) / (10 * 2))
    value = scheduler.run("test", time.sleep, 0.05).value
    assert value is None and 0 < scheduler.utilisation() <= 1.0



def test_stages_in_different_lanes_do_not_wait_for_each_other():
    """With the voice in a lane of its own (the CPU, beside Whisper on a GPU), a voice call runs
    while a decoder call holds the models' slot; without lanes it waits for that slot. The
    utilisation is the busiest lane's."""
    for lanes, voice_waits in (({"tts": "cpu"}, False), (None, True)):
        scheduler = ModelScheduler(max_concurrent_calls=1, lanes=lanes)
        release, spoke = threading.Event(), threading.Event()
        decoder = _hold_the_slot(scheduler, release, stage="decoder")
        voice = threading.Thread(target=scheduler.run, args=("tts", spoke.set))
        voice.start()
        assert spoke.wait(0.5) is not voice_waits, lanes
        release.set()
        for thread in (decoder, voice):
            thread.join(5)
        assert spoke.is_set()
    scheduler = ModelScheduler(max_concurrent_calls=1, lanes={"tts": "cpu"})
    start = scheduler._created
    with scheduler._lock:
        scheduler._calls[DEFAULT_LANE].append((start + 9.0, 2.0))
        scheduler._calls["cpu"].append((start + 9.0, 5.0))
    assert scheduler.utilisation(now=start + LOAD_WINDOW_S) == pytest.approx(5.0 / LOAD_WINDOW_S)


def test_scheduler_lanes_follow_the_devices_the_models_run_on():
    from relais.pipeline.engine import scheduler_lanes

    assert scheduler_lanes("cpu", {"vad": {"cpu"}, "tts": {"cpu"}}) == {}  # a CPU host: one lane
    assert scheduler_lanes("cuda", {"vad": {"cpu"}, "tts": {"cpu"}}) == {"vad": "cpu", "tts": "cpu"}
    assert scheduler_lanes("tensorrt", {"vad": {"cpu"}, "tts": {"cuda"}}) == {"vad": "cpu"}
    assert scheduler_lanes("cuda", {"tts": {"cpu", "cuda"}}) == {}  # voices on both devices: no lane fits
    assert scheduler_lanes("cpu", {"tts": {"cuda"}}) == {"tts": "gpu"}


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_freed_slot_goes_to_the_first_waiter_in_order_never_to_a_caller_barging_in():
    """A stream ahead of real time (a backlog sent 20x fast) waits behind real-time ones; among equals,
    first come first served; and a caller arriving as the slot frees (the fast stream's next back-to-back
    call) queues instead of taking it (a plain semaphore let it barge in and starve the others)."""
    slots = FairSlots(1)
    slots.acquire()  # held by the test
    order: list[str] = []
    release_me = {name: threading.Event() for name in "XYZW"}

    def call(name: str, ahead_s: float) -> threading.Thread:
        def run() -> None:
            slots.acquire(ahead_s)
            order.append(name)
            release_me[name].wait(10)
            slots.release()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    threads = [call("X", 20.0)]
    _wait_for(lambda: slots.waiting == 1, "X to queue")
    threads.append(call("Y", 0.0))
    _wait_for(lambda: slots.waiting == 2, "Y to queue")
    threads.append(call("Z", 0.0))
    _wait_for(lambda: slots.waiting == 3, "Z to queue")
    slots.release()  # handed to Y, the earliest of the real-time callers
    _wait_for(lambda: order == ["Y"], "Y to run")
    threads.append(call("W", 0.0))  # arrives while Y runs: queues behind Z, ahead of X
    _wait_for(lambda: slots.waiting == 3, "W to queue")
    for name in "YZW":
        release_me[name].set()
        _wait_for(lambda: order[-1] != name, f"the slot to pass on from {name}")
    release_me["X"].set()
    for thread in threads:
        thread.join(10)
    assert order == ["Y", "Z", "W", "X"]
    slots.acquire()  # every slot came back
    assert slots.waiting == 0


def test_stream_calls_are_served_by_lead_over_real_time_then_by_when_their_step_began():
    """Each stream's calls carry its lead over real time (the server sets it from the stream's report)
    and when its current session call began: with all queued, the real-time streams' calls run before
    the fast one's, and of those the step that began first goes first (its calls run back to back)."""
    scheduler = ModelScheduler(max_concurrent_calls=1)
    fast, late, early = StreamCalls(scheduler), StreamCalls(scheduler), StreamCalls(scheduler)
    report = StreamReport()
    report.arrived(0.1, wall=100.0)
    report.audio_in_s = 30.0
    fast.ahead_of_real_time = lambda: report.ahead_of_real_time_s(now=102.0)
    assert fast.ahead_of_real_time() == pytest.approx(28.0)
    report.audio_in_s = 2.9  # within REAL_TIME_SLACK_S of real time: counts as real time
    assert report.ahead_of_real_time_s(now=102.0) == 0.0
    report.audio_in_s = 30.0
    early.begin()
    late.begin()
    fast.begin()
    holding, ran = threading.Event(), []
    blocker = threading.Thread(target=scheduler.run, args=("hold", holding.wait, 10), daemon=True)
    blocker.start()
    _wait_for(lambda: scheduler._slots[DEFAULT_LANE]._free == 0, "the slot to be held")
    callers = [threading.Thread(target=calls.run, args=("decoder", ran.append, name), daemon=True)
               for calls, name in ((fast, "fast"), (late, "late"), (early, "early"))]
    for n, caller in enumerate(callers, start=1):
        caller.start()
        _wait_for(lambda: scheduler._slots[DEFAULT_LANE].waiting == n, "the call to queue")
    holding.set()
    for thread in (blocker, *callers):
        thread.join(10)
    assert ran == ["early", "late", "fast"]


def _hold_the_slot(scheduler: ModelScheduler, release: threading.Event, stage: str = "tts") -> threading.Thread:
    """A ``stage`` call that keeps its lane's slot until ``release`` is set (returns once it holds it)."""
    holding = threading.Event()

    def hold():
        holding.set()
        release.wait(5)

    thread = threading.Thread(target=scheduler.run, args=(stage, hold))
    thread.start()
    assert holding.wait(5)
    return thread


def _queue_batched(scheduler: ModelScheduler, fn, items, results: dict) -> list[threading.Thread]:
    def call(item):
        try:
            results[item] = scheduler.run_batched("decoder", fn, item)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            results[item] = exc

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
        deadline = time.monotonic() + 5
        while sum(len(q) for q in scheduler._queued.values()) < threads.index(thread) + 1 \
                and time.monotonic() < deadline:
            time.sleep(0.001)
    return threads


def test_batched_calls_queued_together_run_as_one_and_each_caller_gets_its_own_result():
    sizes, batches = [], []
    scheduler = ModelScheduler(1, max_batch=3, batch_observer=lambda stage, size: sizes.append((stage, size)))

    def square(items):
        batches.append(list(items))
        return [i * i for i in items]

    release, results = threading.Event(), {}
    holder = _hold_the_slot(scheduler, release)
    threads = _queue_batched(scheduler, square, [1, 2, 3, 4, 5], results)
    release.set()
    for thread in (holder, *threads):
        thread.join(5)
    # queued behind the busy slot: the first three in one call, then the other two in the next
    assert batches == [[1, 2, 3], [4, 5]] and sizes == [("decoder", 3), ("decoder", 2)]
    assert {item: timed.value for item, timed in results.items()} == {1: 1, 2: 4, 3: 9, 4: 16, 5: 25}
    assert all(timed.waited > 0 for timed in results.values())
    # alone, a call is a batch of one at once
    assert scheduler.run_batched("decoder", square, 7).value == 49 and batches[-1] == [7]


def test_a_decode_waits_behind_the_encoder_passes_already_queued_so_their_decodes_join_its_batch():
    """Stream A's decode arrives while stream B's encoder pass waits: B's pass runs first, even
    though A's step began earlier, and both decodes then share one call."""
    scheduler, order, batches = ModelScheduler(1, max_batch=4), [], []

    def decode(items):
        batches.append(sorted(items))
        return items

    def stream_b():
        scheduler.run("encoder", lambda: order.append("encode B"), began=time.monotonic())
        scheduler.run_batched("decoder", decode, "B", began=time.monotonic())

    release = threading.Event()
    holder = _hold_the_slot(scheduler, release)
    b = threading.Thread(target=stream_b)
    b.start()
    while scheduler._slots[DEFAULT_LANE].waiting < 1:
        time.sleep(0.001)
    a = threading.Thread(target=scheduler.run_batched, args=("decoder", decode, "A"),
                         kwargs={"began": time.monotonic() - 1.0})  # A's step began before B's
    a.start()
    while scheduler._slots[DEFAULT_LANE].waiting < 2:
        time.sleep(0.001)
    release.set()
    for thread in (holder, a, b):
        thread.join(5)
    assert order == ["encode B"] and batches == [["A", "B"]]


def test_max_batch_wait_holds_a_decode_on_an_idle_scheduler_for_others_to_join():
    """load.max_batch_wait_s > 0: with the slot free, the first decode waits (up to the bound) and a
    second one arriving meanwhile shares its call; with 0 it would have run at once, alone."""
    batches = []
    scheduler = ModelScheduler(1, max_batch=4, max_wait_s=0.5)
    results = {}

    def decode(items):
        batches.append(sorted(items))
        return items

    def call(item):
        start = time.monotonic()
        results[item] = scheduler.run_batched("decoder", decode, item), time.monotonic() - start

    first = threading.Thread(target=call, args=("A",))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=call, args=("B",))
    second.start()
    for thread in (first, second):
        thread.join(5)
    assert batches == [["A", "B"]] and results["A"][0].value == "A" and results["B"][0].value == "B"
    assert results["A"][1] >= 0.1  # the leader did hold...
    assert results["A"][0].waited < 0.05  # ...which is not a wait for the slot (load shedding reads those)
    with pytest.raises(ValueError, match=r"load.max_batch_wait_s: must be within 0..0.5 seconds"):
        load_config(env={"RELAIS_LOAD_MAX_BATCH_WAIT_S": "1"})


def test_a_lone_stream_never_holds_its_decode_for_a_batch():
    """max_batch_wait_s holds a decode only while another stream decodes too (in the last
    LOAD_WINDOW_S): a single stream's latency does not pay for batching it cannot have."""
    scheduler = ModelScheduler(1, max_batch=4, max_wait_s=0.5)
    alone, other = StreamCalls(scheduler), StreamCalls(scheduler)

    def decode(items):
        return items

    def timed(calls, item):
        start = time.monotonic()
        assert calls.run_batched("decoder", decode, item) == item
        return time.monotonic() - start

    assert timed(alone, "A1") < 0.25 and timed(alone, "A2") < 0.25  # no one to wait for: runs at once
    assert timed(other, "B1") >= 0.45  # A decoded lately: B's decode holds for A's next one
    assert timed(alone, "A3") >= 0.45  # and now A's holds for B's


def test_a_failing_batch_is_rerun_one_by_one_so_only_the_bad_request_fails():
    calls = []
    scheduler = ModelScheduler(1, max_batch=4)

    def picky(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("cannot decode 'bad'")
        return [item.upper() for item in items]

    release, results = threading.Event(), {}
    holder = _hold_the_slot(scheduler, release)
    threads = _queue_batched(scheduler, picky, ["a", "bad", "c"], results)
    release.set()
    for thread in (holder, *threads):
        thread.join(5)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert results["a"].value == "A" and results["c"].value == "C"
    assert isinstance(results["bad"], ValueError) and "cannot decode 'bad'" in str(results["bad"])
    assert not scheduler._queued["decoder", picky] and not scheduler._leading  # nothing left behind


def test_batching_off_or_an_old_export_means_one_request_per_call():
    scheduler = ModelScheduler(1, max_batch=1)
    batches = []
    release, results = threading.Event(), {}
    holder = _hold_the_slot(scheduler, release)
    threads = _queue_batched(scheduler, lambda items: batches.append(list(items)) or list(items), [1, 2, 3], results)
    release.set()
    for thread in (holder, *threads):
        thread.join(5)
    assert batches == [[1], [2], [3]]
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        ModelScheduler(1, max_batch=0)
    with pytest.raises(ValueError, match=r"load.max_batch: must be within 1..64 \(1 = no batching\), got 0"):
        load_config(env={"RELAIS_LOAD_MAX_BATCH": "0"})


def test_capacity_is_full_only_when_the_scheduler_is_busy_and_streams_cannot_shed_more():
    # shedding on: a busy scheduler still admits while streams can decide less often
    assert capacity_refusal(1.0, 2, 0.9, shedding=True, exhausted=0) is None
    assert capacity_refusal(0.5, 2, 0.9, shedding=True, exhausted=2) is None  # at max stretch, but not busy
    why = capacity_refusal(0.95, 3, 0.9, shedding=True, exhausted=1)
    assert why and "95% busy" in why and "3 streams" in why and "load.shed_max_stretch" in why
    # shedding off: one more stream like the running ones must fit under the bound
    assert capacity_refusal(0.4, 2, 0.9, shedding=False, exhausted=0) is None  # 0.4 x 3/2 = 0.6
    why = capacity_refusal(0.5, 1, 0.9, shedding=False, exhausted=0)
    assert why and "about 100%" in why and "load.admit_max_load 90%" in why


def test_a_burst_of_starts_counts_the_streams_the_measure_has_not_seen_yet():
    # an idle measure, but two streams just started at 30 % each: a third fits (90 %), a fourth does not
    assert capacity_refusal(0.0, 2, 0.9, shedding=True, exhausted=0, expected=0.6, young=2, new_cost=0.3) is None
    why = capacity_refusal(0.05, 3, 0.9, shedding=True, exhausted=0, expected=0.9, young=3, new_cost=0.3)
    assert why and "3 of them started in the last 10 s" in why and "about 120%" in why
    assert "load.new_stream_cost 30%" in why
    # once no stream is young, the measure alone decides again (here: the shedding rule admits)
    assert capacity_refusal(0.95, 4, 0.9, shedding=True, exhausted=0, expected=1.2, young=0, new_cost=0.3) is None


# --- real servers ----------------------------------------------------------------------------------

# content words of each clip's translation or its reference (any one must come through; under load the
# decode grid, and so the exact wording, depends on timing: a shed step turned 1913 into "...doesn't look
# like a little bit of a lion, but rather a little bit of a monster's face", its reference's lion)
CLIPS = {"fleurs_fr_test_1857": {"added", "obligations", "development", "responsibility"},
         "fleurs_fr_test_1913": {"phrase", "power", "light", "words", "lion", "roar", "tiger"},
         "fleurs_fr_test_2004": {"month", "track", "wall", "people"}}
CLIP_1690 = {"athletes", "organization", "olympic", "accreditation", "clubs"}


def _clip(utterance_id: str):
    utt = next(u for u in load_manifest("fr_en_dev") if u.id == utterance_id)
    return load_audio(utt.path)


def _config(model_set, **load) -> ServerConfig:
    return ServerConfig().replace(server={**LOCAL, "max_sessions": 4}, models={"dir": str(model_set.root)},
                                  runtime={"providers": ["cpu"]}, load=load)


def _translate(address: str, utterance_id: str, barrier: threading.Barrier | None = None,
               latency_mode: str = "balanced"):
    audio = _clip(utterance_id)
    with TranslateClient(address) as client:
        if barrier is not None:
            barrier.wait(60)
        return client.translate_audio(audio, 16000, TranslateOptions(
            target_language="en", source_language="fr", speed=0, return_audio=False, latency_mode=latency_mode))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _metric(handle, name: str) -> float:
    text = handle.server.metrics.exposition().decode()
    line = next((line for line in text.splitlines() if line.startswith(name + " ")), f"{name} 0")
    return float(line.split()[-1])


def test_loaded_streams_decide_less_often_report_it_and_still_translate(model_set):
    """Three clips sent at once as fast as possible queue for the one model slot: each stream skips
    some of its latency mode's decisions (Summary.degraded_fraction, the decision-step counter) and
    still translates its own clip; a stream alone on the server queues for nothing and skips none."""
    with start_in_process(_config(model_set, shed_wait_s=0.05, admit_max_load=0)) as handle:
        address = handle.address
        barrier = threading.Barrier(len(CLIPS))
        with futures.ThreadPoolExecutor(len(CLIPS)) as pool:
            results = list(pool.map(lambda u: _translate(address, u, barrier), CLIPS))
        for (utt, keywords), result in zip(CLIPS.items(), results):
            s = result.summary
            assert s.queue_wait_s > 0.5 and 0 < s.degraded_fraction <= 2 / 3, (utt, s)
            assert _words(result.translation) & keywords, (utt, result.translation)
        skipped = _metric(handle, 'relais_decision_steps_total{outcome="skipped"}')
        assert skipped > 0 and _metric(handle, 'relais_decision_steps_total{outcome="run"}') > 0
        alone = _translate(address, "fleurs_fr_test_1857").summary
        assert alone.degraded_fraction == 0 and alone.queue_wait_s < 0.05, alone
        assert 0 < _metric(handle, "relais_scheduler_utilisation") <= 1


def test_streams_that_queue_but_are_within_the_lag_bound_keep_their_grid(model_set):
    """The same three clips queue as long for the slot, but with load.shed_lag_s far above how far
    behind they fall, none of them sheds: the server tells each stream its lag, and queueing alone
    does not stretch a grid (it would with no lag known, as the test above shows for 0.05 s)."""
    with start_in_process(_config(model_set, shed_wait_s=0.05, shed_lag_s=600, admit_max_load=0)) as handle:
        address = handle.address
        barrier = threading.Barrier(len(CLIPS))
        with futures.ThreadPoolExecutor(len(CLIPS)) as pool:
            results = list(pool.map(lambda u: _translate(address, u, barrier), CLIPS))
        for (utt, keywords), result in zip(CLIPS.items(), results):
            assert result.summary.queue_wait_s > 0.5 and result.summary.degraded_fraction == 0, (utt, result.summary)
            assert _words(result.translation) & keywords, (utt, result.translation)
        assert _metric(handle, 'relais_decision_steps_total{outcome="skipped"}') == 0


def test_a_stream_past_measured_capacity_is_refused_with_resource_exhausted(model_set):
    """With one stream keeping the model slot busy, a second one would need more than
    load.admit_max_load: it is refused with RESOURCE_EXHAUSTED and a message that says why, the
    first stream is unaffected, and no session is left behind."""
    with start_in_process(_config(model_set, shed_wait_s=0, admit_max_load=0.3)) as handle:
        address = handle.address
        scheduler = handle.server.gate.scheduler
        with futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(_translate, address, "fleurs_fr_test_1690")  # 23 s of speech, as fast as possible
            deadline = time.monotonic() + 60
            while scheduler.utilisation() * 2 <= 0.3 and time.monotonic() < deadline and not first.done():
                time.sleep(0.1)
            assert not first.done(), "the first stream ended before the scheduler was measurably busy"
            with pytest.raises(grpc.RpcError) as refused:
                _translate(address, "fleurs_fr_test_1857")
            result = first.result(timeout=120)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "measured capacity" in refused.value.details() and "load.admit_max_load" in refused.value.details()
        assert _words(result.translation) & CLIP_1690, result.translation
        assert _metric(handle, 'relais_sessions_total{outcome="rejected"}') == 1
        assert _metric(handle, "relais_sessions_active") == 0


def test_with_shedding_a_busy_server_refuses_once_its_streams_cannot_shed_more(model_set):
    """Two long clips sent as fast as possible queue for the one model slot; once one of them
    decides as rarely as allowed (here 1.5x its step) while the scheduler is busy, a third
    stream is refused, and the two finish their translations."""
    config = _config(model_set, shed_wait_s=0.05, shed_max_stretch=1.5, admit_max_load=0.5,
                     new_stream_cost=0)  # the shedding rule alone
    with start_in_process(config) as handle:
        address, host = handle.address, handle.server.host
        with futures.ThreadPoolExecutor(2) as pool:
            running = [pool.submit(_translate, address, "fleurs_fr_test_1690") for _ in range(2)]
            deadline = time.monotonic() + 60

            def full() -> bool:
                sessions = [t.session for t in host._tickets.values() if t.session is not None]
                return handle.server.gate.scheduler.utilisation() >= 0.5 and any(
                    s.shedding_exhausted for s in sessions)

            while not full() and time.monotonic() < deadline and not any(f.done() for f in running):
                time.sleep(0.05)
            assert full(), "the two streams never filled the scheduler"
            with pytest.raises(grpc.RpcError) as refused:
                _translate(address, "fleurs_fr_test_1857")
            results = [f.result(timeout=120) for f in running]
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "decide as rarely as load shedding allows" in refused.value.details()
        for result in results:
            assert _words(result.translation) & CLIP_1690 and result.summary.degraded_fraction > 0


def test_a_burst_of_real_time_streams_is_admitted_only_as_far_as_their_expected_cost_allows(model_set):
    """Five real-time streams start at once on an idle server: the measure shows nothing yet, so each
    new one counts at load.new_stream_cost (30 % here); three fit under load.admit_max_load (90 %),
    the other two are refused with RESOURCE_EXHAUSTED saying why, and the three translate their clips."""
    with start_in_process(_config(model_set, new_stream_cost=0.3)) as handle:
        address = handle.address
        clips = ["fleurs_fr_test_1857", "fleurs_fr_test_1913", "fleurs_fr_test_2004"] * 2
        barrier = threading.Barrier(5)

        def one(utterance_id: str):
            audio = _clip(utterance_id)
            with TranslateClient(address) as client:
                barrier.wait(60)
                try:
                    return client.translate_audio(audio, 16000, TranslateOptions(
                        target_language="en", source_language="fr", speed=1.0, return_audio=False))
                except grpc.RpcError as err:
                    return err

        with futures.ThreadPoolExecutor(5) as pool:
            outcomes = list(pool.map(one, clips[:5]))
        refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert len(refused) == 2, [o.details() if isinstance(o, grpc.RpcError) else o.translation for o in outcomes]
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "started in the last 10 s" in err.details() and "load.new_stream_cost" in err.details()
        for utt, result in zip(clips, outcomes):
            if not isinstance(result, grpc.RpcError):
                assert _words(result.translation) & CLIPS[utt], (utt, result.translation)
        assert _metric(handle, 'relais_sessions_total{outcome="rejected"}') == 2
        assert _metric(handle, "relais_sessions_active") == 0


def test_streams_decoded_together_share_decoder_calls_and_translate_as_alone(model_set):
    """Three clips sent at once as fast as possible (shedding and admission off, so each stream's
    decode grid depends on its audio alone): their queued decodes share decoder calls (the batch
    size histogram shows calls of more than one stream), and every stream's text is the text it
    gets on its own. fp32: int8's activation rounding can flip near-ties between a row in a batch and
    alone (tests/test_whisper_export.py). The low mode: its hypotheses are greedy decodes, the ones
    batched across streams (balanced and quality beam-search theirs, one stream per call)."""
    config = _config(model_set, shed_wait_s=0, admit_max_load=0, max_batch=4).replace(
        models={"dir": str(model_set.root), "precision": "fp32"})
    with start_in_process(config) as handle:
        address = handle.address
        alone = {utt: _translate(address, utt, latency_mode="low").translation for utt in CLIPS}
        barrier = threading.Barrier(len(CLIPS))
        with futures.ThreadPoolExecutor(len(CLIPS)) as pool:
            together = dict(zip(CLIPS, pool.map(lambda u: _translate(address, u, barrier, "low").translation,
                                                CLIPS)))
        calls = _metric(handle, 'relais_batch_size_count{stage="decoder"}')
        rows = _metric(handle, 'relais_batch_size_sum{stage="decoder"}')
        shared = calls - _metric(handle, 'relais_batch_size_bucket{le="1.0",stage="decoder"}')
    assert together == alone
    assert all(_words(alone[utt]) & keywords for utt, keywords in CLIPS.items()), alone
    assert shared > 0 and rows > calls, (calls, rows, shared)


def test_eval_client_backs_off_and_retries_a_refused_stream(model_set):
    """`relais eval --retry-refused-s`: with room for one session, the second of two clips started
    together is refused (RESOURCE_EXHAUSTED) and, retrying as a client backing off would, runs once
    the first is done; without retries it counts as failed."""
    from relais.eval.runner import options_for, stream_all

    utts = [u for u in load_manifest("fr_en_dev") if u.id in ("common_voice_fr_19601543", "transpeech_fr_en_2")]
    options = options_for("simulated", source_language="fr", target_language="en", latency_mode="balanced")
    config = ServerConfig().replace(server={**LOCAL, "max_sessions": 1}, models={"dir": str(model_set.root)},
                                    runtime={"providers": ["cpu"]})
    with start_in_process(config) as handle:
        retried = stream_all(handle.address, utts, options, concurrency=2, mode="simulated", retry_refused_s=0.2)
        assert all(r.result is not None and r.result.translation.strip() for r in retried.runs), retried.runs
        assert sum(r.refusals for r in retried.runs) >= 1
        once = stream_all(handle.address, utts, options, concurrency=2, mode="simulated")
    failed = [r for r in once.runs if r.result is None]
    assert len(failed) == 1 and "RESOURCE_EXHAUSTED" in failed[0].error and "max_sessions" in failed[0].error
    assert failed[0].refusals == 0


def test_a_day_long_stream_keeps_a_bounded_arrival_record_and_its_lag_stays_right():
    """StreamReport keeps chunk arrivals for ARRIVALS_KEEP_S of source time only (a 24/7 stream must not
    grow without bound), and lag_s and wall_of still answer from what is kept: the oldest chunk the
    session has not finished with is never forgotten."""
    from relais.server.report import ARRIVALS_KEEP_S

    report = StreamReport()
    chunks = int(24 * 3600 / 0.1)  # a day of 100 ms chunks, sent in real time from wall 1000
    for i in range(chunks):
        report.arrived(0.1 * (i + 1), wall=1000.0 + 0.1 * i)
        report.processed(i + 1)
    kept = len(report.arrivals_s)
    assert kept <= 2 * ARRIVALS_KEEP_S / 0.1 + 1 and len(report.arrivals_wall) == kept
    assert report.arrivals_dropped + kept == chunks
    end_wall = 1000.0 + 0.1 * chunks
    assert report.lag_s(now=end_wall) == 0.0  # caught up
    assert report.wall_of(0.1 * chunks - 5.0) == pytest.approx(end_wall - 5.1)  # a commit 5 s back
    # The session stalls: chunks keep arriving for ten minutes but none is processed. The pending ones
    # are kept (however old), so the lag is the true age of the oldest unprocessed chunk.
    stalled_at = chunks
    for i in range(chunks, chunks + 6000):
        report.arrived(0.1 * (i + 1), wall=1000.0 + 0.1 * i)
    assert report.lag_s(now=1000.0 + 0.1 * (chunks + 6000)) == pytest.approx(600.0)
    report.processed(stalled_at + 5990)
    assert report.lag_s(now=1000.0 + 0.1 * (chunks + 6000)) == pytest.approx(1.0)
    report.arrived(0.1 * (chunks + 6001), wall=1000.0 + 0.1 * (chunks + 6000))
    assert len(report.arrivals_s) <= 2 * ARRIVALS_KEEP_S / 0.1 + 1  # the stall's backlog is let go once processed
