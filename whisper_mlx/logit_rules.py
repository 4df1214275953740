"""openai-whisper's logit filters, described once per window and consumed by every picker.

`LogitRules` is the description: which tokens are never allowed, which are not allowed first
(suppress_blank), and whether the timestamp rules apply (timestamps come in non-decreasing pairs,
the first token is a timestamp no later than max_initial_timestamp, and a timestamp is forced when
the timestamps' total probability beats every single text token). A row's progress through the
rules is four integers (`RowState`): tokens sampled so far, the last one, the one before it and
the last timestamp (-1: none).

Consumers: `apply_numpy` / `pick_numpy` here (the reference: openai-whisper's `SuppressBlank`,
`SuppressTokens` and `ApplyTimestampRules` classes, vectorized over rows), the C picker
(`cpu_kernels.pick`), the MLX-ops picker (`backends.mlx.pick_mlx`, used on any MLX device) and the
fused CUDA step. tests/test_pickers.py feeds them the same logits and histories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_FIELDS = 4  # per row: sampled so far, last token, penultimate token, last timestamp token (-1: none)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


@dataclass(frozen=True)
class LogitRules:
    """The logit filters of one window's decoding (built once from DecodingOptions)."""

    n_vocab: int
    eot: int
    sample_begin: int  # index of the first sampled token in a row of tokens
    suppress: tuple[int, ...] = ()  # never allowed
    blank: tuple[int, ...] = ()  # not allowed as the first sampled token
    timestamps: bool = False  # the timestamp rules apply
    timestamp_begin: int = 0
    no_timestamps: int = 0
    max_initial_timestamp: int | None = None  # index past timestamp_begin; None: no limit

    @property
    def packed(self) -> np.ndarray:
        """int32 (5,): timestamps on, timestamp_begin, eot, no_timestamps, max initial index (-1:
        none), the layout the C and device pickers read."""
        ts_begin = self.timestamp_begin if self.timestamps else self.n_vocab
        no_ts = self.no_timestamps if self.timestamps else self.n_vocab
        max_ts = -1 if self.max_initial_timestamp is None else self.max_initial_timestamp
        return np.array([int(self.timestamps), ts_begin, self.eot, no_ts, max_ts], np.int32)

    def suppress_mask(self) -> np.ndarray:
        """uint8 (n_vocab,): 1 where a token is never allowed."""
        mask = np.zeros(self.n_vocab, np.uint8)
        mask[list(self.suppress)] = 1
        return mask

    def state(self, tokens: np.ndarray) -> np.ndarray:
        """int32 (B, 4) row states from token rows (B, T) holding the prompt then sampled tokens."""
        sampled = np.asarray(tokens)[:, self.sample_begin :]
        b, n = sampled.shape
        out = np.full((b, STATE_FIELDS), -1, np.int32)
        out[:, 0] = n
        if n >= 1:
            out[:, 1] = sampled[:, -1]
        if n >= 2:
            out[:, 2] = sampled[:, -2]
        if self.timestamps and n:
            is_ts = sampled >= self.timestamp_begin
            last = np.where(is_ts, np.arange(n), -1).max(axis=1)
            found = last >= 0
            out[found, 3] = sampled[found, last[found]]
        return out


def apply_numpy(rules: LogitRules, logits: np.ndarray, state: np.ndarray) -> None:
    """Apply the filters to logits (B, n_vocab) float32 in place, row by row state (B, 4):
    openai-whisper's three filters, in its order."""
    n, last, penult, last_ts = (state[:, i] for i in range(STATE_FIELDS))
    first = n == 0
    if rules.blank and first.any():
        logits[np.ix_(first, list(rules.blank))] = -np.inf
    if rules.suppress:
        logits[:, list(rules.suppress)] = -np.inf
    if not rules.timestamps:
        return
    begin, eot = rules.timestamp_begin, rules.eot
    idx = np.arange(rules.n_vocab)
    logits[:, rules.no_timestamps] = -np.inf
    last_was_ts = (n >= 1) & (last >= begin)
    penult_was_ts = (n < 2) | (penult >= begin)
    forbid = np.zeros(logits.shape, bool)
    forbid |= (last_was_ts & penult_was_ts)[:, None] & (idx >= begin)[None]
    forbid |= (last_was_ts & ~penult_was_ts)[:, None] & (idx < eot)[None]
    bound = np.where(last_was_ts & ~penult_was_ts, last_ts, last_ts + 1)
    forbid |= (last_ts >= 0)[:, None] & (idx >= begin)[None] & (idx < bound[:, None])
    forbid |= first[:, None] & (idx < begin)[None]
    if rules.max_initial_timestamp is not None:
        forbid |= first[:, None] & (idx > begin + rules.max_initial_timestamp)[None]
    logits[forbid] = -np.inf
    logprobs = log_softmax(logits)
    ts = logprobs[:, begin:]
    m = ts.max(axis=-1)
    safe = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        ts_mass = np.log(np.exp(ts - safe[:, None]).sum(axis=-1)) + safe
    prefer_ts = ts_mass > logprobs[:, :begin].max(axis=-1)
    logits[prefer_ts, :begin] = -np.inf


def top_k(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best tokens per row (B, k) by log probability, best first, ties by lower id (a
    stable sort's order), and their log probabilities."""
    if k == 1:
        tokens = logprobs.argmax(axis=-1)[:, None]
    else:
        part = np.argpartition(-logprobs, k - 1, axis=-1)[:, :k]
        vals = np.take_along_axis(logprobs, part, axis=-1)
        order = np.lexsort((part, -vals), axis=-1)
        tokens = np.take_along_axis(part, order, axis=-1)
    return tokens.astype(np.int64), np.take_along_axis(logprobs, tokens, axis=-1)


def pick_numpy(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The reference picker: filters applied in place, then the k best tokens per row and their
    log probabilities after the filters. k=1 is greedy decoding; beam search takes beam_size+1."""
    apply_numpy(rules, logits, state)
    return top_k(log_softmax(logits), k)
