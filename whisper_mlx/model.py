"""The Whisper network in MLX: audio encoder, text decoder with a kv_cache, alignment-head QK.

Layer and parameter names follow openai/whisper's state dict, so a converted checkpoint maps
one to one. Activations are (batch, time, channels), MLX's layout for conv1d.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from . import backend, cpu_kernels


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


LOG2_E = 1.4426950408889634

# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (Eigen's float rational approximation; max error 4e-7,
# like MLX's own erf), evaluated as one fused multiply-add chain: 7x faster on CPUs than nn.gelu.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


@mx.compile
def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, as openai/whisper's nn.GELU(); evaluated in float32, since in float16
    the small coefficients flush to zero (relative error 2e-2 instead of 3e-4)."""
    dtype, x = x.dtype, x.astype(mx.float32)
    z = mx.clip(x * 0.7071067811865476, -4.0, 4.0)
    z2 = z * z
    p = _ERF_P[0]
    for c in _ERF_P[1:]:
        p = p * z2 + c
    q = _ERF_Q[0]
    for c in _ERF_Q[1:]:
        q = q * z2 + c
    return (0.5 * x * (1.0 + z * p / q)).astype(dtype)


@mx.compile
def _layer_norm(x: mx.array, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    return d * mx.rsqrt((d * d).mean(axis=-1, keepdims=True) + eps) * weight + bias


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm; on the CPU as one compiled function: MLX's CPU `fast.layer_norm` runs as
    separate ops, about 2x slower on a decoder step's single row (13 norms per tiny.en token)."""

    def __call__(self, x: mx.array) -> mx.array:
        if backend.on_cpu() and x.dtype == mx.float32:
            return _layer_norm(x, self.weight, self.bias, self.eps)
        return super().__call__(x)


def _gelu(x: mx.array) -> mx.array:
    """`gelu`, in place through the C kernel for float32 on the CPU (fresh activations only)."""
    if x.dtype == mx.float32 and backend.on_cpu() and cpu_kernels.available():
        return cpu_kernels.gelu_(x)
    return gelu(x)


def attention_base2(q: mx.array, k_t: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) v, computed as 2^(scores * log2 e) and normalized after the product:
    the same function, but on CPUs MLX's exp2 is about twice as fast as exp, and dividing the
    (T, D) output touches far fewer values than the (T, S) weights."""
    scores = (q * (scale * LOG2_E)) @ k_t
    weights = mx.power(2.0, scores - scores.max(axis=-1, keepdims=True))
    return (weights @ v) / weights.sum(axis=-1, keepdims=True)


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
        """A cross-attention cache entry: keys as (B, H, D, S) and values as (B, H, S, D), both
        contiguous, so each decoder step multiplies without re-copying 1500 cached frames."""
        k = mx.contiguous(self.key(xa).reshape(xa.shape[0], xa.shape[1], self.n_head, -1).transpose(0, 2, 3, 1))
        return k, mx.contiguous(self.heads(self.value(xa)))

    def __call__(
        self,
        x: mx.array,
        mask: mx.array | None = None,
        kv: tuple[mx.array, mx.array] | None = None,
        cross: bool = False,
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        """Attend from x. Self-attention appends x's keys/values to `kv`; cross-attention reads `kv`."""
        q = self.heads(self.query(x))
        scale = q.shape[-1] ** -0.5
        if cross:
            k_t, v = kv
            if backend.on_cpu():
                return self.out(self.merge(attention_base2(q, k_t, v, scale))), kv
            w = mx.softmax((q * scale) @ k_t, axis=-1)
            return self.out(self.merge(w @ v)), kv
        k, v = self.heads(self.key(x)), self.heads(self.value(x))
        if kv is not None:
            k = mx.concatenate([kv[0], k], axis=2)
            v = mx.concatenate([kv[1], v], axis=2)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return self.out(self.merge(o)), (k, v)

    def full(self, x: mx.array) -> mx.array:
        """Unmasked self-attention over all of x (the encoder's); on a GPU, MLX's fused kernel,
        on a CPU the C kernel (blocked, vectorized exp) where it is built."""
        if backend.on_cpu() and cpu_kernels.available() and x.dtype == mx.float32:
            return self.out(cpu_kernels.attention(self.query(x), self.key(x), self.value(x), self.n_head))
        q = self.heads(self.query(x))
        if not backend.on_cpu():
            o = mx.fast.scaled_dot_product_attention(
                q, self.heads(self.key(x)), self.heads(self.value(x)), scale=q.shape[-1] ** -0.5
            )
            return self.out(self.merge(o))
        k_t = self.key(x).reshape(x.shape[0], x.shape[1], self.n_head, -1).transpose(0, 2, 3, 1)
        o = attention_base2(q, k_t, self.heads(self.value(x)), q.shape[-1] ** -0.5)
        return self.out(self.merge(o))

    def qk(self, x: mx.array, kv: tuple[mx.array, mx.array]) -> mx.array:
        """Cross-attention weights (B, H, T, S) before softmax, for word-level timing."""
        q = self.heads(self.query(x))
        scale = q.shape[-1] ** -0.25
        return (q * scale) @ (kv[0] * scale)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        # indices 0 and 2 carry openai/whisper's names mlp.0 / mlp.2; 1 (nn.GELU) runs as `gelu`
        self.mlp = [nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state)]
        self.mlp_ln = LayerNorm(n_state)

    def __call__(self, x, mask=None, kv=None, cross_kv=None, want_qk: bool = False):
        """Returns (x, self-attention kv, cross-attention QK if want_qk else None)."""
        if self.cross_attn is None:  # an encoder block
            x = x + self.attn.full(self.attn_ln(x))
        else:
            y, kv = self.attn(self.attn_ln(x), mask=mask, kv=kv)
            x = x + y
        qk = None
        if self.cross_attn is not None:
            h = self.cross_attn_ln(x)
            if want_qk:
                qk = self.cross_attn.qk(h, cross_kv)
            y, _ = self.cross_attn(h, kv=cross_kv, cross=True)
            x = x + y
        act = gelu if self.cross_attn is not None else _gelu  # decoder steps stay one lazy graph
        return x + self.mlp[2](act(self.mlp[0](self.mlp_ln(x)))), kv, qk


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = mx.array(sinusoids(n_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)]
        self.ln_post = LayerNorm(n_state)
        self.kernel: cpu_kernels.EncoderKernel | None = None  # the C blocks' parameter table

    def prepare_cpu(self) -> None:
        """Where the C kernels are built and the weights are float32, run the blocks in C: one
        call per window instead of ~20 MLX operations per layer, each with its own pass."""
        if cpu_kernels.available() and all(w.dtype == mx.float32 for _, w in tree_flatten(self.parameters())):
            self.kernel = cpu_kernels.encoder_kernel(self.blocks, self.blocks[0].attn.n_head, self.ln_post)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel (B, 2*n_audio_ctx, n_mels) -> audio features (B, n_audio_ctx, n_audio_state)."""
        x = _gelu(self.conv1(mel))
        x = _gelu(self.conv2(x))
        x = x + self.positional_embedding[: x.shape[1]].astype(x.dtype)
        if self.kernel is not None and x.dtype == mx.float32 and backend.on_cpu():
            return cpu_kernels.encode(self.kernel, x)
        for block in self.blocks:
            x, _, _ = block(x)
        return self.ln_post(x)


def _float16_if_exact(w: mx.array) -> mx.array | None:
    """w in float16, evaluated, if float16 holds every float32 value of w exactly; else None."""
    if w.dtype != mx.float32:
        return None
    w16 = w.astype(mx.float16)
    if not mx.array_equal(w16.astype(mx.float32), w).item():
        return None
    mx.eval(w16)
    return w16


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = mx.zeros((n_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)]
        self.ln = LayerNorm(n_state)
        self._embedding_t = None  # (n_state, n_vocab) copy, see transpose_embedding
        self._embedding16: np.ndarray | None = None  # float16 (n_vocab, n_state), C logits kernel
        self.kernel: cpu_kernels.DecoderKernel | None = None  # the C decoder step's parameter table

    def prepare_cpu(self) -> None:
        """Ready the decoder for CPU decoding: the embedding's layout for logits, and where the C
        kernels are built and float16 holds every weight matrix exactly (true of every converted
        OpenAI checkpoint), the C decoder. Its matrices are then kept in float16 only: a token
        streams half the bytes, and MLX still computes with them in float32 (word timing's pass)."""
        self.transpose_embedding()
        if self._embedding16 is None:
            return
        halves = [
            [(name, _float16_if_exact(w)) for name, w in tree_flatten(block.parameters())
             if name in cpu_kernels.FLOAT16_PARAMS]
            for block in self.blocks
        ]
        if any(w is None for layer in halves for _, w in layer):
            return
        for block, layer in zip(self.blocks, halves):
            block.update(tree_unflatten(layer))
        self.kernel = cpu_kernels.decoder_kernel(
            self.blocks, self.blocks[0].attn.n_head, self.positional_embedding, self.ln, self._embedding16
        )

    def transpose_embedding(self) -> None:
        """Prepare the token embedding for CPU decoding. Where the C kernels are built and
        float16 holds the float32 weights exactly (converted OpenAI checkpoints are float16), keep
        it as a float16 NumPy matrix: each token's logits then stream half the bytes. Otherwise
        keep a contiguous (n_state, n_vocab) transpose: MLX's per-token product then streams rows
        (about 2x faster). The original float32 copy is released."""
        w = self.token_embedding.weight
        if cpu_kernels.available() and (w16 := _float16_if_exact(w)) is not None:
            self._embedding16 = np.array(w16)
        if self._embedding16 is None:
            self._embedding_t = mx.contiguous(w.T)
            mx.eval(self._embedding_t)
        self.token_embedding.weight = mx.zeros((0, w.shape[1]), w.dtype)

    def cross_kv(self, xa: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Project the audio features once per window: each layer's cross-attention keys/values."""
        return [block.cross_attn.project_kv(xa) for block in self.blocks]

    def embed(self, tokens: mx.array, offset: int) -> mx.array:
        pos = self.positional_embedding[offset : offset + tokens.shape[-1]]
        if self._embedding16 is not None:
            return mx.array(self._embedding16[np.array(tokens)].astype(np.float32)) + pos
        if self._embedding_t is not None:
            return mx.take(self._embedding_t, tokens, axis=1).transpose(1, 2, 0) + pos
        return self.token_embedding(tokens) + pos

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
        """Final layer norm, then scores over the vocabulary (tied to the token embedding)."""
        if self._embedding16 is not None:
            return cpu_kernels.logits_f16(self.ln(x), self._embedding16)
        if self._embedding_t is not None:
            return (self.ln(x) @ self._embedding_t).astype(mx.float32)
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
