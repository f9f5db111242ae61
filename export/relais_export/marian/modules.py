"""Torch forward passes over a transformers MarianMTModel's weights, shaped for ONNX export.

Marian specifics mirrored here: sinusoidal position tables (fixed, not learned),
token embeddings scaled by sqrt(d_model) when ``config.scale_embedding``,
post-layernorm residual blocks, no final encoder/decoder layernorm, the activation
named by ``config.activation_function`` and ``final_logits_bias`` on the logits.

Only the HF submodules' weights (Linear, LayerNorm, Embedding) are reused; the
attention, masking and cache handling are written out here so the exported graph
has exactly the inputs/outputs the runtime drives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from relais_export.errors import ExportError

# Added to attention scores at masked positions (what HF's eager path uses).
MASK_VALUE = torch.finfo(torch.float32).min


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "tanh": torch.tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ExportError(f"Marian activation_function {name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[batch, time, d_model] -> [batch, heads, time, head_dim]."""
    return x.reshape(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor, d_model: int) -> torch.Tensor:
    """[batch, heads, time, head_dim] -> [batch, time, d_model]."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, d_model)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _padding_bias(mask: torch.Tensor) -> torch.Tensor:
    """[batch, src] 1/0 mask -> additive bias [batch, 1, 1, src]."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * MASK_VALUE


def _causal_bias(new_len, total_len) -> torch.Tensor:  # ints, or traced shape values
    """Bias [new, total]: new token j sits at cache index total-new+j and sees keys <= that index."""
    query_index = torch.arange(new_len) + (total_len - new_len)
    key_index = torch.arange(total_len)
    return (key_index[None, :] > query_index[:, None]).to(torch.float32) * MASK_VALUE


class _Dims:
    def __init__(self, config):
        self.d_model = config.d_model
        self.enc_head_dim = config.d_model // config.encoder_attention_heads
        self.dec_head_dim = config.d_model // config.decoder_attention_heads
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0


class MarianEncoderForExport(nn.Module):
    """(input_ids, attention_mask) -> hidden states + every decoder layer's cross-attention K and V."""

    def __init__(self, hf_model):
        super().__init__()
        config = hf_model.config
        self.dims = _Dims(config)
        self.act = activation(config.activation_function)
        encoder, decoder = hf_model.model.encoder, hf_model.model.decoder
        self.embed_tokens = encoder.embed_tokens
        self.embed_positions = encoder.embed_positions
        self.layers = encoder.layers
        self.cross_attn = nn.ModuleList(layer.encoder_attn for layer in decoder.layers)

    def _layer(self, layer, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn, hd = layer.self_attn, self.dims.enc_head_dim
        q = _split_heads(attn.q_proj(x), hd) * attn.scaling
        k = _split_heads(attn.k_proj(x), hd)
        v = _split_heads(attn.v_proj(x), hd)
        x = layer.self_attn_layer_norm(x + attn.out_proj(_merge_heads(_attend(q, k, v, bias), self.dims.d_model)))
        return layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        x = self.embed_tokens(input_ids) * self.dims.embed_scale
        x = x + self.embed_positions.weight[: input_ids.shape[1]]
        bias = _padding_bias(attention_mask)
        for layer in self.layers:
            x = self._layer(layer, x, bias)
        cross = []
        for attn in self.cross_attn:
            cross.append(_split_heads(attn.k_proj(x), self.dims.dec_head_dim))
            cross.append(_split_heads(attn.v_proj(x), self.dims.dec_head_dim))
        return (x, *cross)


class MarianDecoderForExport(nn.Module):
    """One decoder call with an explicit self-attention cache.

    Inputs: input_ids [batch, new], position_offset (scalar), encoder_attention_mask
    [batch, src], then per layer past_key, past_value [batch, heads, past, hd],
    cross_key, cross_value [batch, heads, src, hd]. Outputs: logits of the last new
    position [batch, vocab] (with final_logits_bias), then per layer present_key,
    present_value [batch, heads, past + new, hd].
    """

    def __init__(self, hf_model):
        super().__init__()
        config = hf_model.config
        self.dims = _Dims(config)
        self.act = activation(config.activation_function)
        decoder = hf_model.model.decoder
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions
        self.layers = decoder.layers
        # Tied checkpoints hold one Parameter for both; the exporter then writes it once.
        self.lm_head = hf_model.lm_head
        self.final_logits_bias = hf_model.final_logits_bias

    def _layer(self, layer, x, self_bias, cross_bias, past_k, past_v, cross_k, cross_v):
        hd, d_model = self.dims.dec_head_dim, self.dims.d_model
        attn = layer.self_attn
        q = _split_heads(attn.q_proj(x), hd) * attn.scaling
        k = torch.cat([past_k, _split_heads(attn.k_proj(x), hd)], dim=2)
        v = torch.cat([past_v, _split_heads(attn.v_proj(x), hd)], dim=2)
        x = layer.self_attn_layer_norm(x + attn.out_proj(_merge_heads(_attend(q, k, v, self_bias), d_model)))

        attn = layer.encoder_attn
        q = _split_heads(attn.q_proj(x), hd) * attn.scaling
        x = layer.encoder_attn_layer_norm(
            x + attn.out_proj(_merge_heads(_attend(q, cross_k, cross_v, cross_bias), d_model))
        )
        x = layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))
        return x, k, v

    def forward(self, input_ids, position_offset, encoder_attention_mask, *cache):
        new_len = input_ids.shape[1]
        positions = torch.arange(new_len) + position_offset
        x = self.embed_tokens(input_ids) * self.dims.embed_scale + self.embed_positions.weight[positions]
        self_bias = _causal_bias(new_len, cache[0].shape[2] + new_len)
        cross_bias = _padding_bias(encoder_attention_mask)
        present = []
        for i, layer in enumerate(self.layers):
            past_k, past_v, cross_k, cross_v = cache[4 * i : 4 * i + 4]
            x, k, v = self._layer(layer, x, self_bias, cross_bias, past_k, past_v, cross_k, cross_v)
            present += [k, v]
        # 2-D input so the exporter emits Gemm(transB=1) on the (possibly tied) embedding
        # matrix instead of a transposed copy of it.
        logits = F.linear(x[:, -1, :], self.lm_head.weight, self.final_logits_bias.reshape(-1))
        return (logits, *present)
