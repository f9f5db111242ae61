"""LocalAgreement-n policy over synthetic token hypotheses (pure Python, no model)."""

from __future__ import annotations

import random

import pytest

from relais.pipeline.policy import (
    AlignAttPolicy,
    LocalAgreementPolicy,
    PolicyState,
    SimultaneousPolicy,
    longest_common_prefix,
)

# A toy vocabulary: a token starts a word when its text starts with a space.
VOCAB = {
    1: " the", 2: " cat", 3: " sa", 4: "t", 5: " on", 6: " un", 7: "believ", 8: "able",
    9: " story", 10: " a", 11: "b", 12: " c", 13: "s", 14: " mat", 15: "ing", 16: " dog",
    17: ",", 18: ".", 19: " We", 20: " go",
}  # fmt: skip
NOISE_BASE = 1000  # ids >= NOISE_BASE: noise tokens; even ids start a word


def is_word_start(token: int) -> bool:
    if token >= NOISE_BASE:
        return token % 2 == 0
    return VOCAB[token].startswith(" ")


def is_punctuation(token: int) -> bool:
    return token < NOISE_BASE and VOCAB[token].strip() in {",", "."}


def words(*texts: str) -> list[int]:
    ids = {text: token for token, text in VOCAB.items()}
    return [ids[t] for t in texts]


# ---------------------------------------------------------------------------- helpers


def test_longest_common_prefix():
    assert longest_common_prefix([]) == 0
    assert longest_common_prefix([[1, 2, 3]]) == 3
    assert longest_common_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert longest_common_prefix([[1, 2, 3], [1, 2]]) == 2
    assert longest_common_prefix([[1, 2, 3], [1, 2, 3], [1, 9, 3]]) == 1
    assert longest_common_prefix([[1, 2], [], [1, 2]]) == 0
    assert longest_common_prefix([[5], [1]]) == 0


def test_validation_and_protocol():
    with pytest.raises(ValueError, match="n must be"):
        LocalAgreementPolicy(n=0)
    with pytest.raises(ValueError, match="max_unstable_tokens"):
        LocalAgreementPolicy(max_unstable_tokens=0)
    policy = LocalAgreementPolicy()
    assert isinstance(policy, SimultaneousPolicy)
    assert policy.new_state() == PolicyState(committed=[], history=[])


# ---------------------------------------------------------------------------- agreement


def test_la2_commits_only_what_two_consecutive_hypotheses_agree_on():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    assert policy.step(state, [1, 2, 3]) == []  # nothing on the first step
    assert state.committed == []
    assert policy.step(state, [1, 2, 4, 5]) == [1, 2]
    assert state.committed == [1, 2]
    assert state.history == [[3], [4, 5]]  # re-expressed relative to the committed prefix
    assert state.tail == [4, 5]


def test_la3_needs_three_hypotheses():
    policy = LocalAgreementPolicy(n=3)
    state = policy.new_state()
    assert policy.step(state, [1, 2, 3]) == []
    assert policy.step(state, [1, 2, 3]) == []  # two agree, but LA-3 waits for a third
    assert policy.step(state, [1, 2, 7]) == [1, 2]
    assert state.history == [[3], [3], [7]]
    # Only the last three count: the first [3] has left the window.
    assert policy.step(state, [3, 8]) == []  # [3], [7], [3, 8] disagree at once
    assert policy.step(state, [3, 9]) == []  # [7], [3, 8], [3, 9]
    assert policy.step(state, [3, 9]) == [3]  # [3, 8], [3, 9], [3, 9]
    assert state.committed == [1, 2, 3]


def test_la1_commits_every_hypothesis():
    policy = LocalAgreementPolicy(n=1)
    state = policy.new_state()
    assert policy.step(state, [1, 2]) == [1, 2]
    assert policy.step(state, [3]) == [3]
    assert state.committed == [1, 2, 3]
    assert state.history == [[]]


def test_later_hypothesis_continues_after_commit():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    policy.step(state, [1, 2, 3])
    policy.step(state, [1, 2, 3, 4])  # commits [1, 2, 3]; history [[], [4]]
    assert state.committed == [1, 2, 3]
    assert state.history == [[], [4]]
    # The decoder now forces [1, 2, 3] and passes only the continuation.
    assert policy.step(state, [4, 5]) == [4]
    assert policy.step(state, [5, 6]) == [5]
    assert state.committed == [1, 2, 3, 4, 5]


