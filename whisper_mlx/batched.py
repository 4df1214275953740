"""Batched transcription: the windows of one long file, or of many files, decoded as B rows at once.

Audio is cut into chunks of at most 30 s: speech regions found by Silero VAD and joined
(`vad_filter=True`), or consecutive 30 s windows. With the VAD, the chunks of several short
inputs share one 30 s window (`pack`: fewer windows to encode, fewer rows to decode); a packed
window decodes with timestamp tokens and each segment (or, across two inputs, each word) goes back
to the input it was spoken in. Each batch of windows is
encoded as one batch and decoded as B rows through the model's backend (greedy, beam search, or
sampling; the temperature fallback re-decodes only the rows that need it); no chunk is
conditioned on the text before it (as faster-whisper's BatchedInferencePipeline). Segments and word timestamps come per
chunk and are mapped back to the original audio's time. Inputs are read one at a time, only as
the queue of chunks needs them; a file's result is handed out as soon as its last chunk is done.

A long file is never held whole (a 1-hour file is 230 MB of float32 samples): pass 1 decodes it
as a stream for its length, its speech probabilities (the VAD's state carried from block to block)
and its first 30 s (language detection); pass 2 decodes it again and cuts each chunk's audio only
when a batch takes that chunk, forgetting the samples behind it. A file of at most KEEP_SECONDS
keeps its chunks' samples from pass 1 instead (decoded once). Pass 1 of the next input runs on a worker thread
while the model decodes (`_reads`: decoding audio and the VAD, never the model). Waveforms given as arrays, and inputs
readable only once (standard input, pipes, URLs), are in memory already (or read into it); of
an input in memory only its chunks' samples wait in the queue.
"""

from __future__ import annotations

import bisect
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import mlx.core as mx
import numpy as np
import tqdm

from .audio import (HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE, AudioError, decode_chunks, load_audio, load_mel,
                    pad_or_trim, single_pass)
from .decoding import DecodingResult, decode, detect_language, embed_audio
from .model import Whisper
from .timing import add_word_timestamps
from .tokenizer import get_tokenizer
from .transcribe import decode_options_at, needs_fallback, split_segments
from .vad import (INSTALL_HINT, SpeechChunk, SpeechProbabilityStream, VadOptions, get_speech_timestamps,
                  merge_chunks, onnxruntime_available, require_onnxruntime, speech_timestamps_from_probabilities)

Audio = str | Path | np.ndarray

# Files up to this long keep their chunks' samples from the first reading (at most 19 MB of
# float32 each; inputs are opened only while the queue holds fewer windows than a batch, so the
# queue holds about a batch of speech); longer ones are decoded a second time, chunk by chunk.
KEEP_SECONDS = 300.0

# Digital silence put between two inputs' speech in a packed window. Always added: the VAD's pad
# around a region cannot be relied on to separate inputs (it is clipped at an input's start and
# end, and halved between close regions).
PACK_GAP_SAMPLES = SAMPLE_RATE // 2


@dataclass(frozen=True)
class BatchOptions:
    """What batched transcription does beyond DecodingOptions (openai-whisper's names)."""

    batch_size: int = 8
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    vad_filter: bool = False
    vad_options: VadOptions = field(default_factory=VadOptions)
    pack: bool = True  # with the VAD: chunks of different short inputs share a 30 s window

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if not isinstance(self.pack, bool):
            raise ValueError(f"pack: expected True or False, got {self.pack!r}")


