"""Hot-path regression benchmarks (pytest-benchmark, `make bench`): log-mel, one encoder pass and
one decoder step with a warm kv_cache, for tiny.en fp32 and 4bit, on synthesized speech. Each
benchmark also checks its result, so a fast-but-wrong change fails here too."""

from __future__ import annotations

import whisper_mlx  # noqa: I001  (first: its backend preloads OpenBLAS before mlx.core loads)

import mlx.core as mx
import numpy as np
import pytest
from whisper_mlx.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim
from whisper_mlx.tokenizer import get_tokenizer
from benchmarks import cpu as bench

pytestmark = pytest.mark.bench

PROMPT_TOKENS = 24  # text tokens already in the kv_cache before the timed step


@pytest.fixture(scope="module")
def clip():
    """The benchmark's 30 s clip (en_long_story's first 30 s), as the CLI benchmark uses."""
    return bench.prepare_clip("clip30")


@pytest.fixture(scope="module")
def audio(clip) -> np.ndarray:
    return load_audio(clip.path)


@pytest.fixture(scope="module")
def mel(audio) -> mx.array:
    """One 30 s window (N_FRAMES, n_mels), as the seek loop feeds the encoder."""
    m = pad_or_trim(log_mel_spectrogram(audio, padding=N_SAMPLES), N_FRAMES, axis=0)
    mx.eval(m)
    return m


@pytest.fixture(scope="module", params=["fp32", "4bit"])
def model(request):
    return request.param, whisper_mlx.load_model(bench.whisper_mlx_dir("tiny.en", request.param))


@pytest.fixture(scope="module")
def fp32_features(mel):
    m = whisper_mlx.load_model(bench.whisper_mlx_dir("tiny.en", "fp32"))
    features = m.embed_audio(mel[None])
    mx.eval(features)
    return np.array(features)


def test_mel(benchmark, audio):
    """Log-mel of 30 s of speech, padded as transcribe pads it; equals openai-whisper's."""
    import torch
    import whisper

    def run():
        out = log_mel_spectrogram(audio, padding=N_SAMPLES)
        mx.eval(out)
        return out

    out = np.array(benchmark(run))
    ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), padding=N_SAMPLES).numpy().T
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_encoder(benchmark, model, mel, fp32_features):
    """One encoder pass over a 30 s window; the 4bit model stays close to fp32."""
    name, m = model

    def run():
        out = m.embed_audio(mel[None])
        mx.eval(out)
        return out

    out = np.array(benchmark.pedantic(run, rounds=5, warmup_rounds=1))  # ~1 s each: few rounds
    assert out.shape == (1, m.dims.n_audio_ctx, m.dims.n_audio_state)
    assert np.isfinite(out).all()
    cos = (out * fp32_features).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(fp32_features, axis=-1))
    assert cos.mean() > (0.9999 if name == "fp32" else 0.95), f"{name}: encoder drifted from fp32 ({cos.mean():.4f})"


def test_decoder_step(benchmark, model, mel):
    """One token through the decoder with a warm kv_cache (the greedy loop's unit of work, through
    the inference the runtime picks: the C decoder on Linux CPUs); its logits equal recomputing the
    whole sequence without a cache."""
    from whisper_mlx.decoding import KernelInference, make_inference

    name, m = model
    features = m.embed_audio(mel[None])
    tokenizer = get_tokenizer(m.is_multilingual, num_languages=m.num_languages)
    result = whisper_mlx.decode(m, mel, language="en", temperature=0.0, without_timestamps=True)
    assert len(result.tokens) > PROMPT_TOKENS + 1, f"{name}: decoded only {len(result.tokens)} tokens"
    prompt = list(tokenizer.sot_sequence_including_notimestamps) + result.tokens[:PROMPT_TOKENS]
    tokens = np.array([prompt + [result.tokens[PROMPT_TOKENS]]])
    inference = make_inference(m, features)
    inference.logits(tokens[:, :-1])
    warm = inference.kv_cache

    def run():
        if isinstance(inference, KernelInference):
            inference.kv_cache.offset = len(prompt)  # overwrite the same position each round
        else:
            inference.kv_cache = warm
        return inference.logits(tokens)

    step_logits = benchmark(run)[0, -1]
    full = np.array(m.logits(mx.array(tokens), features))[0, -1]
    np.testing.assert_allclose(step_logits, full, atol=2e-3, rtol=1e-3)
    assert int(step_logits.argmax()) == int(full.argmax())
