"""The C kernels (csrc/cpu_kernels.c) against plain MLX/NumPy math, and the encoder with them
against the encoder without them (WHISPER_MLX_KERNELS=none) on real weights."""

from __future__ import annotations

import json
import subprocess
import sys

import whisper_mlx  # noqa: I001  (first: loads the kernels and OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
import pytest
from whisper_mlx import runtime, cpu_kernels
from whisper_mlx.model import gelu

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
    x = mx.array(np.linspace(-9, 9, 100_003, dtype=np.float32))
    expected = np.array(gelu(x))
    x_erf = np.linspace(-9, 9, 100_003)
    exact = 0.5 * x_erf * (1 + np.vectorize(__import__("math").erf)(x_erf / np.sqrt(2)))
    got = np.array(cpu_kernels.gelu_(mx.array(np.array(x))))
    # float32 roundings of x * (1 + erf): fused multiply-adds round differently from MLX's ops
    np.testing.assert_allclose(got, expected, rtol=3e-7, atol=1.5e-6)
    np.testing.assert_allclose(got, exact, rtol=3e-7, atol=2e-6)


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


ENCODE = """
import json, sys
import whisper_mlx, mlx.core as mx, numpy as np
from whisper_mlx.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim
m = whisper_mlx.load_model(sys.argv[1])
mel = pad_or_trim(log_mel_spectrogram(load_audio(sys.argv[2]), padding=N_SAMPLES), N_FRAMES, axis=0)
np.save(sys.argv[3], np.array(m.embed_audio(mel[None])))
from whisper_mlx import cpu_kernels
print(json.dumps({"kernels": cpu_kernels.available()}))
"""


def test_encoder_with_kernels_matches_mlx_kernels(tiny_en_fp32_dir, clips, tmp_path):
    """The encoder output on real speech is the same function with and without the C kernels."""
    audio = str(clips["en_weather"].path)
    outs = {}
    for kernels in ("auto", "none"):
        env = {"WHISPER_MLX_KERNELS": kernels}
        path = tmp_path / f"{kernels}.npy"
        proc = subprocess.run([sys.executable, "-c", ENCODE, str(tiny_en_fp32_dir), audio, str(path)],
                              capture_output=True, text=True, env={**__import__("os").environ, **env}, check=True)
        assert json.loads(proc.stdout.strip().splitlines()[-1])["kernels"] is (kernels == "auto")
        outs[kernels] = np.load(path)
    diff = np.abs(outs["auto"] - outs["none"])
    assert diff.max() < 2e-3 * np.abs(outs["none"]).max(), diff.max()


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


def test_embedding_goes_float16_only_when_exact():
    """Float16 storage only where it holds the weights exactly; lookups and logits unchanged."""
    from whisper_mlx.model import TextDecoder

    rng = np.random.default_rng(0)
    x = mx.array(rng.normal(size=(1, 2, 16)).astype(np.float32))
    for exact in (True, False):
        dec = TextDecoder(n_vocab=300, n_ctx=8, n_state=16, n_head=2, n_layer=1)
        w = rng.normal(size=(300, 16)).astype(np.float16).astype(np.float32)
        if not exact:
            w[5, 3] += 1e-6
        dec.token_embedding.weight = mx.array(w)
        expected = np.array(dec.ln(x)).astype(np.float64) @ w.T.astype(np.float64)
        dec.transpose_embedding()
        assert (dec._embedding16 is not None) is exact
        np.testing.assert_array_equal(np.array(dec.embed(mx.array([[3, 5]]), 0)), w[[3, 5]][None])
        np.testing.assert_allclose(np.array(dec.logits(x)), expected, rtol=1e-5, atol=1e-5)


def _small_decoder(seed: int = 0, inexact: str | None = None):
    """A 2-layer text decoder with random float16-exact weights (as converted checkpoints are),
    but for the `inexact` parameter, prepared for the CPU."""
    from mlx.utils import tree_flatten, tree_unflatten
    from whisper_mlx.model import TextDecoder

    rng = np.random.default_rng(seed)
    dec = TextDecoder(n_vocab=700, n_ctx=40, n_state=64, n_head=4, n_layer=2)
    params = {k: mx.array((rng.normal(size=v.shape) * 0.3).astype(np.float16).astype(np.float32))
              for k, v in tree_flatten(dec.parameters())}
    params["blocks.0.attn.key.weight"] = params["blocks.0.attn.key.weight"] * 2  # sharper attention
    if inexact:
        params[inexact] = params[inexact] + 1e-6
    dec.update(tree_unflatten(list(params.items())))
    dec.prepare_cpu()
    return dec, rng


