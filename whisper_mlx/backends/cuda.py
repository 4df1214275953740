"""The CUDA backend: MLX's CUDA backend, with compiled fixed-shape graphs and the fused decoder step.

On MLX's CUDA backend a decoder step is bound by per-operation cost (graph node, dependency
tracking, launch: several microseconds each), not by arithmetic or memory, so this backend cuts
operations and host round trips:

- Encoder: one compiled graph per batch size, query/key/value as one product, GELU as a plain
  CUDA kernel (`gelu_cuda`; MLX's compiled GELU is many times slower there).
- Decoder: the self-attention cache of every row has a fixed size (n_text_ctx positions, written
  in place with slice_update and masked beyond the current position), so every step over B rows
  has the same shapes and runs as one compiled graph that MLX neither re-traces nor re-plans;
  query/key/value of self-attention are one product; cross-attention keys/values are projected
  once per window. The pending logits stay on the device.
- Picks: the logit filters (`ops.apply_filters`) and the top-k run as one compiled graph over B
  rows; only the (B, k) tokens and log probabilities leave the device, so beam search runs here
  without leaving the backend. Reordering rows gathers the caches on the device.
- Greedy (`CudaSession.greedy`): the step and the pick in one compiled graph, the filter state of
  every row kept on the device, and step i+1 queued before the host reads token i. For one row
  the step is one CUDA kernel (`FusedStep`, assets/fused_step.cuh) where the model allows it
  (float weights, 64-wide heads); if that kernel cannot run (its grid barrier timed out: blocks
  not co-resident) the backend warns once and uses the compiled step from then on.
  `WHISPER_MLX_FUSED_STEP=0` turns the kernel off.
- Word timing: the base class's pass over model.py's graph.

The backend runs where MLX computes on a CUDA GPU. Its compiled graphs are plain MLX: built on
MLX's CPU device (tests do, by constructing the class directly) they compute the same function
without the two CUDA kernels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..logit_rules import LogitRules
from ..model import Whisper
from .base import Backend, Session
from .ops import apply_filters, filter_arrays, gather_rows, log_softmax

NEG_INF = float("-inf")
ASSETS = Path(__file__).resolve().parents[1] / "assets"
FUSED_HEADER = ASSETS / "fused_step.cuh"  # the fused step's CUDA source


def gelu_header() -> str:
    """gelu_f (exact GELU for one float) and the constants it shares with the C kernels."""
    return (ASSETS / "gelu_coeffs.h").read_text() + (ASSETS / "gelu.cuh").read_text()


def on_cuda() -> bool:
    """True when MLX computes on a CUDA GPU."""
    try:
        return mx.default_device() == mx.gpu and bool(mx.cuda.is_available())
    except AttributeError:  # an MLX build without the cuda module
        return False


def _linear(layer, x: mx.array) -> mx.array:
    """layer(x), with a float layer's bias added as a separate (fusable) op: MLX's CUDA backend runs
    a one-row product without bias as its own matrix-vector kernel, but one with bias through
    cuBLASLt, captured into a child graph at several times the host cost."""
    if type(layer) is not nn.Linear:
        return layer(x)
    y = x @ layer.weight.T
    return y + layer.bias if "bias" in layer else y


def _fused_qkv(attn) -> tuple[mx.array, mx.array] | None:
    """(weight (3C, C), bias (3C,)) of an attention's query/key/value projections, or None when
    they are quantized (then they run as three products)."""
    if not all(type(m) is nn.Linear for m in (attn.query, attn.key, attn.value)):
        return None
    weight = mx.concatenate([attn.query.weight, attn.key.weight, attn.value.weight], axis=0)
    bias = mx.concatenate([attn.query.bias, mx.zeros_like(attn.query.bias), attn.value.bias])
    return weight, bias


def select(logits: mx.array, state: mx.array, suppress: mx.array, blank: mx.array, rules: mx.array):
    """The greedy pick over B rows on the device: logits (B, V) float32, state (B, 4) int32 (as
    `LogitRules.state`), the arrays of `ops.filter_arrays`. Returns (tokens (B,) uint32, their log
    probabilities (B,), next state (B, 4)). A row whose last token was end-of-text emits it again
    with log probability 0, so finished rows can ride along in a batch."""
    x = apply_filters(logits, state, suppress, blank, rules)
    logprobs = log_softmax(x)
    token = logprobs.argmax(axis=-1)
    logprob = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    n, last, last_ts = state[:, 0], state[:, 1], state[:, 3]
    ts_begin, eot = rules[1], rules[2]
    done = (n >= 1) & (last == eot)
    t = mx.where(done, eot, token.astype(mx.int32))
    logprob = mx.where(done, mx.zeros_like(logprob), logprob)
    next_state = mx.stack([n + 1, t, last, mx.where(t >= ts_begin, t, last_ts)], axis=1)
    return t.astype(mx.uint32), logprob, next_state


@lru_cache(maxsize=None)
def top_k_graph(k: int):
    """The compiled picker graph for k tokens per row: filters, log probabilities, the k best
    tokens per row (unordered when k > 1) and their log probabilities."""

    def graph(logits, state, suppress, blank, rules):
        logprobs = log_softmax(apply_filters(logits, state, suppress, blank, rules))
        if k == 1:
            tokens = logprobs.argmax(axis=-1)[:, None]
        else:
            tokens = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
        return tokens, mx.take_along_axis(logprobs, tokens, axis=-1)

    return mx.compile(graph)


def pick(rules: LogitRules, logits: mx.array, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The CUDA backend's picker: logits (B, V) float32 on the device, state (B, 4); the k best
    tokens per row (B, k), best first (ties by lower id), and their log probabilities. Only the
    (B, k) values leave the device."""
    tokens, values = top_k_graph(k)(logits, mx.array(state, mx.int32), *filter_arrays(rules))
    tokens, values = np.array(tokens).astype(np.int64), np.array(values)
    if k > 1:
        order = np.lexsort((tokens, -values), axis=-1)
        tokens, values = np.take_along_axis(tokens, order, axis=-1), np.take_along_axis(values, order, axis=-1)
    return tokens, values


