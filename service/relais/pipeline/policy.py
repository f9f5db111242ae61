"""Simultaneous policies: decide which hypothesis tokens are committed, and when.

A policy is pure Python over token ids (no model, no numpy), with a shared,
immutable policy object and an explicit per-utterance ``PolicyState``.

Contract with the caller (the decoder driver):

- The caller decodes every hypothesis with ``state.committed`` FORCED as the
  decoder prefix and passes only the continuation, i.e. the tokens after the
  committed prefix. ``hypothesis`` is therefore relative to ``state.committed``
  at call time, and so is every entry of ``state.history``.
- ``step()`` returns the NEWLY committed tokens; they are appended to
  ``state.committed``, which only ever grows until ``reset()``.
- ``flush()`` ends the utterance: the whole hypothesis is committed.
- ``reset()`` starts a new utterance: ``committed`` and ``history`` are cleared.

LocalAgreement-n (Polák et al., 2022; as in ufal/whisper_streaming):

- ``step()`` appends the hypothesis to ``history`` (keeping the last ``n``).
  Once ``n`` hypotheses are held, their longest common prefix is committed.
- After committing ``k`` tokens, every hypothesis kept in ``history`` is
  re-expressed relative to the new committed prefix: its first ``k`` tokens
  (equal to the newly committed ones) are dropped. A kept hypothesis that does
  not start with them (possible only after a forced commit, see below) is
  removed from ``history``; ``history`` thus holds the last ``n`` hypotheses
  that extend the committed prefix.
- Word boundaries: with ``is_word_start`` (token id -> True when the token begins
  a new word, e.g. its text starts with a space) a commit of length ``L`` is
  allowed only where position ``L`` starts a word in EVERY hypothesis of the
  agreement window (``h[L]`` exists and ``is_word_start(h[L])``); otherwise ``L``
  is moved back to the nearest such position (or 0). So a half word is never
  committed, and the last word of a hypothesis waits for a later, longer
  hypothesis or for ``flush()``. Checking every hypothesis rather than only the
  newest matters at the agreement edge: for ``[" a", "b"]`` then ``[" a", " c"]``
  the token ``" a"`` agrees, but the older hypothesis reads it as the word
  " ab", so nothing is committed. Below the agreement edge all window
  hypotheses hold the same token, so only the edge differs.
  Without ``is_word_start`` commits are at token level.
  Punctuation does not block the trim: with ``is_punctuation`` given, a commit may
  also end right before a punctuation token (" word" | ","). Otherwise a first word
  whose following comma flips to a full stop between hypotheses holds back
  everything after it until the utterance ends (measured: 9.9 s of an 11.6 s
  utterance).
- ``max_unstable_tokens`` (optional latency bound, off by default): if, after the
  agreement commit, the newest hypothesis still has more than this many
  uncommitted tokens, its prefix is force-committed WITHOUT agreement so that at
  most ``max_unstable_tokens`` tokens stay uncommitted (moved back to a word
  start when ``is_word_start`` is given). This trades stability for bounded lag;
  with it, streaming output may differ from offline output.
- ``max_hold_steps`` (optional, off by default): after this many consecutive steps
  without a commit, the newest hypothesis is force-committed up to its last word
  boundary (its last word stays open), so an unstable prefix cannot hold the whole
  utterance back.

AlignAtt (Papi et al., Interspeech 2023), over the decoder's cross-attention:

- The caller decodes after the committed prefix as above and passes, per
  hypothesis token, the encoder frame its alignment heads attend to most
  (``peaks``, normalised: relais.runtime.whisper.attention_peaks) and how many
  encoder frames hold received audio (``audio_frames``). The first token whose peak
  lies within ``frame_threshold`` frames of the end of the audio (or beyond it, in
  the padding) is the border: it and everything after it are about audio not heard
  (completely) yet. Tokens before the border are committed, moved back to a word
  boundary as above (so the last word is held unless the border token starts one).
- With ``agreement`` n > 1 (a hybrid), the commit is also bounded by what the last n
  hypotheses agree on: AlignAtt says how far the audio supports the text,
  LocalAgreement whether the model still changes its mind about it.

Each step costs O(n * len(hypothesis)) and is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable


@dataclass
class PolicyState:
    """Per-utterance policy state."""

    committed: list[int] = field(default_factory=list)  # tokens committed in the current utterance
    history: list[list[int]] = field(default_factory=list)  # recent hypotheses, relative to ``committed``
    stalled: int = 0  # consecutive steps without a commit

    @property
    def tail(self) -> list[int]:
        """The uncommitted continuation of the newest hypothesis (for partial text)."""
        return list(self.history[-1]) if self.history else []


@runtime_checkable
class SimultaneousPolicy(Protocol):
    """What the decoder driver needs from a simultaneous policy."""

    def new_state(self) -> PolicyState: ...

    def step(self, state: PolicyState, hypothesis: list[int], peaks: Sequence[int] = (),
             audio_frames: int = 0) -> list[int]: ...

    def flush(self, state: PolicyState, hypothesis: list[int]) -> list[int]: ...

    def reset(self, state: PolicyState) -> None: ...

    def stop_frame(self, audio_frames: int, state: PolicyState | None = None) -> int | None:
        """Encoder frame at which a hypothesis may stop being decoded (None: decode it whole)."""
        ...

    def ready(self, audio_frames: int, state: PolicyState | None = None) -> bool:
        """Whether a hypothesis over ``audio_frames`` could commit anything (False: spare its decode)."""
        ...


def longest_common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs`` (0 for no sequences)."""
    if not seqs:
        return 0
    length = min(len(s) for s in seqs)
    first = seqs[0]
    for other in seqs[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return length


@dataclass(frozen=True)
class LocalAgreementPolicy:
    """LocalAgreement-n: commit what the last ``n`` hypotheses agree on (see module docstring)."""

    n: int = 2
    is_word_start: Callable[[int], bool] | None = None
    max_unstable_tokens: int | None = None
    is_punctuation: Callable[[int], bool] | None = None
    max_hold_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"LocalAgreement n must be an integer >= 1, got {self.n!r}")
        _check_optional_positive("max_unstable_tokens", self.max_unstable_tokens)
        _check_optional_positive("max_hold_steps", self.max_hold_steps)

    def new_state(self) -> PolicyState:
        return PolicyState()

    def step(self, state: PolicyState, hypothesis: list[int], peaks: Sequence[int] = (),
             audio_frames: int = 0) -> list[int]:
        """Add a hypothesis (relative to ``state.committed``); return the newly committed tokens."""
        newest = list(hypothesis)
        state.history.append(newest)
        del state.history[: -self.n]

        length = 0
        if len(state.history) == self.n:
            length = _boundary_trim(self, longest_common_prefix(state.history), state.history)
        if self.max_unstable_tokens is not None and len(newest) - length > self.max_unstable_tokens:
            length = max(length, _boundary_trim(self, len(newest) - self.max_unstable_tokens, [newest]))
        if length == 0 and self.max_hold_steps is not None and state.stalled + 1 >= self.max_hold_steps:
            length = _boundary_trim(self, len(newest) - 1, [newest])
        return _commit(state, newest[:length])

    def flush(self, state: PolicyState, hypothesis: list[int]) -> list[int]:
        """End of utterance: commit all of ``hypothesis`` (relative to ``state.committed``)."""
        return _flush(state, hypothesis)

    def reset(self, state: PolicyState) -> None:
        """Start a new utterance."""
        _reset(state)

    def stop_frame(self, audio_frames: int, state: PolicyState | None = None) -> int | None:
        return None  # agreement compares whole hypotheses

    def ready(self, audio_frames: int, state: PolicyState | None = None) -> bool:
        return True  # any hypothesis may agree with the next one


