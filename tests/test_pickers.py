"""Picker equivalence (issue 13): every picker available on the machine applies openai-whisper's
logit filters and picks the same k best tokens, with the same log probabilities, from the same
random logits and token histories. The histories reach every timestamp rule (first step, after a
timestamp pair, after a single timestamp, after text) with text or timestamp tokens boosted, ties
at the top, and the rules on and off.

The reference, `logit_rules.pick_numpy`, is itself checked against a row-by-row transcription of
openai-whisper's SuppressBlank, SuppressTokens and ApplyTimestampRules classes."""

from __future__ import annotations

import whisper_mlx  # noqa: I001  (first: loads the kernels and OpenBLAS before mlx.core)

import numpy as np
import pytest
from whisper_mlx import cpu_kernels
from whisper_mlx.logit_rules import LogitRules, log_softmax, pick_numpy
from whisper_mlx.tokenizer import get_tokenizer

TOK = get_tokenizer(False, language="en")
N_VOCAB = 51864  # the English-only models' vocabulary
SOT = list(TOK.sot_sequence)
TS = TOK.timestamp_begin
SUPPRESS = tuple(sorted(set(TOK.non_speech_tokens) | {TOK.transcribe, TOK.translate, TOK.sot, TOK.sot_prev,
                                                      TOK.sot_lm, TOK.no_speech}))
BLANK = tuple(TOK.encode(" ") + [TOK.eot])

# Sampled tokens so far: the first step, a single timestamp, text after one, a single timestamp
# after text (text forbidden, no earlier timestamp), a pair (timestamps forbidden), text, text
# after a pair, and a long history of pairs.
HISTORIES = [[], [TS], [TS, 300], [TS, 300, TS + 20], [TS, 300, TS + 20, TS + 20], [TS + 3, 300, 301],
             [TS + 3, TS + 3, 500], [TS, 300, TS + 20, TS + 20, 301, 302, TS + 40, TS + 40, 303]]
BOOSTS = [None, "text", "timestamp", "eot", "tie"]


def _numpy(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int):
    return pick_numpy(rules, logits, state, k)


def _c(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int):
    if not cpu_kernels.available():
        pytest.skip("the C kernels are not built or loaded here")
    return cpu_kernels.pick(logits, state, rules.packed, rules.suppress_mask(), rules.blank, k)


def _mlx(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int):
    """The MLX-ops picker (the MLX backend's)."""
    import mlx.core as mx

    from whisper_mlx.backends.ops import pick_mlx

    tokens, logprobs = pick_mlx(rules, mx.array(logits), state, k)
    return np.array(tokens), np.array(logprobs)


def _cuda(rules: LogitRules, logits: np.ndarray, state: np.ndarray, k: int):
    """The CUDA backend's picker (one compiled graph of the same MLX ops; the greedy loop's
    on-device pick is tested against the reference in tests/test_cuda_backend.py, the fused CUDA
    step against the compiled step in tests/test_gpu.py)."""
    import mlx.core as mx

    from whisper_mlx.backends.cuda import pick

    return pick(rules, mx.array(logits), state, k)


PICKERS = {"numpy": _numpy, "c": _c, "mlx": _mlx, "cuda": _cuda}
# Pickers that edit a NumPy array of logits in place to the filtered logits (a sampler's input).
FILTERS_IN_PLACE = {"numpy", "c"}


