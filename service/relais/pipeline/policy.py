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
- ``max_unstable_tokens`` (optional latency bound, off by default): if, after the
  agreement commit, the newest hypothesis still has more than this many
  uncommitted tokens, its prefix is force-committed WITHOUT agreement so that at
  most ``max_unstable_tokens`` tokens stay uncommitted (moved back to a word
  start when ``is_word_start`` is given). This trades stability for bounded lag;
  with it, streaming output may differ from offline output.

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

    @property
    def tail(self) -> list[int]:
        """The uncommitted continuation of the newest hypothesis (for partial text)."""
        return list(self.history[-1]) if self.history else []


@runtime_checkable
class SimultaneousPolicy(Protocol):
    """What the decoder driver needs from a simultaneous policy."""

    def new_state(self) -> PolicyState: ...

    def step(self, state: PolicyState, hypothesis: list[int]) -> list[int]: ...

    def flush(self, state: PolicyState, hypothesis: list[int]) -> list[int]: ...

    def reset(self, state: PolicyState) -> None: ...


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

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"LocalAgreement n must be an integer >= 1, got {self.n!r}")
        if self.max_unstable_tokens is not None and (
            isinstance(self.max_unstable_tokens, bool)
            or not isinstance(self.max_unstable_tokens, int)
            or self.max_unstable_tokens < 1
        ):
            raise ValueError(f"max_unstable_tokens must be None or an integer >= 1, got {self.max_unstable_tokens!r}")

    def new_state(self) -> PolicyState:
        return PolicyState()

    def step(self, state: PolicyState, hypothesis: list[int]) -> list[int]:
        """Add a hypothesis (relative to ``state.committed``); return the newly committed tokens."""
        newest = list(hypothesis)
        state.history.append(newest)
        del state.history[: -self.n]

        length = 0
        if len(state.history) == self.n:
            length = self._word_trim(longest_common_prefix(state.history), state.history)
        if self.max_unstable_tokens is not None and len(newest) - length > self.max_unstable_tokens:
            length = max(length, self._word_trim(len(newest) - self.max_unstable_tokens, [newest]))
        if length == 0:
            return []
        return self._commit(state, newest[:length])

    def flush(self, state: PolicyState, hypothesis: list[int]) -> list[int]:
        """End of utterance: commit all of ``hypothesis`` (relative to ``state.committed``)."""
        new = list(hypothesis)
        state.committed.extend(new)
        state.history.clear()
        return new

    def reset(self, state: PolicyState) -> None:
        """Start a new utterance."""
        state.committed.clear()
        state.history.clear()

    def _word_trim(self, length: int, seqs: Sequence[Sequence[int]]) -> int:
        """Largest ``L <= length`` where every seq has a word start at ``L`` (0 if none)."""
        if self.is_word_start is None:
            return length
        is_start = self.is_word_start
        while length > 0 and not all(length < len(s) and is_start(s[length]) for s in seqs):
            length -= 1
        return length

    @staticmethod
    def _commit(state: PolicyState, new: list[int]) -> list[int]:
        k = len(new)
        state.committed.extend(new)
        state.history = [h[k:] for h in state.history if h[:k] == new]
        return list(new)
