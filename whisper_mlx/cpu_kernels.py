"""The C kernels of csrc/cpu_kernels.c, for the hot spots MLX's Linux CPU backend leaves slow.

`load` runs before `mlx.core` is imported (runtime.py calls it): the library's `cblas_sgemm`
must come first in the global symbol namespace so one-row products reach `cblas_sgemv`.
`attention` and `gelu_` work on evaluated MLX arrays through zero-copy NumPy views.
`decode_tokens` runs the decoder's whole step for B rows over a `DecoderKernel` (the parameter
table) and a `DecoderCache` (its kv_cache: cross-attention per window, self-attention per row,
rows reordered or dropped by `rearrange`); `pick` applies the logit filters and picks each row's
k best tokens. Without the compiled library (not Linux, or no compiler at install) `available()`
is False and the model keeps MLX's own kernels (backends/cpu.py is not offered).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LIB: ctypes.CDLL | None = None
_THREADS = 1
_P = ctypes.c_void_p


def library_path() -> Path | None:
    """The built `_cpu_kernels` shared library next to this file, if there is one."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_cpu_kernels{suffix}"
        if path.is_file():
            return path
    return None


def load(blas_path: str) -> bool:
    """Load the kernels (RTLD_GLOBAL), then the optimized BLAS at `blas_path`, and bind them.
    Call before `import mlx.core`. Returns False, loading nothing, where there is no library."""
    global _LIB
    path = library_path()
    if path is None or os.environ.get("WHISPER_MLX_KERNELS") == "none":
        return False
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(blas_path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    lib.wm_bind_blas.argtypes = [ctypes.c_char_p]
    if lib.wm_bind_blas(blas_path.encode()) != 0:
        return False
    lib.wm_attention.argtypes = [_P, ctypes.c_int] * 4 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int]
    lib.wm_gelu.argtypes = [_P, ctypes.c_long]
    lib.wm_logits_f16.argtypes = [_P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P, ctypes.c_int]
    lib.wm_gemv_calls.restype = ctypes.c_long
    lib.wm_encode.argtypes = [_P] + [ctypes.c_int] * 5 + [_P, _P, ctypes.c_int]
    lib.wm_decode_tokens.argtypes = ([_P, _P] + [ctypes.c_int] * 5 + [ctypes.c_long, ctypes.c_int, _P, ctypes.c_int, _P]
                                     + [ctypes.c_int] * 3 + [_P, ctypes.c_int, _P, ctypes.c_int])
    lib.wm_cross_kv.argtypes = [_P] + [ctypes.c_int] * 3 + [_P, _P]
    lib.wm_cross_kv_f16.argtypes = [_P] + [ctypes.c_int] * 3 + [_P, _P, _P]
    lib.wm_pick.argtypes = ([_P, ctypes.c_int, ctypes.c_int, _P, _P, _P, ctypes.c_int, _P, ctypes.c_int, _P, _P,
                             ctypes.c_int])
    global _THREADS
    _LIB, _THREADS = lib, threads()
    return True


def available() -> bool:
    return _LIB is not None


def gemv_calls() -> int:
    """How many one-row products the interposer sent to sgemv so far (0 when not loaded)."""
    return int(_LIB.wm_gemv_calls()) if _LIB is not None else 0


def threads() -> int:
    """Threads for the kernels: the BLAS thread limit where one is set, else the CPU count."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _evaluated(*arrays, dtypes: list | None = None) -> tuple[list, list[np.ndarray]]:
    """The arrays made contiguous and evaluated, with writable NumPy views of them (no copy): the
    C kernels read and write MLX's buffers directly. Each must have its dtype in `dtypes`
    (default: all float32)."""
    import mlx.core as mx

    arrays = [mx.contiguous(a) for a in arrays]
    mx.eval(*arrays)
    views = [np.array(a, copy=False) for a in arrays]
    for view, dtype in zip(views, dtypes or [np.float32] * len(views)):
        assert view.dtype == dtype and view.flags.c_contiguous, (view.dtype, dtype, view.strides)
    return arrays, views


def attention(q, k, v, n_head: int):
    """softmax(q k^T / sqrt(d)) v per head for unmasked (B, T, n_head*d) float32 q, k, v;
    returns (B, T, n_head*d) with the heads already merged."""
    import mlx.core as mx

    _, (qn, kn, vn) = _evaluated(q, k, v)
    b, t, c = qn.shape
    s, d = kn.shape[1], c // n_head
    out = np.empty((b, t, c), np.float32)
    for i in range(b):
        rc = _LIB.wm_attention(qn[i].ctypes.data, c, kn[i].ctypes.data, c, vn[i].ctypes.data, c,
                               out[i].ctypes.data, c, t, s, n_head, d, d**-0.5, _THREADS)
        if rc != 0:
            raise MemoryError("whisper_mlx attention kernel: out of memory")
    return mx.array(out)


# An encoder layer's parameters in the order wm_encode reads them: the decoder's, less cross-attention.
ENCODER_PARAMS = tuple(name for name in (
    "attn_ln.weight", "attn_ln.bias", "attn.query.weight", "attn.query.bias", "attn.key.weight",
    "attn.value.weight", "attn.value.bias", "attn.out.weight", "attn.out.bias",
    "mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
))


@dataclass(frozen=True)
class EncoderKernel:
    """An audio encoder's float32 transformer blocks and final norm as wm_encode's pointer table."""

    views: tuple  # NumPy views of the parameters, kept alive with the table
    table: ctypes.Array
    n_layer: int
    n_state: int
    n_head: int
    n_mlp: int


def encoder_kernel(blocks: list, n_head: int, ln_post) -> EncoderKernel:
    """The C encoder's view of float32 encoder blocks and ln_post (evaluated, no copies)."""
    from mlx.utils import tree_flatten

    arrays = []
    for block in blocks:
        params = dict(tree_flatten(block.parameters()))
        arrays.extend(params[name] for name in ENCODER_PARAMS)
    _, views = _evaluated(*arrays, ln_post.weight, ln_post.bias)
    n_mlp, n_state = views[ENCODER_PARAMS.index("mlp.0.weight")].shape
    return EncoderKernel(tuple(views), _pointers(views), len(blocks), n_state, n_head, n_mlp)