def test_disagreeing_hypothesis_commits_nothing_new():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    policy.step(state, [1, 2, 3])
    assert policy.step(state, [1, 2, 4]) == [1, 2]
    assert policy.step(state, [9, 9]) == []  # disagrees with [4]
    assert state.committed == [1, 2]
    assert policy.step(state, [9, 9, 1]) == [9, 9]  # agrees with the newest only
    assert state.committed == [1, 2, 9, 9]


def test_forced_commit_drops_history_that_does_not_extend_it():
    policy = LocalAgreementPolicy(n=3, max_unstable_tokens=2)
    state = policy.new_state()
    assert policy.step(state, [1, 2]) == []  # two unstable tokens: within the bound
    # No agreement yet (two of three), but four unstable tokens: force-commit two.
    assert policy.step(state, [5, 6, 7, 8]) == [5, 6]
    assert state.committed == [5, 6]
    assert state.history == [[7, 8]]  # [1, 2] does not start with [5, 6]: dropped


def test_max_unstable_tokens_bounds_the_tail_at_word_starts():
    policy = LocalAgreementPolicy(n=2, is_word_start=is_word_start, max_unstable_tokens=2)
    state = policy.new_state()
    hyp = words(" the", " un", "believ", "able", " story")
    # Token-level the bound would allow committing 3; " un" | "believ" is mid-word.
    assert policy.step(state, hyp) == words(" the")
    assert state.tail == words(" un", "believ", "able", " story")
    unbounded = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    assert unbounded.step(unbounded.new_state(), hyp) == []


# ---------------------------------------------------------------------------- word boundaries


def test_word_boundary_never_commits_a_partial_word():
    hyp1 = words(" the", " cat", " sa")
    hyp2 = words(" the", " cat", " sa", "t")
    token_level = LocalAgreementPolicy(n=2)
    state = token_level.new_state()
    token_level.step(state, hyp1)
    assert token_level.step(state, hyp2) == words(" the", " cat", " sa")  # " sa" is half of " sat"

    policy = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    state = policy.new_state()
    policy.step(state, hyp1)
    assert policy.step(state, hyp2) == words(" the", " cat")
    assert state.tail == words(" sa", "t")
    assert policy.flush(state, words(" sa", "t", " on")) == words(" sa", "t", " on")
    assert state.committed == words(" the", " cat", " sa", "t", " on")
    assert state.history == []


def test_word_boundary_multi_token_word_and_last_word_waits():
    policy = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    state = policy.new_state()
    hyp = words(" un", "believ", "able", " story")
    policy.step(state, hyp)
    # Full agreement, but the last word could still grow (" story" -> " storys").
    assert policy.step(state, hyp) == words(" un", "believ", "able")
    assert policy.step(state, words(" story", "s")) == []  # " story" vs " storys"
    assert policy.step(state, words(" story", "s", " the")) == []  # " storys" may still grow
    assert policy.step(state, words(" story", "s", " the", " cat")) == words(" story", "s")
    assert state.committed == words(" un", "believ", "able", " story", "s")


def test_word_boundary_must_hold_in_every_agreeing_hypothesis():
    # " a" agrees as a token, but the older hypothesis reads it as the word " ab".
    policy = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    state = policy.new_state()
    policy.step(state, words(" a", "b"))
    assert policy.step(state, words(" a", " c")) == []
    # Now both end " a" before a word start; " c" is the last word of the older one.
    assert policy.step(state, words(" a", " c", " dog")) == words(" a")


# ---------------------------------------------------------------------------- flush and reset


def test_flush_then_reset_starts_a_fresh_utterance():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    policy.step(state, [1, 2, 3])
    assert policy.step(state, [1, 2, 4]) == [1, 2]
    assert policy.flush(state, [4, 5]) == [4, 5]
    assert state.committed == [1, 2, 4, 5]
    assert state.history == []
    policy.reset(state)
    assert state == PolicyState(committed=[], history=[])
    # No history leaks across the reset: the first step of the new utterance commits nothing.
    assert policy.step(state, [4, 5]) == []


