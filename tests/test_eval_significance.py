"""The paired bootstrap of BLEU streamed - offline (relais.eval.scores) on hand-made systems whose answer is known."""

import pytest

from relais.eval.scores import bleu, normalise, paired_bootstrap_bleu

WORDS = ("river", "station", "window", "garden", "letter", "market", "engine", "harbour", "teacher", "forest",
         "bridge", "candle", "winter", "island", "doctor", "silver", "ticket", "valley", "mirror", "planet")
REFS = [f"the {a} near the {b} was closed on monday because of the {c}"
        for a, b, c in zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7])]
# partly right, by a different amount per utterance (so resamples differ)
WORSE = [" ".join(r.split()[:2 + i % 9]) + " something else entirely" for i, r in enumerate(REFS)]


def test_identical_systems_differ_by_exactly_zero():
    d = paired_bootstrap_bleu(WORSE, WORSE, REFS)
    assert d.difference == d.mean_difference == d.ci_low == d.ci_high == 0.0
    assert not d.excludes_zero
    assert d.bleu_a == pytest.approx(bleu(WORSE, REFS, normalise))  # the same scorer as the main table


def test_a_clearly_better_system_excludes_zero_in_either_order():
    d = paired_bootstrap_bleu(REFS, WORSE, REFS)
    assert d.bleu_a == pytest.approx(100.0) and d.bleu_b == pytest.approx(bleu(WORSE, REFS, normalise))
    assert d.difference == pytest.approx(100.0 - d.bleu_b)
    assert 0 < d.ci_low <= d.mean_difference <= d.ci_high and d.excludes_zero
    assert d.mean_difference == pytest.approx(d.difference, abs=5.0)
    r = paired_bootstrap_bleu(WORSE, REFS, REFS)
    assert r.ci_high < 0 and r.excludes_zero
    assert (r.ci_low, r.ci_high) == pytest.approx((-d.ci_high, -d.ci_low))  # same resamples: mirror image


def test_one_better_utterance_of_twenty_is_not_significant():
    # identical except utterance 0, where A is right and B is not: about a third of the resamples miss it
    # and differ by 0, so the interval reaches 0
    a, b = list(WORSE), list(WORSE)
    a[0] = REFS[0]
    d = paired_bootstrap_bleu(a, b, REFS)
    assert d.difference > 0 and d.ci_low == 0.0 and d.ci_high > 0 and not d.excludes_zero


def test_fixed_seed_is_reproducible_and_inputs_are_checked():
    a = paired_bootstrap_bleu(REFS[:10] + WORSE[10:], WORSE, REFS, n_resamples=200)
    b = paired_bootstrap_bleu(REFS[:10] + WORSE[10:], WORSE, REFS, n_resamples=200)
    assert a == b and a.n_resamples == 200 and a.seed == 12345
    assert paired_bootstrap_bleu(REFS[:10] + WORSE[10:], WORSE, REFS, n_resamples=200, seed=1) != a
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap_bleu(REFS, WORSE[:3], REFS)
