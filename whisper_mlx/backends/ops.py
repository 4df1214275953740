"""MLX operations the backends share: reductions with NumPy's accuracy, and the logit filters
of `LogitRules` as device operations over B rows (used eagerly by the MLX backend's picker and
inside the CUDA backend's compiled step)."""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np

from ..logit_rules import LogitRules

NEG_INF = float("-inf")


def sum_exp(x: mx.array) -> mx.array:
    """sum(exp(x)) over the last axis in blocks of 1024, then over the blocks: a plain running sum
    (MLX's CPU reduction) drops the ~5e4 tiny terms behind one near-1 term, which NumPy's pairwise
    sum keeps (a 1e-4 difference in a token's log probability)."""
    e = mx.exp(x)
    n = e.shape[-1]
    if n % 1024:
        e = mx.pad(e, [(0, 0)] * (e.ndim - 1) + [(0, 1024 - n % 1024)])
    return e.reshape(*e.shape[:-1], -1, 1024).sum(axis=-1).sum(axis=-1, keepdims=True)


def logsumexp(x: mx.array) -> mx.array:
    """log(sum(exp(x))) over the last axis, -inf (not NaN) when every value is -inf."""
    m = x.max(axis=-1, keepdims=True)
    safe = mx.where(mx.isinf(m), mx.zeros_like(m), m)
    return (safe + mx.log(sum_exp(x - safe)))[..., 0]


def log_softmax(x: mx.array) -> mx.array:
    """logit_rules.log_softmax's formula: (x - max) - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - mx.log(sum_exp(shifted))


@lru_cache(maxsize=32)
def filter_arrays(rules: LogitRules) -> tuple[mx.array, mx.array, mx.array]:
    """The rules as device arrays: additive masks (n_vocab,) for suppressed and blank tokens
    (0 or -inf) and the packed int32 rules (5,)."""
    suppress = np.zeros(rules.n_vocab, np.float32)
    suppress[list(rules.suppress)] = -np.inf
    blank = np.zeros(rules.n_vocab, np.float32)
    blank[list(rules.blank)] = -np.inf
    return mx.array(suppress), mx.array(blank), mx.array(rules.packed)


def apply_filters(logits: mx.array, state: mx.array, suppress: mx.array, blank: mx.array, rules: mx.array) -> mx.array:
    """`logit_rules.apply_numpy` as MLX operations: logits (B, V) float32, state (B, 4) int32,
    the arrays of `filter_arrays`. Returns the filtered logits (-inf where not allowed)."""
    n_vocab = logits.shape[-1]
    idx = mx.arange(n_vocab)[None]
    n, last, penult, last_ts = (state[:, i : i + 1] for i in range(4))
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
    x = mx.where(use_ts & forbid, NEG_INF, x)

    logprobs = log_softmax(x)
    ts_mass = logsumexp(mx.where(is_ts, logprobs, NEG_INF))
    text_best = mx.where(is_ts, NEG_INF, logprobs).max(axis=-1)
    return mx.where(use_ts & (ts_mass > text_best)[:, None] & ~is_ts, NEG_INF, x)


def pick_mlx(rules: LogitRules, logits: mx.array, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The picker on an MLX device: the filters, then the k best tokens per row (B, k), best first
    (ties by lower id), and their log probabilities; only (B, k) values leave the device."""
    suppress, blank, packed = filter_arrays(rules)
    x = apply_filters(logits.astype(mx.float32), mx.array(state, mx.int32), suppress, blank, packed)
    logprobs = log_softmax(x)
    if k == 1:
        tokens = logprobs.argmax(axis=-1)[:, None]
        values = mx.take_along_axis(logprobs, tokens, axis=-1)
        return np.array(tokens).astype(np.int64), np.array(values)
    part = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
    values = mx.take_along_axis(logprobs, part, axis=-1)
    part, values = np.array(part).astype(np.int64), np.array(values)
    order = np.lexsort((part, -values), axis=-1)
    return np.take_along_axis(part, order, axis=-1), np.take_along_axis(values, order, axis=-1)


def gather_rows(window: np.ndarray, source_rows: np.ndarray, cache: list, cross: list, pending: mx.array | None):
    """An MLX session's `reorder`: new row i continues old row source_rows[i]. Returns the new
    (window, cache, cross, pending), or None when nothing moves. Cross-attention keys/values are
    gathered only when rows move between windows (beam search keeps them in theirs)."""
    source_rows = np.asarray(source_rows)
    n = len(source_rows)
    if n == len(window) and (source_rows == np.arange(n)).all():
        return None
    idx = mx.array(source_rows)
    cache = [(k[idx], v[idx]) for k, v in cache]
    if (window[source_rows] == window[:n]).all():
        cross = cross if n == len(window) else [(k[:n], v[:n]) for k, v in cross]
    else:
        cross = [(k[idx], v[idx]) for k, v in cross]
    return window[source_rows], cache, cross, None if pending is None else pending[idx]