def test_reset_discards_uncommitted_history():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    policy.step(state, [7, 8])
    policy.reset(state)
    assert policy.step(state, [7, 8]) == []
    assert policy.step(state, [7, 8]) == [7, 8]


def test_policy_does_not_alias_caller_lists():
    policy = LocalAgreementPolicy(n=2)
    state = policy.new_state()
    hyp = [1, 2, 3]
    policy.step(state, hyp)
    out = policy.step(state, hyp)
    hyp.append(99)
    out.append(98)
    assert state.committed == [1, 2, 3]
    assert state.history == [[], []]


# ---------------------------------------------------------------------------- properties


def _reference_commit(window: list[list[int]], n: int, committed_len: int, word_start) -> int:
    """LocalAgreement-n in ABSOLUTE coordinates: the committed length after a step."""
    if len(window) < n:
        return committed_len
    length = longest_common_prefix(window)
    if word_start is not None:
        while length > committed_len and not all(length < len(h) and word_start(h[length]) for h in window):
            length -= 1
    return max(length, committed_len)


def _random_continuation(rng: random.Random, tail: list[int]) -> list[int]:
    """Often extend (part of) the previous tail, so agreement happens; sometimes diverge."""
    keep = tail[: rng.randint(0, len(tail))] if rng.random() < 0.7 else []
    return keep + [rng.randint(1, 4) for _ in range(rng.randint(0, 4))]


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_match_absolute_reference_and_are_monotonic(seed: int):
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 4)
        word_start = rng.choice([None, lambda t: t % 2 == 1])
        bound = rng.choice([None, None, rng.randint(1, 4)])
        policy = LocalAgreementPolicy(n=n, is_word_start=word_start, max_unstable_tokens=bound)
        state = policy.new_state()
        absolute: list[list[int]] = []  # the last n hypotheses as decoded, forced prefix included
        seen: list[list[int]] = []  # every hypothesis of the utterance, as decoded
        returned: list[int] = []  # everything step()/flush() returned this utterance
        for _ in range(rng.randint(1, 25)):
            action = rng.random()
            old = list(state.committed)
            if action < 0.06:
                policy.reset(state)
                absolute, seen, returned = [], [], []
                assert state.committed == [] and state.history == []
                continue
            hyp = _random_continuation(rng, state.tail)
            if action < 0.12:
                new = policy.flush(state, hyp)
                absolute, seen = [], []
                assert new == hyp and state.history == []
            else:
                new = policy.step(state, hyp)
                absolute = (absolute + [old + hyp])[-n:]
                seen.append(old + hyp)
                assert new == hyp[: len(new)]  # a prefix of the hypothesis just given
                if bound is None:
                    expected = _reference_commit(absolute, n, len(old), word_start)
                    assert state.committed == absolute[-1][:expected]
                elif word_start is None:
                    assert len(state.tail) <= bound
                # Every kept hypothesis, re-expressed, is one the decoder produced (one of
                # the last n unless a forced commit dropped some in between).
                assert state.history and state.history[-1] == hyp[len(new) :]
                assert len(state.history) <= n
                for rel in state.history:
                    assert state.committed + rel in (absolute if bound is None else seen)
            returned += new
            assert state.committed[: len(old)] == old  # never shrinks, never changes
            assert returned == state.committed


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize("word_level", [False, True])
def test_streaming_equals_offline(n: int, stride: int, word_level: bool):
    """Growing-audio oracle: the stable part of hypothesis t is T[:t], plus an unstable tail."""
    rng = random.Random(100 * n + 10 * stride + word_level)
    target = words(" the") + [rng.randint(1, len(VOCAB)) for _ in range(40)]
    policy = LocalAgreementPolicy(n=n, is_word_start=is_word_start if word_level else None)
    state = policy.new_state()
    noise = NOISE_BASE
    frames = len(target) + n * stride  # audio runs out, then a few more steps on the full audio
    for frame in range(stride, frames + 1, stride):
        stable = max(min(frame, len(target)), len(state.committed))
        tail = []
        for _ in range(rng.randint(0, 3)):  # never the same noise twice
            tail.append(noise)
            noise += 1
        full = target[:stable] + tail
        assert full[: len(state.committed)] == state.committed  # the forced prefix
        policy.step(state, full[len(state.committed) :])
        assert target[: len(state.committed)] == state.committed
    if word_level:
        last_word = max(i for i, t in enumerate(target) if is_word_start(t))
        assert len(state.committed) >= last_word  # streaming did the work, not the flush
    else:
        assert state.committed == target
    policy.flush(state, target[len(state.committed) :])
    assert state.committed == target


