"""The Whisper network in MLX: audio encoder, text decoder with a kv_cache, alignment-head QK.

Layer and parameter names follow openai/whisper's state dict, so a converted checkpoint maps
one to one. Activations are (batch, time, channels), MLX's layout for conv1d.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np



@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_config(cls, config: dict) -> "ModelDimensions":
        """Read the dims from a config.json dict (flat keys, or nested under "dims")."""
        source = config.get("dims", config)
        return cls(**{f.name: int(source[f.name]) for f in fields(cls)})


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """The encoder's fixed positional embedding, as in openai/whisper."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def heads(self, x: mx.array) -> mx.array:
        """(B, T, C) -> (B, H, T, C/H); a single position (a decoder step) is a plain reshape."""
        b, t, _ = x.shape
        if t == 1:
            return x.reshape(b, self.n_head, 1, -1)
        return x.reshape(b, t, self.n_head, -1).transpose(0, 2, 1, 3)

    def merge(self, x: mx.array) -> mx.array:
        """(B, H, T, D) -> (B, T, H*D)."""
        b, _, t, _ = x.shape
        if t == 1:
            return x.reshape(b, 1, -1)
        return x.transpose(0, 2, 1, 3).reshape(b, t, -1)

    def project_kv(self, xa: mx.array) -> tuple[mx.array, mx.array]:
        """A cross-attention cache entry: keys and values (B, H, S, D) of the audio features."""
        return self.heads(self.key(xa)), self.heads(self.value(xa))

    def __call__(
        self,
        x: mx.array,
        mask: mx.array | None = None,
        kv: tuple[mx.array, mx.array] | None = None,
        cross: bool = False,
    ) -> tuple[mx.array, tuple[mx.array, mx.array] | None]:
        """Attend from x. Self-attention appends x's keys/values to `kv` (None: attend over x
        alone); cross-attention reads `kv`."""
        q = self.heads(self.query(x))
        if cross:
            k, v = kv
        else:
            k, v = self.heads(self.key(x)), self.heads(self.value(x))
            if kv is not None:
                k = mx.concatenate([kv[0], k], axis=2)
                v = mx.concatenate([kv[1], v], axis=2)
            kv = (k, v)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)
        return self.out(self.merge(o)), kv

    def qk(self, x: mx.array, kv: tuple[mx.array, mx.array]) -> mx.array:
        """Cross-attention weights (B, H, T, S) before softmax, for word-level timing."""
        q = self.heads(self.query(x))
        scale = q.shape[-1] ** -0.25
        return (q * scale) @ (kv[0] * scale).swapaxes(-1, -2)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        # indices 0 and 2 carry openai/whisper's names mlp.0 / mlp.2
        self.mlp = [nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state)]
        self.mlp_ln = nn.LayerNorm(n_state)

    def __call__(self, x, mask=None, kv=None, cross_kv=None, want_qk: bool = False):
        """Returns (x, self-attention kv, cross-attention QK if want_qk else None)."""
        y, kv = self.attn(self.attn_ln(x), mask=mask, kv=kv)
        x = x + y
        qk = None
        if self.cross_attn is not None:
            h = self.cross_attn_ln(x)
            if want_qk:
                qk = self.cross_attn.qk(h, cross_kv)
            y, _ = self.cross_attn(h, kv=cross_kv, cross=True)
            x = x + y
        return x + self.mlp[2](nn.gelu(self.mlp[0](self.mlp_ln(x)))), kv, qk


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = mx.array(sinusoids(n_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)]
        self.ln_post = nn.LayerNorm(n_state)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel (B, 2*n_audio_ctx, n_mels) -> audio features (B, n_audio_ctx, n_audio_state)."""
        x = nn.gelu(self.conv1(mel))
        x = nn.gelu(self.conv2(x))
        x = x + self.positional_embedding[: x.shape[1]].astype(x.dtype)
        for block in self.blocks:
            x, _, _ = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = mx.zeros((n_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)]
        self.ln = nn.LayerNorm(n_state)

    def cross_kv(self, xa: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Project the audio features once per window: each layer's cross-attention keys/values."""
        return [block.cross_attn.project_kv(xa) for block in self.blocks]

    def embed(self, tokens: mx.array, offset: int) -> mx.array:
        return self.token_embedding(tokens) + self.positional_embedding[offset : offset + tokens.shape[-1]]

    def __call__(
        self,
        tokens: mx.array,
        cross_kv: list[tuple[mx.array, mx.array]],
        kv_cache: list[tuple[mx.array, mx.array]] | None = None,
    ) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
        """Hidden states for `tokens` (B, T) given cached keys/values; returns (hidden, new kv_cache).
        Apply `logits` to the rows that need them (usually only the last)."""
        offset = kv_cache[0][0].shape[2] if kv_cache else 0
        x = self.embed(tokens, offset).astype(self.ln.weight.dtype)
        t = tokens.shape[-1]
        mask = causal_mask(t, offset, x.dtype) if t > 1 else None
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv, _ = block(x, mask=mask, kv=kv_cache[i] if kv_cache else None, cross_kv=cross_kv[i])
            new_cache.append(kv)
        return x, new_cache

    def logits(self, x: mx.array) -> mx.array:
        """Final layer norm, then float32 scores over the vocabulary (tied to the token embedding)."""
        return self.token_embedding.as_linear(self.ln(x)).astype(mx.float32)

    def alignment_qk(self, tokens: mx.array, xa: mx.array, heads: list[tuple[int, int]]):
        """Logits for the full `tokens` and the cross-attention QK of each alignment head (B, T, S)."""
        cross_kv = self.cross_kv(xa)
        x = self.embed(tokens, 0).astype(self.ln.weight.dtype)
        mask = causal_mask(tokens.shape[-1], 0, x.dtype)
        wanted = {}
        for layer, head in heads:
            wanted.setdefault(layer, []).append(head)
        qks = []
        for i, block in enumerate(self.blocks):
            x, _, qk = block(x, mask=mask, cross_kv=cross_kv[i], want_qk=i in wanted)
            qks.extend(qk[:, h] for h in wanted.get(i, []))
        return self.logits(x), qks


def causal_mask(t: int, offset: int, dtype: mx.Dtype) -> mx.array:
    """Additive mask letting row i see keys 0..offset+i."""
    rows = mx.arange(t)[:, None] + offset
    cols = mx.arange(offset + t)[None, :]
    return mx.where(cols > rows, mx.array(-mx.inf, dtype), mx.array(0, dtype))


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        self.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )
        # default: the last half of the decoder layers, all heads (openai/whisper's fallback)
        half = dims.n_text_layer // 2
        self.alignment_heads = [
            (layer, head) for layer in range(half, dims.n_text_layer) for head in range(dims.n_text_head)
        ]

    def embed_audio(self, mel: mx.array) -> mx.array:
        return self.encoder(mel.astype(self.encoder.conv1.weight.dtype))

    def logits(self, tokens: mx.array, audio_features: mx.array) -> mx.array:
        hidden, _ = self.decoder(tokens, self.decoder.cross_kv(audio_features))
        return self.decoder.logits(hidden)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)
