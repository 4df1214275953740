"""Long-form transcription: openai-whisper's 30 s seek loop with temperature fallback, prompts,
clip ranges, word timestamps and hallucination skipping, on an MLX model."""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np
import tqdm

from . import vad
from .audio import (FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, AudioError, _as_waveform, load_audio,
                    load_mel, pad_or_trim)
from .decoding import DecodingOptions, DecodingResult, check_options, decode, detect_language, embed_audio
from .load import ModelOutputError, load_model
from .model import Whisper
from .timing import add_word_timestamps
from .tokenizer import LANGUAGES, get_tokenizer
from .writers import format_timestamp

_PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"
_loaded: dict[tuple, Whisper] = {}
_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _model_lock(model: Whisper) -> threading.Lock:
    """One lock per model: concurrent transcribe calls on a shared model run one at a time."""
    with _locks_guard:
        return _locks.setdefault(id(model), threading.Lock())


def _cached_model(path_or_hf_repo: str, dtype) -> Whisper:
    """The last model loaded by name, reused across calls (loading costs more than a short clip)."""
    key = (str(path_or_hf_repo), str(dtype))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_model(path_or_hf_repo, dtype=dtype)
    return _loaded[key]


def transcribe(
    audio: str | Path | np.ndarray | mx.array,
    *,
    path_or_hf_repo: str = "tiny",
    model: Whisper | None = None,
    dtype=None,
    verbose: bool | None = None,
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: str | None = None,
    carry_initial_prompt: bool = False,
    word_timestamps: bool = False,
    prepend_punctuations: str = "\"'“¿([{-",
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、",
    clip_timestamps: str | list[float] = "0",
    hallucination_silence_threshold: float | None = None,
    vad_filter: bool | None = None,
    vad_parameters: dict | vad.VadOptions | None = None,
    batch_size: int | None = None,
    on_segment: Callable[[dict], None] | None = None,
    **decode_options,
) -> dict:
    """Transcribe an audio file or 16 kHz mono array with a Whisper model.

    audio: a path (any format FFmpeg reads) or a float32 waveform at 16 kHz.
    path_or_hf_repo: a model directory, a Hub repo id or a zoo short name (`tiny.en-4bit`; a bare
        size like `tiny` means its fp16 variant);
        ignored when `model` (from `load_model`) is given.
    verbose: True prints each segment, False shows a progress bar, None is silent.
    temperature: a value or a tuple of fallbacks, tried in order when a window's result is too
        repetitive (compression_ratio_threshold) or too unlikely (logprob_threshold).
    no_speech_threshold: with avg logprob under logprob_threshold, a window whose no-speech
        probability exceeds this is treated as silence and skipped.
    condition_on_previous_text: feed the previous window's text as the prompt.
    initial_prompt: text given as context to the first window (carry_initial_prompt: to all).
    word_timestamps: add per-word start/end/probability from cross-attention alignment (DTW).
    prepend_punctuations / append_punctuations: punctuation merged into the next / previous word.
    clip_timestamps: "start,end,start,end,..." seconds (or a list) of the ranges to process.
    hallucination_silence_threshold: with word_timestamps, skip silent gaps longer than this
        (seconds) around suspected hallucinations.
    vad_filter: cut the audio to its speech (Silero VAD) before decoding; segment and word times
        are mapped back to the original audio. Needs onnxruntime (`pip install "whisper-mlx[vad]"`).
        None (the default): off, except with batch_size, where chunks follow the speech when
        onnxruntime is installed (faster-whisper's batched default) and are 30 s windows if not.
    vad_parameters: a VadOptions or a dict of its fields (faster-whisper's names: threshold,
        neg_threshold, min_speech_duration_ms, max_speech_duration_s, min_silence_duration_ms,
        speech_pad_ms); used with vad_filter.
    batch_size: decode batches of this many chunks together (whisper_mlx.batched): the audio is
        cut into chunks of at most 30 s (speech regions joined, with vad_filter; else consecutive
        30 s windows) and no chunk is conditioned on the previous text (condition_on_previous_text,
        initial_prompt, clip_timestamps and hallucination_silence_threshold do not apply).
    on_segment: called with each segment (as it will appear in the result) once its window is
        final, before the next window is decoded; an exception it raises ends the call. Only the
        sequential loop calls it (not with vad_filter or batch_size).
    decode_options: DecodingOptions fields — language, task ("transcribe" | "translate"),
        without_timestamps, suppress_tokens, suppress_blank, sample_len, best_of, beam_size,
        patience, length_penalty, prefix, max_initial_timestamp.

    Returns {"text", "segments", "language"}; each segment has id, seek, start, end, text,
    tokens, temperature, avg_logprob, compression_ratio, no_speech_prob (and words).
    With vad_filter and no speech found, segments is empty (and language None when a
    multilingual model was given no language).
    Calls that share a model are serialized (the kv caches and MLX graph are per call).
    """
    vad_options = vad.VadOptions.from_parameters(vad_parameters) if vad_filter or vad_parameters is not None else None
    if on_segment is not None and (vad_filter or batch_size is not None):
        raise ValueError("on_segment: only the sequential loop reports segments (not with vad_filter or batch_size)")
    if vad_filter:
        vad.require_onnxruntime()
    if model is None:
        model = _cached_model(path_or_hf_repo, dtype)
    language, task = decode_options.get("language"), decode_options.get("task", "transcribe")
    check_options(DecodingOptions(task=task, language=language), model.is_multilingual, model.num_languages)
    clip_timestamps = parse_clip_timestamps(clip_timestamps)
    if batch_size is not None:
        from .batched import transcribe_batched

        with _model_lock(model):
            return transcribe_batched(
                audio, model=model, batch_size=batch_size, temperature=temperature,
                compression_ratio_threshold=compression_ratio_threshold, logprob_threshold=logprob_threshold,
                no_speech_threshold=no_speech_threshold, word_timestamps=word_timestamps,
                prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations,
                vad_filter=vad_filter, vad_parameters=vad_parameters, **decode_options,
            )
    with _model_lock(model):
        options = dict(
            verbose=verbose,
            temperature=temperature,
            compression_ratio_threshold=compression_ratio_threshold,
            logprob_threshold=logprob_threshold,
            no_speech_threshold=no_speech_threshold,
            condition_on_previous_text=condition_on_previous_text,
            initial_prompt=initial_prompt,
            carry_initial_prompt=carry_initial_prompt,
            word_timestamps=word_timestamps,
            prepend_punctuations=prepend_punctuations,
            append_punctuations=append_punctuations,
            clip_timestamps=clip_timestamps,
            hallucination_silence_threshold=hallucination_silence_threshold,
            decode_options=decode_options,
        )
        if vad_filter:
            return _transcribe_speech(model, audio, vad_options, **options)
        return _transcribe(model, audio, **options, on_segment=on_segment)