# ---------------------------------------------------------------------------- stalls


def test_punctuation_after_the_agreed_word_does_not_block_the_commit():
    """The measured stall: " We" agrees, but "," flips to "." -- the cut before the punctuation is a boundary."""
    strict = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    lenient = LocalAgreementPolicy(n=2, is_word_start=is_word_start, is_punctuation=is_punctuation)
    first, second = words(" We", ",", " go"), words(" We", ".", " the")
    for policy, expected in ((strict, []), (lenient, words(" We"))):
        state = policy.new_state()
        policy.step(state, first)
        assert policy.step(state, second) == expected
    # A half word before punctuation is still never committed: "believ" | "able" stays whole.
    state = lenient.new_state()
    lenient.step(state, words(" un", "believ", "able", ","))
    assert lenient.step(state, words(" un", "believ", "able", ".")) == words(" un", "believ", "able")


def test_max_hold_steps_bounds_how_long_a_flipping_prefix_holds_everything():
    policy = LocalAgreementPolicy(n=2, is_word_start=is_word_start, max_hold_steps=3)
    state = policy.new_state()
    # Every hypothesis starts with a different first word: agreement never comes.
    assert policy.step(state, words(" the", " cat")) == []
    assert policy.step(state, words(" a", " cat", " sa")) == []
    assert state.stalled == 2
    # Third step without a commit: the newest is committed up to its last word, which stays open.
    assert policy.step(state, words(" dog", " on", " the", " mat")) == words(" dog", " on", " the")
    assert state.stalled == 0 and state.tail == words(" mat")
    unbounded = LocalAgreementPolicy(n=2, is_word_start=is_word_start)
    ustate = unbounded.new_state()
    for hyp in (words(" the", " cat"), words(" a", " cat", " sa"), words(" dog", " on", " the", " mat")):
        assert unbounded.step(ustate, hyp) == []


# ---------------------------------------------------------------------------- AlignAtt


def test_alignatt_commits_the_tokens_before_the_first_one_attending_to_the_audio_end():
    policy = AlignAttPolicy(frame_threshold=10)
    assert isinstance(policy, SimultaneousPolicy)
    state = policy.new_state()
    # 100 frames of audio: tokens peaking at >= 90 are about audio not fully heard.
    assert policy.border_frame(100) == 90
    assert policy.step(state, [1, 2, 3, 4], peaks=[10, 40, 91, 60], audio_frames=100) == [1, 2]
    assert state.committed == [1, 2] and state.tail == [3, 4]
    # Next step: more audio; decoding continues after the committed prefix.
    assert policy.step(state, [3, 4, 5], peaks=[91, 95, 140], audio_frames=150) == [3, 4]
    # A peak in the padding (beyond the audio) is a border too.
    assert policy.step(state, [5], peaks=[170], audio_frames=150) == []
    assert state.stalled == 1
    assert policy.flush(state, [5, 6]) == [5, 6]
    assert state.committed == [1, 2, 3, 4, 5, 6] and state.stalled == 0


def test_alignatt_commits_whole_words_only():
    policy = AlignAttPolicy(frame_threshold=5, is_word_start=is_word_start, is_punctuation=is_punctuation)
    state = policy.new_state()
    hyp = words(" the", " un", "believ", "able", " story")
    # The border falls inside "unbelievable": only " the" can go.
    assert policy.step(state, hyp, peaks=[3, 8, 20, 30, 31], audio_frames=25) == words(" the")
    # The border token starts a word: everything before it is whole words.
    state = policy.new_state()
    assert policy.step(state, hyp, peaks=[3, 8, 9, 10, 30], audio_frames=25) == words(" the", " un", "believ", "able")
    # No border: the last word is held (it may still grow).
    state = policy.new_state()
    assert policy.step(state, words(" the", " cat"), peaks=[1, 2], audio_frames=100) == words(" the")
    # ... unless punctuation follows it (the punctuation itself waits).
    state = policy.new_state()
    assert policy.step(state, words(" the", " cat", ","), peaks=[1, 2, 3], audio_frames=100) == words(" the", " cat")