@dataclass(frozen=True)
class AlignAttPolicy:
    """AlignAtt: commit the tokens before the first one attending to the last ``frame_threshold`` frames.

    An utterance's first commit may follow other rules (profile keys for the earliest speech; every
    mode leaves them off): ``first_frame_threshold`` replaces ``frame_threshold`` until something is
    committed, and ``first_commit_words`` caps that commit at so many words, so that a word guessed
    from little audio does not drag a longer guess with it (docs/benchmarks.md, "The frontier with
    beam-searched hypotheses, and what the first words cost")."""

    frame_threshold: int = 10  # encoder frames (20 ms each)
    is_word_start: Callable[[int], bool] | None = None
    is_punctuation: Callable[[int], bool] | None = None
    agreement: int = 1  # > 1: also bounded by LocalAgreement-n over the last n hypotheses
    first_frame_threshold: int | None = None  # until an utterance's first commit (None: frame_threshold)
    first_commit_words: int = 0  # at most this many words in an utterance's first commit (0: no cap)

    def __post_init__(self) -> None:
        checked = {"frame_threshold": self.frame_threshold, "first_commit_words": self.first_commit_words}
        if self.first_frame_threshold is not None:  # None: frame_threshold throughout
            checked["first_frame_threshold"] = self.first_frame_threshold
        for name, value in checked.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"AlignAtt {name} must be an integer >= 0, got {value!r}")
        if isinstance(self.agreement, bool) or not isinstance(self.agreement, int) or self.agreement < 1:
            raise ValueError(f"AlignAtt agreement must be an integer >= 1, got {self.agreement!r}")

    def new_state(self) -> PolicyState:
        return PolicyState()

    def threshold(self, state: PolicyState | None = None) -> int:
        """The threshold in force: ``first_frame_threshold`` while ``state`` has committed nothing."""
        if state is not None and not state.committed and self.first_frame_threshold is not None:
            return self.first_frame_threshold
        return self.frame_threshold

    def border_frame(self, audio_frames: int, state: PolicyState | None = None) -> int:
        return max(0, audio_frames - self.threshold(state))

    def stop_frame(self, audio_frames: int, state: PolicyState | None = None) -> int | None:
        """Nothing from the first token at the border on is committed, so with agreement 1 its
        decode may stop there (the hybrid compares more of each hypothesis: decode it whole)."""
        return self.border_frame(audio_frames, state) if self.agreement == 1 else None

    def ready(self, audio_frames: int, state: PolicyState | None = None) -> bool:
        """With the border at frame 0 every token attends at or after it: nothing can be committed."""
        return self.border_frame(audio_frames, state) > 0

    def border(self, peaks: Sequence[int], audio_frames: int, length: int, state: PolicyState | None = None) -> int:
        """Index of the first token attending within the threshold of the audio end (``length`` if none)."""
        stop = self.border_frame(audio_frames, state)
        return next((i for i, p in enumerate(peaks[:length]) if p >= stop), length)

    def step(self, state: PolicyState, hypothesis: list[int], peaks: Sequence[int] = (),
             audio_frames: int = 0) -> list[int]:
        newest = list(hypothesis)
        if len(peaks) < len(newest):
            raise ValueError(f"AlignAtt needs an attention peak per token: {len(peaks)} peaks for "
                             f"{len(newest)} tokens (is the Whisper export older than the alignment output?)")
        state.history.append(newest)
        del state.history[: -self.agreement]
        length = 0
        if len(state.history) == self.agreement:
            length = min(self.border(peaks, audio_frames, len(newest), state), longest_common_prefix(state.history))
            length = _boundary_trim(self, length, state.history)
            if not state.committed and self.first_commit_words and self.is_word_start is not None:
                # the first token starts word 1; the cap ends before the start of word cap + 1
                starts = [i for i in range(1, length) if self.is_word_start(newest[i])]
                if len(starts) >= self.first_commit_words:
                    length = starts[self.first_commit_words - 1]
        return _commit(state, newest[:length])

    def flush(self, state: PolicyState, hypothesis: list[int]) -> list[int]:
        return _flush(state, hypothesis)

    def reset(self, state: PolicyState) -> None:
        _reset(state)