def encode(kernel: EncoderKernel, x):
    """The encoder's blocks and final norm over x (B, T, n_state) float32, the convolutions' output
    with positions added: one C call per sequence instead of ~20 MLX operations per layer."""
    import mlx.core as mx

    _, (xn,) = _evaluated(x)
    xn = xn.copy()  # the blocks update it in place
    out = np.empty_like(xn)
    b, t, c = xn.shape
    for i in range(b):
        if _LIB.wm_encode(xn[i].ctypes.data, t, c, kernel.n_head, kernel.n_mlp, kernel.n_layer, kernel.table,
                          out[i].ctypes.data, _THREADS) != 0:
            raise MemoryError("whisper_mlx encoder kernel: out of memory")
    return mx.array(out)


def gelu_(x):
    """GELU in place on a freshly computed float32 MLX array (the caller's only reference)."""
    (x,), (view,) = _evaluated(x)
    _LIB.wm_gelu(view.ctypes.data, view.size)
    return x


def logits_f16(h, w16: np.ndarray):
    """h (..., n_state) float32 MLX array @ w16.T, w16 a (n_vocab, n_state) float16 NumPy matrix,
    summed in float32; returns (..., n_vocab) float32."""
    import mlx.core as mx

    (h,), (hn,) = _evaluated(h.astype(mx.float32))
    hn = hn.reshape(-1, h.shape[-1])
    out = np.empty((hn.shape[0], w16.shape[0]), np.float32)
    _LIB.wm_logits_f16(hn.ctypes.data, hn.shape[0], hn.shape[1], w16.ctypes.data, w16.shape[0],
                       out.ctypes.data, _THREADS)
    return mx.array(out.reshape(*h.shape[:-1], w16.shape[0]))


# A decoder layer's parameters in the order wm_decode_tokens reads them (openai/whisper's names).
LAYER_PARAMS = (
    "attn_ln.weight", "attn_ln.bias", "attn.query.weight", "attn.query.bias", "attn.key.weight",
    "attn.value.weight", "attn.value.bias", "attn.out.weight", "attn.out.bias",
    "cross_attn_ln.weight", "cross_attn_ln.bias", "cross_attn.query.weight", "cross_attn.query.bias",
    "cross_attn.out.weight", "cross_attn.out.bias",
    "mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
)
# The weight matrices among them, which the kernel reads as float16 (the rest are float32).
FLOAT16_PARAMS = frozenset(name for name in LAYER_PARAMS if name.endswith(".weight") and "ln" not in name)


DECODER_THREADS = 8
"""At most this many threads per decoder step: it streams memory, which a few cores saturate, and
each extra thread adds a start and a share of every barrier to each token."""


def _pointers(arrays: list[np.ndarray]) -> ctypes.Array:
    return (_P * len(arrays))(*(a.ctypes.data for a in arrays))


@dataclass(frozen=True)
class DecoderKernel:
    """A text decoder's parameters as the pointer table of `wm_decode_tokens`: each layer's
    parameters, then the positional embedding, final norm and float16 token embedding."""

    views: tuple  # NumPy views of the parameters, kept alive with the table
    table: ctypes.Array
    cross_table: ctypes.Array  # per layer: cross-attention key weight, value weight, value bias
    n_layer: int
    n_state: int
    n_head: int
    n_ctx: int
    n_vocab: int


