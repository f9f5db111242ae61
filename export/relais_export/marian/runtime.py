"""Marian / Opus-MT text translation on ONNX Runtime (greedy decoding with a KV cache).

The ONNX runner of the Marian export: the parity checks (tests/test_marian.py) run
an exported pair with it against transformers. The service has no text-MT stage yet;
when it gets one, this is the code to move into ``relais.runtime``. It needs only
onnxruntime, numpy and sentencepiece (no torch).

Reads the files written by relais_export.marian.export: marian_encoder.onnx,
marian_decoder.onnx (facts in their metadata) and the tokenizer files
source.spm, target.spm, vocab.json (+ target_vocab.json). Tokenisation follows
transformers' MarianTokenizer: source pieces -> ids via vocab.json, then </s>;
output ids -> pieces -> text. MarianTokenizer's optional Moses punctuation
normalisation (only active when sacremoses is installed) is not applied.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from relais.models.metadata import ModelFacts, session_metadata
from relais.runtime.ort import LoadedSession, RuntimeConfig, create_session
from relais_export.marian.export import DECODER_FILE, ENCODER_FILE

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("</s>", "<unk>", "<pad>")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


@dataclass(frozen=True)
class MarianFacts:
    """What the runtime needs to know about an exported Marian model (from ONNX metadata)."""

    decoder_layers: int
    decoder_heads: int
    head_dim: int
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    forced_eos_token_id: int | None
    suppress_token_ids: tuple[int, ...]
    max_length: int  # decoder start token included
    max_positions: int
    separate_vocabs: bool
    source_language: str
    target_language: str

    @classmethod
    def from_metadata(cls, facts: ModelFacts) -> "MarianFacts":
        if facts.get("model_type") != "marian_decoder":
            raise ValueError(f"{facts.path} is a {facts.get('model_type')!r} model, expected 'marian_decoder'")
        forced = facts.get("forced_eos_token_id")
        heads = facts.int("decoder_attention_heads")
        return cls(
            decoder_layers=facts.int("decoder_layers"),
            decoder_heads=heads,
            head_dim=facts.int("d_model") // heads,
            decoder_start_token_id=facts.int("decoder_start_token_id"),
            eos_token_id=facts.int("eos_token_id"),
            pad_token_id=facts.int("pad_token_id"),
            forced_eos_token_id=None if forced is None else int(forced),
            suppress_token_ids=tuple(int(i) for i in facts.get("suppress_token_ids", [])),
            max_length=facts.int("max_length"),
            max_positions=facts.int("max_position_embeddings"),
            separate_vocabs=bool(facts.get("separate_vocabs", False)),
            source_language=str(facts.get("source_language", "")),
            target_language=str(facts.get("target_language", "")),
        )


class MarianTextCodec:
    """Text <-> ids the way transformers' MarianTokenizer does it (without Moses normalisation)."""

    def __init__(self, model_dir: Path, separate_vocabs: bool, eos_token_id: int):
        import sentencepiece

        def load_spm(name: str):
            spm = sentencepiece.SentencePieceProcessor()
            spm.Load(str(model_dir / name))
            return spm

        self.spm_source, self.spm_target = load_spm("source.spm"), load_spm("target.spm")
        self.vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
        target_vocab = self.vocab
        if separate_vocabs:
            target_vocab = json.loads((model_dir / "target_vocab.json").read_text(encoding="utf-8"))
        self.id_to_piece = {i: piece for piece, i in target_vocab.items()}
        # MarianTokenizer decodes with the source spm unless vocabularies are separate.
        self.decode_spm = self.spm_target if separate_vocabs else self.spm_source
        if "<unk>" not in self.vocab:
            raise ValueError(f"{model_dir}/vocab.json has no <unk> entry: not a Marian vocabulary")
        self.unk_id = self.vocab["<unk>"]
        self.eos_id = eos_token_id
        self.special_ids = {self.vocab[t] for t in SPECIAL_TOKENS if t in self.vocab} | {eos_token_id}

    def _pieces(self, chunk: str) -> list[str]:
        code = []
        # A leading target-language code such as >>fra<< is one token, not sentencepiece input.
        if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:
            code, chunk = [chunk[: end + 2]], chunk[end + 2 :]
        return code + self.spm_source.encode(chunk, out_type=str)

    def encode(self, text: str) -> list[int]:
        pieces = []
        for chunk in _SPECIAL_SPLIT.split(text):
            if chunk in SPECIAL_TOKENS:
                pieces.append(chunk)
            elif chunk:
                pieces += self._pieces(chunk)
        return [self.vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = []
        for i in ids:
            if i in self.special_ids:
                continue
            piece = self.id_to_piece.get(i) or self.decode_spm.IdToPiece(int(i))
            pieces.append(piece or "<unk>")
        return self.decode_spm.decode_pieces(pieces).replace("\u2581", " ").strip()


@dataclass
class MarianEncoding:
    """Encoder results for one batch, reused by every decoder step."""

    attention_mask: np.ndarray  # [batch, src] int64
    hidden_states: np.ndarray  # [batch, src, d_model]
    cross_kv: list[np.ndarray]  # cross_key.0, cross_value.0, cross_key.1, ...


@dataclass
class MarianDecoderCache:
    """Self-attention K/V of the tokens fed so far (past_key.0, past_value.0, ...)."""

    self_kv: list[np.ndarray]
    length: int  # tokens in the cache = position of the next token


@dataclass
class MarianStep:
    logits: np.ndarray  # [batch, vocab] for the last fed position, final_logits_bias included
    cache: MarianDecoderCache


class MarianTranslator:
    """Greedy Marian translation over the exported encoder/decoder ONNX pair."""

    def __init__(self, model_dir: str | Path, runtime: RuntimeConfig | None = None):
        model_dir = Path(model_dir)
        self.encoder: LoadedSession = create_session(model_dir / ENCODER_FILE, runtime)
        self.decoder: LoadedSession = create_session(model_dir / DECODER_FILE, runtime)
        self.facts = MarianFacts.from_metadata(session_metadata(self.decoder.session, self.decoder.path))
        enc_type = session_metadata(self.encoder.session, self.encoder.path).get("model_type")
        if enc_type != "marian_encoder":
            raise ValueError(f"{self.encoder.path} is a {enc_type!r} model, expected 'marian_encoder'")
        self.codec = MarianTextCodec(model_dir, self.facts.separate_vocabs, self.facts.eos_token_id)

    def encode(self, source_ids: Sequence[Sequence[int]]) -> MarianEncoding:
        """Run the encoder on right-padded source ids (each ending in </s>)."""
        if not source_ids or any(len(s) == 0 for s in source_ids):
            raise ValueError("source_ids must be a non-empty list of non-empty id sequences")
        width = max(len(s) for s in source_ids)
        if width > self.facts.max_positions:
            raise ValueError(f"source has {width} tokens; this model takes at most {self.facts.max_positions}")
        ids = np.full((len(source_ids), width), self.facts.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(source_ids):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        hidden, *cross = self.encoder.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return MarianEncoding(attention_mask=mask, hidden_states=hidden, cross_kv=cross)

    def empty_cache(self, batch: int) -> MarianDecoderCache:
        shape = (batch, self.facts.decoder_heads, 0, self.facts.head_dim)
        return MarianDecoderCache([np.zeros(shape, np.float32) for _ in range(2 * self.facts.decoder_layers)], 0)

    def decode_step(self, encoding: MarianEncoding, cache: MarianDecoderCache, input_ids: np.ndarray) -> MarianStep:
        """Feed ``input_ids`` [batch, new] after the cached tokens; returns logits and the grown cache."""
        feeds = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "position_offset": np.array(cache.length, dtype=np.int64),
            "encoder_attention_mask": encoding.attention_mask,
        }
        for layer in range(self.facts.decoder_layers):
            feeds[f"past_key.{layer}"] = cache.self_kv[2 * layer]
            feeds[f"past_value.{layer}"] = cache.self_kv[2 * layer + 1]
            feeds[f"cross_key.{layer}"] = encoding.cross_kv[2 * layer]
            feeds[f"cross_value.{layer}"] = encoding.cross_kv[2 * layer + 1]
        logits, *present = self.decoder.session.run(None, feeds)
        return MarianStep(logits, MarianDecoderCache(present, cache.length + feeds["input_ids"].shape[1]))

    def _max_new_tokens(self, requested: int | None) -> int:
        limit = min(self.facts.max_length - 1, self.facts.max_positions)
        if requested is None:
            return limit
        if not 1 <= requested <= self.facts.max_positions:
            raise ValueError(f"max_new_tokens must be in 1..{self.facts.max_positions}, got {requested}")
        return requested

    def generate_ids(self, source_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy decoding; each result ends with </s> unless max_new_tokens cut it short.

        Mirrors transformers' generate(num_beams=1, do_sample=False): suppressed ids
        (bad_words_ids, e.g. <pad>) never win, and the last allowed token is forced
        to forced_eos_token_id when the model sets one.
        """
        steps = self._max_new_tokens(max_new_tokens)
        if not source_ids:
            return []
        encoding = self.encode(source_ids)
        batch = len(source_ids)
        cache = self.empty_cache(batch)
        next_ids = np.full((batch, 1), self.facts.decoder_start_token_id, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        out: list[list[int]] = [[] for _ in range(batch)]
        suppress = list(self.facts.suppress_token_ids)
        for step in range(steps):
            step_out = self.decode_step(encoding, cache, next_ids)
            logits, cache = step_out.logits, step_out.cache
            if suppress:
                logits[:, suppress] = -np.inf
            tokens = np.argmax(logits, axis=-1)
            if step == steps - 1 and self.facts.forced_eos_token_id is not None:
                tokens[:] = self.facts.forced_eos_token_id
            for row in np.flatnonzero(~done):
                out[row].append(int(tokens[row]))
            done |= tokens == self.facts.eos_token_id
            if done.all():
                break
            # Finished rows keep feeding <pad> (as transformers does); their output is ignored.
            next_ids = np.where(done, self.facts.pad_token_id, tokens)[:, None].astype(np.int64)
        return out

    def translate(self, texts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Translate a batch of sentences (source language -> the model's target language)."""
        if not texts:
            return []
        ids = self.generate_ids([self.codec.encode(t) for t in texts], max_new_tokens)
        return [self.codec.decode(seq) for seq in ids]