def test_alignatt_threshold_trades_latency_for_stability():
    hyp, peaks = list(range(1, 11)), [10 * i for i in range(1, 11)]  # token i attends to frame 10 i
    committed = [len(AlignAttPolicy(frame_threshold=f).step(AlignAttPolicy().new_state(), hyp, peaks, 100))
                 for f in (0, 10, 30, 60)]
    assert committed == [9, 8, 6, 3]  # a larger threshold commits less of the same hypothesis


def test_alignatt_needs_a_peak_per_token():
    policy = AlignAttPolicy()
    with pytest.raises(ValueError, match="attention peak per token"):
        policy.step(policy.new_state(), [1, 2, 3], peaks=[], audio_frames=50)
    with pytest.raises(ValueError, match="frame_threshold"):
        AlignAttPolicy(frame_threshold=-1)


def test_alignatt_streaming_equals_offline_on_a_growing_audio_oracle():
    """Token i is about frames up to 10 i; its attention peaks there once heard. Whatever the
    step, AlignAtt commits a prefix of the final text and never a token whose audio is unheard."""
    rng = random.Random(7)
    target = [rng.randint(1, len(VOCAB)) for _ in range(30)]
    for stride in (3, 10, 25):
        policy = AlignAttPolicy(frame_threshold=10)
        state = policy.new_state()
        for frames in range(stride, 10 * len(target) + 1, stride):
            start = len(state.committed)
            tail = target[start:]
            peaks = [min(10 * (start + i + 1), frames + 5) for i in range(len(tail))]
            policy.step(state, tail, peaks, frames)
            assert state.committed == target[: len(state.committed)]
            assert all(10 * (i + 1) < frames - 10 + 1 for i in range(len(state.committed)))
        policy.flush(state, target[len(state.committed):])
        assert state.committed == target


def test_alignatt_with_agreement_commits_only_what_the_attention_allows_and_two_hypotheses_share():
    policy = AlignAttPolicy(frame_threshold=10, agreement=2)
    state = policy.new_state()
    assert policy.step(state, [1, 2, 3, 4], peaks=[10, 20, 30, 40], audio_frames=100) == []  # one hypothesis
    # Agreement on [1, 2, 3], attention allows [1, 2, 3, 4, 5] (border at the 6th token): commit [1, 2, 3].
    assert policy.step(state, [1, 2, 3, 5, 6, 7], peaks=[10, 20, 30, 40, 50, 95], audio_frames=100) == [1, 2, 3]
    # Agreement on [5, 6], attention stops at the first token peaking within 10 frames of 110.
    assert policy.step(state, [5, 6, 7], peaks=[60, 101, 102], audio_frames=110) == [5]
    with pytest.raises(ValueError, match="agreement"):
        AlignAttPolicy(agreement=0)


def test_attention_peaks_look_past_attention_sinks():
    """Alignment heads give every token a large weight on a few early frames (sinks); the
    normalised peaks follow each token's own frame, the raw argmax does not."""
    import numpy as np

    from relais.runtime.whisper import attention_peaks

    tokens, frames = 8, 120
    rows = np.full((tokens, frames), 0.001)
    rows[:, 3] = 0.5  # the sink: every token's largest weight
    for i in range(tokens):
        rows[i, 10 + 12 * i] += 0.1  # token i's own frame
    rows /= rows.sum(axis=1, keepdims=True)
    assert set(rows.argmax(axis=1)) == {3}
    peaks = attention_peaks(rows)
    assert all(abs(p - (10 + 12 * i)) <= 2 for i, p in enumerate(peaks))
    # Too few tokens for per-frame statistics: every peak is put past the end (nothing commits).
    assert attention_peaks(rows[:3]) == [frames] * 3


def test_pieces_that_start_with_punctuation_attach_to_the_previous_word():
    from relais.text import join_pieces

    assert join_pieces(["He added", "that we", ", to answer", "their capacity", "."]) == \
        "He added that we, to answer their capacity."
    assert join_pieces(["", " a ", "(b)", "'c'"]) == "a (b) 'c'"