def needs_fallback(result: DecodingResult, compression_ratio_threshold: float | None, logprob_threshold: float | None,
                   no_speech_threshold: float | None) -> bool:
    """Whether a window's result should be decoded again at the next temperature: too
    repetitive or too unlikely, unless it is silence (openai-whisper's rule). A result no real
    model computes (non-finite log probabilities) raises ModelOutputError (check_finite)."""
    check_finite(result)
    if (
        no_speech_threshold is not None
        and result.no_speech_prob > no_speech_threshold
        and logprob_threshold is not None
        and result.avg_logprob < logprob_threshold
    ):
        return False  # silence
    if compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold:
        return True  # too repetitive
    return logprob_threshold is not None and result.avg_logprob < logprob_threshold  # too unlikely


def check_finite(result: DecodingResult) -> None:
    """A real model's log probabilities are finite: NaN or infinity means weights that are
    corrupt (random data behind an intact header) or not a Whisper model's. Said at the first
    window, instead of failing later in the fallback's sampling ("Probabilities contain NaN")."""
    decoded = bool(result.tokens) or result.language_probs is None  # not a language-id result
    if decoded and not (np.isfinite(result.avg_logprob) and np.isfinite(result.no_speech_prob)):
        raise ModelOutputError("the model's weights produce non-finite values (NaN or infinity): "
                               "they are corrupt or not a Whisper model's")


