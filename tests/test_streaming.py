"""The streaming session on real models and real recordings (no server)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import load_audio, load_manifest
from relais.eval.scores import normalise, wer
from relais.pipeline.engine import LATENCY_PROFILES, EngineConfig, LatencyProfile, TranslationEngine
from relais.pipeline.events import SpeechSegment, StreamStats, TextKind, TextSegment
from relais.pipeline.scheduler import ModelScheduler

REFERENCE_1857_WORDS = ("added", "obligations", "development", "responsib", "capa")


@pytest.fixture(scope="module")
def engine(model_set):
    eng = TranslationEngine(EngineConfig(models_dir=model_set.root))
    eng.warm_up()
    return eng


def stream(engine, audio: np.ndarray, chunk_s: float, scheduler: ModelScheduler | None = None,
           profile: LatencyProfile | None = None, **cfg):
    """Stream ``audio`` in ``chunk_s`` chunks; return the events and the stats folded from them."""
    config = engine.session_config(**{"target_language": "en", **cfg})
    if profile is not None:
        config = dataclasses.replace(config, latency=profile)
    session = engine.new_session(config, scheduler or ModelScheduler())
    step = max(1, int(chunk_s * 16000))
    events = []
    for i in range(0, len(audio), step):
        events += session.push_audio(audio[i:i + step])
    events += session.finish()
    return StreamStats().extend(events), events


def finals(events) -> list[str]:
    return [e.text for e in events if isinstance(e, TextSegment) and e.kind == TextKind.TRANSLATION_FINAL]


LOCAL_AGREEMENT = LatencyProfile("la2", step_s=2.0, agreement=2, phrase_max_words=0, beam_size=3)


@pytest.mark.parametrize("mode", ["low", "balanced", "la2"])  # AlignAtt greedy, AlignAtt beams, LocalAgreement
def test_committed_text_is_the_same_for_any_chunk_size(engine, mode):
    audio = load_audio(load_manifest("fr_en_dev")[1].path)
    profile = LOCAL_AGREEMENT if mode == "la2" else LATENCY_PROFILES[mode]
    results = {}
    for chunk_s in (0.02, 0.1, 1.0):
        stats, events = stream(engine, audio, chunk_s, source_language="fr", profile=profile, return_audio=False)
        results[chunk_s] = (finals(events), stats.translation)
    assert results[0.02] == results[0.1] == results[1.0]
    assert len(results[1.0][0]) >= 2  # committed incrementally, not only at the end


def test_french_clip_gives_english_text_and_speech(engine):
    clip = load_manifest("fr_en_dev")[1]
    stats, events = stream(engine, load_audio(clip.path), 0.1, source_language="fr")
    text = normalise(stats.translation)
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
    stats, _ = stream(engine, load_audio(load_manifest("fr_en_dev")[0].path), 0.5, source_language="")
    assert stats.detected_language == "fr"


def test_english_to_english_is_transcription(engine):
    clips = load_manifest("en_asr")[:3]
    texts = []
    for clip in clips:
        stats, events = stream(engine, load_audio(clip.path), 0.5, source_language="en", return_audio=False)
        assert stats.transcript == stats.translation  # transcription: the source text is the output
        assert not [e for e in events if isinstance(e, SpeechSegment)]
        texts.append(stats.translation)
    assert wer(texts, [c.source_text for c in clips]) < 0.35


def test_silence_costs_no_recogniser_compute(engine):
    stats, events = stream(engine, np.zeros(16000 * 5, np.float32), 0.1, source_language="fr")
    assert not [e for e in events if isinstance(e, (TextSegment, SpeechSegment))]
    assert stats.stage_s["vad"] > 0
    assert stats.stage_s.get("encoder", 0.0) == 0.0 and stats.stage_s.get("decoder", 0.0) == 0.0


def test_long_stream_keeps_bounded_state(engine):
    clip = load_manifest("fr_longform")[0]  # ~56 s monologue
    audio = load_audio(clip.path)
    session = engine.new_session(engine.session_config(source_language="fr", target_language="en", return_audio=False),
                                 ModelScheduler())
    limit = int((engine.config.max_utterance_s + 1.0) * 16000)
    peak, events = 0, []
    for i in range(0, len(audio), 16000):
        events += session.push_audio(audio[i:i + 16000])
        peak = max(peak, len(session.recognizer_state.audio))
        assert len(session.recognizer_state.context) <= engine.config.context_tokens
    stats = StreamStats().extend(events + session.finish())
    assert peak <= limit
    assert len(stats.translation.split()) > 40


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

    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def record(stage: str, seconds: float) -> None:
        import time

        end = time.perf_counter()
        with lock:
            spans.append((end - seconds, end))

    scheduler = engine.new_scheduler(observer=record)
    audio = load_audio(load_manifest("fr_en_dev")[8].path)  # ~3 s clip
    threads = [threading.Thread(target=stream, args=(engine, audio, 0.1, scheduler),
                                kwargs={"source_language": "fr", "return_audio": False})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) > 20
    assert all(a_end <= b_start + 1e-4 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def offline_on_the_same_grid(engine, audio: np.ndarray, language: str | None, profile: LatencyProfile) -> str:
    """The oracle for streaming == offline: the same schedule (VAD decisions at window ends, a
    hypothesis every step_s, the profile's policy, utterances cut at max_utterance_s, earlier text
    as prompt), decoded straight from the whole clip with no stream buffers or stages involved."""
    whisper, vad, cfg = engine.whisper, engine.vad, engine.config
    win = vad.window_samples
    step = max(win, int(round(profile.step_s * 16000 / win)) * win)
    first = max(win, int(round((profile.first_step_s or profile.step_s) * 16000 / win)) * win)
    tok = whisper.tokenizer
    policy = engine.policy(profile)
    vad_state = vad.new_state()
    schedule = [(w.end_sample, w.events) for w in vad.windows(vad_state, audio)]
    tail = vad.flush_window(vad_state)
    schedule.append((tail.end_sample, tail.events))
    state, context, texts = policy.new_state(), [], []
    utt: list[int] | None = None  # [start, next_step]

    def decode(start: int, end: int, final: bool):
        nonlocal language
        seg = audio[start:end]
        if len(seg) < win or (language is None and not final and len(seg) < 3 * 16000):
            return None
        enc = whisper.encode(seg, len(seg) / 16000 + cfg.encoder_pad_s)
        if language is None:
            language, _ = whisper.detect_language(enc)
        prompt = whisper.prompt("translate", language, previous=context)
        if final:
            return whisper.beam_search(enc, prompt + state.committed, profile.beam_size,
                                       at_start=not state.committed, history=state.committed)
        if profile.step_beam_size > 1:
            return whisper.beam_search(enc, prompt + state.committed, profile.step_beam_size,
                                       at_start=not state.committed, history=state.committed, peaks=True)
        return whisper.greedy(enc, prompt + state.committed, at_start=not state.committed, history=state.committed,
                              stop_frame=policy.stop_frame(whisper.audio_frames(enc), state))

    def close(end: int) -> None:
        nonlocal context, utt
        result = decode(utt[0], end, final=True)
        policy.flush(state, result.tokens if result else [])
        texts.append(tok.decode(state.committed))
        context = (context + state.committed)[-cfg.context_tokens:]
        policy.reset(state)
        utt = None

    for done, events in schedule:
        for ev in events:
            if ev.kind == "start" and utt is None:
                utt = [ev.start_sample, ev.start_sample + first]
            elif ev.kind == "end" and utt is not None:
                close(max(ev.end_sample, utt[0] + win))
        if utt is not None and (done, events) is not schedule[-1]:
            if done - utt[0] >= int(cfg.max_utterance_s * 16000):
                close(done)
                utt = [done, done + first]
            elif done >= utt[1]:
                result = decode(utt[0], done, final=False) if policy.ready((done - utt[0]) // 320, state) else None
                if result is not None:
                    policy.step(state, result.tokens, result.peaks, result.audio_frames)
                utt[1] += step if state.committed else first
    if utt is not None:
        close(schedule[-1][0])
    return " ".join(" ".join(texts).split())


@pytest.mark.parametrize("clip_index,language,profile", [
    (0, None, LATENCY_PROFILES["balanced"]),
    (1, "fr", LATENCY_PROFILES["low"]),
    (3, "fr", LATENCY_PROFILES["low"].with_overrides({"first_frame_threshold": 20, "first_commit_words": 1})),
    (1, "fr", LOCAL_AGREEMENT),
    (0, "fr", LatencyProfile("la-hold", step_s=1.0, agreement=2, phrase_max_words=6, max_hold_s=2.0,
                             first_step_s=0.5)),
    (2, "fr", LATENCY_PROFILES["quality"]),
], ids=["balanced-alignatt-beams-auto-23s", "low-alignatt", "low-alignatt-first-commit", "la2-beam3", "la-hold-first-step",
        "quality-alignatt-beams"])
def test_streaming_equals_offline_on_the_same_grid(engine, clip_index, language, profile):
    """End to end, for every policy: a stream in odd-sized chunks commits exactly what an offline
    decode of the whole clip on the same schedule gives (clip 0 is 23 s: it also crosses the
    utterance cut)."""
    audio = load_audio(load_manifest("fr_en_dev")[clip_index].path)
    stats, _ = stream(engine, audio, 0.37, profile=profile, source_language=language or "", return_audio=False)
    expected = offline_on_the_same_grid(engine, audio, language, profile)
    assert expected
    assert " ".join(stats.translation.split()) == expected


def test_text_spans_of_speech_that_starts_at_the_first_sample(engine):
    """A committed text's source span starts where its utterance starts, also at sample 0."""
    clip = load_audio(load_manifest("fr_en_dev")[1].path)
    onset = engine.vad.speech_segments(clip)[0].start_sample + 3200  # past the VAD's 200 ms padding
    stats, events = stream(engine, clip[onset:], 0.1, source_language="fr", return_audio=False)
    finals = [e for e in events if isinstance(e, TextSegment) and e.kind == TextKind.TRANSLATION_FINAL]
    assert finals and finals[0].start_s == 0.0
    assert all(e.end_s > e.start_s for e in finals)