# ---- the encoder's GELU as a CUDA kernel ------------------------------------------------------

_GELU_SOURCE = """
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = static_cast<T>(gelu_f(static_cast<float>(x[i])));
"""
_gelu_kernel = None


def gelu_cuda(x: mx.array) -> mx.array:
    """nn.gelu (exact, erf form; the rational erf evaluated in float32) as one plain CUDA kernel:
    under MLX's CUDA backend the compiled GELU of 1500 x 5120 float16 took 20x PyTorch's time."""
    global _gelu_kernel
    if _gelu_kernel is None:
        _gelu_kernel = mx.fast.cuda_kernel(name="whisper_mlx_gelu", input_names=["x"], output_names=["out"],
                                           source=_GELU_SOURCE, header=gelu_header())
    return _gelu_kernel(inputs=[x], template=[("T", x.dtype), ("N", x.size)], grid=(x.size, 1, 1),
                        threadgroup=(256, 1, 1), output_shapes=[x.shape], output_dtypes=[x.dtype])[0]


# ---- sessions ---------------------------------------------------------------------------------


class CudaSession(Session):
    """B rows over fixed-size self-attention caches (rows, heads, n_text_ctx, head_dim) per layer."""

    def __init__(self, backend: "CudaBackend", audio_features: mx.array, rows: int):
        super().__init__(audio_features.shape[0], rows)
        self.backend = backend
        self.n_audio_ctx = audio_features.shape[1]
        per = rows // self.n_audio
        cross = backend.cross_kv(audio_features)
        if per > 1:
            cross = [(mx.repeat(k, per, axis=0), mx.repeat(v, per, axis=0)) for k, v in cross]
        self.cross = cross
        self.cache = backend.new_cache(rows)
        self.offset = 0  # positions fed so far (the same for every row)
        self.pending: mx.array | None = None

    def prefill(self, tokens: np.ndarray, sot_index: int) -> np.ndarray:
        b = self.backend
        t = tokens.shape[1]
        self._room(t)
        zero = mx.array([0], mx.int32)
        hidden, self.cache = b.forward(mx.array(tokens, mx.int32), zero, b.mask(0, t), self.cache, self.cross)
        logits = b.logits(hidden[:, [sot_index, t - 1]])
        self.pending = logits[:, 1]
        self.offset = t
        return np.array(log_softmax(logits[:, 0]))

    def feed(self, tokens: np.ndarray) -> None:
        self._room(1)
        position = mx.array([self.offset], mx.int32)
        self.pending, self.cache = self.backend.step(mx.array(np.asarray(tokens), mx.int32), position, self.cache,
                                                     self.cross)
        self.offset += 1

    def _room(self, t: int) -> None:
        if self.offset + t > self.backend.n_ctx:
            raise ValueError(f"the text context holds {self.backend.n_ctx} positions: cannot feed {t} more "
                             f"after {self.offset}")

    def _pending(self) -> mx.array:
        if self.pending is None:
            raise RuntimeError("no pending logits: prefill first (a session that ran greedy is spent)")
        return self.pending

    def pick(self, rules: LogitRules, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        return pick(rules, self._pending(), state, k)

    def filtered_logits(self, rules: LogitRules, state: np.ndarray) -> np.ndarray:
        return np.array(self.backend.filters(self._pending(), mx.array(state, mx.int32), *filter_arrays(rules)))

    def pending_logits(self) -> np.ndarray:
        return np.array(self._pending(), dtype=np.float32)

    def reorder(self, source_rows: np.ndarray) -> None:
        moved = gather_rows(self.window, source_rows, self.cache, self.cross, self.pending)
        if moved is not None:
            self.window, self.cache, self.cross, self.pending = moved

    def greedy(self, rules: LogitRules, tokens: np.ndarray, sample_len: int, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """The base class's greedy decoding, pipelined on the device (see the module docstring):
        the same tokens; finished rows stay in the batch, emitting end-of-text. Leaves the session
        spent."""
        self._pending()
        b = self.backend
        fused = b.fused_step(self.n_audio_ctx) if self.rows == 1 else None
        try:
            if fused is not None:
                try:
                    return self._pipelined(rules, tokens, sample_len, n_ctx, fused)
                except FusedStepFailed:
                    warnings.warn("whisper_mlx: the fused CUDA decoder step could not run; using the compiled MLX step")
                    b.fused_off = True
            return self._pipelined(rules, tokens, sample_len, n_ctx, None)
        finally:
            self.pending = None

    def _pipelined(self, rules: LogitRules, tokens: np.ndarray, sample_len: int, n_ctx: int,
                   fused: "FusedStep | None") -> tuple[np.ndarray, np.ndarray]:
        b = self.backend
        rows, eot, n_vocab = self.rows, rules.eot, rules.n_vocab
        filters = filter_arrays(rules)
        token, logprob, state = b.select(self._pending(), mx.array(rules.state(tokens), mx.int32), *filters)
        mx.async_eval(token, logprob, state)
        cache = self.cache
        if fused is not None:  # the kernel updates these stacked copies in place
            kc, vc, ck, cv = fused.caches(cache, self.cross)
            state = state.reshape(-1)
        sampled = np.full((rows, sample_len), eot, np.int64)
        sums = np.zeros(rows, np.float64)
        offset = self.offset
        for i in range(sample_len):
            # the base loop stops once the tokens would outgrow the text context
            more = i + 1 < sample_len and offset + 1 <= n_ctx
            if more:  # step i + 1 queued before token i is read
                position = mx.array([offset], mx.int32)
                if fused is not None:
                    nxt = fused(token, position, state, kc, vc, ck, cv, *filters)
                else:
                    nxt = b.step_select(token, position, state, cache, self.cross, *filters)
                mx.async_eval(nxt[0], nxt[1], nxt[2])
            picked = np.array(token).astype(np.int64)
            if fused is not None and picked[0] >= n_vocab:
                raise FusedStepFailed(f"token {picked[0]}")
            sampled[:, i] = picked
            sums += np.array(logprob)
            if not more or (picked == eot).all():
                return sampled[:, : i + 1], sums
            token, logprob, state = nxt[:3]
            if fused is None:
                cache = nxt[3]
            offset += 1
        return sampled, sums


class CudaBackend(Backend):
    """MLX's CUDA backend with compiled fixed-shape graphs and the fused CUDA decoder step. Holds
    the fused query/key/value weights, the token embedding as a matrix, the compiled graphs and
    the fused steps (per audio length); the model is never modified."""

    name = "cuda"

    @classmethod
    def supports(cls, model: Whisper) -> str | None:
        if mx.default_device() != mx.gpu:
            return "MLX computes on the CPU"
        if not on_cuda():
            return "MLX's GPU here is not a CUDA GPU"
        return None

    def __init__(self, model: Whisper):
        super().__init__(model)
        dims = model.dims
        dec = model.decoder
        self.n_ctx, self.n_head = dims.n_text_ctx, dims.n_text_head
        self.head_dim = dims.n_text_state // dims.n_text_head
        self.dtype = dec.ln.weight.dtype
        self.qkv = [_fused_qkv(block.attn) for block in dec.blocks]
        self.encoder_qkv = [_fused_qkv(block.attn) for block in model.encoder.blocks]
        # the (n_vocab, n_state) token embedding as a matrix; None: quantized, used through the module
        self.embedding = None if isinstance(dec.token_embedding, nn.QuantizedEmbedding) else dec.token_embedding.weight
        mx.eval([w for w in self.qkv + self.encoder_qkv if w is not None])
        self.gelu = gelu_cuda if on_cuda() and hasattr(mx.fast, "cuda_kernel") else nn.gelu
        self._encode = mx.compile(self._encoder_graph)
        self.step = mx.compile(self._step_graph)
        self.step_select = mx.compile(self._step_select_graph)
        self.select = mx.compile(select)
        self.filters = mx.compile(apply_filters)
        self._fused: dict[int, FusedStep] = {}
        self.fused_off = False  # set when the fused kernel failed to run

    # -- encoder

    def encode(self, mel: mx.array) -> mx.array:
        return self._encode(mel.astype(self.model.encoder.conv1.weight.dtype))

    def _encoder_graph(self, mel: mx.array) -> mx.array:
        """AudioEncoder.__call__ with fused query/key/value projections and this backend's GELU."""
        enc = self.model.encoder
        x = self.gelu(enc.conv1(mel))
        x = self.gelu(enc.conv2(x))
        x = x + enc.positional_embedding[: x.shape[1]].astype(x.dtype)
        d = x.shape[-1] // self.dims.n_audio_head
        for block, qkv in zip(enc.blocks, self.encoder_qkv):
            attn = block.attn
            h = block.attn_ln(x)
            if qkv is not None:
                q, k, v = mx.split(mx.addmm(qkv[1], h, qkv[0].T), 3, axis=-1)
            else:
                q, k, v = attn.query(h), attn.key(h), attn.value(h)
            o = mx.fast.scaled_dot_product_attention(attn.heads(q), attn.heads(k), attn.heads(v), scale=d**-0.5)
            x = x + attn.out(attn.merge(o))
            x = x + block.mlp[2](self.gelu(block.mlp[0](block.mlp_ln(x))))
        return enc.ln_post(x)

    # -- decoder

    def session(self, audio_features: mx.array, rows: int) -> Session:
        return CudaSession(self, audio_features, rows)

    def cross_kv(self, audio_features: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Cross-attention keys and values (B, H, S, D) of every layer, once per window."""
        xa = audio_features.astype(self.dtype)
        return [(mx.contiguous(k), mx.contiguous(v)) for k, v in self.model.decoder.cross_kv(xa)]

    def new_cache(self, rows: int) -> list[tuple[mx.array, mx.array]]:
        shape = (rows, self.n_head, self.n_ctx, self.head_dim)
        return [(mx.zeros(shape, self.dtype), mx.zeros(shape, self.dtype)) for _ in self.model.decoder.blocks]

    def mask(self, offset: int | mx.array, t: int) -> mx.array:
        """Additive (t, n_ctx) mask: row i sees cache positions 0..offset+i."""
        rows = mx.arange(t)[:, None] + offset
        cols = mx.arange(self.n_ctx)[None, :]
        return mx.where(cols > rows, mx.array(NEG_INF, self.dtype), mx.array(0, self.dtype))

    def logits(self, x: mx.array) -> mx.array:
        """Final layer norm, then float32 scores over the vocabulary."""
        dec = self.model.decoder
        h = dec.ln(x)
        if self.embedding is None:
            return dec.token_embedding.as_linear(h).astype(mx.float32)
        return (h @ self.embedding.T).astype(mx.float32)

    def forward(self, tokens: mx.array, offset: mx.array, mask: mx.array, cache, cross):
        """Hidden states of `tokens` (B, T) at positions offset.. (offset: int32 (1,)); their keys
        and values are written into the fixed-size `cache`, which `mask` (T, n_ctx) limits."""
        dec = self.model.decoder
        positions = offset + mx.arange(tokens.shape[-1])
        x = dec.token_embedding(tokens) if self.embedding is None else self.embedding[tokens]
        x = (x + mx.take(dec.positional_embedding, positions, axis=0)).astype(self.dtype)
        scale = self.head_dim**-0.5
        new_cache = []
        for block, qkv, (kc, vc), (ck, cv) in zip(dec.blocks, self.qkv, cache, cross):
            attn = block.attn
            h = block.attn_ln(x)
            if qkv is not None:
                q, k, v = mx.split(h @ qkv[0].T + qkv[1], 3, axis=-1)
            else:
                q, k, v = _linear(attn.query, h), _linear(attn.key, h), _linear(attn.value, h)
            kc = mx.slice_update(kc, attn.heads(k), offset, axes=(2,))
            vc = mx.slice_update(vc, attn.heads(v), offset, axes=(2,))
            o = mx.fast.scaled_dot_product_attention(attn.heads(q), kc, vc, scale=scale, mask=mask)
            x = x + _linear(attn.out, attn.merge(o))
            cross_attn = block.cross_attn
            q = cross_attn.heads(_linear(cross_attn.query, block.cross_attn_ln(x)))
            o = mx.fast.scaled_dot_product_attention(q, ck, cv, scale=scale)
            x = x + _linear(cross_attn.out, cross_attn.merge(o))
            x = x + _linear(block.mlp[2], nn.gelu(_linear(block.mlp[0], block.mlp_ln(x))))
            new_cache.append((kc, vc))
        return x, new_cache

    def _step_graph(self, tokens, offset, cache, cross):
        """Feed one token per row (B,) at position `offset`: (logits (B, V) float32, cache)."""
        hidden, cache = self.forward(tokens.reshape(-1, 1).astype(mx.int32), offset, self.mask(offset, 1), cache, cross)
        return self.logits(hidden)[:, -1], cache

    def _step_select_graph(self, tokens, offset, state, cache, cross, suppress, blank, rules):
        """Feed one token per row, then pick each row's next one (`select`)."""
        logits, cache = self._step_graph(tokens, offset, cache, cross)
        token, logprob, state = select(logits, state, suppress, blank, rules)
        return token, logprob, state, cache

    def fused_step(self, n_audio_ctx: int) -> "FusedStep | None":
        """The fused one-row step for this audio length, built once; None where it does not apply."""
        if self.fused_off or not fused_available() or not FusedStep.supported(self):
            return None
        if n_audio_ctx not in self._fused:
            self._fused[n_audio_ctx] = FusedStep(self, n_audio_ctx)
        return self._fused[n_audio_ctx]


# ---- the whole one-row decoder step as one CUDA kernel ------------------------------------------
#
# MLX runs the compiled step as ~15 kernels per layer, each with a host-side cost of several
# microseconds: large-v3's step is ~7 ms against a 0.6 ms memory bound. The step below is one
# kernel (plus MLX's fills of its outputs): every block of a grid of one block per SM walks the
# layers, with a grid-wide barrier between 6 phases per layer (layer norm + fused QKV and the
# cache write; self-attention per head with its share of the output projection; layer norm +
# cross query; cross-attention split over key blocks; their combination per head with its share
# of the output projection; layer norm + MLP up + GELU + MLP down per slice of hidden units), then
# the vocabulary projection with the logit filters folded into per-block partial statistics, and
# block 0 picks the token. The output projections and the MLP's down projection are split over
# their input and added into the float32 residual stream with atomic adds. A barrier that waits
# too long (blocks not co-resident) sets a flag, the kernel returns an impossible token, and the
# session falls back to the compiled step.

FUSED_INPUTS = ["tok", "pos", "state", "rules", "emb", "pemb", "ln1w", "ln1b", "wqkv", "bqkv", "wo", "bo",
                "ln2w", "ln2b", "wcq", "bcq", "wco", "bco", "ln3w", "ln3b", "w1", "b1", "w2", "b2", "lnfw",
                "lnfb", "kc", "vc", "ck", "cv", "suppress", "blank"]
FUSED_OUTPUTS = ["tok_out", "lp_out", "st_out", "scr"]


class FusedStepFailed(RuntimeError):
    """The fused kernel's grid barrier timed out (its blocks were not all resident at once)."""


def fused_available() -> bool:
    """True under MLX's CUDA backend (the fused step is a CUDA kernel), unless
    WHISPER_MLX_FUSED_STEP=0."""
    if os.environ.get("WHISPER_MLX_FUSED_STEP", "1") == "0":
        return False
    return on_cuda() and hasattr(mx.fast, "cuda_kernel")


_sm_count: int | None = None


def sm_count() -> int:
    """Streaming multiprocessors of the current GPU, from the SM ids a grid of short blocks runs on
    (MLX reports no such attribute)."""
    global _sm_count
    if _sm_count is None:
        kernel = mx.fast.cuda_kernel(
            name="whisper_mlx_smid",
            input_names=["dummy"],
            output_names=["seen"],
            source="""
                unsigned s;
                asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
                long long t0 = clock64();
                while (clock64() - t0 < 20000) {}
                if (threadIdx.x == 0 && s < 4096) seen[s] = 1;
            """,
        )
        seen = kernel(inputs=[mx.zeros((1,))], grid=(8192 * 32, 1, 1), threadgroup=(32, 1, 1),
                      output_shapes=[(4096,)], output_dtypes=[mx.int32], init_value=0)[0]
        _sm_count = int(seen.sum().item())
    return _sm_count


class FusedStep:
    """One decoder step of one row (greedy pick with the logit filters) as one CUDA kernel; the
    weights of every layer stacked once (the attention output projections by head and the MLP's
    down projection by hidden slice, for the kernel's split-K products), the caches as
    (n_layer, n_head, rows, head_dim) arrays that the kernel updates in place."""

    def __init__(self, backend: CudaBackend, n_audio_ctx: int, threads: int = 512, blocks_per_sm: int = 1):
        model = backend.model
        dec, dims = model.decoder, model.dims
        self.dtype = t = backend.dtype
        self.cfg = self.config(dims, len(dec.blocks), n_audio_ctx, threads, sm_count() * blocks_per_sm)
        n_state, n_head, mlp = dims.n_text_state, dims.n_text_head, self.cfg["F"]
        head_dim, kb, nsm = self.cfg["D"], self.cfg["KB"], self.cfg["NSM"]

        def stack(get):
            return mx.stack([get(b).astype(t) for b in dec.blocks])

        def by_head(w):
            """(C, C) output projection -> (H, D / 8, C, 8): head h's columns, 8 at a time per row."""
            return w.reshape(n_state, n_head, head_dim // 8, 8).transpose(1, 2, 0, 3)

        def by_slice(w):
            """(C, F) MLP down projection -> (NSM, KB / 8, C, 8): slice s's columns (zero-padded to
            NSM * KB), 8 at a time per row."""
            if nsm * kb > mlp:
                w = mx.pad(w, [(0, 0), (0, nsm * kb - mlp)])
            return w.reshape(n_state, nsm, kb // 8, 8).transpose(1, 2, 0, 3)

        self.weights = [
            backend.embedding.astype(t), dec.positional_embedding.astype(mx.float32),
            stack(lambda b: b.attn_ln.weight), stack(lambda b: b.attn_ln.bias),
            mx.stack([q[0].astype(t) for q in backend.qkv]), mx.stack([q[1].astype(t) for q in backend.qkv]),
            stack(lambda b: by_head(b.attn.out.weight)), stack(lambda b: b.attn.out.bias),
            stack(lambda b: b.cross_attn_ln.weight), stack(lambda b: b.cross_attn_ln.bias),
            stack(lambda b: b.cross_attn.query.weight), stack(lambda b: b.cross_attn.query.bias),
            stack(lambda b: by_head(b.cross_attn.out.weight)), stack(lambda b: b.cross_attn.out.bias),
            stack(lambda b: b.mlp_ln.weight), stack(lambda b: b.mlp_ln.bias),
            stack(lambda b: b.mlp[0].weight), stack(lambda b: b.mlp[0].bias),
            stack(lambda b: by_slice(b.mlp[2].weight)), stack(lambda b: b.mlp[2].bias),
            dec.ln.weight.astype(t), dec.ln.bias.astype(t),
        ]
        mx.eval(self.weights)
        header, body = self.source()
        name = "whisper_mlx_step_" + hashlib.sha256((header + body).encode()).hexdigest()[:16]
        self.kernel = mx.fast.cuda_kernel(name=name, input_names=FUSED_INPUTS, output_names=FUSED_OUTPUTS,
                                          source=body, header=header, ensure_row_contiguous=False)
        self.scratch = self.scratch_size()

    @staticmethod
    def config(dims, n_layer: int, n_audio_ctx: int, threads: int, blocks: int) -> dict:
        """The kernel's compile-time shape: L, C, H, D, F, CTX (text context), S (audio context), V
        (vocabulary), NB (blocks), NT (threads per block), NSPLIT (cross-attention key blocks per
        head), NSO (row slices per head of the attention output projections), KB (hidden units per
        MLP slice, a multiple of 8: the rearranged down projection keeps 8 of a row's values in 16
        bytes), NSM (MLP slices, one per block)."""
        n_state, n_head = dims.n_text_state, dims.n_text_head
        mlp = 4 * n_state
        kb = -(-mlp // blocks)
        kb = -(-kb // 8) * 8
        return dict(L=n_layer, C=n_state, H=n_head, D=n_state // n_head, F=mlp, CTX=dims.n_text_ctx, S=n_audio_ctx,
                    V=dims.n_vocab, NB=blocks, NT=threads, NSPLIT=max(1, blocks // n_head),
                    NSO=max(1, blocks // n_head), KB=kb, NSM=-(-mlp // kb))

    def source(self) -> tuple[str, str]:
        """(header, kernel body): the shape as WM_<key> defines, gelu_f, the step's source."""
        consts = "".join(f"#define WM_{k} {v}\n" for k, v in self.cfg.items())
        consts += f"#define WM_NW {self.cfg['NT'] // 32}\n"
        body = f"step_impl<T>({', '.join(FUSED_INPUTS + FUSED_OUTPUTS)});\n"
        return consts + gelu_header() + FUSED_HEADER.read_text(), body

    def scratch_size(self) -> int:
        """float32 elements of the kernel's scratch output (barrier, activations, partial sums)."""
        cfg = self.cfg
        return 32 + 4 * cfg["C"] + cfg["H"] * cfg["NSPLIT"] * (cfg["D"] + 2) + cfg["NB"] * 8

    @staticmethod
    def supported(backend: CudaBackend) -> bool:
        """Float weights (no quantized layers) in float16/bfloat16/float32, 64-wide heads."""
        dec = backend.model.decoder
        if backend.embedding is None or any(q is None for q in backend.qkv):
            return False
        layers = [m for b in dec.blocks for m in (b.attn.out, b.cross_attn.query, b.cross_attn.out, b.mlp[0], b.mlp[2])]
        if any(type(m) is not nn.Linear for m in layers):
            return False
        return backend.dtype in (mx.float16, mx.bfloat16, mx.float32) and backend.head_dim == 64

    @staticmethod
    def caches(cache, cross):
        """A one-row session's per-layer self-attention cache and cross keys/values, stacked."""
        kc = mx.concatenate([k for k, _ in cache], axis=0)
        vc = mx.concatenate([v for _, v in cache], axis=0)
        ck = mx.concatenate([k for k, _ in cross], axis=0)
        cv = mx.concatenate([v for _, v in cross], axis=0)
        return kc, vc, ck, cv

    def launch(self, token, position, state, kc, vc, ck, cv, suppress, blank, rules):
        """The kernel's outputs: token (1,) uint32, its log probability (1,), next state (4,), scratch."""
        inputs = [token, position, state, rules, *self.weights, kc, vc, ck, cv, suppress, blank]
        return self.kernel(
            inputs=inputs, template=[("T", self.dtype)], grid=(self.cfg["NB"] * self.cfg["NT"], 1, 1),
            threadgroup=(self.cfg["NT"], 1, 1), output_shapes=[(1,), (1,), (4,), (self.scratch,)],
            output_dtypes=[mx.uint32, mx.float32, mx.int32, mx.float32], init_value=0)

    def __call__(self, token, position, state, kc, vc, ck, cv, suppress, blank, rules):
        """Feed `token` at `position` and pick the next one: (token, log probability, state)."""
        return tuple(self.launch(token, position, state, kc, vc, ck, cv, suppress, blank, rules)[:3])