def decode_options_at(decode_options: dict, t: float) -> DecodingOptions:
    """The options of one temperature: beam search at 0, best-of sampling above."""
    kwargs = {**decode_options}
    if t > 0:
        kwargs.pop("beam_size", None)
        kwargs.pop("patience", None)
    else:
        kwargs.pop("best_of", None)
    return DecodingOptions(**kwargs, temperature=t)


def split_segments(tokens: np.ndarray, timestamp_begin: int, time_offset: float, segment_duration: float,
                   time_precision: float) -> tuple[list[tuple[float, float, np.ndarray]], bool, int | None]:
    """One window's tokens as segments (start, end, tokens), cut at consecutive timestamp pairs
    (openai-whisper's rule); whether the tokens end with a single timestamp; and the timestamp
    index (output positions from the window's start) where the next window should start, or None
    when the window was used whole."""
    is_ts = tokens >= timestamp_begin
    single_timestamp_ending = is_ts[-2:].tolist() == [False, True]
    consecutive = np.nonzero(is_ts[:-1] & is_ts[1:])[0] + 1
    if len(consecutive) == 0:
        duration = segment_duration
        timestamps = tokens[is_ts]
        if len(timestamps) > 0 and int(timestamps[-1]) != timestamp_begin:
            duration = (int(timestamps[-1]) - timestamp_begin) * time_precision
        return [(time_offset, time_offset + duration, tokens)], single_timestamp_ending, None
    slices = consecutive.tolist()
    if single_timestamp_ending:
        slices.append(len(tokens))
    segments, last_slice = [], 0
    for current_slice in slices:
        sliced = tokens[last_slice:current_slice]
        start_pos = int(sliced[0]) - timestamp_begin
        end_pos = int(sliced[-1]) - timestamp_begin
        segments.append((time_offset + start_pos * time_precision, time_offset + end_pos * time_precision, sliced))
        last_slice = current_slice
    next_position = None if single_timestamp_ending else int(tokens[last_slice - 1]) - timestamp_begin
    return segments, single_timestamp_ending, next_position


def _clip_ranges(clip_timestamps: str | list[float], n_samples: int) -> list[tuple[int, int]]:
    """clip_timestamps ("start,end,..." seconds; an odd count runs to the end) as sample ranges."""
    if isinstance(clip_timestamps, str):
        clip_timestamps = [float(ts) for ts in (clip_timestamps.split(",") if clip_timestamps else [])]
    points = [min(max(round(ts * SAMPLE_RATE), 0), n_samples) for ts in clip_timestamps] or [0]
    if len(points) % 2 == 1:
        points.append(n_samples)
    return [(a, b) for a, b in zip(points[::2], points[1::2]) if b > a]


def _within(speech: list[dict], ranges: list[tuple[int, int]]) -> list[dict]:
    """The parts of the speech regions that lie inside the clip ranges, in order, disjoint."""
    parts = sorted(
        (max(s["start"], a), min(s["end"], b)) for s in speech for a, b in ranges if min(s["end"], b) > max(s["start"], a)
    )
    merged: list[list[int]] = []
    for start, end in parts:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [{"start": start, "end": end} for start, end in merged]