class _FileChunks:
    """Pass 2 over a file: decoded again from its start, cut into its chunks' audio in order; the
    samples behind the chunk asked for are forgotten, so one chunk's samples (and one decoded block
    past it) are held at a time. A chunk before the last one read restarts the decoding."""

    def __init__(self, file: str, length: int):
        self.file, self.length = file, length
        self._blocks: Iterator[np.ndarray] | None = None
        self._buf = np.zeros(0, np.int16)  # decoded samples not yet cut or skipped
        self._base = 0  # the file's sample index of _buf[0]

    def cut(self, chunk: SpeechChunk) -> np.ndarray:
        """The chunk's samples (its regions, joined) as float32, as load_audio's array would give them."""
        parts = [self._read(start, end) for start, end in chunk.regions]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read(self, start: int, end: int) -> np.ndarray:
        if self._blocks is None or start < self._base:
            self.close()
            self._blocks = decode_chunks(self.file)
            self._buf, self._base = np.zeros(0, np.int16), 0
        have = self._base + self._buf.size
        parts = [self._buf[start - self._base:]] if start < have else []
        while have < end:
            try:
                block = next(self._blocks)
            except StopIteration:
                raise AudioError(f"{self.file}: changed while being read: it now ends at {have / SAMPLE_RATE:.1f} s, "
                                 f"its first reading ended at {self.length / SAMPLE_RATE:.1f} s") from None
            have += block.size
            if have > start:  # blocks wholly before the chunk are skipped
                parts.append(block[max(start - (have - block.size), 0):])
        held = parts[0] if len(parts) == 1 else np.concatenate(parts)  # samples [start, have)
        self._buf, self._base = held[end - start:], end
        samples = held[: end - start].astype(np.float32)
        samples /= 32768.0  # in place: one float32 copy, load_audio's values
        return samples

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()  # closes the container
            self._blocks = None
        self._buf = np.zeros(0, np.int16)


@dataclass(eq=False)
class _Read:
    """An input as its first reading leaves it: length, chunks, first 30 s, and where the chunks'
    audio comes from (each chunk's samples, cut from an input held in memory, or a file's second
    reading)."""

    index: int
    name: str
    input: Audio
    n_samples: int
    chunks: list[SpeechChunk]
    head: np.ndarray  # the first 30 s (empty when the language need not be detected)
    speech: list[np.ndarray | None] | None = None
    file: _FileChunks | None = None


@dataclass(eq=False)
class _Source:
    """One input: its chunks, where their audio comes from, and their segments as they are decoded."""

    index: int
    name: str
    duration: float
    language: str
    chunks: list[SpeechChunk]
    input: Audio
    # an in-memory input's chunks' samples, each dropped once its window is made: only the speech
    # waits in the queue (with packing, many inputs may wait at once)
    speech: list[np.ndarray | None] | None = None
    file: _FileChunks | None = None  # a file's pass 2
    segments: dict[int, list[dict]] = field(default_factory=dict)
    error: Exception | None = None  # set when reading a chunk's audio failed
    # the first chunk's encoder output where the language was detected on it: its window, when it
    # is that chunk alone, is not encoded again (dropped once that chunk's batch is decoded)
    first_features: mx.array | None = None

    @property
    def done(self) -> bool:
        return len(self.segments) == len(self.chunks)

    def chunk_audio(self, i: int) -> np.ndarray:
        if self.file is not None:
            return self.file.cut(self.chunks[i])
        samples, self.speech[i] = self.speech[i], None
        return samples

    def release(self) -> None:
        """Drop the samples and close the file (every chunk has its window, or the input failed)."""
        self.speech = None
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass(eq=False)
class _Window:
    """One row of a batch: a chunk, or (packed) chunks of different inputs joined with
    PACK_GAP_SAMPLES of silence between them; `spans` are where each part lies in it (seconds)."""

    parts: list[tuple[_Source, int]]
    spans: list[tuple[float, float]]
    mel: mx.array
    frames: int
    silent: bool


def _windows_of(n_samples: int) -> list[SpeechChunk]:
    """Consecutive 30 s windows over `n_samples` samples (without the VAD)."""
    return [SpeechChunk(((start, min(start + N_SAMPLES, n_samples)),)) for start in range(0, n_samples, N_SAMPLES)]


def _chunks(audio: np.ndarray, options: BatchOptions) -> list[SpeechChunk]:
    if options.vad_filter:
        return merge_chunks(get_speech_timestamps(audio, options.vad_options))
    return _windows_of(audio.size)


