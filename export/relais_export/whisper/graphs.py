"""Torch modules that define the exported Whisper graphs.

They reuse the weights of a transformers WhisperForConditionalGeneration but own
their forward pass, so the graphs have exactly the interface the service needs:

* encoder: ``mel`` [batch, n_mels, frames] (frames variable, <= 3000) ->
  ``cross_k``, ``cross_v`` [decoder_layers, batch, heads, frames/2, head_dim]
  (the cross-attention keys/values of every decoder layer, computed once).
* decoder: ``tokens`` [batch, n], ``offset`` [batch] (per row, the position of
  tokens[row, 0]; [1] is broadcast), ``self_k``/``self_v`` [layers, batch, heads, past,
  head_dim], ``cross_k``/``cross_v``, ``cross_len`` [batch] (per row, the encoder frames
  that hold its audio; [1] is broadcast) -> ``logits`` [batch, vocab] of the last position,
  ``new_self_k``/``new_self_v`` with ``past + n`` positions (the new ones at the end), and
  ``alignment`` [batch, n, audio_ctx]: each query position's cross-attention weights over
  the encoder frames, averaged over the alignment heads (the heads whose attention tracks
  the spoken audio; AlignAtt uses it).

Rows of different streams share one decoder call (cross-stream batching): a row's cache
holds its ``offset`` real positions first and padding after them, and its cross K/V hold
``cross_len`` real frames, then padding; both paddings are masked out, so each row sees
exactly what it would see alone.

Positions are looked up explicitly from ``offset`` (transformers' own decoder
ignores explicit position ids, which breaks cached decoding after one token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
            with_weights: bool = False):
    """Scaled dot-product attention; ``with_weights`` also returns the softmax weights
    [batch, heads, queries, keys] (the alignment output reuses them: no second pass)."""
    scale = q.shape[-1] ** -0.5
    w = torch.matmul(q * scale, k.transpose(-1, -2))
    if mask is not None:
        w = w + mask
    w = torch.softmax(w, dim=-1)
    out = torch.matmul(w, v)
    return (out, w) if with_weights else out


def _self_attention(attn, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    q, k, v = (_heads(p(x), n_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return attn.out_proj(_merge(_attend(q, k, v)))


def _ffn(layer, x: torch.Tensor) -> torch.Tensor:
    return layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))


class WhisperEncoderGraph(nn.Module):
    def __init__(self, hf_model):
        super().__init__()
        enc, dec = hf_model.model.encoder, hf_model.model.decoder
        cfg = hf_model.config
        self.conv1, self.conv2 = enc.conv1, enc.conv2
        self.positions = enc.embed_positions.weight
        self.layers = enc.layers
        self.layer_norm = enc.layer_norm
        self.cross = nn.ModuleList(layer.encoder_attn for layer in dec.layers)
        self.enc_heads = cfg.encoder_attention_heads
        self.dec_heads = cfg.decoder_attention_heads

    def forward(self, mel: torch.Tensor):
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers:
            x = x + _self_attention(layer.self_attn, layer.self_attn_layer_norm(x), self.enc_heads)
            x = x + _ffn(layer, x)
        x = self.layer_norm(x)
        cross_k = torch.stack([_heads(a.k_proj(x), self.dec_heads) for a in self.cross])
        cross_v = torch.stack([_heads(a.v_proj(x), self.dec_heads) for a in self.cross])
        return cross_k, cross_v


def default_alignment_heads(decoder_layers: int, decoder_heads: int) -> list[list[int]]:
    """OpenAI Whisper's fallback when a model names no alignment heads: every head of
    the upper half of the decoder layers."""
    return [[layer, head] for layer in range(decoder_layers // 2, decoder_layers) for head in range(decoder_heads)]


class WhisperDecoderGraph(nn.Module):
    def __init__(self, hf_model, alignment_heads: list[list[int]]):
        super().__init__()
        dec = hf_model.model.decoder
        self.embed = dec.embed_tokens
        self.positions = dec.embed_positions.weight
        self.layers = dec.layers
        self.layer_norm = dec.layer_norm
        self.n_heads = hf_model.config.decoder_attention_heads
        # layer -> its alignment heads (validated, distinct: see export.alignment_heads)
        self.alignment: dict[int, list[int]] = {}
        for layer, head in alignment_heads:
            self.alignment.setdefault(int(layer), []).append(int(head))
        self.n_alignment = len(alignment_heads)

    def forward(self, tokens, offset, self_k, self_v, cross_k, cross_v, cross_len):
        n = tokens.shape[1]
        past = self_k.shape[3]
        rows = offset.reshape(-1, 1)  # [batch or 1, 1]
        pos = rows + torch.arange(n, dtype=torch.int64)  # [batch or 1, n]
        x = self.embed(tokens) + self.positions[pos]
        # Self-attention over [past + n] keys. Query j of a row sits at position offset + j: it
        # sees the row's cached keys (index < offset; the rest of the cache is padding) and the
        # new keys up to itself (index past..past + j).
        key = torch.arange(past + n, dtype=torch.int64).reshape(1, 1, -1)
        query = (past + torch.arange(n, dtype=torch.int64)).reshape(1, -1, 1)
        seen = (key < rows.unsqueeze(2)) | ((key >= past) & (key <= query))  # [batch or 1, n, past + n]
        mask = torch.zeros(seen.shape, dtype=x.dtype).masked_fill(~seen, -1e9).unsqueeze(1)
        frames = torch.arange(cross_k.shape[3], dtype=torch.int64).reshape(1, -1)
        audio = frames < cross_len.reshape(-1, 1)  # [batch or 1, audio_ctx]
        cross_mask = torch.zeros(audio.shape, dtype=x.dtype).masked_fill(~audio, -1e9)[:, None, None, :]
        new_k, new_v, aligned = [], [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(attn.q_proj(h), self.n_heads)
            k = torch.cat([self_k[i], _heads(attn.k_proj(h), self.n_heads)], dim=2)
            v = torch.cat([self_v[i], _heads(attn.v_proj(h), self.n_heads)], dim=2)
            new_k.append(k)
            new_v.append(v)
            x = x + attn.out_proj(_merge(_attend(q, k, v, mask)))
            cross = layer.encoder_attn
            q = _heads(cross.q_proj(layer.encoder_attn_layer_norm(x)), self.n_heads)
            if i in self.alignment:
                out, w = _attend(q, cross_k[i], cross_v[i], cross_mask, with_weights=True)
                heads = self.alignment[i]
                aligned.append((w if heads == list(range(self.n_heads)) else w[:, heads]).sum(dim=1))
            else:
                out = _attend(q, cross_k[i], cross_v[i], cross_mask)
            x = x + cross.out_proj(_merge(out))
            x = x + _ffn(layer, x)
        last = self.layer_norm(x[:, -1, :])
        # 2-D linear exports as Gemm(transB=1) over the embedding itself: one copy of
        # the vocabulary matrix serves both the lookup and the output projection.
        logits = F.linear(last, self.embed.weight)
        alignment = torch.stack(aligned).sum(dim=0) / self.n_alignment
        return logits, torch.stack(new_k), torch.stack(new_v), alignment
