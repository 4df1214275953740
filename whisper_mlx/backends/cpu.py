"""The C-kernel backend (Linux CPUs): csrc/cpu_kernels.c behind the backend interface.

- Encoder: the convolutions in MLX (GELU in place in C), then every block and the final norm in
  one C call per window (`wm_encode`), reading the model's float32 parameters in place.
- Decoder: one C call per step over B rows (`wm_decode_tokens`): embedding, every layer, final
  norm and logits. Its weight matrices and token embedding are float16 copies held here, made
  only where float16 holds the float32 weights exactly (true of every OpenAI checkpoint): a
  token then streams half the bytes, with float32 sums, and computes the same values.
  A session over several windows (batched decoding) stores their cross-attention keys/values
  as float16 too (rounded: at batch 8 they are most of a step's bytes); one window's stay float32.
- Picks: the logit filters and top-k over B rows in one C pass (`cpu_kernels.pick`).
- Word timing: the base class's pass over model.py's graph.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .. import cpu_kernels
from ..logit_rules import LogitRules, log_softmax
from ..model import Whisper
from .base import Backend, Session, Unsupported


def _float16_if_exact(w: mx.array) -> mx.array | None:
    """w in float16, evaluated, if float16 holds every float32 value of w exactly; else None."""
    if w.dtype != mx.float32:
        return None
    w16 = w.astype(mx.float16)
    if not mx.array_equal(w16.astype(mx.float32), w).item():
        return None
    mx.eval(w16)
    return w16


@lru_cache(maxsize=32)
def _pick_arrays(rules: LogitRules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rules.packed, rules.suppress_mask(), np.array(rules.blank, np.int32)


def _pick(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return cpu_kernels.pick(logits, state, *_pick_arrays(rules), k)


class CpuSession(Session):
    def __init__(self, backend: "CpuBackend", audio_features: mx.array, rows: int):
        super().__init__(audio_features.shape[0], rows)
        self.kernel = backend.decoder
        # several windows (batched decoding): their cross-attention keys/values in float16, half the
        # bytes of each step; one window's (sequential decoding, its beams) stay float32, so
        # sequential transcripts keep openai-whisper's float32 arithmetic
        float16_cross = audio_features.shape[0] > 1
        self.cache = cpu_kernels.DecoderCache(self.kernel, audio_features.astype(mx.float32), rows, float16_cross)
        self.pending: np.ndarray | None = None

    def prefill(self, tokens: np.ndarray, sot_index: int) -> np.ndarray:
        out = cpu_kernels.decode_tokens(self.kernel, self.cache, tokens, [sot_index, -1])
        self.pending = np.ascontiguousarray(out[:, 1])
        return log_softmax(out[:, 0])

    def feed(self, tokens: np.ndarray) -> None:
        new = np.asarray(tokens, np.int32)[:, None]
        self.pending = cpu_kernels.decode_tokens(self.kernel, self.cache, new, [0])[:, 0]

    def pick(self, rules: LogitRules, state: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        return _pick(rules, self.pending, state, k)  # filters the pending logits in place

    def filtered_logits(self, rules: LogitRules, state: np.ndarray) -> np.ndarray:
        _pick(rules, self.pending, state, 1)
        return self.pending.copy()

    def pending_logits(self) -> np.ndarray:
        return self.pending.copy()

    def reorder(self, source_rows: np.ndarray) -> None:
        source_rows = np.asarray(source_rows)
        if len(source_rows) == self.rows and (source_rows == np.arange(self.rows)).all():
            return
        self.cache.rearrange(source_rows)
        self.window = self.window[source_rows]
        if self.pending is not None:
            self.pending = np.ascontiguousarray(self.pending[source_rows])


class CpuBackend(Backend):
    """The C kernels (csrc/cpu_kernels.c) on a Linux CPU."""

    name = "cpu"

    @classmethod
    def supports(cls, model: Whisper) -> str | None:
        if not cpu_kernels.available():
            return "whisper_mlx's C kernels are not loaded (not built, WHISPER_MLX_KERNELS=none, or no OpenBLAS)"
        if mx.default_device() != mx.cpu:
            return "MLX computes on the GPU"
        dtypes = {w.dtype for _, w in tree_flatten(model.parameters())}
        if dtypes != {mx.float32}:
            return f"the kernels read float32 weights (the model holds {', '.join(sorted(map(str, dtypes)))})"
        return None

    def __init__(self, model: Whisper):
        super().__init__(model)
        dec = model.decoder
        self.encoder = cpu_kernels.encoder_kernel(model.encoder.blocks, model.dims.n_audio_head, model.encoder.ln_post)
        embedding16 = _float16_if_exact(dec.token_embedding.weight)
        layers = []
        for block in dec.blocks:
            params = dict(tree_flatten(block.parameters()))
            for name in cpu_kernels.FLOAT16_PARAMS:
                params[name] = _float16_if_exact(params[name])
            layers.append(params)
        inexact = embedding16 is None or any(w is None for layer in layers for w in layer.values())
        if inexact:
            raise Unsupported("float16 does not hold the decoder's weights exactly (the C decoder reads float16)")
        self.decoder = cpu_kernels.decoder_kernel(
            layers, model.dims.n_text_head, dec.positional_embedding, dec.ln.weight, dec.ln.bias, np.array(embedding16)
        )

    def encode(self, mel: mx.array) -> mx.array:
        enc = self.model.encoder
        x = cpu_kernels.gelu_(enc.conv1(mel.astype(mx.float32)))
        x = cpu_kernels.gelu_(enc.conv2(x))
        x = x + enc.positional_embedding[: x.shape[1]]
        return cpu_kernels.encode(self.encoder, x)

    def session(self, audio_features: mx.array, rows: int) -> Session:
        return CpuSession(self, audio_features, rows)