def test_only_alignatt_without_agreement_lets_the_decoder_stop_at_the_border():
    assert AlignAttPolicy(frame_threshold=40).stop_frame(300) == 260
    assert AlignAttPolicy(frame_threshold=40).stop_frame(20) == 0  # shorter than the threshold: stop anywhere
    assert AlignAttPolicy(frame_threshold=40, agreement=2).stop_frame(300) is None  # compares whole hypotheses
    assert LocalAgreementPolicy(n=2).stop_frame(300) is None


def test_alignatt_is_not_ready_while_the_border_is_at_frame_zero():
    """No hypothesis over audio no longer than the threshold can commit (every peak is >= 0), so the
    recognizer spares its decode; one frame more and the first frame's tokens may commit."""
    policy = AlignAttPolicy(frame_threshold=40)
    assert not policy.ready(25) and not policy.ready(40)
    assert policy.ready(41)
    state = policy.new_state()
    assert policy.step(state, [1, 2], peaks=[0, 0], audio_frames=40) == []  # what ready(40) predicts
    assert policy.step(state, [1, 2], peaks=[0, 5], audio_frames=41) == [1]
    assert LocalAgreementPolicy(n=2).ready(1)  # agreement may need any hypothesis


def test_an_utterances_first_commit_can_have_its_own_threshold_and_word_cap():
    """first_frame_threshold holds until something is committed, then frame_threshold takes over;
    first_commit_words caps that first commit; both start over with the next utterance."""
    hyp = words(" We", " go", " on", " the", " mat", ".")
    peaks = [30, 45, 60, 70, 80, 81]
    policy = AlignAttPolicy(frame_threshold=40, first_frame_threshold=20, first_commit_words=1,
                            is_word_start=is_word_start, is_punctuation=is_punctuation)
    state = policy.new_state()
    assert policy.threshold(state) == 20 and policy.border_frame(50, state) == 30 and policy.border_frame(50) == 10
    assert policy.ready(25, state) and not AlignAttPolicy(frame_threshold=40).ready(25)
    assert policy.stop_frame(50, state) == 30
    # At 50 frames the border is frame 30, where " We" peaks: nothing can go yet ...
    assert policy.step(state, hyp, peaks, audio_frames=50) == []
    # ... at 60 frames the border is 40: " We" (30) may go, " go" (45) not; the cap changes nothing yet.
    assert policy.step(state, hyp, peaks, audio_frames=60) == words(" We")
    assert policy.threshold(state) == 40  # committed: the usual threshold from here on
    assert policy.step(state, hyp[1:], peaks[1:], audio_frames=101) == words(" go", " on")  # border 61
    policy.flush(state, hyp[3:])
    policy.reset(state)
    assert policy.threshold(state) == 20  # a new utterance
    # With much more audio the cap holds the first commit to one word; the usual rule takes the rest.
    assert policy.step(state, hyp, peaks, audio_frames=200) == words(" We")
    assert policy.step(state, hyp[1:], peaks[1:], audio_frames=200) == words(" go", " on", " the", " mat")
    # Without a cap the first commit takes all the attention allows (the last word waits for its ".").
    uncapped = AlignAttPolicy(frame_threshold=40, first_frame_threshold=20, is_word_start=is_word_start,
                              is_punctuation=is_punctuation)
    assert uncapped.step(uncapped.new_state(), hyp, peaks, audio_frames=200) == hyp[:5]
    for bad in ({"first_frame_threshold": -1}, {"first_commit_words": -2}, {"first_commit_words": True}):
        with pytest.raises(ValueError, match="first_"):
            AlignAttPolicy(frame_threshold=40, **bad)


def test_last_peak_is_the_last_row_of_attention_peaks():
    import numpy as np

    from relais.runtime.whisper import MIN_ALIGNMENT_ROWS, attention_peaks, last_peak

    rows = np.random.default_rng(3).random((12, 80))
    for n in range(1, 13):
        expected = attention_peaks(rows[:n])[-1]
        assert last_peak(rows[:n]) == expected, n
    assert last_peak(rows[: MIN_ALIGNMENT_ROWS - 1]) == 80  # too few rows: past the last frame
