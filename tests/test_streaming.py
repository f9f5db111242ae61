"""The streaming session on real models and real recordings (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_audio, load_manifest
from relais.eval.scores import normalise, wer
from relais.pipeline.engine import EngineConfig, TranslationEngine
from relais.pipeline.events import SpeechSegment, TextKind, TextSegment

REFERENCE_1857_WORDS = ("added", "obligations", "development", "responsib", "capa")


@pytest.fixture(scope="module")
def engine(model_set):
    eng = TranslationEngine(EngineConfig(models_dir=model_set.root))
    eng.warm_up()
    return eng


def stream(engine, audio: np.ndarray, chunk_s: float, **cfg):
    session = engine.new_session(engine.session_config(**{"target_language": "en", **cfg}))
    step = max(1, int(chunk_s * 16000))
    events = []
    for i in range(0, len(audio), step):
        events += session.push_audio(audio[i:i + step])
    return session, events + session.finish()


def finals(events) -> list[str]:
    return [e.text for e in events if isinstance(e, TextSegment) and e.kind == TextKind.TRANSLATION_FINAL]


def test_committed_text_is_the_same_for_any_chunk_size(engine):
    audio = load_audio(load_manifest("fr_en_dev")[1].path)
    results = {}
    for chunk_s in (0.02, 0.1, 1.0):
        session, events = stream(engine, audio, chunk_s, source_language="fr")
        results[chunk_s] = (finals(events), session.stats.translation)
    assert results[0.02] == results[0.1] == results[1.0]
    assert len(results[1.0][0]) >= 2  # committed incrementally, not only at the end


def test_french_clip_gives_english_text_and_speech(engine):
    clip = load_manifest("fr_en_dev")[1]
    session, events = stream(engine, load_audio(clip.path), 0.1, source_language="fr")
    text = normalise(session.stats.translation)
    assert sum(w in text for w in REFERENCE_1857_WORDS) >= 3, text
    speech = [e for e in events if isinstance(e, SpeechSegment)]
    assert speech and all(s.sample_rate_hz == 22050 for s in speech)
    total = np.concatenate([s.audio for s in speech])
    assert len(total) / 22050 > 2.0 and float(np.sqrt(np.mean(total ** 2))) > 0.01
    # Speech comes out while the source is still playing, not only at the end.
    assert speech[0].source_received_s < clip.duration_s
    # The spoken phrases are the committed text, in order.
    assert normalise(" ".join(s.text for s in speech)) == text


def test_source_language_detection(engine):
    session, _ = stream(engine, load_audio(load_manifest("fr_en_dev")[0].path), 0.5, source_language="")
    assert session.stats.detected_language == "fr"


def test_english_to_english_is_transcription(engine):
    clips = load_manifest("en_asr")[:3]
    texts = []
    for clip in clips:
        session, events = stream(engine, load_audio(clip.path), 0.5, source_language="en", return_audio=False)
        assert session.cfg.task == "transcribe"
        assert not [e for e in events if isinstance(e, SpeechSegment)]
        texts.append(session.stats.translation)
    assert wer(texts, [c.source_text for c in clips]) < 0.35


def test_silence_costs_no_recogniser_compute(engine):
    session, events = stream(engine, np.zeros(16000 * 5, np.float32), 0.1, source_language="fr")
    assert not events
    assert session.stats.stage_s.get("encoder", 0.0) == 0.0 and session.stats.stage_s.get("decoder", 0.0) == 0.0


def test_long_stream_keeps_bounded_state(engine):
    clip = load_manifest("fr_longform")[0]  # ~56 s monologue
    audio = load_audio(clip.path)
    session = engine.new_session(engine.session_config(source_language="fr", target_language="en", return_audio=False))
    limit = int((engine.config.max_utterance_s + 1.0) * 16000)
    peak = 0
    for i in range(0, len(audio), 16000):
        session.push_audio(audio[i:i + 16000])
        peak = max(peak, len(session._audio))
        assert len(session.context) <= engine.config.context_tokens
    session.finish()
    assert peak <= limit
    assert len(session.stats.translation.split()) > 40


def test_bad_session_settings_are_value_errors(engine):
    for kwargs, message in (
        ({"target_language": ""}, "target_language is required"),
        ({"target_language": "xx"}, "not supported"),
        ({"target_language": "en", "source_language": "xx"}, "source_language 'xx' is not supported"),
        ({"target_language": "en", "voice": "nobody"}, "voice 'nobody' not found"),
        ({"target_language": "en", "latency_mode": "instant"}, "latency_mode 'instant' unknown"),
        ({"target_language": "en", "return_text": False, "return_audio": False}, "would return nothing"),
    ):
        with pytest.raises(ValueError, match=message):
            engine.session_config(**kwargs)


def test_scheduler_serialises_model_calls_across_threads(engine):
    """Two streams in two threads: their model calls never overlap (one slot)."""
    import threading

    from relais.pipeline.scheduler import ModelScheduler

    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def record(stage: str, seconds: float) -> None:
        import time

        end = time.perf_counter()
        with lock:
            spans.append((end - seconds, end))

    previous = engine.scheduler
    engine.scheduler = ModelScheduler(1, observer=record)
    try:
        audio = load_audio(load_manifest("fr_en_dev")[8].path)  # ~3 s clip
        threads = [threading.Thread(target=stream, args=(engine, audio, 0.1), kwargs={"source_language": "fr",
                                                                                   "return_audio": False})
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.scheduler = previous
    spans.sort()
    assert len(spans) > 20
    assert all(a_end <= b_start + 1e-4 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