def test_the_servers_latency_overrides_reach_every_modes_policy(engine):
    """`latency.overrides` (RELAIS_LATENCY_OVERRIDES) moves profile keys for every mode: a stream's
    AlignAtt policy then uses the first-commit rules; a bad key stops the server at start."""
    import copy

    from relais.server.config import load_config

    config = load_config(env={"RELAIS_LATENCY_OVERRIDES": "first_frame_threshold=20, first_commit_words=1"})
    assert config.engine_config().latency_overrides == {"first_frame_threshold": 20, "first_commit_words": 1}
    moved = copy.copy(engine)
    moved.config = dataclasses.replace(engine.config, latency_overrides=config.engine_config().latency_overrides)
    for mode in ("low", "balanced", "quality"):
        policy = moved.policy(moved.latency_profile(mode))
        assert (policy.first_frame_threshold, policy.first_commit_words) == (20, 1)
        assert policy.frame_threshold == LATENCY_PROFILES[mode].frame_threshold
    plain = engine.policy(engine.latency_profile("balanced"))
    assert (plain.first_frame_threshold, plain.first_commit_words) == (None, 0)
    with pytest.raises(ValueError, match=r"latency.overrides: unknown latency profile key\(s\) \['colour'\]"):
        load_config(env={"RELAIS_LATENCY_OVERRIDES": "colour=blue"})
    with pytest.raises(ValueError, match="latency.overrides: step_s must be within 0.1..10 s"):
        load_config(env={"RELAIS_LATENCY_OVERRIDES": "step_s=99"})
