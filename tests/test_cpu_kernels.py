"""The C kernels (csrc/cpu_kernels.c) against plain MLX/NumPy math, and the C encoder and decoder
against model.py's MLX graph on real weights and speech. The pick (wm_pick) is in test_pickers.py."""

from __future__ import annotations

import sys

import whisper_mlx  # noqa: I001  (first: loads the kernels and OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
import pytest
from whisper_mlx import cpu_kernels, runtime

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the C kernels are built on Linux only")


def test_kernels_are_built_and_loaded():
    """On Linux the install builds them and the runtime loads them (a failed build would
    otherwise pass unnoticed: the runtime falls back to MLX's kernels)."""
    assert cpu_kernels.library_path() is not None, "whisper_mlx/_cpu_kernels*.so was not built"
    assert cpu_kernels.available(), "the C kernels were built but not loaded (is an optimized BLAS installed?)"


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int) -> np.ndarray:
    t, c = q.shape
    d = c // n_head
    qh, kh, vh = (a.reshape(-1, n_head, d).transpose(1, 0, 2).astype(np.float64) for a in (q, k, v))
    scores = qh @ kh.transpose(0, 2, 1) * d**-0.5
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w @ vh).transpose(1, 0, 2).reshape(t, c)


@pytest.mark.parametrize("t,s,n_head,d", [(1500, 1500, 6, 64), (70, 130, 3, 20), (1, 9, 2, 8)])
def test_attention_matches_softmax_attention(t, s, n_head, d):
    rng = np.random.default_rng(t)
    q = rng.normal(size=(t, n_head * d)).astype(np.float32) * 2
    k = rng.normal(size=(s, n_head * d)).astype(np.float32) * 2
    v = rng.normal(size=(s, n_head * d)).astype(np.float32)
    out = np.array(cpu_kernels.attention(mx.array(q[None]), mx.array(k[None]), mx.array(v[None]), n_head))[0]
    np.testing.assert_allclose(out, reference_attention(q, k, v, n_head), atol=2e-5, rtol=1e-4)


def test_attention_batches_and_strided_inputs():
    """Batched windows and non-contiguous inputs (a transposed view) give per-window results."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 40, 32)).astype(np.float32)
    kv = rng.normal(size=(2, 32, 50)).astype(np.float32)
    k = mx.array(kv).transpose(0, 2, 1)  # (2, 50, 32), not contiguous
    out = np.array(cpu_kernels.attention(mx.array(q), k, k, 4))
    for i in range(2):
        np.testing.assert_allclose(out[i], reference_attention(q[i], kv[i].T, kv[i].T, 4), atol=2e-5, rtol=1e-4)


def test_gelu_matches_erf_gelu():
    """wm_gelu (the rational erf of assets/gelu_coeffs.h) against the exact erf GELU and MLX's."""
    import math

    import mlx.nn as nn

    x = np.linspace(-9, 9, 100_003, dtype=np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + np.vectorize(math.erf)(x.astype(np.float64) / np.sqrt(2)))
    got = np.array(cpu_kernels.gelu_(mx.array(x)))
    np.testing.assert_allclose(got, exact, rtol=3e-7, atol=2e-6)
    np.testing.assert_allclose(got, np.array(nn.gelu(mx.array(x))), rtol=1e-6, atol=2e-6)