def decoder_kernel(layers: list[dict], n_head: int, positional_embedding, ln_weight, ln_bias,
                   embedding16: np.ndarray) -> DecoderKernel:
    """The C decoder's view of a text decoder's parameters: `layers` maps each layer's parameter
    names (openai/whisper's) to arrays, the FLOAT16_PARAMS float16 and the rest float32."""
    arrays = [layer[name] for layer in layers for name in LAYER_PARAMS]
    arrays += [positional_embedding, ln_weight, ln_bias]
    dtypes = [np.float16 if name in FLOAT16_PARAMS else np.float32 for _ in layers for name in LAYER_PARAMS]
    _, views = _evaluated(*arrays, dtypes=dtypes + [np.float32] * 3)
    views.append(embedding16)
    n_ctx, n_state = views[-4].shape
    cross = [layer[name] for layer in layers
             for name in ("cross_attn.key.weight", "cross_attn.value.weight", "cross_attn.value.bias")]
    _, cross_views = _evaluated(*cross)
    return DecoderKernel(tuple(views + cross_views), _pointers(views), _pointers(cross_views), len(layers),
                         n_state, n_head, n_ctx, embedding16.shape[0])


class DecoderCache:
    """The kv_cache of `decode_tokens` for `rows` sequences over a batch of audio windows.

    audio_features (n_audio, n_audio_ctx, n_state): the windows; rows is a multiple of n_audio,
    row r starting on window r // (rows // n_audio) (beams or samples of a window are consecutive).
    Every layer's cross-attention keys and values are computed once per window by one C call
    (`wm_cross_kv`), transposed (n_audio, n_layer, 2, n_state, n_audio_ctx) so each head's block
    streams contiguously; each row reads its window's through `cross_index`. float16_cross stores
    them as float16 (`wm_cross_kv_f16`, rounded to nearest): half the bytes each step streams,
    where rows over many windows make them most of it. Self-attention keys
    and values (n_layer, rows, n_ctx, n_state) are written in place; pages are touched only as
    positions fill, so the allocation costs what the rows use."""

    def __init__(self, kernel: DecoderKernel, audio_features, rows: int, float16_cross: bool = False):
        _, (xa,) = _evaluated(audio_features)
        if xa.ndim != 3 or xa.shape[2] != kernel.n_state:
            raise ValueError(f"audio_features must be (windows, n_audio_ctx, {kernel.n_state}); got {xa.shape}")
        n_audio, self.n_audio_ctx, c = xa.shape
        if rows < 1 or rows % n_audio:
            raise ValueError(f"rows ({rows}) must be a positive multiple of the windows ({n_audio})")
        shape = (kernel.n_layer, rows, kernel.n_ctx, kernel.n_state)
        self.self_k, self.self_v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        self.float16_cross = float16_cross
        shape = (n_audio, kernel.n_layer, 2, c, self.n_audio_ctx)
        self.cross = np.empty(shape, np.float16 if float16_cross else np.float32)
        tmp = np.empty((2, c, self.n_audio_ctx), np.float32) if float16_cross else None
        for i in range(n_audio):
            if float16_cross:
                _LIB.wm_cross_kv_f16(xa[i].ctypes.data, self.n_audio_ctx, c, kernel.n_layer, kernel.cross_table,
                                     tmp.ctypes.data, self.cross[i].ctypes.data)
            else:
                _LIB.wm_cross_kv(xa[i].ctypes.data, self.n_audio_ctx, c, kernel.n_layer, kernel.cross_table,
                                 self.cross[i].ctypes.data)
        self.cross_index = np.repeat(np.arange(n_audio, dtype=np.int32), rows // n_audio)  # row -> window
        self.table = _pointers(
            [a for layer in range(kernel.n_layer)
             for a in (self.self_k[layer], self.self_v[layer], self.cross[0, layer, 0], self.cross[0, layer, 1])]
        )
        self.offset = 0

    @property
    def rows(self) -> int:
        """The current number of rows (sequences)."""
        return len(self.cross_index)

    def rearrange(self, source_rows) -> None:
        """New row i continues old row source_rows[i]: its self-attention keys/values so far and its
        window. Fewer rows than now drop the others (finished sequences); at most as many as the
        cache was made for. Only rows that change are copied."""
        idx = np.asarray(source_rows, np.intp).reshape(-1)
        capacity = self.self_k.shape[1]
        if not 1 <= len(idx) <= capacity or not 0 <= int(idx.min()) <= int(idx.max()) < self.rows:
            raise ValueError(f"rearrange: source rows must be 1 to {capacity} indices in [0, {self.rows}); "
                             f"got {idx.tolist()}")
        moved = np.nonzero(idx != np.arange(len(idx)))[0]
        if len(moved):
            n, src = self.offset, idx[moved]
            # the right-hand sides are copies, so a row both read and overwritten is read first
            self.self_k[:, moved, :n] = self.self_k[:, src, :n]
            self.self_v[:, moved, :n] = self.self_v[:, src, :n]
        self.cross_index = np.ascontiguousarray(self.cross_index[idx])


def decode_tokens(kernel: DecoderKernel, cache: DecoderCache, tokens: np.ndarray, rows: list[int]) -> np.ndarray:
    """Feed new tokens (cache.rows, t) at positions cache.offset.. through the whole decoder; returns
    the logits (cache.rows, len(rows), n_vocab) float32 at the given rows of the t new tokens."""
    tokens = np.ascontiguousarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[0] != cache.rows or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be ({cache.rows}, t >= 1), one row per sequence; got {tokens.shape}")
    batch, t = tokens.shape
    if not 0 <= int(tokens.min()) <= int(tokens.max()) < kernel.n_vocab:
        raise ValueError(f"token ids must be in [0, {kernel.n_vocab}); got {tokens.min()}..{tokens.max()}")
    rows_c = np.array([r % t for r in rows], np.int32)
    out = np.empty((batch, len(rows_c), kernel.n_vocab), np.float32)
    rc = _LIB.wm_decode_tokens(kernel.table, cache.table, kernel.n_layer, kernel.n_state, kernel.n_head,
                               kernel.n_ctx, cache.n_audio_ctx, cache.cross[0].size, int(cache.float16_cross),
                               cache.cross_index.ctypes.data,
                               kernel.n_vocab, tokens.ctypes.data, batch, t, cache.offset, rows_c.ctypes.data,
                               len(rows_c), out.ctypes.data, min(_THREADS, DECODER_THREADS))
    if rc == -2:
        raise ValueError(f"the decoder's context is {kernel.n_ctx} tokens; got {cache.offset + t}")
    if rc != 0:
        raise MemoryError("whisper_mlx decoder kernel: out of memory")
    cache.offset += t
    return out


def pick(logits: np.ndarray, state: np.ndarray, rules_packed: np.ndarray, suppress_mask: np.ndarray, blank,
         k: int) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's logit filters and the k best tokens of B rows in one C pass per row
    (`wm_pick`), the same function as `logit_rules.pick_numpy`.

    logits (B, n_vocab) float32 C-contiguous, edited in place: the filters applied, forbidden
    entries -inf (so a sampler can take a softmax of them); state (B, 4) int32, one
    row state per row (see `logit_rules.LogitRules.state`); rules_packed `LogitRules.packed`; suppress_mask
    `LogitRules.suppress_mask()`; blank the ids forbidden as a row's first sampled token; k >= 1
    (1: greedy, beam search: beam_size + 1). Returns tokens int64 (B, k), best first by log
    probability after the filters, ties by lower id, and their log probabilities float32 (B, k)."""
    if not (isinstance(logits, np.ndarray) and logits.dtype == np.float32 and logits.ndim == 2
            and logits.flags.c_contiguous and logits.flags.writeable):
        raise ValueError("pick: logits must be a writable C-contiguous float32 (B, n_vocab) array")
    b, n_vocab = logits.shape
    state = np.ascontiguousarray(state, np.int32)
    rules = np.ascontiguousarray(rules_packed, np.int32)
    suppress = np.ascontiguousarray(suppress_mask, np.uint8)
    blank = np.ascontiguousarray(np.asarray(blank, np.int32).reshape(-1))
    if state.shape != (b, 4):
        raise ValueError(f"pick: state must be ({b}, 4) for {b} rows of logits; got {state.shape}")
    if suppress.shape != (n_vocab,) or rules.shape != (5,):
        raise ValueError(f"pick: suppress_mask must be ({n_vocab},) and rules_packed (5,); got "
                         f"{suppress.shape} and {rules.shape}")
    if not 1 <= k <= n_vocab:
        raise ValueError(f"pick: k must be in [1, {n_vocab}]; got {k}")
    ids = np.concatenate([blank, rules[[2, 3]] if rules[0] else rules[[2]]])  # indexed by the C loop
    if int(ids.min()) < 0 or int(ids.max()) >= n_vocab or (rules[0] and not 0 < rules[1] < n_vocab):
        raise ValueError(f"pick: blank ids and rules_packed's token ids must be in [0, {n_vocab}) (timestamp_begin "
                         f"in (0, {n_vocab})); got blank {blank.tolist()}, rules {rules.tolist()}")
    tokens = np.empty((b, k), np.int64)
    logprobs = np.empty((b, k), np.float32)
    _LIB.wm_pick(logits.ctypes.data, b, n_vocab, state.ctypes.data, suppress.ctypes.data, blank.ctypes.data,
                 len(blank), rules.ctypes.data, k, tokens.ctypes.data, logprobs.ctypes.data, min(_THREADS, b))
    return tokens, logprobs