class _Boundaries(Protocol):
    is_word_start: Callable[[int], bool] | None
    is_punctuation: Callable[[int], bool] | None


def _boundary_trim(policy: _Boundaries, length: int, seqs: Sequence[Sequence[int]]) -> int:
    """Largest ``L <= length`` where every seq has a word start (or punctuation) at ``L`` (0 if none)."""
    if policy.is_word_start is None:
        return max(length, 0)
    is_start, is_punct = policy.is_word_start, policy.is_punctuation

    def boundary(token: int) -> bool:
        return is_start(token) or (is_punct is not None and is_punct(token))

    while length > 0 and not all(length < len(s) and boundary(s[length]) for s in seqs):
        length -= 1
    return max(length, 0)


def _commit(state: PolicyState, new: list[int]) -> list[int]:
    """Commit ``new`` (a prefix of the newest hypothesis); nothing to commit counts a stalled step."""
    if not new:
        state.stalled += 1
        return []
    k = len(new)
    state.committed.extend(new)
    state.history = [h[k:] for h in state.history if h[:k] == new]
    state.stalled = 0
    return list(new)


def _flush(state: PolicyState, hypothesis: list[int]) -> list[int]:
    new = list(hypothesis)
    state.committed.extend(new)
    state.history.clear()
    state.stalled = 0
    return new


def _reset(state: PolicyState) -> None:
    state.committed.clear()
    state.history.clear()
    state.stalled = 0


def _check_optional_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