def _mel(audio: np.ndarray, n_mels: int) -> tuple[mx.array, int, bool]:
    """A chunk's 30 s log-mel window as the sequential path computes it for a file this short,
    its content frames, and whether it is silent. Only the window's frames are computed: the
    zeros after the chunk reach just past its 30 s (the sequential path's further 30 s of frames
    are silence, below every value of the window, so its maximum, which scales it, is the same)."""
    mel = load_mel(audio, n_mels, padding=max(N_SAMPLES - audio.size, 0) + N_FFT // 2)
    frames = min(N_FRAMES, mel.content_frames)
    return pad_or_trim(mel.segment(0, frames), N_FRAMES, axis=0), frames, mel.is_silent(0, frames)


def _split(segments: list[dict], spans: list[tuple[float, float]], tokenizer) -> list[list[dict]]:
    """A packed window's segments (times from the window's start, every word timed) shared out
    among its parts: a word goes to the part whose span holds its midpoint (two parts meet in the
    middle of the gap between them); each part's segments are made of its words (their text,
    tokens and times), times from the part's start. A segment without words goes whole to the
    part that holds its middle; a part no word went to gets no segment (as a silent chunk)."""
    bounds = _seams(spans)
    per_part: list[list[dict]] = [[] for _ in spans]

    def add(k: int, segment: dict) -> None:
        per_part[k].append(_local(segment, spans[k]))

    for segment in segments:
        if not segment["words"]:
            add(bisect.bisect_right(bounds, (segment["start"] + segment["end"]) / 2), segment)
            continue
        groups: list[tuple[int, list[dict]]] = []  # runs of consecutive words of one part
        for word in segment["words"]:
            k = bisect.bisect_right(bounds, (word["start"] + word["end"]) / 2)
            if groups and groups[-1][0] == k:
                groups[-1][1].append(word)
            else:
                groups.append((k, [word]))
        texts = ["".join(w["word"] for w in words) for _, words in groups]
        for (k, words), text, tokens in zip(groups, texts, _token_runs(tokenizer, segment["tokens"], texts)):
            add(k, {**segment, "start": words[0]["start"], "end": words[-1]["end"], "text": text, "tokens": tokens,
                    "words": words})
    return per_part


# How far a segment's decoded start or end may reach into a neighbouring input's span (timestamp
# tokens are predicted, 20 ms steps) and the segment still count as wholly its own.
SEGMENT_SLACK_S = 0.3


def _whole_segments(segments: list[dict], spans: list[tuple[float, float]]) -> list[list[dict]] | None:
    """A packed window's segments shared out whole among its parts, when each lies in one part's
    span (up to SEGMENT_SLACK_S at its ends); None when one spans two parts (then `_split` shares
    out its words). Times become the part's, as in `_split`."""
    bounds = _seams(spans)
    per_part: list[list[dict]] = [[] for _ in spans]
    for segment in segments:
        start, end = segment["start"], segment["end"]
        first = bisect.bisect_right(bounds, min(start + SEGMENT_SLACK_S, (start + end) / 2))
        last = bisect.bisect_right(bounds, max(end - SEGMENT_SLACK_S, (start + end) / 2))
        if first != last:
            return None
        per_part[first].append(segment)
    return [[_local(segment, spans[k]) for segment in part] for k, part in enumerate(per_part)]


def _seams(spans: list[tuple[float, float]]) -> list[float]:
    """Where two neighbouring parts of a packed window meet: the middle of the gap between them."""
    return [(end + start) / 2 for (_, end), (start, _) in zip(spans, spans[1:])]


def _local(segment: dict, span: tuple[float, float]) -> dict:
    """A packed window's segment (and its words) in the time of the part at `span`, inside it."""
    offset, length = span[0], span[1] - span[0]

    def local(t: float) -> float:
        return round(min(max(t - offset, 0.0), length), 3)

    out = {**segment, "start": local(segment["start"]), "end": local(segment["end"])}
    if "words" in segment:
        out["words"] = [{**w, "start": local(w["start"]), "end": local(w["end"])} for w in segment["words"]]
    return out


def _token_runs(tokenizer, tokens: list[int], texts: list[str]) -> list[list[int]]:
    """`tokens` (a segment's) cut into consecutive runs that spell `texts` in turn, the last run
    taking the rest; when they cannot be (a word the alignment put across two segments), each
    text encoded anew."""
    runs, used = [], 0
    for k, text in enumerate(texts):
        ends = [len(tokens)] if k == len(texts) - 1 else range(used, len(tokens) + 1)
        end = next((n for n in ends if tokenizer.decode([t for t in tokens[used:n] if t < tokenizer.eot]) == text),
                   None)
        if end is None:
            return [tokenizer.encode(text) for text in texts]
        runs.append(tokens[used:end])
        used = end
    return runs


class BatchedTranscriber:
    """Transcribes inputs in batches of chunks on one model (`transcribe_many` drives it)."""

    def __init__(self, model: Whisper, options: BatchOptions, decode_options: Mapping):
        self.model = model
        self.options = options
        self.decode_options = {k: v for k, v in decode_options.items() if k != "fp16"}
        self.decode_options.pop("prompt", None)

    @property
    def _detects_language(self) -> bool:
        return self.decode_options.get("language") is None and self.model.is_multilingual

    def _language(self, read: _Read) -> tuple[str, mx.array | None]:
        """The decoding language: given, English for an English-only model, else detected on the
        input's first chunk (the first 30 s of speech with the VAD, as faster-whisper's batched
        mode detects it; the first 30 s without). With the language, the encoder output it was
        detected on where that is the first chunk's (its window then reuses it), else None."""
        if not self._detects_language:
            return self.decode_options.get("language") or "en", None
        audio, first_chunk = self._detection_audio(read)
        mel, _, _ = _mel(audio, self.model.dims.n_mels)
        features = embed_audio(self.model, mel[None])[0]
        _, probs = detect_language(self.model, features)
        return max(probs, key=probs.get), features if first_chunk else None

    @staticmethod
    def _detection_audio(read: _Read) -> tuple[np.ndarray, bool]:
        """The audio the language is detected on, and whether it is the first chunk's: that chunk
        where its samples are at hand (an input held in memory, or a first chunk inside the first
        30 s that a streamed file keeps), else the first 30 s."""
        if read.speech is not None:
            return read.speech[0], True
        first = read.chunks[0]
        if first.end <= read.head.size:
            return first.audio(read.head), True
        return read.head[:N_SAMPLES], False

    def _open(self, index: int, audio: Audio) -> _Source:
        """An input read (`_read`) and its language found."""
        return self._source(self._read(index, audio))

    def _source(self, read: _Read) -> _Source:
        """The source of a read input; its language detected here (the model runs on this thread)."""
        language, features = (self._language(read) if read.chunks
                              else (self.decode_options.get("language") or "en", None))
        return _Source(read.index, read.name, read.n_samples / SAMPLE_RATE, language, read.chunks, read.input,
                       speech=read.speech, file=read.file, first_features=features)

    def _read(self, index: int, audio: Audio) -> _Read:
        """An input's length, chunks and first 30 s, without the model (so it may run on the
        read-ahead thread): a file through `_read_file`; an input readable once (standard input, a
        pipe, a URL) read into memory; an array as it is."""
        if isinstance(audio, (str, Path)):
            if not single_pass(str(audio)):
                return self._read_file(index, audio)
            samples = load_audio(str(audio))  # stdin, a pipe, a URL: readable once, so read into memory
        else:
            samples = np.asarray(audio, np.float32)
        name = str(audio) if isinstance(audio, (str, Path)) else f"<array {index}>"
        chunks = _chunks(samples, self.options)
        return _Read(index, name, audio, samples.size, chunks, samples[:N_SAMPLES],
                     speech=[chunk.audio(samples) for chunk in chunks])

    def _read_file(self, index: int, path: str | Path) -> _Read:
        """Pass 1 over a file, decoded as a stream: its length, its chunks (from the speech
        probabilities with the VAD) and its first 30 s (for the language). A file of at most
        KEEP_SECONDS keeps its chunks' samples from this pass (no second decoding); a longer one keeps none
        and is decoded again chunk by chunk (`_FileChunks`)."""
        name = str(path)
        vad = SpeechProbabilityStream() if self.options.vad_filter else None
        head: list[np.ndarray] = []  # the first 30 s, when the language is detected
        kept: list[np.ndarray] | None = []  # every block while the file is short enough to keep
        keep_samples = int(KEEP_SECONDS * SAMPLE_RATE)
        wants_head = self._detects_language
        n_samples = 0
        for block in decode_chunks(name):
            if kept is not None:
                kept.append(block)
                if n_samples + block.size > keep_samples:
                    kept = None
            if vad is not None or (wants_head and n_samples < N_SAMPLES):
                samples = block.astype(np.float32) / 32768.0  # load_audio's values
                if vad is not None:
                    vad.feed(samples)
                if wants_head and n_samples < N_SAMPLES:
                    head.append(samples[: N_SAMPLES - n_samples])
            n_samples += block.size
        if vad is not None:
            speech = speech_timestamps_from_probabilities(vad.finish(), n_samples, self.options.vad_options)
            chunks = merge_chunks(speech)
        else:
            chunks = _windows_of(n_samples)
        first = np.concatenate(head) if head else np.zeros(0, np.float32)
        if kept is not None:
            samples = np.concatenate(kept).astype(np.float32) if kept else np.zeros(0, np.float32)
            samples /= 32768.0
            return _Read(index, name, path, n_samples, chunks, first, speech=[chunk.audio(samples) for chunk in chunks])
        return _Read(index, name, path, n_samples, chunks, first,
                     file=_FileChunks(name, n_samples) if chunks else None)

    def _reads(self, inputs: Iterable[Audio]) -> Iterator[tuple[int, Audio, _Read | Exception]]:
        """The inputs read in order, one ahead on a worker thread: while the model works on what
        was read, the next input is decoded (and its VAD run). The next input is taken from
        `inputs` only once the one before it is read, as without the thread."""
        items = iter(enumerate(inputs))
        with ThreadPoolExecutor(1, thread_name_prefix="whisper-mlx-read") as pool:
            item = next(items, None)
            future = pool.submit(self._read, *item) if item is not None else None
            while item is not None:
                try:
                    read: _Read | Exception = future.result()
                except Exception as e:  # one bad input must not stop the others
                    read = e
                following = next(items, None)
                future = pool.submit(self._read, *following) if following is not None else None
                yield item[0], item[1], read
                item = following

    def run(self, inputs: Iterable[Audio]) -> Iterator[tuple[int, Audio, dict | Exception]]:
        """Yield (index, input, result or the exception that input raised) as inputs complete."""
        pending: deque[tuple[_Source, int]] = deque()  # chunks not yet decoded
        reads = self._reads(inputs)
        exhausted = False
        batch_size = self.options.batch_size
        with tqdm.tqdm(unit="audio s", disable=None, leave=False) as bar:
            while True:
                while not exhausted and len(self._pack(pending)) < batch_size:
                    try:
                        index, audio, read = next(reads)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        if isinstance(read, Exception):
                            raise read
                        source = self._source(read)
                    except Exception as e:  # one bad input must not stop the others
                        yield index, audio, e
                        continue
                    bar.total = (bar.total or 0) + source.duration
                    bar.refresh()
                    if not source.chunks:
                        yield index, audio, self._result(source)
                        continue
                    pending.extend((source, i) for i in range(len(source.chunks)))
                if not pending:
                    return
                language = pending[0][0].language  # one language per batch (one set of prompts)
                batch = self._pack(item for item in pending if item[0].language == language)[:batch_size]
                taken = [item for parts in batch for item in parts]
                pending = deque(item for item in pending if item not in taken)
                windows, failed = self._windows(batch)
                for source in failed:  # its file failed on the second reading: its error, the others go on
                    pending = deque(item for item in pending if item[0] is not source)
                    bar.total -= source.duration - sum(source.chunks[i].duration for i in source.segments)
                    bar.refresh()
                    yield source.index, source.input, source.error
                for source, i in self._decode(windows, language):
                    bar.update(source.chunks[i].duration)
                    if source.done:
                        yield source.index, source.input, self._result(source)

    def _pack(self, items: Iterable[tuple[_Source, int]]) -> list[list[tuple[_Source, int]]]:
        """Chunks (in queue order) grouped into windows: each alone, or with packing (and the VAD),
        consecutive chunks of different inputs of one language together while they and the gaps
        between them fit in 30 s. An input's chunks keep their order; a long chunk stays alone."""
        windows: list[list[tuple[_Source, int]]] = []
        used = 0  # samples of the last window
        for source, i in items:
            size = source.chunks[i].num_samples
            last = windows[-1] if windows else None
            if (self.options.pack and self.options.vad_filter and last is not None
                    and source.language == last[0][0].language and all(s is not source for s, _ in last)
                    and used + PACK_GAP_SAMPLES + size <= N_SAMPLES):
                last.append((source, i))
                used += PACK_GAP_SAMPLES + size
            else:
                windows.append([(source, i)])
                used = size
        return windows

    def _windows(self, batch: list[list[tuple[_Source, int]]]) -> tuple[list[_Window], list[_Source]]:
        """Each window's audio (its chunks cut now, joined) as a mel window; a source whose audio
        cannot be read gets its error set and is left out of the rest. Returns (the windows that
        hold a readable chunk, the failed sources)."""
        windows: list[_Window] = []
        failed: list[_Source] = []
        gap = np.zeros(PACK_GAP_SAMPLES, np.float32)
        for parts in batch:
            pieces, spans, kept, at = [], [], [], 0
            for source, i in parts:
                if source.error is not None:
                    continue
                try:
                    audio = source.chunk_audio(i)
                except Exception as e:  # e.g. a file cut short since its first reading
                    source.error = e
                    source.release()
                    failed.append(source)
                    continue
                if pieces:
                    pieces.append(gap)
                    at += gap.size
                pieces.append(audio)
                spans.append((at / SAMPLE_RATE, (at + audio.size) / SAMPLE_RATE))
                kept.append((source, i))
                at += audio.size
            if kept:
                audio = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                windows.append(_Window(kept, spans, *_mel(audio, self.model.dims.n_mels)))
        # a source that failed after a window of the batch took one of its chunks: that chunk is
        # ignored when decoded (`_decode`); a window of nothing else is not decoded
        windows = [w for w in windows if any(s.error is None for s, _ in w.parts)]
        for window in windows:
            for source, _ in window.parts:
                windowed = {j for w in windows for s, j in w.parts if s is source} | set(source.segments)
                if len(windowed) == len(source.chunks):
                    source.release()  # every chunk of this source has its window now
        return windows, failed

    def _decode(self, windows: list[_Window], language: str) -> Iterator[tuple[_Source, int]]:
        """Decode a batch of windows (from `_windows`) as B rows; store each chunk's segments in
        its source."""
        model, options = self.model, self.options
        decode_options = {**self.decode_options, "language": language}
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language=language,
                                  task=decode_options.get("task", "transcribe"))
        live = [k for k, window in enumerate(windows) if not window.silent]
        results: dict[int, DecodingResult] = {}
        features = self._features([windows[k] for k in live]) if live else None
        for window in windows:  # a first chunk's stored encoder output is used (or not) by now
            for source, i in window.parts:
                if i == 0:
                    source.first_features = None
        if live:
            # a packed window holds several utterances: decoded with timestamp tokens, which is how
            # Whisper reads a window of several (without them it may stop after the first pause)
            lone = [j for j, k in enumerate(live) if len(windows[k].parts) == 1]
            packed = [j for j, k in enumerate(live) if len(windows[k].parts) > 1]
            for rows, group_options in ((lone, decode_options), (packed, {**decode_options, "without_timestamps": False})):
                for j, result in self._decode_rows(features, rows, group_options).items():
                    results[live[j]] = result
        for k, window in enumerate(windows):
            result = results.get(k)
            if result is None:
                per_part = [[] for _ in window.parts]
            elif len(window.parts) == 1:
                per_part = [self._segments(result, tokenizer, window, options.word_timestamps)]
            else:  # each segment to the input it was spoken in; words timed where one spans two
                segments = self._segments(result, tokenizer, window, options.word_timestamps)
                per_part = _whole_segments(segments, window.spans)
                if per_part is None:
                    if not options.word_timestamps:
                        segments = self._segments(result, tokenizer, window, True)
                    per_part = _split(segments, window.spans, tokenizer)
            for (source, i), segments in zip(window.parts, per_part):
                if source.error is not None:
                    continue  # failed since this window was cut: its error is out already
                chunk = source.chunks[i]
                for segment in segments:
                    segment["seek"] = round(chunk.start / HOP_LENGTH)
                    if not options.word_timestamps and segment.get("words"):
                        del segment["words"]  # timed only to split a packed window; blank ones keep []
                source.segments[i] = chunk.restore(segments)
                yield source, i

    def _features(self, windows: list[_Window]) -> mx.array:
        """The windows' encoder outputs, (B, n_audio_ctx, n_audio_state): an input's first chunk
        alone in its window reuses the output its language was detected on; the rest are encoded
        together."""
        reused = {k: w.parts[0][0].first_features for k, w in enumerate(windows)
                  if len(w.parts) == 1 and w.parts[0][1] == 0 and w.parts[0][0].first_features is not None}
        if not reused:
            return embed_audio(self.model, mx.stack([w.mel for w in windows]))
        encode = [k for k in range(len(windows)) if k not in reused]
        encoded = embed_audio(self.model, mx.stack([windows[k].mel for k in encode])) if encode else None
        where = {k: j for j, k in enumerate(encode)}
        return mx.stack([reused[k] if k in reused else encoded[where[k]] for k in range(len(windows))])

    def _decode_rows(self, features: mx.array, rows: list[int], decode_options: dict) -> dict[int, DecodingResult]:
        """Decode the windows `rows` of `features` as B rows, with the temperature fallback
        re-decoding only the rows that need it; returns each row's result."""
        options, results = self.options, {}
        todo = list(rows)
        for t in options.temperature if rows else ():
            decoded = decode(self.model, features[mx.array(todo)] if len(todo) < features.shape[0] else features,
                             decode_options_at(decode_options, t))
            for j, result in zip(todo, decoded):
                results[j] = result
            todo = [j for j in todo if needs_fallback(results[j], options.compression_ratio_threshold,
                                                      options.logprob_threshold, options.no_speech_threshold)]
            if not todo:
                break
        return results

    def _segments(self, result: DecodingResult, tokenizer, window: _Window, word_timestamps: bool) -> list[dict]:
        """A decoded window's segments, times from the window's start ([] if it is silence); every
        word timed with `word_timestamps`. Empty segments keep their place, blank (as the
        sequential loop)."""
        options = self.options
        if options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold:
            if options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold:
                return []  # silence
        tokens = np.array(result.tokens, np.int64)
        duration = window.frames * HOP_LENGTH / SAMPLE_RATE
        time_precision = 2 * HOP_LENGTH / SAMPLE_RATE
        pieces, single_ending, _ = split_segments(tokens, tokenizer.timestamp_begin, 0.0, duration, time_precision)
        used = sum(len(p[2]) for p in pieces)
        if not single_ending and used < len(tokens):  # text after the last timestamp pair: to the window's end
            start = pieces[-1][1] if pieces else 0.0
            pieces.append((start, max(start, duration), tokens[used:]))
        segments = [{
            "seek": 0, "start": start, "end": end,  # seek 0: word times from the window's start
            "text": tokenizer.decode([t for t in piece.tolist() if t < tokenizer.eot]), "tokens": piece.tolist(),
            "temperature": result.temperature, "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio, "no_speech_prob": result.no_speech_prob,
        } for start, end, piece in pieces]
        if word_timestamps:
            add_word_timestamps(
                segments=segments, model=self.model, tokenizer=tokenizer, mel=window.mel, num_frames=window.frames,
                prepend_punctuations=options.prepend_punctuations, append_punctuations=options.append_punctuations,
                last_speech_timestamp=0.0, audio_features=result.audio_features[None],
            )
        for segment in segments:
            if segment["start"] == segment["end"] or not segment["text"].strip():
                segment.update(text="", tokens=[], words=[])
        return segments

    def _result(self, source: _Source) -> dict:
        segments = [s for i in range(len(source.chunks)) for s in source.segments[i]]
        tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                  language=source.language)
        tokens = [t for s in segments for t in s["tokens"]]
        return dict(
            text=tokenizer.decode([t for t in tokens if t < tokenizer.eot]),
            segments=[{"id": k, **s} for k, s in enumerate(segments)],
            language=source.language,
        )