def _transcribe_speech(model: Whisper, audio, vad_options: vad.VadOptions, *, clip_timestamps, verbose,
                       decode_options, **options) -> dict:
    """vad_filter: find the speech (inside clip_timestamps), decode only it, joined, with the seek
    loop, then map segment and word times back to the original audio. The VAD needs every sample
    at once, so a file is decoded whole here (not streamed as load_mel streams long files)."""
    waveform = load_audio(audio) if isinstance(audio, (str, Path)) else _as_waveform(audio)
    speech = vad.get_speech_timestamps(waveform, vad_options)
    speech = _within(speech, _clip_ranges(clip_timestamps, waveform.size))
    speech_map = vad.SpeechMap(speech)
    if verbose:
        print(f"Voice activity detection kept {speech_map.num_samples / SAMPLE_RATE:.1f} s "
              f"of {waveform.size / SAMPLE_RATE:.1f} s in {len(speech)} speech regions")
    if speech_map.num_samples < vad.FRAME_SAMPLES:  # no speech (or under one 32 ms frame of it)
        language = decode_options.get("language") or (None if model.is_multilingual else "en")
        return dict(text="", segments=[], language=language)
    result = _transcribe(model, vad.collect_speech(waveform, speech), clip_timestamps="0", verbose=verbose,
                         decode_options=decode_options, segment_times=speech_map.segment_times, **options)
    speech_map.restore(result["segments"])
    for segment in result["segments"]:
        segment["seek"] = round(speech_map.original_time(segment["seek"] / FRAMES_PER_SECOND) * FRAMES_PER_SECOND)
    return result


def _decode_with_fallback(model, audio_features, decode_options, temperature, compression_ratio_threshold,
                          logprob_threshold, no_speech_threshold) -> DecodingResult:
    """Decode one window's features at each temperature in turn until the result passes the
    thresholds (openai-whisper's fallback); the encoder ran once, before the first try."""
    temperatures = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    result = None
    for t in temperatures:
        result = decode(model, audio_features, decode_options_at(decode_options, t))
        if not needs_fallback(result, compression_ratio_threshold, logprob_threshold, no_speech_threshold):
            break
    return result


def parse_clip_timestamps(clip_timestamps: str | Sequence[float]) -> list[float]:
    """"start,end,start,end,..." seconds (or a list) as floats: each finite and >= 0, each clip's
    end after its start (a last start without an end runs to the end of the audio); a ValueError
    in one line otherwise."""
    raw = clip_timestamps
    if isinstance(raw, str):
        try:
            values = [float(t) for t in raw.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"clip_timestamps {raw!r}: expected comma-separated seconds") from None
    else:
        try:
            values = [float(t) for t in raw]
        except (TypeError, ValueError):
            raise ValueError(f"clip_timestamps {raw!r}: expected a list of seconds") from None
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"clip_timestamps {raw!r}: {value} is not a time in seconds (finite and >= 0)")
    for start, end in zip(values[::2], values[1::2]):
        if end <= start:
            raise ValueError(f"clip_timestamps {raw!r}: the clip {start:g}-{end:g} s does not end after it starts")
    return values


def clip_frames(clip_timestamps: str | Sequence[float], content_frames: int, audio) -> list[tuple[int, int]]:
    """The clips as (start, end) mel frames within the audio: ends past the end of the audio are
    clamped to it; a clip that starts at or after the end is refused (AudioError naming the
    audio), since nothing there could be transcribed (and the seek loop would never advance)."""
    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in parse_clip_timestamps(clip_timestamps)] or [0]
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    clips = []
    for start, end in zip(seek_points[::2], seek_points[1::2]):
        if start >= content_frames:
            name = str(audio) if isinstance(audio, (str, Path)) else "<array>"
            raise AudioError(f"{name}: clip_timestamps: a clip starts at {start / FRAMES_PER_SECOND:g} s, at or "
                             f"after the end of the audio ({content_frames / FRAMES_PER_SECOND:g} s)")
        clips.append((start, min(end, content_frames)))
    return clips


def _word_anomaly_score(word: dict) -> float:
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: dict | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def _get_end(segments: list[dict]) -> float | None:
    return next((w["end"] for s in reversed(segments) for w in reversed(s["words"])), segments[-1]["end"] if segments else None)