def test_gelu_constants_are_written_once():
    """The erf approximation's constants live in assets/gelu_coeffs.h alone: the C kernels include
    it, the CUDA sources call its wm_gelu_one (backends/cuda.py puts its text before theirs)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("csrc/*.[ch]"), *root.glob("whisper_mlx/**/*.py"), *root.glob("whisper_mlx/assets/*.cuh"),
               *root.glob("whisper_mlx/assets/*.h")]
    holders = sorted(p.name for p in sources if "1.60960333262415e-02" in p.read_text())
    assert holders == ["gelu_coeffs.h"]
    assert '#include "gelu_coeffs.h"' in (root / "csrc" / "cpu_kernels.c").read_text()
    assert "wm_gelu_one(x)" in (root / "whisper_mlx" / "assets" / "gelu.cuh").read_text()


@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("transpose_x", [False, True])
def test_one_row_products_go_to_gemv_and_stay_exact(transpose_x, transpose_w):
    """x @ W with one row, in every layout MLX hands to cblas_sgemm, equals NumPy's product."""
    rng = np.random.default_rng(1)
    x_np = rng.normal(size=(1, 96)).astype(np.float32)
    w_np = rng.normal(size=(96, 130)).astype(np.float32)
    x = mx.array(x_np.T.copy()).T if transpose_x else mx.array(x_np)
    w = mx.array(w_np.T.copy()).T if transpose_w else mx.array(w_np)
    before = cpu_kernels.gemv_calls()
    out = x @ w
    mx.eval(out)
    assert cpu_kernels.gemv_calls() == before + 1
    np.testing.assert_allclose(np.array(out), x_np @ w_np, rtol=1e-5, atol=1e-4)
    bias = mx.array(rng.normal(size=(130,)).astype(np.float32))
    np.testing.assert_allclose(np.array(mx.addmm(bias, x, w)), np.array(bias) + x_np @ w_np, rtol=1e-5, atol=1e-4)


def test_doctor_reports_the_kernels():
    assert runtime.report()["cpu_kernels"].endswith(cpu_kernels.library_path().name)


def test_encoder_kernel_matches_the_mlx_encoder(tiny_en_fp32_dir, clips):
    """The C encoder (wm_encode, the cpu backend's) on real speech computes model.py's encoder."""
    from whisper_mlx.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim
    from whisper_mlx.backends.cpu import CpuBackend
    from whisper_mlx.backends.mlx import MlxBackend

    model = whisper_mlx.load_model(tiny_en_fp32_dir, backend="mlx")
    mel = pad_or_trim(log_mel_spectrogram(load_audio(str(clips["en_weather"].path)), padding=N_SAMPLES),
                      N_FRAMES, axis=0)[None]
    got, want = np.array(CpuBackend(model).encode(mel)), np.array(MlxBackend(model).encode(mel))
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max(), np.abs(got - want).max()


@pytest.mark.parametrize("rows", [1, 5])
def test_float16_logits_equal_float32_product(rows):
    """Logits from the float16 embedding equal the float32 product (same values, float32 sums)."""
    rng = np.random.default_rng(rows)
    w16 = (rng.normal(size=(3001, 70)) * 0.1).astype(np.float16)  # 70: not a multiple of 8 or 16
    w16[0, :4] = [np.float16(6e-8), np.float16(-1e-5), 0, 3.5]  # subnormal, small, zero, large
    h = rng.normal(size=(1, rows, 70)).astype(np.float32)
    out = np.array(cpu_kernels.logits_f16(mx.array(h), w16))
    assert out.shape == (1, rows, 3001) and out.dtype == np.float32
    np.testing.assert_allclose(out, h.astype(np.float64) @ w16.T.astype(np.float64), rtol=1e-5, atol=1e-5)


def _decoder_kernel(dec) -> cpu_kernels.DecoderKernel:
    """The C decoder's table for a TextDecoder whose weight matrices and token embedding float16
    holds exactly (converted checkpoints): those in float16, the rest float32, as the cpu backend
    builds it."""
    from mlx.utils import tree_flatten

    def half(w):
        w16 = w.astype(mx.float16)
        assert mx.array_equal(w16.astype(mx.float32), w).item(), "not float16-exact"
        return w16

    layers = []
    for block in dec.blocks:
        params = dict(tree_flatten(block.parameters()))
        layers.append({name: half(w) if name in cpu_kernels.FLOAT16_PARAMS else w for name, w in params.items()})
    return cpu_kernels.decoder_kernel(layers, dec.blocks[0].attn.n_head, dec.positional_embedding, dec.ln.weight,
                                      dec.ln.bias, np.array(half(dec.token_embedding.weight)))


