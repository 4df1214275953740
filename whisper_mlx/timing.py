"""Word-level timestamps: cross-attention of the alignment heads, median filter, DTW, then the
reference's word merging and boundary fixes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .backends import backend_for
from .audio import HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND
from .model import Whisper
from .tokenizer import Tokenizer


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


# Knuth's 16-comparator sorting network for 7 values (checked exhaustively in the tests).
_SORT7 = ((0, 6), (2, 3), (4, 5), (0, 2), (1, 4), (3, 6), (0, 1), (2, 5), (3, 4), (1, 2), (4, 6),
          (2, 3), (4, 5), (1, 2), (3, 4), (5, 6))


def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """Median over a sliding window of odd width along the last axis, reflect-padded."""
    pad = filter_width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    n = x.shape[-1]
    if filter_width == 7 and not np.isnan(padded).any():
        # the same selection by min/max over 7 shifted views: 5x faster than sorting windows
        v = [padded[..., k : k + n] for k in range(7)]
        for a, b in _SORT7:
            v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
        return v[3]
    windows = np.lib.stride_tricks.sliding_window_view(padded, filter_width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic minimum-cost path through x (N, M); returns (text_indices, time_indices).

    Walks anti-diagonals (cells on one are independent) so NumPy does the inner loop; ties
    break as in openai/whisper's dtw_cpu: diagonal, then up, then left. Costs are kept
    diagonal-major (row d holds cells i + j == d, indexed by i), so each step reads and
    writes contiguous slices.
    """
    n, m = x.shape
    n_diag = n + m + 1
    cost = np.full((n_diag, n + 1), np.inf, dtype=np.float64)
    trace = np.full((n_diag, n + 1), 2, dtype=np.int8)
    cost[0, 0] = 0
    # skewed[d, i] = x[i - 1, d - i - 1], the cell (i, j = d - i) of the cost matrix
    ii, jj = np.meshgrid(np.arange(1, n + 1), np.arange(1, m + 1), indexing="ij")
    skewed = np.zeros((n_diag, n + 1), dtype=np.float64)
    skewed[ii + jj, ii] = x.astype(np.float64)
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1) + 1
        c0, c1, c2 = cost[d - 2, lo - 1 : hi - 1], cost[d - 1, lo - 1 : hi - 1], cost[d - 1, lo:hi]
        diag = (c0 < c1) & (c0 < c2)
        up = (c1 < c0) & (c1 < c2)
        cost[d, lo:hi] = skewed[d, lo:hi] + np.where(diag, c0, np.where(up, c1, c2))
        trace[d, lo:hi] = 2 - 2 * diag - up
    return _backtrace_skewed(trace, n, m)


def _backtrace_skewed(trace: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = 2 if i == 0 else 1 if j == 0 else trace[i + j, i]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    result = np.array(path)[::-1].T
    return result[0], result[1]


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def find_alignment(
    model: Whisper,
    tokenizer: Tokenizer,
    text_tokens: list[int],
    mel: mx.array,
    num_frames: int,
    *,
    audio_features: mx.array | None = None,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Align text tokens to audio frames; `audio_features` (1, n_audio_ctx, n_audio_state) of
    `mel`, when the caller has them, saves a second encoder pass."""
    if len(text_tokens) == 0:
        return []
    tokens = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    if audio_features is None:
        audio_features = backend_for(model).encode(mel[None])
    start = len(tokenizer.sot_sequence)
    text = slice(start + 1, start + 1 + len(text_tokens))
    weights, probs = backend_for(model).alignment(tokens, audio_features, model.alignment_heads, text, tokenizer.eot)
    text_token_probs = probs.tolist()
    weights = weights[:, :, : num_frames // 2]
    weights = _softmax(weights * qk_scale)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(axis=0)[start:-1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    probabilities = [np.mean(text_token_probs[i:j]) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])]
    return [
        WordTiming(word, toks, float(s), float(e), float(p))
        for word, toks, s, e, p in zip(words, word_tokens, start_times, end_times, probabilities)
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous one."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    *,
    segments: list[dict],
    model: Whisper,
    tokenizer: Tokenizer,
    mel: mx.array,
    num_frames: int,
    prepend_punctuations: str = "\"'“¿([{-",
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、",
    last_speech_timestamp: float,
    **kwargs,
) -> None:
    """Give each segment a `words` list (word, start, end, probability), adjusting its bounds."""
    if len(segments) == 0:
        return
    text_tokens_per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, mel, num_frames, **kwargs)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = min(0.7, float(np.median(word_durations) if len(word_durations) > 0 else 0.0))
    max_duration = median_duration * 2

    # hack from openai/whisper: truncate long words at sentence boundaries
    if len(word_durations) > 0:
        sentence_end_marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in sentence_end_marks:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in sentence_end_marks:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, text_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append(
                    dict(
                        word=timing.word,
                        start=round(time_offset + timing.start, 2),
                        end=round(time_offset + timing.end, 2),
                        probability=timing.probability,
                    )
                )
            saved_tokens += len(timing.tokens)
            word_index += 1
        if len(words) > 0:
            # a long first word after a pause is likely wrong: clip it to max_duration
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                words[0]["end"] - words[0]["start"] > max_duration
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)
            # prefer the segment-level start/end when the words stray far from them
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words
