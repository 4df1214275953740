"""The decoding-backend interface: what a fast path implements, over B rows.

A `Backend` is made once per loaded model and holds whatever it prepared from the model's
weights (rearranged or float16 tables, compiled graphs, fused-kernel layouts); the `Whisper`
module itself is never modified. A decode call opens a `Session` over a batch of windows'
audio features: it holds the kv caches of B rows (B = windows x rows per window: beams or
best-of samples) and the logits of the last fed position ("pending"). The decoding loops in
`decoding.py` (greedy, sampling, beam search) drive sessions only through this interface, so
each loop is written once and runs on every backend; the logit filters reach the pickers as one
`LogitRules` description. This is openai-whisper's `Inference` and CTranslate2's narrow model
interface, batch-first.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod

import mlx.core as mx
import numpy as np

from ..logit_rules import LogitRules, apply_numpy, pick_numpy
from ..model import Whisper
from .ops import logsumexp


class Unsupported(ValueError):
    """A backend cannot run this model here; the message says why."""


class Session(ABC):
    """Decoding state for `rows` sequences over `n_audio` windows (rows // n_audio per window,
    consecutive). `reorder` may drop rows (finished sequences) or permute them within windows."""

    def __init__(self, n_audio: int, rows: int):
        if rows % n_audio:
            raise ValueError(f"rows ({rows}) must be a multiple of the windows ({n_audio})")
        self.n_audio = n_audio
        self.window = np.arange(rows) // (rows // n_audio)  # each row's window

    @property
    def rows(self) -> int:
        return len(self.window)

    @abstractmethod
    def prefill(self, tokens: np.ndarray, sot_index: int) -> np.ndarray:
        """Feed every row's prompt (rows, T); the last position's logits become pending. Returns
        the log probabilities (rows, n_vocab) float32 at position `sot_index` (no-speech)."""

    @abstractmethod
    def feed(self, tokens: np.ndarray) -> None:
        """Feed one token per row (rows,); its logits become pending."""

    def pick(self, rules: LogitRules, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The k best next tokens per row (rows, k) under the filters, with their log
        probabilities; `state` (rows, 4) from `LogitRules.state`."""
        return pick_numpy(rules, self.pending_logits(), state, k)

    def filtered_logits(self, rules: LogitRules, state: np.ndarray) -> np.ndarray:
        """The pending logits (rows, n_vocab) float32 with the filters applied (-inf where a token
        is not allowed), for sampling at a temperature."""
        logits = self.pending_logits()
        apply_numpy(rules, logits, state)
        return logits

    @abstractmethod
    def pending_logits(self) -> np.ndarray:
        """The pending logits as a writable float32 NumPy array (rows, n_vocab)."""

    @abstractmethod
    def reorder(self, source_rows: np.ndarray) -> None:
        """New row i continues old row source_rows[i] (its cache and window); fewer rows drop
        the others."""

    def greedy(self, rules: LogitRules, tokens: np.ndarray, sample_len: int, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding of every row from its prompt (already prefilled) until each row emits
        end-of-text, sample_len tokens, or the context is full. Returns the sampled tokens (rows,
        n) (eot-padded) and each row's sum of log probabilities. Rows that finish are dropped
        from the session, so the rest decode at a smaller batch."""
        rows = self.rows
        eot = rules.eot
        sampled = np.full((rows, sample_len), eot, np.int64)
        sums = np.zeros(rows, np.float64)
        active = np.arange(rows)
        history = tokens
        for i in range(sample_len):
            picked, logprobs = self.pick(rules, rules.state(history), 1)
            picked, logprobs = picked[:, 0], logprobs[:, 0]
            sampled[active, i] = picked
            sums[active] += logprobs
            if i + 1 == sample_len or tokens.shape[1] + i + 1 > n_ctx:
                return sampled[:, : i + 1], sums
            going = picked != eot
            if not going.all():
                if not going.any():
                    return sampled[:, : i + 1], sums
                keep = np.nonzero(going)[0]
                self.reorder(keep)
                active, picked = active[keep], picked[keep]
                history = history[keep]
            history = np.concatenate([history, picked[:, None]], axis=1)
            self.feed(picked)
        return sampled, sums


class Backend(ABC):
    """A decoding backend for one loaded model: encoder passes, decoding sessions, the word-timing
    pass. Subclasses say where they apply (`supports`) and why."""

    name: str = ""

    def __init__(self, model: Whisper):
        self._model = weakref.ref(model)  # the model owns no reference to its backend
        self.dims = model.dims

    @property
    def model(self) -> Whisper:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this backend was released")
        return model

    @classmethod
    def supports(cls, model: Whisper) -> str | None:
        """None when this backend can run `model` here, else the reason it cannot."""
        return None

    @abstractmethod
    def encode(self, mel: mx.array) -> mx.array:
        """Audio features (B, n_audio_ctx, n_audio_state) of log-mel windows (B, n_frames, n_mels)."""

    @abstractmethod
    def session(self, audio_features: mx.array, rows: int) -> Session:
        """A decoding session over the windows' features: `rows` sequences (a multiple of
        audio_features.shape[0]); each window's cross-attention keys/values computed once."""

    def alignment(self, tokens: list[int], audio_features: mx.array, heads: list[tuple[int, int]],
                  text: slice, eot: int) -> tuple[np.ndarray, np.ndarray]:
        """The word-timing pass over one window: the cross-attention QK of each alignment head
        (heads, T, S) float32, and the probability of each token in `text` (a slice of
        `tokens`) given the ones before it, over text tokens only (ids below eot)."""
        model = self.model
        logits, qks = model.decoder.alignment_qk(mx.array([tokens]), audio_features, heads)
        text_tokens = mx.array(tokens[text])
        rows = logits[0, text.start - 1 : text.stop - 1, :eot]
        picked = mx.take_along_axis(rows, text_tokens[:, None], axis=-1)[:, 0]
        probs = mx.exp(picked - logsumexp(rows.astype(mx.float32)))
        weights = mx.stack([qk[0] for qk in qks]).astype(mx.float32)
        return np.array(weights), np.array(probs.astype(mx.float32))

    def describe(self) -> str:
        return self.name