def _small_decoder(seed: int = 0):
    """A 2-layer text decoder with random float16-exact weights (as converted checkpoints are)."""
    from mlx.utils import tree_flatten, tree_unflatten
    from whisper_mlx.model import TextDecoder

    rng = np.random.default_rng(seed)
    dec = TextDecoder(n_vocab=700, n_ctx=40, n_state=64, n_head=4, n_layer=2)
    params = {k: mx.array((rng.normal(size=v.shape) * 0.3).astype(np.float16).astype(np.float32))
              for k, v in tree_flatten(dec.parameters())}
    params["blocks.0.attn.key.weight"] = params["blocks.0.attn.key.weight"] * 2  # sharper attention
    dec.update(tree_unflatten(list(params.items())))
    return dec, rng


class _Graph:
    """model.py's decoder graph over rows: cross-attention keys/values repeated per row (the
    straightforward layout the C cache's per-window one must match), caches reindexed by row."""

    def __init__(self, dec, features: mx.array, rows: int, float16_cross: bool = False):
        per = rows // features.shape[0]
        self.dec, self.kv = dec, None
        cross = dec.cross_kv(features)
        if float16_cross:  # the values the C cache holds: rounded to float16
            cross = [(k.astype(mx.float16).astype(mx.float32), v.astype(mx.float16).astype(mx.float32))
                     for k, v in cross]
        self.cross = [(mx.repeat(k, per, axis=0), mx.repeat(v, per, axis=0)) for k, v in cross]

    def logits(self, tokens: np.ndarray, rows) -> np.ndarray:
        hidden, self.kv = self.dec(mx.array(tokens), self.cross, self.kv)
        return np.array(self.dec.logits(hidden[:, list(rows)]))

    def rearrange(self, source_rows) -> None:
        idx = mx.array(source_rows)
        self.kv = [(k[idx], v[idx]) for k, v in self.kv]
        self.cross = [(k[idx], v[idx]) for k, v in self.cross]


@pytest.mark.parametrize("float16_cross", [False, True], ids=["float32-cross", "float16-cross"])
def test_decoder_kernel_matches_the_mlx_decoder(float16_cross):
    """Two windows, three rows each: prompt rows, single steps, rows reordered across windows,
    dropped and grown back: the C decoder's logits equal the MLX graph's with cross-attention
    keys/values held once per window (float16: the graph's keys/values rounded as the cache's)."""
    dec, rng = _small_decoder()
    kernel = _decoder_kernel(dec)
    features = mx.array(rng.normal(size=(2, 37, 64)).astype(np.float32))
    tokens = rng.integers(0, 700, size=(6, 5))
    graph = _Graph(dec, features, 6, float16_cross)
    cache = cpu_kernels.DecoderCache(kernel, features, 6, float16_cross)
    if float16_cross:  # the C conversion rounds as NumPy's (to nearest even)
        float32_cache = cpu_kernels.DecoderCache(kernel, features, 6)
        assert cache.cross.dtype == np.float16
        np.testing.assert_array_equal(cache.cross, float32_cache.cross.astype(np.float16))
    assert cache.cross.shape[0] == 2 and cache.rows == 6 and cache.cross_index.tolist() == [0, 0, 0, 1, 1, 1]
    reorders = {4: [2, 2, 0, 5, 3, 3], 7: [4, 0, 1], 9: [2, 2, 1, 0]}  # permute, drop rows, grow to 4
    for step in range(12):
        rows = (1, -1) if step == 0 else (-1,)
        new = tokens if step == 0 else tokens[:, -1:]
        expected = graph.logits(new, rows)
        got = cpu_kernels.decode_tokens(kernel, cache, new, [r % new.shape[1] for r in rows])
        assert got.shape == expected.shape == (len(tokens), len(rows), 700)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4, err_msg=f"step {step}")
        tokens = np.concatenate([tokens, expected[:, -1].argmax(-1)[:, None]], axis=1)
        if step in reorders:
            graph.rearrange(reorders[step])
            cache.rearrange(reorders[step])
            tokens = tokens[reorders[step]]
            assert cache.rows == len(tokens)
    assert cache.cross_index.tolist() == [0, 0, 0, 1]  # rows 2, 2, 1, 0 of windows (1, 0, 0)


