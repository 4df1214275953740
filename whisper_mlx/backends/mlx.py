"""The reference backend: model.py's MLX graph as it is, on whatever device MLX computes on.

It is what Apple silicon runs (Metal), and the reference every other backend is tested against
(on a Linux CPU too, `backend="mlx"`). The picks run as MLX operations (`ops.pick_mlx`), so
only the chosen tokens leave the device.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..logit_rules import LogitRules
from ..model import Whisper
from .base import Backend, Session
from .ops import gather_rows, log_softmax, pick_mlx


class MlxSession(Session):
    def __init__(self, model: Whisper, audio_features: mx.array, rows: int):
        super().__init__(audio_features.shape[0], rows)
        self.decoder = model.decoder
        per = rows // self.n_audio
        cross = self.decoder.cross_kv(audio_features)
        if per > 1:
            cross = [(mx.repeat(k, per, axis=0), mx.repeat(v, per, axis=0)) for k, v in cross]
        self.cross = cross
        self.kv_cache = None
        self.pending: mx.array | None = None

    def _forward(self, tokens: np.ndarray) -> mx.array:
        hidden, self.kv_cache = self.decoder(mx.array(tokens), self.cross, self.kv_cache)
        return hidden

    def prefill(self, tokens: np.ndarray, sot_index: int) -> np.ndarray:
        hidden = self._forward(tokens)
        logits = self.decoder.logits(hidden[:, [sot_index, tokens.shape[1] - 1]])
        self.pending = logits[:, 1]
        return np.array(log_softmax(logits[:, 0]))

    def feed(self, tokens: np.ndarray) -> None:
        self.pending = self.decoder.logits(self._forward(np.asarray(tokens)[:, None]))[:, -1]

    def pick(self, rules: LogitRules, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        return pick_mlx(rules, self.pending, state, k)

    def pending_logits(self) -> np.ndarray:
        return np.array(self.pending, dtype=np.float32)

    def reorder(self, source_rows: np.ndarray) -> None:
        moved = gather_rows(self.window, source_rows, self.kv_cache, self.cross, self.pending)
        if moved is not None:
            self.window, self.kv_cache, self.cross, self.pending = moved


class MlxBackend(Backend):
    """model.py's graph, unchanged (the reference; Apple silicon's path)."""

    name = "mlx"

    def encode(self, mel: mx.array) -> mx.array:
        return self.model.embed_audio(mel)

    def session(self, audio_features: mx.array, rows: int) -> Session:
        return MlxSession(self.model, audio_features, rows)
