"""The CUDA backend's session logic, on MLX's CPU device (CI): its compiled fixed-shape graphs
(fixed-size caches, fused query/key/value, the filters and top-k as one graph, rows gathered on
the device, the pipelined greedy loop with the filter state on the device) are plain MLX, so the
class built directly on the CPU runs them, without its two CUDA kernels (the fused step and the
encoder's GELU), which tests/test_gpu.py covers on a GPU. Checked against the MLX-graph reference
backend and the base class's loop on real tiny.en weights and synthesized speech."""

from __future__ import annotations

import whisper_mlx  # noqa: I001  (first: picks the BLAS before mlx.core loads)
from whisper_mlx import decoding
from whisper_mlx.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim
from whisper_mlx.backends import Session, backend_for
from whisper_mlx.backends.cuda import CudaBackend, select
from whisper_mlx.backends.mlx import MlxBackend
from whisper_mlx.backends.ops import filter_arrays
from whisper_mlx.logit_rules import LogitRules, apply_numpy, pick_numpy
from whisper_mlx.tokenizer import get_tokenizer

import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture(scope="module")
def models(tiny_en_fp32_dir):
    """tiny.en fp32 on the reference backend and on the CUDA backend's graphs (built on the CPU:
    the test lifts the backend's device check, which is all that keeps it off the CPU)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CudaBackend, "supports", classmethod(lambda cls, model: None))
        cuda = whisper_mlx.load_model(tiny_en_fp32_dir, backend="cuda")
    reference = whisper_mlx.load_model(tiny_en_fp32_dir, backend="mlx")
    backend = backend_for(cuda)
    assert isinstance(backend, CudaBackend) and isinstance(backend_for(reference), MlxBackend)
    assert backend.fused_step(cuda.dims.n_audio_ctx) is None  # no CUDA kernel on the CPU
    return reference, cuda


@pytest.fixture(scope="module")
def windows(clips, models):
    """The first 30 s of three parity clips as log-mel windows (3, N_FRAMES, n_mels)."""
    paths = sorted(c.path for c in clips.values() if c.split == "parity")[:3]
    n_mels = models[0].dims.n_mels
    return mx.stack([pad_or_trim(log_mel_spectrogram(load_audio(str(p)), n_mels), N_FRAMES, axis=0) for p in paths])


def _rules(model, tokenizer, options=decoding.DecodingOptions()):
    initial = decoding._initial_tokens(tokenizer, options, model.dims.n_text_ctx, model.dims.n_text_ctx // 2)
    rules = decoding.logit_rules(tokenizer, options, len(initial), model.dims.n_vocab, model.dims.n_audio_ctx)
    return np.array(initial), rules


def _words(result: dict) -> list[tuple]:
    return [(w["word"], w["start"], w["end"]) for s in result["segments"] for w in s["words"]]


@pytest.mark.parametrize("options", [dict(temperature=0.0, word_timestamps=True), dict(temperature=0.0, beam_size=5)],
                         ids=["greedy-words", "beam5"])
def test_transcripts_match_the_reference_backend(models, clips, options):
    """Same tokens and words as the MLX-graph backend; log probabilities within 1e-4; word times
    within one 20 ms frame (the encoders differ in the order of their sums)."""
    reference, cuda = models
    paths = sorted(c.path for c in clips.values() if c.split == "parity")[:2 if "beam_size" not in options else 1]
    for path in paths:
        want = whisper_mlx.transcribe(str(path), model=reference, **options)
        got = whisper_mlx.transcribe(str(path), model=cuda, **options)
        assert got["text"] == want["text"], path.name
        assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in want["segments"]], path.name
        for a, b in zip(want["segments"], got["segments"]):
            assert abs(a["avg_logprob"] - b["avg_logprob"]) < 1e-4, path.name
            assert abs(a["no_speech_prob"] - b["no_speech_prob"]) < 1e-4, path.name
        if options.get("word_timestamps"):
            a, b = _words(want), _words(got)
            assert [w[0] for w in a] == [w[0] for w in b], path.name
            assert max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in (1, 2)) <= 0.02 + 1e-9, path.name


def test_backend_is_released_with_its_model(tiny_en_fp32_dir, models, windows):
    """The backend (its compiled graphs and the weights they captured) goes with the model."""
    import gc
    import weakref

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CudaBackend, "supports", classmethod(lambda cls, model: None))
        model = whisper_mlx.load_model(tiny_en_fp32_dir, backend="cuda")
    backend = backend_for(model)
    backend.encode(windows[:1])
    released = weakref.ref(backend)
    del model, backend
    gc.collect()
    assert released() is None


def test_pipelined_greedy_over_rows_matches_the_base_loop(models, windows):
    """Two windows decoded at once: the pipelined loop (finished rows ride along emitting
    end-of-text) against the base class's loop (finished rows dropped) on the same backend: same
    tokens, log-probability sums within 1e-4. (The reference backend's loop is compared with
    through whole transcripts above.)"""
    _, cuda = models
    backend = backend_for(cuda)
    tokenizer = get_tokenizer(False, language="en")
    prompt, rules = _rules(cuda, tokenizer)
    prompts = np.repeat(prompt[None], 2, axis=0)
    n_ctx, sample_len = cuda.dims.n_text_ctx, cuda.dims.n_text_ctx // 2
    features = backend.encode(windows[:2])
    sessions = [backend.session(features, 2) for _ in range(2)]
    for session in sessions:
        session.prefill(prompts, 0)
    tokens, sums = sessions[0].greedy(rules, prompts, sample_len, n_ctx)
    want_tokens, want_sums = Session.greedy(sessions[1], rules, prompts, sample_len, n_ctx)
    ends = (tokens == tokenizer.eot).argmax(axis=1)
    assert ends[0] != ends[1] and (tokens[:, -1] == tokenizer.eot).all()  # rows finish at different steps
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(sums, want_sums, rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError, match="spent"):  # the pipelined loop leaves the session spent
        sessions[0].pick(rules, rules.state(prompts))


def test_reorder_feed_and_pick_match_the_reference_session(models, windows):
    """Two windows x three rows; rows fed, reordered across windows and dropped, fed again: the
    pending logits match the reference session's; the picks (k = 1 and 4) and the filtered logits
    match the NumPy reference picker on those logits."""
    reference, cuda = models
    tokenizer = get_tokenizer(False, language="en")
    prompt, rules = _rules(cuda, tokenizer)
    features = [backend_for(m).encode(windows[:2]) for m in (reference, cuda)]
    sessions = [backend_for(m).session(f, 6) for m, f in zip((reference, cuda), features)]
    tokens = np.repeat(prompt[None], 6, axis=0)
    for s in sessions:
        s.prefill(tokens, 0)
    rng = np.random.default_rng(0)
    steps = [None, np.array([1, 0, 2, 5, 3, 4]), np.array([4, 0, 0, 3]), np.array([3, 1])]
    for order in steps:
        if order is not None:
            tokens = tokens[order]
            for s in sessions:
                s.reorder(order)
        state = rules.state(tokens)
        want, got = (s.pending_logits() for s in sessions)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
        for k in (1, 4):
            ref_tokens, ref_values = pick_numpy(rules, got.copy(), state, k)
            picked, values = sessions[1].pick(rules, state, k)
            np.testing.assert_array_equal(picked, ref_tokens)
            np.testing.assert_allclose(values, ref_values, rtol=0, atol=1e-4)
        filtered = got.copy()
        apply_numpy(rules, filtered, state)
        np.testing.assert_array_equal(np.isinf(sessions[1].filtered_logits(rules, state)), np.isinf(filtered))
        new = rng.integers(0, tokenizer.eot, len(tokens))
        tokens = np.concatenate([tokens, new[:, None]], axis=1)
        for s in sessions:
            s.feed(new)
    assert sessions[1].window.tolist() == [1, 0]


def test_select_applies_the_filters_and_keeps_finished_rows():
    """The pipelined loop's on-device pick over B rows against the NumPy reference picker, over
    states that reach every timestamp rule (first step, after a pair, after a single timestamp,
    text), with the next row states; a row whose last token was end-of-text emits it again."""
    tok = get_tokenizer(False, language="en")
    n_vocab, begin = 51864, tok.timestamp_begin
    sot = list(tok.sot_sequence)
    rules = LogitRules(n_vocab=n_vocab, eot=tok.eot, sample_begin=len(sot),
                       suppress=decoding._suppressed(tok, "-1"), blank=tuple(tok.encode(" ") + [tok.eot]),
                       timestamps=True, timestamp_begin=begin, no_timestamps=tok.no_timestamps,
                       max_initial_timestamp=50)
    histories = ([], [begin], [begin, 300], [begin, 300, begin + 20], [begin, 300, begin + 20, begin + 20],
                 [begin + 3, 300, 301], [begin + 3, begin + 3, 500], [begin, 300, tok.eot])
    rng = np.random.default_rng(0)
    for boost in (None, "text", "timestamp"):
        logits = rng.standard_normal((len(histories), n_vocab)).astype(np.float32) * 3
        if boost == "text":
            logits[:, 400] = 30
        elif boost == "timestamp":
            logits[:, begin + 60] = 30
        state = np.concatenate([rules.state(np.array([sot + h])) for h in histories])
        want, want_lp = pick_numpy(rules, logits.copy(), state, 1)
        token, logprob, nxt = select(mx.array(logits), mx.array(state), *filter_arrays(rules))
        token, logprob, nxt = np.array(token), np.array(logprob), np.array(nxt)
        for i, h in enumerate(histories):
            if h and h[-1] == tok.eot:
                assert token[i] == tok.eot and logprob[i] == 0, boost
                continue
            assert token[i] == want[i, 0], (h, boost)
            assert abs(logprob[i] - want_lp[i, 0]) < 1e-4, (h, boost)
            ts = [t for t in h if t >= begin]
            assert nxt[i].tolist() == [len(h) + 1, want[i, 0], h[-1] if h else -1,
                                       want[i, 0] if want[i, 0] >= begin else (ts[-1] if ts else -1)]