def test_decoder_cache_rejects_bad_shapes_and_stops_at_the_context_length():
    dec, _ = _small_decoder(1)
    kernel = _decoder_kernel(dec)
    with pytest.raises(ValueError, match=r"rows \(3\) must be a positive multiple of the windows \(2\)"):
        cpu_kernels.DecoderCache(kernel, mx.zeros((2, 5, 64)), 3)
    cache = cpu_kernels.DecoderCache(kernel, mx.zeros((1, 5, 64)), 2)
    with pytest.raises(ValueError, match=r"tokens must be \(2, t >= 1\)"):
        cpu_kernels.decode_tokens(kernel, cache, np.zeros((1, 3), np.int32), [-1])
    cpu_kernels.decode_tokens(kernel, cache, np.zeros((2, 39), np.int32), [-1])
    cpu_kernels.decode_tokens(kernel, cache, np.zeros((2, 1), np.int32), [-1])
    with pytest.raises(ValueError, match="context is 40 tokens; got 41"):
        cpu_kernels.decode_tokens(kernel, cache, np.zeros((2, 1), np.int32), [-1])
    for bad in (700, -1):  # the embedding has 700 rows: no read outside it
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 700\)"):
            cpu_kernels.decode_tokens(kernel, cache, np.array([[bad], [0]]), [-1])
    for bad in ([2], [0, 1, 1], []):  # a row that is not there, more rows than the cache holds, none
        with pytest.raises(ValueError, match="rearrange: source rows"):
            cache.rearrange(bad)


@pytest.mark.parametrize("float16_cross", [False, True], ids=["float32-cross", "float16-cross"])
def test_decoder_kernel_follows_the_mlx_graph_on_real_speech(tiny_en_fp32_dir, clips, float16_cross):
    """tiny.en on two real windows, two rows each, tokens picked by the C picker (each window's
    second row takes its second-best token, so rows differ), rows reordered like beams and then
    dropped like finished ones: the C decoder's logits stay the MLX graph's at every step."""
    from whisper_mlx.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim
    from whisper_mlx.logit_rules import LogitRules
    from whisper_mlx.tokenizer import get_tokenizer

    model = whisper_mlx.load_model(tiny_en_fp32_dir, backend="mlx")
    dec = model.decoder
    kernel = _decoder_kernel(dec)
    mels = [pad_or_trim(log_mel_spectrogram(load_audio(str(clips[name].path)), padding=N_SAMPLES), N_FRAMES, axis=0)
            for name in ("en_weather", sorted(c for c in clips if c != "en_weather")[0])]
    features = model.embed_audio(mx.stack(mels))
    tok = get_tokenizer(False, language="en")
    prompt = list(tok.sot_sequence)
    rules = LogitRules(n_vocab=model.dims.n_vocab, eot=tok.eot, sample_begin=len(prompt),
                       suppress=tuple(tok.non_speech_tokens), blank=tuple(tok.encode(" ") + [tok.eot]),
                       timestamps=True, timestamp_begin=tok.timestamp_begin, no_timestamps=tok.no_timestamps,
                       max_initial_timestamp=50)
    tokens = np.array([prompt] * 4)
    graph = _Graph(dec, features, 4, float16_cross)
    cache = cpu_kernels.DecoderCache(kernel, features, 4, float16_cross)
    reorders = {6: [1, 1, 3, 2], 12: [0, 3]}
    for step in range(18):
        new = tokens if step == 0 else tokens[:, -1:]
        expected = graph.logits(new, [-1])[:, 0]
        got = cpu_kernels.decode_tokens(kernel, cache, new, [-1])[:, 0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-3, err_msg=f"step {step}")
        picked, _ = cpu_kernels.pick(got, rules.state(tokens), rules.packed, rules.suppress_mask(), rules.blank, 2)
        choice = picked[np.arange(len(tokens)), np.arange(len(tokens)) % 2]
        tokens = np.concatenate([tokens, choice[:, None]], axis=1)
        if step in reorders:
            graph.rearrange(reorders[step])
            cache.rearrange(reorders[step])
            tokens = tokens[reorders[step]]
    assert cache.cross_index.tolist() == [0, 1] and (tokens[:, len(prompt):] < tok.eot).sum() > 10
