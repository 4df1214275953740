"""The GPU decoding path (whisper_mlx.gpu: compiled step over a fixed-size cache, logit filters
and argmax on the device, pipelined steps) computes what decoding's NumPy loop computes. It runs
on MLX's CPU backend too, so this checks it here against the CPU path on real speech."""

from __future__ import annotations

import whisper_mlx  # noqa: I001  (first: picks the BLAS before mlx.core loads)
from whisper_mlx import decoding, gpu

import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture
def fast_greedy():
    before = decoding.FAST_GREEDY
    yield
    decoding.FAST_GREEDY = before


def _segments(result: dict) -> list[tuple]:
    return [(s["tokens"], s["start"], s["end"], [(w["word"], w["start"], w["end"]) for w in s.get("words", [])])
            for s in result["segments"]]


def test_fast_greedy_matches_numpy_loop(clips, tiny_en_fp32_dir, fast_greedy):
    model = whisper_mlx.load_model(tiny_en_fp32_dir)
    paths = sorted(c.path for c in clips.values() if c.split == "parity")[:3]
    paths += [c.path for c in clips.values() if c.path.name.startswith("en_long")]
    for path in paths:
        out = {}
        for fast in (False, True):
            decoding.FAST_GREEDY = fast
            out[fast] = whisper_mlx.transcribe(str(path), model=model, temperature=0.0, word_timestamps=True)
        assert out[True]["text"] == out[False]["text"], path.name
        assert _segments(out[True]) == _segments(out[False]), path.name
        for a, b in zip(out[False]["segments"], out[True]["segments"]):
            assert abs(a["avg_logprob"] - b["avg_logprob"]) < 1e-4
            assert abs(a["no_speech_prob"] - b["no_speech_prob"]) < 1e-4


def test_select_token_applies_timestamp_rules():
    """One step of the device-side filters against decoding's NumPy filters, over states that
    reach every timestamp rule (first step, after a pair, after a single timestamp, text)."""
    from whisper_mlx.tokenizer import get_tokenizer

    tok = get_tokenizer(False, language="en")
    n_vocab, begin = 51864, tok.timestamp_begin
    suppress_ids = decoding._suppressed(tok, "-1")
    blank_ids = tuple(tok.encode(" ") + [tok.eot])
    suppress, blank = gpu._filter_masks(n_vocab, suppress_ids, blank_ids)
    rules = mx.array([1, begin, tok.eot, tok.no_timestamps, 50], mx.int32)
    sot = list(tok.sot_sequence)
    rng = np.random.default_rng(0)
    for sampled in ([], [begin], [begin, 300], [begin, 300, begin + 20], [begin, 300, begin + 20, begin + 20],
                    [begin + 3, 300, 301], [begin + 3, begin + 3, 500]):
        for boost in (None, "text", "timestamp"):
            logits = rng.standard_normal((1, n_vocab)).astype(np.float32) * 3
            if boost == "text":
                logits[0, 400] = 30
            elif boost == "timestamp":
                logits[0, begin + 60] = 30
            tokens = np.array([sot + sampled])
            ref = logits.copy()
            for apply in (decoding.suppress_blank(tok, len(sot)), decoding.suppress_tokens(suppress_ids),
                          decoding.apply_timestamp_rules(tok, len(sot), 50)):
                apply(ref, tokens)
            want = int(ref.argmax())
            want_lp = float(decoding.log_softmax(ref)[0, want])
            ts = [t for t in sampled if t >= begin]
            state = mx.array([len(sampled), sampled[-1] if sampled else -1, sampled[-2] if len(sampled) > 1 else -1,
                              ts[-1] if ts else -1], mx.int32)
            token, logprob, nxt = gpu.select_token(mx.array(logits), state, suppress, blank, rules)
            assert int(token.item()) == want, (sampled, boost)
            assert abs(float(logprob.item()) - want_lp) < 1e-4, (sampled, boost)
            assert nxt.tolist() == [len(sampled) + 1, want, sampled[-1] if sampled else -1,
                                    want if want >= begin else (ts[-1] if ts else -1)]
