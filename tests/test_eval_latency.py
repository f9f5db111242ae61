"""relais eval's latency metrics on small hand-computed examples (AL/LAAL/AP/DAL/ATD, speech placement)."""

import pytest

from relais.eval.latency import TimedSpeech as S
from relais.eval.latency import (average_lagging, average_proportion, average_token_delay_speech,
                                 average_token_delay_text, differentiable_average_lagging, linear_slope, percentile,
                                 simuleval_average_lagging, speech_timeline)


def test_al_vs_laal_when_the_output_is_longer_than_the_reference():
    # 4 s source, 8 output words every 0.5 s (the last at the source end), reference of 4 words.
    delays = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    # SimulEval AL uses the reference length: ideal rate 1 s/word, so the 8 words look early:
    # sum(d_i - (i-1)*1) = 0.5+0-0.5-1-1.5-2-2.5-3 = -10  -> -1.25
    assert simuleval_average_lagging(delays, 4.0, reference_words=4) == pytest.approx(-1.25)
    # LAAL uses max(8, 4) = 8 words: ideal rate 0.5 s/word, every word 0.5 s late -> 0.5
    assert average_lagging(delays, 4.0, reference_words=4) == pytest.approx(0.5)
    # and equals AL over the hypothesis length (Ma et al.)
    assert average_lagging(delays, 4.0) == pytest.approx(0.5)


def test_al_vs_laal_when_the_output_is_shorter_than_the_reference():
    delays = [1.0, 2.0]  # 2 words for a 4-word reference over 4 s
    assert simuleval_average_lagging(delays, 4.0, reference_words=4) == pytest.approx(((1 - 0) + (2 - 1)) / 2)
    assert average_lagging(delays, 4.0, reference_words=4) == pytest.approx(1.0)
    assert average_lagging(delays, 4.0) == pytest.approx(0.5)  # rate 2 s/word: (1-0 + 2-2)/2


def test_simuleval_al_first_word_after_the_source_scores_its_delay():
    assert simuleval_average_lagging([5.0, 5.0], 4.0) == 5.0


def test_average_proportion():
    assert average_proportion([1.0, 2.0, 3.0], 4.0) == pytest.approx(6.0 / (4.0 * 3))
    assert average_proportion([4.0, 4.0], 4.0) == pytest.approx(1.0)  # waited for everything


def test_dal_pushes_each_word_one_ideal_step_after_the_previous():
    # source 3 s, 3 words: step 1 s. d' = 2, max(2, 3) = 3, max(3, 4) = 4 -> ((2-0)+(3-1)+(4-2))/3 = 2
    assert differentiable_average_lagging([2.0, 2.0, 3.0], 3.0) == pytest.approx(2.0)
    # AL on the same delays lets words emitted together catch up: ((2-0)+(2-1)+(3-2))/3
    assert average_lagging([2.0, 2.0, 3.0], 3.0) == pytest.approx(4.0 / 3)


def test_atd_text_output():
    # 1 s source; words at 0.6, 0.6 and 1.0 s. Source chunks: [0, 0.6] -> tokens ending 0.3, 0.6;
    # [0.6, 1.0] -> tokens ending 0.9, 1.0. Words have no duration: output token ends 0.6, 0.6, 1.0;
    # aligned with source tokens 1, 2, 3 -> delays 0.3, 0.0, 0.1.
    assert average_token_delay_text([0.6, 0.6, 1.0], 1.0) == pytest.approx(0.4 / 3)


def test_atd_speech_output_plays_tokens_back_to_back():
    # 1.2 s source, one 0.6 s chunk emitted at 0.6 s: two 0.3 s output tokens end at 0.9 and 1.2,
    # aligned with the source tokens ending at 0.3 and 0.6 -> 0.6 each.
    assert average_token_delay_speech([S(0.6, 0.6)], 1.2) == pytest.approx(0.6)
    # a second chunk emitted while the first still plays starts when it ends (1.2 s), not at 0.9 s:
    # tokens end 0.9, 1.2, 1.5; source chunk 2 = [0.6, 0.9] (one token ending 0.9); token 3 aligns with it.
    assert average_token_delay_speech([S(0.6, 0.6), S(0.9, 0.3)], 1.2) == pytest.approx((0.6 + 0.6 + 0.6) / 3)


def test_speech_placement_waits_for_emission_and_counts_gaps():
    # chunk 1 at 1.0 for 2 s (plays 1-3); chunk 2 emitted at 2.0 waits for 3.0 (plays 3-4);
    # chunk 3 emitted at 4.5 -> gap of 0.5 s, plays 4.5-5.0. Source 4 s -> EndOffset 1.0.
    tl = speech_timeline([S(1.0, 2.0), S(2.0, 1.0), S(4.5, 0.5)], source_s=4.0)
    assert tl.start_offset_s == 1.0
    assert tl.end_offset_s == pytest.approx(1.0)
    assert tl.discontinuities == 1 and tl.discontinuity_s == pytest.approx(0.5)


def test_speech_placement_back_to_back_has_no_discontinuity():
    tl = speech_timeline([S(0.5, 1.0), S(0.7, 1.0), S(1.0, 1.0)], source_s=2.0)
    assert tl.end_offset_s == pytest.approx(3.5 - 2.0)
    assert tl.discontinuities == 0


def test_percentile_and_slope():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([], 50) is None
    assert linear_slope([0, 1, 2, 3], [1.0, 1.5, 2.0, 2.5]) == pytest.approx(0.5)
    assert linear_slope([0, 10, 20], [1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert linear_slope([1.0], [2.0]) is None