class _Model:
    """The decoder alone, as decoding's Inference classes see a model."""

    def __init__(self, decoder):
        self.decoder = decoder


def test_decoder_kernel_matches_the_mlx_decoder():
    """Prompt rows, single steps, a batch and beam reordering: the C decoder's logits equal the
    MLX graph's (same weights, same kv_cache semantics)."""
    from whisper_mlx.decoding import Inference, KernelInference

    dec, rng = _small_decoder()
    assert dec.kernel is not None
    features = mx.array(rng.normal(size=(3, 37, 64)).astype(np.float32))
    tokens = rng.integers(0, 700, size=(3, 6))
    graph, kernel = Inference(_Model(dec), features), KernelInference(_Model(dec), features)
    for step in range(12):
        rows = (1, -1) if step == 0 else (-1,)
        expected, got = graph.logits(tokens, rows=rows), kernel.logits(tokens, rows=rows)
        assert got.shape == expected.shape == (3, len(rows), 700)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
        if step == 5:  # beam search keeps rows 2, 2, 0
            graph.rearrange_kv_cache([2, 2, 0])
            kernel.rearrange_kv_cache([2, 2, 0])
            tokens = tokens[[2, 2, 0]]
        tokens = np.concatenate([tokens, expected[:, -1].argmax(-1)[:, None]], axis=1)


def test_decoder_kernel_stops_at_the_context_length():
    dec, rng = _small_decoder(1)
    cache = cpu_kernels.DecoderCache(dec.kernel, mx.zeros((1, 5, 64)), 1)
    cpu_kernels.decode_tokens(dec.kernel, cache, np.zeros((1, 39), np.int32), [-1])
    cpu_kernels.decode_tokens(dec.kernel, cache, np.zeros((1, 1), np.int32), [-1])
    with pytest.raises(ValueError, match="context is 40 tokens; got 41"):
        cpu_kernels.decode_tokens(dec.kernel, cache, np.zeros((1, 1), np.int32), [-1])
    for bad in (700, -1):  # the embedding has 700 rows: no read outside it
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 700\)"):
            cpu_kernels.decode_tokens(dec.kernel, cache, np.array([[bad]]), [-1])


@pytest.mark.parametrize("inexact", [None, "token_embedding.weight", "blocks.1.mlp.0.weight"])
def test_decoder_kernel_keeps_weight_matrices_in_float16_only_when_exact(inexact):
    """prepare_cpu keeps the decoder's weight matrices in float16 (the kernel reads those) only
    where float16 holds them and the embedding exactly; otherwise nothing changes and the MLX
    graph decodes."""
    from mlx.utils import tree_flatten

    dec, _ = _small_decoder(inexact=inexact)
    dtypes = {name: p.dtype for name, p in tree_flatten(dec.blocks[1].parameters())}
    halves = {name for name, dtype in dtypes.items() if dtype == mx.float16}
    if inexact is None:
        assert dec.kernel is not None and halves == cpu_kernels.FLOAT16_PARAMS
    else:
        assert dec.kernel is None and not halves


@pytest.mark.parametrize("beam_size", [None, 3])
def test_decoder_kernel_decodes_real_speech_like_the_mlx_graph(tiny_en_fp32_dir, clips, beam_size):
    """tiny.en on real speech: the same tokens and log probability through the C decoder as
    through the MLX graph, greedy and with beam search."""
    from whisper_mlx.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim
    from whisper_mlx.decoding import decode, embed_audio

    model = whisper_mlx.load_model(tiny_en_fp32_dir)
    assert model.decoder.kernel is not None, "load_model did not prepare the C decoder on the CPU"
    mel = pad_or_trim(log_mel_spectrogram(load_audio(str(clips["en_weather"].path)), padding=N_SAMPLES),
                      N_FRAMES, axis=0)
    features = embed_audio(model, mel[None])[0]
    with_kernel = decode(model, features, language="en", beam_size=beam_size)
    kernel, model.decoder.kernel = model.decoder.kernel, None
    try:
        with_graph = decode(model, features, language="en", beam_size=beam_size)
    finally:
        model.decoder.kernel = kernel
    assert with_kernel.tokens == with_graph.tokens and len(with_kernel.tokens) > 10
    assert with_kernel.avg_logprob == pytest.approx(with_graph.avg_logprob, abs=1e-4)