def transcribe_many(
    inputs: Iterable[Audio],
    *,
    model: Whisper,
    batch_size: int = 8,
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    word_timestamps: bool = False,
    prepend_punctuations: str = "\"'“¿([{-",
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、",
    vad_filter: bool | None = None,
    vad_parameters: VadOptions | Mapping | None = None,
    pack: bool = True,
    **decode_options,
) -> Iterator[tuple[int, Audio, dict | Exception]]:
    """Transcribe many files (or 16 kHz waveforms) at once: chunks of different inputs share
    batches of `batch_size` rows. Yields (index, input, result) as each input completes (the
    result dict of `transcribe`), or (index, input, exception) for an input that could not be
    read; the others go on. decode_options: DecodingOptions fields (language, task, beam_size,
    best_of, patience, length_penalty, suppress_tokens, ...); no text is carried between chunks.

    Like faster-whisper's batched mode, a chunk decodes without timestamp tokens by default (one
    segment per chunk; word_timestamps still time every word): with timestamps, a chunk's text
    after an early end-of-segment is lost, since no later window re-reads it as the sequential
    loop's does (pass without_timestamps=False for segments cut at timestamp tokens). A packed
    window (below) always decodes with them.

    vad_filter: chunks are speech regions (Silero VAD) joined up to 30 s; None: so when
    onnxruntime is installed, else (and with False) consecutive 30 s windows, which can cut a
    word in two. vad_parameters default to faster-whisper's batched ones: regions split at
    silences of 160 ms to stay under 30 s.

    pack (with the VAD): the speech of several short inputs (of one language) shares a 30 s
    window, half a second of silence between two inputs, so fewer windows are encoded and decoded.
    Such a window decodes with timestamp tokens (Whisper's way of reading several utterances: it
    segments them; without, it may stop at the first pause), and each segment goes to the input
    whose span holds it; a segment that runs across two inputs is cut by its words' times. An
    input's text may differ a little from its text alone (pack=False): the model reads its
    neighbours too."""
    if vad_filter is None:
        vad_filter = onnxruntime_available()
        if not vad_filter:
            warnings.warn(f"batched transcription without onnxruntime: 30 s windows instead of speech chunks "
                          f"({INSTALL_HINT})", stacklevel=2)
    elif vad_filter:
        require_onnxruntime()
    if vad_parameters is None:
        vad_parameters = VadOptions(max_speech_duration_s=30.0, min_silence_duration_ms=160)
    decode_options.setdefault("without_timestamps", True)
    temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    options = BatchOptions(
        batch_size=batch_size, temperature=temperatures, compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold, word_timestamps=word_timestamps,
        prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations, vad_filter=vad_filter,
        vad_options=VadOptions.from_parameters(vad_parameters), pack=pack,
    )
    return BatchedTranscriber(model, options, decode_options).run(inputs)


def transcribe_batched(audio: Audio, *, model: Whisper, **kwargs) -> dict:
    """One input through `transcribe_many` (transcribe(..., batch_size=N) calls this)."""
    for _, _, result in transcribe_many([audio], model=model, **kwargs):
        if isinstance(result, Exception):
            raise result
        return result
    raise AssertionError("transcribe_many yielded nothing for one input")

