"""SimulEval-style latency scores on hand-computed examples."""

import pytest

from relais.eval.latency import TimedSpeech, TimedText, average_lagging, speech_timeline, word_delays


def test_word_delays_expand_pieces():
    assert word_delays([TimedText("hello there", 1.0), TimedText("", 2.0), TimedText("you", 3.5)]) == [1.0, 1.0, 3.5]


def test_average_lagging_ideal_wait_k_like_policy():
    # 4 s source, 4 words, each emitted 1 s after its "ideal" time: AL = 1.
    assert average_lagging([1.0, 2.0, 3.0, 4.0], 4.0) == pytest.approx(1.0)


def test_average_lagging_stops_at_first_word_after_the_source_end():
    # tau = 2: the second word already waits for the whole source.
    delays = [2.0, 5.0, 5.0, 5.0]
    assert average_lagging(delays, 4.0) == pytest.approx(((2.0 - 0) + (5.0 - 1.0)) / 2)


def test_laal_uses_the_longer_of_hypothesis_and_reference():
    delays = [1.0, 2.0]
    al = average_lagging(delays, 4.0)
    laal = average_lagging(delays, 4.0, reference_words=4)
    assert al == pytest.approx(((1 - 0) + (2 - 2)) / 2)
    assert laal == pytest.approx(((1 - 0) + (2 - 1)) / 2)
    assert laal > al  # a too-short hypothesis no longer looks faster


def test_speech_timeline_places_chunks_back_to_back():
    tl = speech_timeline([TimedSpeech(2.0, 1.5), TimedSpeech(3.0, 1.0), TimedSpeech(6.0, 0.5)], source_s=5.0)
    # plays 2.0-3.5, 3.5-4.5, waits until 6.0, plays 6.0-6.5
    assert tl.start_offset_s == 2.0
    assert tl.end_offset_s == pytest.approx(1.5)
    assert (tl.discontinuities, tl.discontinuity_s) == (1, pytest.approx(1.5))
