"""Whisper text tokenizer over the exported tokenizer.json (the `tokenizers` library)."""

from __future__ import annotations

import unicodedata
from pathlib import Path


class WhisperTokenizer:
    def __init__(self, path: str | Path, eot: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.eot = eot  # ids >= eot are special (control, language, timestamp) tokens
        self._class_cache: dict[int, tuple[bool, bool]] = {}  # token -> (word start, punctuation)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i < self.eot], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """Text of one token (may be a partial UTF-8 sequence, then contains U+FFFD)."""
        return self.decode([token_id])

    def is_word_start(self, token_id: int) -> bool:
        """A text token that begins a new word (its text starts with a space)."""
        return self._classes(token_id)[0]

    def is_punctuation(self, token_id: int) -> bool:
        """A text token made only of punctuation ("," "." "?!" ...), with or without a leading space."""
        return self._classes(token_id)[1]

    def _classes(self, token_id: int) -> tuple[bool, bool]:
        known = self._class_cache.get(token_id)
        if known is None:
            text = self.token_text(token_id) if token_id < self.eot else ""
            core = text.strip()
            known = (text.startswith(" "),
                     bool(core) and all(unicodedata.category(c).startswith("P") for c in core))
            self._class_cache[token_id] = known
        return known
