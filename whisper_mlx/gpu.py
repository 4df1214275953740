"""Greedy decoding on a GPU: the whole token step as one compiled MLX graph.

On MLX's GPU backends (CUDA, Metal) a decoder step is bound by per-operation cost, not by
arithmetic or memory, so this path cuts operations and host round trips:

- the self-attention cache has a fixed size (n_text_ctx rows, written in place with
  slice_update and masked beyond the current position), so every step has the same shapes and
  runs as one compiled graph that MLX neither re-traces nor re-plans;
- query/key/value projections of self-attention are one fused matmul; cross-attention uses the
  fused attention kernel over keys/values projected once per window;
- the logit filters (suppressed tokens, blank at the start, openai-whisper's timestamp rules),
  the argmax and the chosen token's log probability run on the GPU inside the same graph, with
  the timestamp-rule state (last two tokens, last timestamp) kept on the device, so only the
  token and its log probability come back to the host;
- step i+1 is queued before the host reads token i, so the GPU never waits for Python.

Used by `decoding.decode` for greedy decoding (temperature 0, no beam search, one sequence per
window) off the CPU; the CPU path keeps the NumPy filters.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .model import Whisper, gelu

_NEG_INF = float("-inf")


def _sum_exp(x: mx.array) -> mx.array:
    """sum(exp(x)) over the last axis in blocks of 1024, then over the blocks: a plain running sum
    (MLX's CPU reduction) drops the ~5e4 tiny terms behind one near-1 term, which NumPy's pairwise
    sum keeps (a 1e-4 difference in a token's log probability)."""
    e = mx.exp(x)
    n = e.shape[-1]
    if n % 1024:
        e = mx.pad(e, [(0, 0)] * (e.ndim - 1) + [(0, 1024 - n % 1024)])
    return e.reshape(*e.shape[:-1], -1, 1024).sum(axis=-1).sum(axis=-1, keepdims=True)


def _logsumexp(x: mx.array) -> mx.array:
    """log(sum(exp(x))) over the last axis, -inf (not NaN) when every value is -inf."""
    m = x.max(axis=-1, keepdims=True)
    safe = mx.where(mx.isinf(m), mx.zeros_like(m), m)
    return (safe + mx.log(_sum_exp(x - safe)))[..., 0]


def _log_softmax(x: mx.array) -> mx.array:
    """decoding.log_softmax's formula: (x - max) - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - mx.log(_sum_exp(shifted))


def select_token(logits: mx.array, state: mx.array, suppress: mx.array, blank: mx.array, rules: mx.array):
    """One greedy pick with openai-whisper's logit filters, on the device.

    logits (1, V) float32; state int32 (4,): tokens sampled so far, last token, the one before it,
    last timestamp token (-1: none); suppress / blank (V,) additive masks (0 or -inf; blank applies
    at the first sampled position); rules int32 (5,): timestamps on, timestamp_begin, eot,
    no_timestamps, max initial timestamp index (-1: none).
    Returns (token (1,) uint32, its log probability (1,) float32, next state)."""
    n_vocab = logits.shape[-1]
    idx = mx.arange(n_vocab)
    n, last, penult, last_ts = state[0], state[1], state[2], state[3]
    use_ts, ts_begin, eot, no_ts, max_ts = rules[0] > 0, rules[1], rules[2], rules[3], rules[4]
    first = n == 0
    x = logits + suppress + mx.where(first, blank, mx.zeros_like(blank))

    is_ts = idx >= ts_begin
    last_was_ts = (n >= 1) & (last >= ts_begin)
    penult_was_ts = (n < 2) | (penult >= ts_begin)
    bound = mx.where(last_was_ts & ~penult_was_ts, last_ts, last_ts + 1)
    forbid = idx == no_ts
    forbid = forbid | (last_was_ts & penult_was_ts & is_ts)
    forbid = forbid | (last_was_ts & ~penult_was_ts & (idx < eot))
    forbid = forbid | ((last_ts >= 0) & is_ts & (idx < bound))
    forbid = forbid | (first & ~is_ts)
    forbid = forbid | (first & (max_ts >= 0) & (idx > ts_begin + max_ts))
    x = mx.where(use_ts & forbid, _NEG_INF, x)

    logprobs = _log_softmax(x)
    ts_mass = _logsumexp(mx.where(is_ts, logprobs, _NEG_INF))
    text_best = mx.where(is_ts, _NEG_INF, logprobs).max(axis=-1)
    x = mx.where(use_ts & (ts_mass > text_best)[..., None] & ~is_ts, _NEG_INF, x)

    token = x.argmax(axis=-1)
    logprob = mx.take_along_axis(_log_softmax(x), token[:, None], axis=-1)[:, 0]
    t = token[0].astype(mx.int32)
    next_state = mx.stack([n + 1, t, last, mx.where(t >= ts_begin, t, last_ts)])
    return token, logprob, next_state


def _linear(layer, x: mx.array) -> mx.array:
    """layer(x), with a float layer's bias added as a separate (fusable) op: MLX's CUDA backend runs
    a one-row product without bias as its own matrix-vector kernel, but one with bias through
    cuBLASLt, captured into a child graph at several times the host cost."""
    if type(layer) is not nn.Linear:
        return layer(x)
    y = x @ layer.weight.T
    return y + layer.bias if "bias" in layer else y


class GpuDecoder:
    """The text decoder of one model, rearranged for fixed-shape compiled steps."""

    def __init__(self, model: Whisper):
        self.model = model
        dims = model.dims
        dec = model.decoder
        self.n_ctx, self.n_head = dims.n_text_ctx, dims.n_text_head
        self.head_dim = dims.n_text_state // dims.n_text_head
        self.dtype = dec.ln.weight.dtype
        self.qkv = [self._fused_qkv(block.attn) for block in dec.blocks]
        # the (n_vocab, n_state) token embedding; None: quantized, used through the module
        # (the CPU loader keeps it transposed or as a NumPy float16 matrix instead)
        emb = dec.token_embedding
        if isinstance(emb, nn.QuantizedEmbedding):
            self.embedding = None
        elif emb.weight.size:
            self.embedding = emb.weight
        elif dec._embedding_t is not None:
            self.embedding = mx.contiguous(dec._embedding_t.T)
        else:
            self.embedding = mx.array(dec._embedding16).astype(self.dtype)
        mx.eval([w for w in self.qkv if w is not None], self.embedding)
        self._step = mx.compile(self._step_select)

    def logits(self, x: mx.array) -> mx.array:
        """Final layer norm, then float32 scores over the vocabulary (a matrix-vector product per row)."""
        h = self.model.decoder.ln(x)
        if self.embedding is None:
            return self.model.decoder.token_embedding.as_linear(h).astype(mx.float32)
        return (h @ self.embedding.T).astype(mx.float32)

    @staticmethod
    def _fused_qkv(attn) -> tuple[mx.array, mx.array] | None:
        """(weight (3C, C), bias (3C,)) of the query/key/value projections, or None when they are
        quantized (then they run as three products)."""
        if not all(type(m) is nn.Linear for m in (attn.query, attn.key, attn.value)):
            return None
        weight = mx.concatenate([attn.query.weight, attn.key.weight, attn.value.weight], axis=0)
        bias = mx.concatenate([attn.query.bias, mx.zeros_like(attn.query.bias), attn.value.bias])
        return weight, bias

    def cross_kv(self, audio_features: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Cross-attention keys and values (B, H, S, D) of every layer, once per window."""
        xa = audio_features.astype(self.dtype)
        return [
            (mx.contiguous(b.cross_attn.heads(b.cross_attn.key(xa))), mx.contiguous(b.cross_attn.heads(b.cross_attn.value(xa))))
            for b in self.model.decoder.blocks
        ]

    def new_cache(self, batch: int) -> list[tuple[mx.array, mx.array]]:
        shape = (batch, self.n_head, self.n_ctx, self.head_dim)
        return [(mx.zeros(shape, self.dtype), mx.zeros(shape, self.dtype)) for _ in self.model.decoder.blocks]

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
            x = x + _linear(block.mlp[2], gelu(_linear(block.mlp[0], block.mlp_ln(x))))
            new_cache.append((kc, vc))
        return x, new_cache

    def mask(self, offset: int | mx.array, t: int) -> mx.array:
        """Additive (t, n_ctx) mask: row i sees cache rows 0..offset+i."""
        rows = mx.arange(t)[:, None] + offset
        cols = mx.arange(self.n_ctx)[None, :]
        return mx.where(cols > rows, mx.array(_NEG_INF, self.dtype), mx.array(0, self.dtype))

    def _step_select(self, token, offset, state, cache, cross, suppress, blank, rules):
        """Feed one token per sequence at position `offset`, then pick the next one."""
        hidden, cache = self.forward(token.reshape(-1, 1).astype(mx.int32), offset, self.mask(offset, 1), cache, cross)
        logits = self.logits(hidden)[:, -1]
        next_token, logprob, state = select_token(logits, state, suppress, blank, rules)
        return next_token, logprob, state, cache

    def prefill(self, tokens: np.ndarray, cache, cross, rows: list[int]):
        """All prompt tokens at once (uncompiled: its length changes per window); the logits
        (B, len(rows), V) float32 at the given rows."""
        t = tokens.shape[-1]
        zero = mx.array([0], mx.int32)
        hidden, cache = self.forward(mx.array(tokens, mx.int32), zero, self.mask(0, t), cache, cross)
        return self.logits(hidden[:, rows]), cache


def decoder_for(model: Whisper) -> GpuDecoder:
    """The model's GpuDecoder, built once (its fused weights and compiled step are reused)."""
    gpu = getattr(model, "_gpu_decoder", None)
    if gpu is None:
        gpu = GpuDecoder(model)
        object.__setattr__(model, "_gpu_decoder", gpu)
    return gpu


_masks: dict[tuple, tuple[mx.array, mx.array]] = {}


def _filter_masks(n_vocab: int, suppress_ids: tuple[int, ...], blank_ids: tuple[int, ...]):
    key = (n_vocab, suppress_ids, blank_ids)
    if key not in _masks:
        suppress = np.zeros(n_vocab, np.float32)
        suppress[list(suppress_ids)] = -np.inf
        blank = np.zeros(n_vocab, np.float32)
        blank[list(blank_ids)] = -np.inf
        _masks[key] = (mx.array(suppress), mx.array(blank))
    return _masks[key]


def greedy(
    model: Whisper,
    audio_features: mx.array,
    initial: tuple[int, ...],
    *,
    sot_index: int,
    sample_len: int,
    eot: int,
    no_speech: int,
    suppress_ids: tuple[int, ...],
    blank_ids: tuple[int, ...],
    timestamp_rules: tuple[int, int, int] | None,
) -> tuple[np.ndarray, float, float]:
    """Greedy decoding of one window (audio_features (1, n_audio_ctx, n_audio_state)).

    timestamp_rules: (timestamp_begin, no_timestamps, max initial timestamp index or -1), or None
    when timestamps are off. Returns (tokens (1, len(initial) + sampled), sum of the sampled
    tokens' log probabilities, no-speech probability at the start-of-transcript position), as
    decoding's NumPy loop computes them."""
    gpu = decoder_for(model)
    args = (audio_features, initial)
    kwargs = dict(sot_index=sot_index, sample_len=sample_len, eot=eot, no_speech=no_speech,
                  suppress_ids=suppress_ids, blank_ids=blank_ids, timestamp_rules=timestamp_rules)
    fused = fused_for(gpu, audio_features.shape[1])
    if fused is not None:
        try:
            return _greedy(gpu, *args, fused=fused, **kwargs)
        except FusedStepFailed:
            import warnings

            warnings.warn("whisper_mlx: the fused CUDA decoder step could not run; using the compiled MLX step")
            gpu._fused_off = True
    return _greedy(gpu, *args, fused=None, **kwargs)


def _greedy(gpu: GpuDecoder, audio_features, initial, *, sot_index, sample_len, eot, no_speech, suppress_ids,
            blank_ids, timestamp_rules, fused: FusedStep | None):
    model = gpu.model
    n_vocab = model.dims.n_vocab
    suppress, blank = _filter_masks(n_vocab, suppress_ids, blank_ids)
    ts_begin, no_ts, max_ts = timestamp_rules if timestamp_rules is not None else (n_vocab, n_vocab, -1)
    rules = mx.array([int(timestamp_rules is not None), ts_begin, eot, no_ts, max_ts], mx.int32)

    cross = gpu.cross_kv(audio_features)
    cache = gpu.new_cache(1)
    prompt = np.array([initial])
    logits, cache = gpu.prefill(prompt, cache, cross, rows=[sot_index, len(initial) - 1])
    at_sot = logits[:, 0]
    no_speech_prob = mx.exp(at_sot[:, no_speech] - _logsumexp(at_sot))
    state = mx.array([0, -1, -1, -1], mx.int32)
    token, logprob, state = select_token(logits[:, 1], state, suppress, blank, rules)
    mx.async_eval(token, logprob, state, no_speech_prob)
    if fused is not None:
        kc, vc, ck, cv = fused.caches(cache, cross)

    sampled: list[int] = []
    sum_logprob = 0.0
    offset = len(initial)
    for i in range(sample_len):
        # the loop in decoding stops once the tokens outgrow the text context
        more = i + 1 < sample_len and offset + 1 <= gpu.n_ctx
        if more:
            position = mx.array([offset], mx.int32)
            if fused is not None:
                nxt = fused(token, position, state, kc, vc, ck, cv, suppress, blank, rules)
            else:
                nxt = gpu._step(token, position, state, cache, cross, suppress, blank, rules)
            mx.async_eval(nxt[0], nxt[1], nxt[2])
        t = int(token.item())
        if t >= n_vocab:
            raise FusedStepFailed(f"token {t}")
        sampled.append(t)
        sum_logprob += float(logprob.item())
        if t == eot or not more:
            break
        if fused is not None:
            token, logprob, state = nxt
        else:
            token, logprob, state, cache = nxt
        offset += 1
    tokens = np.array([list(initial) + sampled])
    return tokens, sum_logprob, float(no_speech_prob.item())



# ---- the whole decoder step as one CUDA kernel ------------------------------------------------
#
# MLX runs the compiled step above as ~15 kernels per layer, each with a host-side cost (graph
# node, dependency tracking, graph update and launch) of several microseconds: large-v3's step is
# ~7 ms against a 0.6 ms memory bound. Under MLX's CUDA backend the step below is one kernel
# (plus MLX's fills of its outputs): every block of a grid of one block per SM walks the layers,
# with a grid-wide barrier between 6 phases per layer (layer norm + fused QKV and the cache
# write; self-attention per head with its share of the output projection; layer norm + cross
# query; cross-attention split over key blocks; their combination per head with its share of the
# output projection; layer norm + MLP up + GELU + MLP down per slice of hidden units), then the
# vocabulary projection with the logit filters folded into per-block partial statistics, and
# block 0 picks the token. The output projections and the MLP's down projection are split over
# their input (per head, per hidden slice) and added into the float32 residual stream with
# atomic adds, which saves the barrier that a separate projection phase would need. A barrier
# that waits too long (blocks not co-resident) sets a flag, the kernel returns an impossible
# token, and the caller falls back to the compiled MLX step.

_ASSETS = Path(__file__).parent / "assets"
_FUSED_HEADER = _ASSETS / "fused_step.cuh"  # the kernel's CUDA source
_GELU_HEADER = (_ASSETS / "gelu_coeffs.h").read_text() + (_ASSETS / "gelu.cuh").read_text()  # gelu_f and its constants

_FUSED_INPUTS = ["tok", "pos", "state", "rules", "emb", "pemb", "ln1w", "ln1b", "wqkv", "bqkv", "wo", "bo",
                 "ln2w", "ln2b", "wcq", "bcq", "wco", "bco", "ln3w", "ln3b", "w1", "b1", "w2", "b2", "lnfw",
                 "lnfb", "kc", "vc", "ck", "cv", "suppress", "blank"]
_FUSED_OUTPUTS = ["tok_out", "lp_out", "st_out", "scr"]


def fused_source(cfg: dict) -> tuple[str, str]:
    """(header, kernel body) of the fused step for one model shape; cfg: L, C, H, D, F, CTX
    (text context), S (audio context), V (vocabulary), NB (blocks), NT (threads per block),
    NSPLIT (cross-attention key blocks per head), NSO (row slices per head of the attention output
    projections), KB (hidden units per MLP slice, a multiple of 8), NSM (MLP slices)."""
    consts = "".join(f"#define WM_{k} {v}\n" for k, v in cfg.items())
    consts += f"#define WM_NW {cfg['NT'] // 32}\n"
    body = f"step_impl<T>({', '.join(_FUSED_INPUTS + _FUSED_OUTPUTS)});\n"
    return consts + _GELU_HEADER + _FUSED_HEADER.read_text(), body


_FUSED_PHASES = ["qkv", "self_out", "cross_q", "cross", "cross_out", "mlp"]  # per layer, between barriers


def fused_scratch_size(cfg: dict) -> int:
    """float32 elements of the kernel's scratch output (barrier, activations, partial sums)."""
    size = 32 + 4 * cfg["C"] + cfg["H"] * cfg["NSPLIT"] * (cfg["D"] + 2) + cfg["NB"] * 8
    if cfg.get("TIMING"):  # (arrival, departure) per block at each barrier
        size = cfg["TIMING"] + 2 * (len(_FUSED_PHASES) * cfg["L"] + 2) * cfg["NB"]
    return size


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


def fused_available() -> bool:
    """True under MLX's CUDA backend (the fused step is a CUDA kernel), unless
    WHISPER_MLX_FUSED_STEP=0."""
    import os

    if os.environ.get("WHISPER_MLX_FUSED_STEP", "1") == "0":
        return False
    try:
        return mx.default_device() == mx.gpu and mx.cuda.is_available() and hasattr(mx.fast, "cuda_kernel")
    except AttributeError:
        return False


class FusedStep:
    """One decoder step (greedy pick with the logit filters) as one CUDA kernel; the weights of
    every layer stacked once (the attention output projections by head and the MLP's down
    projection by hidden slice, for the kernel's split-K products), the caches as
    (n_layer, n_head, rows, head_dim) arrays that the kernel updates in place."""

    def __init__(self, gpu: GpuDecoder, n_audio_ctx: int, threads: int = 512, blocks_per_sm: int = 1,
                 timing: bool = False, **switches: int):
        model, dec = gpu.model, gpu.model.decoder
        dims = model.dims
        blocks = dec.blocks
        t = gpu.dtype
        self.gpu = gpu

        def stack(get):
            return mx.stack([get(b).astype(t) for b in blocks])

        n_state, n_head = dims.n_text_state, dims.n_text_head
        head_dim = n_state // n_head
        mlp = blocks[0].mlp[0].weight.shape[0]
        nb = sm_count() * blocks_per_sm
        nsplit = max(1, nb // n_head)
        # the MLP in slices of KB hidden units, one per block (KB a multiple of 8: the rearranged
        # down projection below keeps 8 of a row's values in 16 bytes), NSM slices in all
        kb = -(-mlp // nb)
        kb = -(-kb // 8) * 8
        nsm = -(-mlp // kb)
        self.cfg = dict(L=len(blocks), C=n_state, H=n_head, D=head_dim, F=mlp, CTX=dims.n_text_ctx,
                        S=n_audio_ctx, V=dims.n_vocab, NB=nb, NT=threads, NSPLIT=nsplit,
                        NSO=max(1, nb // n_head), KB=kb, NSM=nsm)
        self.cfg.update(switches)  # extra compile-time defines (WM_<name>), for experiments
        if timing:  # the timing area starts after the scratch proper
            self.cfg["TIMING"] = fused_scratch_size(self.cfg)

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
            gpu.embedding.astype(t), dec.positional_embedding.astype(mx.float32),
            stack(lambda b: b.attn_ln.weight), stack(lambda b: b.attn_ln.bias),
            mx.stack([q[0].astype(t) for q in gpu.qkv]), mx.stack([q[1].astype(t) for q in gpu.qkv]),
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
        header, body = fused_source(self.cfg)
        name = "whisper_mlx_step_" + "_".join(str(v) for v in self.cfg.values())
        self.kernel = mx.fast.cuda_kernel(name=name, input_names=_FUSED_INPUTS, output_names=_FUSED_OUTPUTS,
                                          source=body, header=header, ensure_row_contiguous=False)
        self.scratch = fused_scratch_size(self.cfg)

    @staticmethod
    def supported(gpu: GpuDecoder) -> bool:
        """Float weights (no quantized layers) in float16/bfloat16/float32, 64-wide heads."""
        dims = gpu.model.dims
        dec = gpu.model.decoder
        if gpu.embedding is None or any(q is None for q in gpu.qkv):
            return False
        layers = [m for b in dec.blocks for m in (b.attn.out, b.cross_attn.query, b.cross_attn.out, b.mlp[0], b.mlp[2])]
        if any(type(m) is not nn.Linear for m in layers):
            return False
        return gpu.dtype in (mx.float16, mx.bfloat16, mx.float32) and dims.n_text_state // dims.n_text_head == 64

    def caches(self, cache, cross):
        """The per-layer self-attention cache (after the prompt) and cross keys/values, stacked."""
        kc = mx.concatenate([k for k, _ in cache], axis=0)
        vc = mx.concatenate([v for _, v in cache], axis=0)
        ck = mx.concatenate([k for k, _ in cross], axis=0)
        cv = mx.concatenate([v for _, v in cross], axis=0)
        return kc, vc, ck, cv

    def __call__(self, token, position, state, kc, vc, ck, cv, suppress, blank, rules):
        w = self.weights
        inputs = [token, position, state, rules, *w, kc, vc, ck, cv, suppress, blank]
        tok, lp, st, scratch = self.kernel(
            inputs=inputs, template=[("T", self.gpu.dtype)], grid=(self.cfg["NB"] * self.cfg["NT"], 1, 1),
            threadgroup=(self.cfg["NT"], 1, 1), output_shapes=[(1,), (1,), (4,), (self.scratch,)],
            output_dtypes=[mx.uint32, mx.float32, mx.int32, mx.float32], init_value=0)
        if self.cfg.get("TIMING"):
            self.last_scratch = scratch
        return tok, lp, st


def phase_times(step: FusedStep) -> dict[str, float]:
    """Microseconds per phase of the last step of a FusedStep built with timing=True, summed over
    layers: 'work' = mean over blocks of the time from leaving one barrier to reaching the next,
    'critical' = from the first block leaving the previous barrier to the last one reaching this
    one, 'wake' = from that last arrival to the mean departure."""
    cfg = step.cfg
    nb, nbar = cfg["NB"], len(_FUSED_PHASES) * cfg["L"] + 2
    raw = np.asarray(step.last_scratch).view(np.uint32)[cfg["TIMING"]:cfg["TIMING"] + 2 * nbar * nb]
    t = raw.reshape(nbar, 2, nb).astype(np.int64)
    t = (t - int(t[0, 0, 0])) % (1 << 32)  # ns since block 0 reached the first barrier
    names = ["embed"] + _FUSED_PHASES * cfg["L"] + ["logits"]
    out: dict[str, float] = {}
    for i in range(1, nbar):
        arrive, depart_prev = t[i, 0], t[i - 1, 1]
        for key, val in (("work", (arrive - depart_prev).mean()), ("critical", arrive.max() - depart_prev.min()),
                         ("wake", t[i, 1].mean() - arrive.max())):
            out[f"{names[i]} {key}"] = out.get(f"{names[i]} {key}", 0.0) + val / 1e3
    out["total"] = (t[-1, 1].max() - t[0, 0].min()) / 1e3
    return out


class FusedStepFailed(RuntimeError):
    """The fused kernel's grid barrier timed out (its blocks were not all resident at once)."""


def fused_for(gpu: GpuDecoder, n_audio_ctx: int) -> FusedStep | None:
    """The decoder's FusedStep for this audio length, built once; None where unsupported."""
    if getattr(gpu, "_fused_off", False) or not fused_available() or not FusedStep.supported(gpu):
        return None
    steps = gpu.__dict__.setdefault("_fused", {})
    if n_audio_ctx not in steps:
        steps[n_audio_ctx] = FusedStep(gpu, n_audio_ctx)
    return steps[n_audio_ctx]


# ---- the encoder ------------------------------------------------------------------------------

_GELU_SOURCE = """
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = static_cast<T>(gelu_f(static_cast<float>(x[i])));
"""
_gelu_kernel = None


def gelu_cuda(x: mx.array) -> mx.array:
    """model.gelu (the same rational erf, in float32) as one plain CUDA kernel: under MLX 0.32's
    CUDA backend the compiled model.gelu takes 0.22 ms for 1500 x 5120 float16 (PyTorch's GELU
    0.011 ms), 7 ms of the large-v3 encoder's 15.6."""
    global _gelu_kernel
    if _gelu_kernel is None:
        _gelu_kernel = mx.fast.cuda_kernel(name="whisper_mlx_gelu", input_names=["x"], output_names=["out"],
                                           source=_GELU_SOURCE, header=_GELU_HEADER)
    return _gelu_kernel(inputs=[x], template=[("T", x.dtype), ("N", x.size)], grid=(x.size, 1, 1),
                        threadgroup=(256, 1, 1), output_shapes=[x.shape], output_dtypes=[x.dtype])[0]



class GpuEncoder:
    """The audio encoder as one compiled graph with fused query/key/value projections: MLX fuses
    the residual adds, casts and GELU into fewer kernels, and the graph is traced once per batch
    size. Same function as `AudioEncoder.__call__` (the GPU branch of MultiHeadAttention.full)."""

    def __init__(self, model: Whisper):
        enc = model.encoder
        self.model = model
        self.n_head = model.dims.n_audio_head
        self.qkv = [GpuDecoder._fused_qkv(block.attn) for block in enc.blocks]
        mx.eval([w for w in self.qkv if w is not None])
        self.gelu = gelu_cuda if fused_available() else gelu
        self._forward = mx.compile(self.forward)

    def forward(self, mel: mx.array) -> mx.array:
        enc = self.model.encoder
        x = self.gelu(enc.conv1(mel))
        x = self.gelu(enc.conv2(x))
        x = x + enc.positional_embedding[: x.shape[1]].astype(x.dtype)
        d = x.shape[-1] // self.n_head
        for block, qkv in zip(enc.blocks, self.qkv):
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


def embed_audio(model: Whisper, mel: mx.array) -> mx.array:
    """model.embed_audio through the model's GpuEncoder (built once)."""
    encoder = getattr(model, "_gpu_encoder", None)
    if encoder is None:
        encoder = GpuEncoder(model)
        object.__setattr__(model, "_gpu_encoder", encoder)
    return encoder._forward(mel.astype(model.encoder.conv1.weight.dtype))
