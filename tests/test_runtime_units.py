"""Unit checks of runtime pieces against openai-whisper's own implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_mlx import timing, tokenizer


def test_dtw_matches_reference():
    from whisper.timing import dtw_cpu

    rng = np.random.default_rng(0)
    for shape in [(5, 40), (20, 300), (1, 10), (30, 31)]:
        x = rng.standard_normal(shape)
        ref = dtw_cpu(x.copy())
        ours = timing.dtw(x)
        np.testing.assert_array_equal(np.stack(ours), ref)


def test_median_filter_matches_reference():
    from whisper.timing import median_filter

    x = np.random.default_rng(1).standard_normal((4, 12, 50)).astype(np.float32)
    ref = median_filter(torch.from_numpy(x), 7).numpy()
    np.testing.assert_allclose(timing.median_filter(x, 7), ref)
    ties = np.random.default_rng(2).integers(0, 4, (3, 9, 60)).astype(np.float32)
    np.testing.assert_array_equal(timing.median_filter(ties, 7), median_filter(torch.from_numpy(ties), 7).numpy())


def test_median_network_sorts_every_binary_input():
    """The 7-value sorting network behind median_filter sorts all 2^7 0/1 inputs (0-1 principle)."""
    import itertools

    for bits in itertools.product([0.0, 1.0], repeat=7):
        v = [np.array([b]) for b in bits]
        for a, b in timing._SORT7:
            v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
        assert [float(e[0]) for e in v] == sorted(bits)


def test_dtw_matches_reference_with_ties():
    from whisper.timing import dtw_cpu

    rng = np.random.default_rng(3)
    for shape in [(8, 50), (40, 41), (1, 5), (6, 1)]:
        x = rng.integers(0, 3, shape).astype(np.float64)
        np.testing.assert_array_equal(np.stack(timing.dtw(x)), dtw_cpu(x.copy()))


@pytest.mark.parametrize("multilingual", [False, True])
def test_tokenizer_matches_reference(multilingual):
    import whisper.tokenizer as wt

    for language, task in [(None, None), ("de", "translate"), ("fr", "transcribe")]:
        ours = tokenizer.get_tokenizer(multilingual, language=language, task=task)
        ref = wt.get_tokenizer(multilingual, language=language, task=task)
        assert ours.sot_sequence == ref.sot_sequence
        assert ours.non_speech_tokens == ref.non_speech_tokens
        assert dict(zip(ours.all_language_tokens, ours.all_language_codes)) == dict(
            zip(ref.all_language_tokens, ref.all_language_codes)
        )
        text = " The quick brown fox, 3.14 times — déjà vu!"
        tokens = ours.encode(text)
        assert tokens == ref.encode(text)
        assert ours.decode(tokens) == text
        assert ours.split_to_word_tokens(tokens + [ours.eot]) == ref.split_to_word_tokens(tokens + [ref.eot])


def test_language_names_and_errors():
    assert tokenizer.get_tokenizer(True, language="German").language == "de"
    with pytest.raises(ValueError, match="Unsupported language"):
        tokenizer.get_tokenizer(True, language="klingon")


@pytest.mark.parametrize("dims", [
    dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_vocab=51864,
         n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4),
    dict(n_mels=128, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=2, n_vocab=51866,
         n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=3),
], ids=["tiny.en", "multilingual-128-mels"])
def test_header_checks_expect_exactly_the_models_parameters(dims):
    """load.weight_shapes (what a weights header is checked against before loading) names every
    parameter of model.py's Whisper with its shape, and nothing else."""
    from mlx.utils import tree_flatten

    from whisper_mlx.load import weight_shapes
    from whisper_mlx.model import ModelDimensions, Whisper

    d = ModelDimensions(**dims)
    params = {name: tuple(value.shape) for name, value in tree_flatten(Whisper(d).parameters())}
    assert weight_shapes(d) == params