def _rules(timestamps: bool, blank: bool, max_initial: int | None) -> LogitRules:
    return LogitRules(n_vocab=N_VOCAB, eot=TOK.eot, sample_begin=len(SOT), suppress=SUPPRESS,
                      blank=BLANK if blank else (), timestamps=timestamps, timestamp_begin=TS,
                      no_timestamps=TOK.no_timestamps, max_initial_timestamp=max_initial)


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, n_vocab) and token rows: every history under every boost, one row each; rows
    padded with text to one length are not needed (states are per row), so each row's state comes
    from its own history."""
    rng = np.random.default_rng(seed)
    rows, histories = [], []
    for history in HISTORIES:
        for boost in BOOSTS:
            x = rng.standard_normal(N_VOCAB).astype(np.float32) * 3
            if boost == "text":
                x[400] = 30
            elif boost == "timestamp":
                x[TS + 60] = 30
                x[TS + 1 : TS + 100] += 4  # many likely timestamps: their total can beat the best text token
            elif boost == "eot":
                x[TOK.eot] = 30
            elif boost == "tie":  # equal values at the top, text and timestamps: ties go to the lower id
                x[[TS + 1, TS + 30, 700, 450, 451, TS + 2]] = 20
            rows.append(x)
            histories.append(history)
    return np.stack(rows), histories


def _states(rules: LogitRules, histories: list[list[int]]) -> np.ndarray:
    return np.concatenate([rules.state(np.array([SOT + h])) for h in histories])


def openai_filters(rules: LogitRules, logits: np.ndarray, tokens: np.ndarray) -> None:
    """openai-whisper's decoding.py filters (SuppressBlank, SuppressTokens, ApplyTimestampRules),
    transcribed row by row for one row of tokens (1, T)."""
    sample_begin = rules.sample_begin
    if rules.blank and tokens.shape[1] == sample_begin:
        logits[:, list(rules.blank)] = -np.inf
    logits[:, list(rules.suppress)] = -np.inf
    if not rules.timestamps:
        return
    begin = rules.timestamp_begin
    logits[:, rules.no_timestamps] = -np.inf
    for k in range(tokens.shape[0]):
        sampled = tokens[k, sample_begin:]
        seq = sampled.tolist()
        last_was_ts = len(seq) >= 1 and seq[-1] >= begin
        penultimate_was_ts = len(seq) < 2 or seq[-2] >= begin
        if last_was_ts:
            if penultimate_was_ts:
                logits[k, begin:] = -np.inf
            else:
                logits[k, : rules.eot] = -np.inf
        timestamps = sampled[sampled >= begin]
        if timestamps.size > 0:
            last = timestamps[-1] if last_was_ts and not penultimate_was_ts else timestamps[-1] + 1
            logits[k, begin:last] = -np.inf
    if tokens.shape[1] == sample_begin:
        logits[:, :begin] = -np.inf
        if rules.max_initial_timestamp is not None:
            logits[:, begin + rules.max_initial_timestamp + 1 :] = -np.inf
    logprobs = log_softmax(logits).astype(np.float64)
    for k in range(tokens.shape[0]):
        ts = logprobs[k, begin:]
        ts_mass = np.log(np.sum(np.exp(ts - ts.max()))) + ts.max() if np.isfinite(ts.max()) else -np.inf
        if ts_mass > logprobs[k, :begin].max():
            logits[k, :begin] = -np.inf


CASES = [(ts, blank, max_initial) for ts in (True, False) for blank in (True, False) for max_initial in (50, None)]


@pytest.mark.parametrize("timestamps,blank,max_initial", CASES)
def test_reference_matches_openai_whisper_filters(timestamps, blank, max_initial):
    """pick_numpy's filtered logits equal openai-whisper's filters applied row by row; its top-1
    is their argmax, its log probability their log-softmax."""
    rules = _rules(timestamps, blank, max_initial)
    logits, histories = _batch(1)
    expected = logits.copy()
    for i, history in enumerate(histories):
        openai_filters(rules, expected[i : i + 1], np.array([SOT + history]))
    got = logits.copy()
    tokens, logprobs = pick_numpy(rules, got, _states(rules, histories), 1)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(tokens[:, 0], expected.argmax(-1))
    np.testing.assert_allclose(logprobs[:, 0], log_softmax(expected).max(-1), atol=1e-5)


@pytest.mark.parametrize("k", [1, 6])
@pytest.mark.parametrize("timestamps,blank,max_initial", CASES)
@pytest.mark.parametrize("picker", list(PICKERS))
def test_pickers_agree(picker, timestamps, blank, max_initial, k):
    """Every picker: the reference's tokens (best first, ties by lower id) and log probabilities
    within 1e-4, for B rows with their own histories in one call; pickers that filter a NumPy
    array in place leave the reference's filtered logits (-inf where forbidden)."""
    rules = _rules(timestamps, blank, max_initial)
    logits, histories = _batch(2 + k)
    states = _states(rules, histories)
    ref_logits = logits.copy()
    want_tokens, want_logprobs = pick_numpy(rules, ref_logits, states, k)
    got_logits = logits.copy()
    tokens, logprobs = PICKERS[picker](rules, got_logits, states.copy(), k)
    assert tokens.shape == logprobs.shape == (len(histories), k)
    for i, history in enumerate(histories):
        assert tokens[i].tolist() == want_tokens[i].tolist(), (history, i % len(BOOSTS))
    np.testing.assert_allclose(logprobs, want_logprobs, atol=1e-4, rtol=0)
    if picker in FILTERS_IN_PLACE:
        np.testing.assert_array_equal(got_logits, ref_logits)
    # the cases reach what they are meant to: timestamp and text picks, and forced timestamps
    if timestamps:
        assert (tokens[:, 0] >= TS).any() and (tokens[:, 0] < TOK.eot).any() and (tokens[:, 0] == TOK.eot).any()


@pytest.mark.parametrize("picker", list(PICKERS))
def test_pickers_agree_when_fewer_than_k_tokens_are_allowed(picker):
    """First step with max_initial_timestamp 0 and no text allowed: one token is possible; the
    other k - 1 picks have log probability -inf (which forbidden ids fill them is unspecified)."""
    rules = _rules(True, True, 0)
    logits, histories = _batch(9)
    logits, histories = logits[:3], [[]] * 3
    states = _states(rules, histories)
    want_tokens, want_logprobs = pick_numpy(rules, logits.copy(), states, 4)
    tokens, logprobs = PICKERS[picker](rules, logits.copy(), states, 4)
    assert (tokens[:, 0] == TS).all() and (want_tokens[:, 0] == TS).all()
    np.testing.assert_allclose(logprobs[:, 0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(logprobs[:, 1:], want_logprobs[:, 1:])
    assert np.isneginf(logprobs[:, 1:]).all()


def test_c_pick_rejects_bad_input():
    """One clear error naming the argument, before the C loop could write outside the row."""
    if not cpu_kernels.available():
        pytest.skip("the C kernels are not built or loaded here")
    rules = _rules(True, True, 50)
    logits = np.zeros((2, N_VOCAB), np.float32)
    state = np.full((2, 4), -1, np.int32)
    args = (rules.packed, rules.suppress_mask())
    with pytest.raises(ValueError, match=r"state must be \(2, 4\)"):
        cpu_kernels.pick(logits, state[:1], *args, rules.blank, 1)
    with pytest.raises(ValueError, match="k must be in"):
        cpu_kernels.pick(logits, state, *args, rules.blank, 0)
    with pytest.raises(ValueError, match="blank ids"):
        cpu_kernels.pick(logits, state, *args, [N_VOCAB], 1)
    bad_rules = rules.packed.copy()
    bad_rules[1] = N_VOCAB  # timestamps on, but no timestamp tokens: the rule would read past the row
    with pytest.raises(ValueError, match="timestamp_begin"):
        cpu_kernels.pick(logits, state, bad_rules, rules.suppress_mask(), rules.blank, 1)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        cpu_kernels.pick(logits[:, ::2], state, *args, rules.blank, 1)