def _transcribe(model: Whisper, audio, *, verbose, temperature, compression_ratio_threshold, logprob_threshold,
                no_speech_threshold, condition_on_previous_text, initial_prompt, carry_initial_prompt,
                word_timestamps, prepend_punctuations, append_punctuations, clip_timestamps,
                hallucination_silence_threshold, decode_options, segment_times=None, on_segment=None) -> dict:
    """The seek loop over `audio`; `segment_times` (vad_filter) gives a segment's times in the
    original audio for the verbose lines (the caller maps the returned times)."""
    decode_options.pop("fp16", None)
    shown = segment_times or (lambda segment: (segment["start"], segment["end"]))
    mel = load_mel(audio, model.dims.n_mels)
    content_frames = mel.content_frames
    first_features = None
    content_duration = float(content_frames * HOP_LENGTH / SAMPLE_RATE)

    if decode_options.get("language") is None:
        if not model.is_multilingual:
            decode_options["language"] = "en"
        else:
            if verbose:
                print("Detecting language using up to the first 30 seconds. Use `--language` to specify the language")
            first = embed_audio(model, pad_or_trim(mel.segment(0, N_FRAMES), N_FRAMES, axis=0)[None])[0]
            _, probs = detect_language(model, first)
            if content_frames >= N_FRAMES:
                first_features = first  # the first window's features: decoding reuses them
            decode_options["language"] = max(probs, key=probs.get)
            if verbose is not None:
                print(f"Detected language: {LANGUAGES[decode_options['language']].title()}")
    language: str = decode_options["language"]
    task: str = decode_options.get("task", "transcribe")
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language=language, task=task)

    seek_clips = clip_frames(clip_timestamps, content_frames, audio)

    if word_timestamps and task == "translate":
        warnings.warn("Word-level timestamps on translations may not be reliable.")

    clip_idx = 0
    seek = seek_clips[clip_idx][0]
    input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per output token: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per output token: 0.02
    all_tokens: list[int] = []
    all_segments: list[dict] = []
    prompt_reset_since = 0
    remaining_prompt_length = model.dims.n_text_ctx // 2 - 1
    initial_prompt_tokens: list[int] = []
    if initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)
        remaining_prompt_length -= len(initial_prompt_tokens)

    def new_segment(*, start: float, end: float, tokens: np.ndarray, result: DecodingResult) -> dict:
        tokens = tokens.tolist()
        return {
            "seek": seek,
            "start": start,
            "end": end,
            "text": tokenizer.decode([t for t in tokens if t < tokenizer.eot]),
            "tokens": tokens,
            "temperature": result.temperature,
            "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio,
            "no_speech_prob": result.no_speech_prob,
        }

    with tqdm.tqdm(total=content_frames, unit="frames", disable=verbose is not False) as pbar:
        last_speech_timestamp = 0.0
        while clip_idx < len(seek_clips):
            seek_clip_start, seek_clip_end = seek_clips[clip_idx]
            if seek < seek_clip_start:
                seek = seek_clip_start
            if seek >= seek_clip_end:
                clip_idx += 1
                if clip_idx < len(seek_clips):
                    seek = seek_clips[clip_idx][0]
                continue
            time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
            window_end_time = float((seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE)
            segment_size = min(N_FRAMES, content_frames - seek, seek_clip_end - seek)
            segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
            if mel.is_silent(seek, segment_size):
                # digital silence (or 80 dB under the loudest frame): nothing to decode, and
                # decoding it invites hallucinated text
                seek += segment_size
                pbar.update(min(content_frames, seek) - (seek - segment_size))
                continue
            mel_segment = pad_or_trim(mel.segment(seek, segment_size), N_FRAMES, axis=0)

            if carry_initial_prompt:
                nignored = max(len(initial_prompt_tokens), prompt_reset_since)
                decode_options["prompt"] = initial_prompt_tokens + all_tokens[nignored:][-remaining_prompt_length:]
            else:
                decode_options["prompt"] = all_tokens[prompt_reset_since:]
            if seek == 0 and segment_size == N_FRAMES and first_features is not None:
                features = first_features
            else:
                features = embed_audio(model, mel_segment[None])[0]  # once per window, for every temperature
            first_features = None
            result = _decode_with_fallback(model, features, decode_options, temperature,
                                           compression_ratio_threshold, logprob_threshold, no_speech_threshold)
            tokens = np.array(result.tokens, dtype=np.int64)

            if no_speech_threshold is not None:
                should_skip = result.no_speech_prob > no_speech_threshold
                if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                    should_skip = False  # the text is confident despite the no-speech score
                if should_skip:
                    seek += segment_size
                    continue

            previous_seek = seek
            pieces, single_timestamp_ending, next_position = split_segments(
                tokens, tokenizer.timestamp_begin, time_offset, segment_duration, time_precision)
            current_segments = [new_segment(start=a, end=b, tokens=t, result=result) for a, b, t in pieces]
            seek += segment_size if next_position is None else next_position * input_stride

            if word_timestamps:
                add_word_timestamps(
                    segments=current_segments,
                    model=model,
                    tokenizer=tokenizer,
                    mel=mel_segment,
                    num_frames=segment_size,
                    prepend_punctuations=prepend_punctuations,
                    append_punctuations=append_punctuations,
                    last_speech_timestamp=last_speech_timestamp,
                    audio_features=result.audio_features[None],
                )
                if not single_timestamp_ending:
                    last_word_end = _get_end(current_segments)
                    if last_word_end is not None and last_word_end > time_offset:
                        seek = round(last_word_end * FRAMES_PER_SECOND)

                if hallucination_silence_threshold is not None:
                    threshold = hallucination_silence_threshold
                    if not single_timestamp_ending:
                        last_word_end = _get_end(current_segments)
                        if last_word_end is not None and last_word_end > time_offset:
                            remaining_duration = window_end_time - last_word_end
                            if remaining_duration > threshold:
                                seek = round(last_word_end * FRAMES_PER_SECOND)
                            else:
                                seek = previous_seek + segment_size
                    first_segment = _next_words_segment(current_segments)
                    if first_segment is not None and _is_segment_anomaly(first_segment):
                        gap = first_segment["start"] - time_offset
                        if gap > threshold:
                            seek = previous_seek + round(gap * FRAMES_PER_SECOND)
                            continue
                    hal_last_end = last_speech_timestamp
                    for si in range(len(current_segments)):
                        segment = current_segments[si]
                        if not segment["words"]:
                            continue
                        if _is_segment_anomaly(segment):
                            next_segment = _next_words_segment(current_segments[si + 1 :])
                            if next_segment is not None:
                                hal_next_start = next_segment["words"][0]["start"]
                            else:
                                hal_next_start = time_offset + segment_duration
                            silence_before = (
                                segment["start"] - hal_last_end > threshold
                                or segment["start"] < threshold
                                or segment["start"] - time_offset < 2.0
                            )
                            silence_after = (
                                hal_next_start - segment["end"] > threshold
                                or _is_segment_anomaly(next_segment)
                                or window_end_time - segment["end"] < 2.0
                            )
                            if silence_before and silence_after:
                                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                                if content_duration - segment["end"] < threshold:
                                    seek = content_frames
                                current_segments[si:] = []
                                break
                        hal_last_end = segment["end"]
                last_word_end = _get_end(current_segments)
                if last_word_end is not None:
                    last_speech_timestamp = last_word_end

            if verbose:
                for segment in current_segments:
                    start, end = shown(segment)
                    line = f"[{format_timestamp(start)} --> {format_timestamp(end)}] {segment['text']}"
                    print(line.encode(errors="replace").decode())

            for segment in current_segments:
                if segment["start"] == segment["end"] or segment["text"].strip() == "":
                    segment["text"] = ""
                    segment["tokens"] = []
                    segment["words"] = []
            all_segments.extend({"id": i, **s} for i, s in enumerate(current_segments, start=len(all_segments)))
            for segment in all_segments[len(all_segments) - len(current_segments):] if on_segment else ():
                on_segment(segment)
            all_tokens.extend(t for s in current_segments for t in s["tokens"])
            if not condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)
            pbar.update(min(content_frames, seek) - previous_seek)

    return dict(
        text=tokenizer.decode(all_tokens[len(initial_prompt_tokens) :]),
        segments=all_segments,
        language=language,
    )
