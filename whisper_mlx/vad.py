"""Voice activity detection: Silero VAD v6 on onnxruntime, faster-whisper's speech-region rules,
and the maps from time in cut (speech-only) audio back to time in the original audio.

The model is Silero VAD v6.0 (MIT licence: assets/silero_vad_LICENSE.txt) in the "sequence" form
faster-whisper 1.2 bundles (assets/silero_vad_v6.onnx, its `silero_vad_v6.onnx`, MIT:
assets/faster_whisper_LICENSE.txt), the same model and file as faster-whisper's VAD, so the speech
regions, and batched transcription's chunks, are faster-whisper's: the streaming network
(STFT, convolutional encoder, LSTM, one speech probability per 512-sample frame at 16 kHz, each
frame seeing the previous frame's last 64 samples) run over many frames per call, the LSTM state
carried between calls (also across the blocks of a file decoded piece by piece:
`SpeechProbabilityStream`). onnxruntime is an optional dependency (`pip install "whisper-mlx[vad]"`);
nothing here imports it until a probability is asked for.

Speech regions follow faster-whisper's `get_speech_timestamps` (same parameter names, defaults
and semantics); `SpeechMap` is its `SpeechTimestampsMap`, `merge_chunks` its `collect_chunks`
with a maximum duration (the windows of batched decoding).
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import numbers
from collections import deque
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # one speech probability per 32 ms frame
CONTEXT_SAMPLES = 64  # each frame is fed with the previous frame's last 64 samples before it
BLOCK_FRAMES = 1024  # frames per onnxruntime call: few Python round trips, bounded memory
MODEL_PATH = Path(__file__).parent / "assets" / "silero_vad_v6.onnx"
INSTALL_HINT = 'pip install "whisper-mlx[vad]"'
_STATE_SHAPE = (1, 1, 128)  # the LSTM's hidden and cell state


class VadError(RuntimeError):
    """Voice activity detection cannot run (onnxruntime missing, unusable model file)."""


class VadOptionError(ValueError):
    """A bad VadOptions value; `field` names the option."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"VadOptions.{field_name}: {problem}")
        self.field = field_name


def _number(name: str, value, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise VadOptionError(name, f"expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise VadOptionError(name, f"expected a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD parameters, as faster-whisper names them; checked when constructed.

    threshold: a frame whose speech probability is at least this is speech.
    neg_threshold: once in speech, a frame is silence only below this (default threshold - 0.15,
        at least 0.01); frames between the two keep the current state.
    min_speech_duration_ms: speech regions this short or shorter are dropped.
    max_speech_duration_s: longer regions are split, at the last silence of more than 98 ms when
        there is one, else just before this length.
    min_silence_duration_ms: silence must last this long to end a speech region.
    speech_pad_ms: each region is widened by this on both sides (half the gap when two regions
        are closer than twice this).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400

    def __post_init__(self) -> None:
        threshold = _number("threshold", self.threshold)
        if not 0.0 < threshold < 1.0:
            raise VadOptionError("threshold", f"must be between 0 and 1 (exclusive), got {self.threshold!r}")
        if self.neg_threshold is not None:
            neg = _number("neg_threshold", self.neg_threshold)
            if not 0.0 <= neg <= threshold:
                raise VadOptionError(
                    "neg_threshold", f"must be between 0 and threshold ({threshold:g}), got {self.neg_threshold!r}"
                )
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if _number(name, getattr(self, name)) < 0:
                raise VadOptionError(name, f"must be >= 0, got {getattr(self, name)!r}")
        longest = _number("max_speech_duration_s", self.max_speech_duration_s, allow_inf=True)
        shortest = (FRAME_SAMPLES / SAMPLE_RATE) + 2 * float(self.speech_pad_ms) / 1000
        if longest <= shortest:
            raise VadOptionError(
                "max_speech_duration_s",
                f"must exceed one frame (0.032 s) plus twice speech_pad_ms ({shortest:g} s), got {self.max_speech_duration_s!r}",
            )

    @property
    def effective_neg_threshold(self) -> float:
        """The silence threshold in force (faster-whisper's default when neg_threshold is None)."""
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    @classmethod
    def from_parameters(cls, parameters: "VadOptions | Mapping | None", name: str = "vad_parameters") -> "VadOptions":
        """A VadOptions from a VadOptions, a dict of its fields (unknown keys refused) or None (defaults)."""
        if parameters is None:
            return cls()
        if isinstance(parameters, cls):
            return parameters
        if not isinstance(parameters, Mapping):
            raise ValueError(f"{name}: expected a dict of VAD options or a VadOptions, got {type(parameters).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [key for key in parameters if key not in known]
        if unknown:
            raise ValueError(f"{name}: unknown option {unknown[0]!r} (expected some of {', '.join(known)})")
        return cls(**parameters)


# ---------------------------------------------------------------- the model


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def require_onnxruntime() -> None:
    """Raise VadError with the install line when onnxruntime is missing."""
    if not onnxruntime_available():
        raise VadError(f"voice activity detection needs onnxruntime, which is not installed: {INSTALL_HINT}")


@lru_cache(maxsize=1)
def _session():
    """The onnxruntime session (one per process; `run` may be called from several threads)."""
    require_onnxruntime()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # two threads: the convolutional encoder over a group of frames splits across them (the LSTM
    # runs frame after frame anyway); the VAD runs between decoding batches, not beside them
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(MODEL_PATH), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise VadError(f"{MODEL_PATH}: cannot load the Silero VAD model ({' '.join(str(e).split())})") from None


def _as_audio(audio) -> np.ndarray:
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"<array>: expected a 1-D mono waveform at 16 kHz, got shape {array.shape}")
    return array


class SpeechProbabilityStream:
    """Silero's speech probabilities over audio fed in blocks of any size (a file decoded piece by
    piece): the LSTM state and the 64-sample context carry from block to block, and the model runs
    on groups of `block_frames` frames counted from the first sample, as `speech_probabilities`
    groups them, so the probabilities are exactly the whole-array ones. Holds at most one group of
    samples; `feed` the blocks, then `finish` for every frame's probability.
    """

    def __init__(self, block_frames: int = BLOCK_FRAMES):
        if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames < 1:
            raise ValueError(f"block_frames: expected a positive integer, got {block_frames!r}")
        self.block_frames = block_frames
        self.num_samples = 0  # samples fed so far
        self._pieces: deque[np.ndarray] = deque()  # samples fed, not yet run
        self._held = 0  # samples in _pieces
        self._hidden = np.zeros(_STATE_SHAPE, np.float32)
        self._cell = np.zeros(_STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._out: list[np.ndarray] = []
        self._finished = False

    def feed(self, samples: np.ndarray) -> None:
        """Add the next samples (float32 at 16 kHz); runs the model on each full group of frames."""
        if self._finished:
            raise ValueError("SpeechProbabilityStream: fed after finish()")
        samples = _as_audio(samples)
        if samples.size == 0:
            return
        self._pieces.append(samples)
        self._held += samples.size
        self.num_samples += samples.size
        group = self.block_frames * FRAME_SAMPLES
        while self._held >= group:
            self._run(self.block_frames, group)

    def finish(self) -> np.ndarray:
        """Run what is left (the last frame zero-padded); the probability of every frame fed, float32
        of length ceil(num_samples / 512)."""
        if not self._finished:
            self._finished = True
            if self._held:
                self._run(-(-self._held // FRAME_SAMPLES), self._held)
        return np.concatenate(self._out) if self._out else np.zeros(0, np.float32)

    def _run(self, count: int, n: int) -> None:
        """The model over the next `count` frames, made of the next `n` samples fed (zero-padded)."""
        frames = np.zeros((count, FRAME_SAMPLES), np.float32)
        flat, at = frames.reshape(-1), 0
        while at < n:  # copy the samples out of the pieces, dropping the pieces used up
            piece = self._pieces[0]
            take = min(piece.size, n - at)
            flat[at : at + take] = piece[:take]
            at += take
            if take == piece.size:
                self._pieces.popleft()
            else:
                self._pieces[0] = piece[take:]
        self._held -= n
        block = np.empty((count, CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
        block[:, CONTEXT_SAMPLES:] = frames
        block[0, :CONTEXT_SAMPLES] = self._context
        block[1:, :CONTEXT_SAMPLES] = frames[:-1, -CONTEXT_SAMPLES:]
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._hidden, self._cell = _session().run(
            ["speech_probs", "hn", "cn"], {"input": block, "h": self._hidden, "c": self._cell}
        )
        self._out.append(np.asarray(probs, np.float32).reshape(-1))


def speech_probabilities(audio: np.ndarray, block_frames: int = BLOCK_FRAMES) -> np.ndarray:
    """Silero's speech probability for each 512-sample frame of 16 kHz `audio` (the last frame
    zero-padded): float32 of length ceil(len(audio) / 512), as Silero's `audio_forward`."""
    stream = SpeechProbabilityStream(block_frames)
    stream.feed(audio)
    return stream.finish()


def stream_speech_probabilities(blocks: Iterable[np.ndarray], block_frames: int = BLOCK_FRAMES) -> tuple[np.ndarray, int]:
    """`speech_probabilities` of the audio that `blocks` (float32 16 kHz arrays of any size) make
    up together, without holding it whole: (probabilities, number of samples)."""
    stream = SpeechProbabilityStream(block_frames)
    for block in blocks:
        stream.feed(block)
    return stream.finish(), stream.num_samples


# ---------------------------------------------------------------- speech regions


def speech_timestamps_from_probabilities(
    probs: np.ndarray, n_samples: int, options: VadOptions | None = None
) -> list[dict]:
    """Speech regions [{"start", "end"}] in samples from per-frame probabilities: faster-whisper's
    state machine (hysteresis between threshold and neg_threshold, minimum silence, maximum
    length split, minimum speech, then padding)."""
    options = options or VadOptions()
    sr, window = SAMPLE_RATE, FRAME_SAMPLES
    threshold, neg_threshold = options.threshold, options.effective_neg_threshold
    min_speech_samples = sr * options.min_speech_duration_ms / 1000
    speech_pad_samples = sr * options.speech_pad_ms / 1000
    max_speech_samples = sr * options.max_speech_duration_s - window - 2 * speech_pad_samples
    min_silence_samples = sr * options.min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = sr * 98 / 1000

    triggered = False
    speeches: list[dict] = []
    current: dict = {}
    temp_end = 0  # where the current silence began (0: not in a silence)
    prev_end = next_start = 0  # the last silence, for a split at max_speech_duration_s

    for i, prob in enumerate(np.asarray(probs, np.float64).tolist()):
        pos = window * i
        if prob >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = pos
        if prob >= threshold and not triggered:
            triggered = True
            current["start"] = pos
            continue
        if triggered and pos - current["start"] > max_speech_samples:
            if prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:  # still in the silence that ended it
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
            else:
                current["end"] = pos
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = pos
            if pos - temp_end > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if pos - temp_end < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False

    if current and n_samples - current["start"] > min_speech_samples:
        current["end"] = n_samples
        speeches.append(current)

    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - speech["end"]
            if silence < 2 * speech_pad_samples:
                speech["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                speech["end"] = int(min(n_samples, speech["end"] + speech_pad_samples))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - speech_pad_samples))
        else:
            speech["end"] = int(min(n_samples, speech["end"] + speech_pad_samples))
    return [{"start": int(s["start"]), "end": int(s["end"])} for s in speeches]


def get_speech_timestamps(
    audio: np.ndarray, vad_options: VadOptions | None = None, sampling_rate: int = SAMPLE_RATE, **kwargs
) -> list[dict]:
    """Speech regions of 16 kHz mono `audio` as [{"start": sample, "end": sample}], in order and
    disjoint (faster-whisper's function; keyword arguments build the VadOptions)."""
    if sampling_rate != SAMPLE_RATE:
        raise ValueError(f"sampling_rate: Silero VAD runs at {SAMPLE_RATE} Hz here, got {sampling_rate}")
    if vad_options is None:
        vad_options = VadOptions.from_parameters(kwargs, name="get_speech_timestamps")
    elif kwargs:
        raise ValueError("get_speech_timestamps: give VadOptions or keyword options, not both")
    audio = _as_audio(audio)
    return speech_timestamps_from_probabilities(speech_probabilities(audio), audio.size, vad_options)


def _regions(speech: Sequence) -> list[tuple[int, int]]:
    """[(start, end)] from faster-whisper's [{"start", "end"}] dicts or (start, end) pairs; checked."""
    regions = []
    for item in speech:
        start, end = (item["start"], item["end"]) if isinstance(item, Mapping) else item
        start, end = int(start), int(end)
        if not 0 <= start < end:
            raise ValueError(f"speech region ({start}, {end}): expected 0 <= start < end (samples)")
        if regions and start < regions[-1][1]:
            raise ValueError(f"speech region ({start}, {end}) overlaps or precedes the one before it")
        regions.append((start, end))
    return regions


def collect_speech(audio: np.ndarray, speech: Sequence) -> np.ndarray:
    """The speech regions of `audio`, concatenated (the audio a VAD-filtered transcription decodes)."""
    audio = _as_audio(audio)
    parts = [audio[start:end] for start, end in _regions(speech)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# ---------------------------------------------------------------- time maps


class SpeechMap:
    """Maps time in the concatenated speech regions back to time in the original audio.

    `speech`: the regions, as get_speech_timestamps returns them (or (start, end) sample pairs);
    regions that touch are merged (no silence was removed between them). Time t of the cut audio
    falls in region i; its original time is t plus the silence removed before region i.
    """

    def __init__(self, speech: Sequence, sampling_rate: int = SAMPLE_RATE):
        self.sampling_rate = sampling_rate
        self.regions: list[tuple[int, int]] = []
        for start, end in _regions(speech):
            if self.regions and start == self.regions[-1][1]:
                self.regions[-1] = (self.regions[-1][0], end)
            else:
                self.regions.append((start, end))
        self._cut_ends: list[int] = []  # each region's end, in samples of the cut audio
        self._removed: list[int] = []  # samples of silence removed before each region
        removed, previous_end = 0, 0
        for start, end in self.regions:
            removed += start - previous_end
            previous_end = end
            self._cut_ends.append(end - removed)
            self._removed.append(removed)

    @property
    def num_samples(self) -> int:
        """Length of the cut audio in samples."""
        return self._cut_ends[-1] if self._cut_ends else 0

    def region_index(self, time: float, is_end: bool = False) -> int:
        """The region holding cut-audio time `time` (`is_end`: a time on a boundary belongs to
        the region it ends, not the one it starts)."""
        if not self.regions:
            raise ValueError("SpeechMap: no speech regions to map a time into")
        sample = round(time * self.sampling_rate)
        if is_end:
            i = bisect.bisect_left(self._cut_ends, sample)
        else:
            i = bisect.bisect_right(self._cut_ends, sample)
        return min(i, len(self.regions) - 1)

    def original_time(self, time: float, region: int | None = None, is_end: bool = False) -> float:
        """Original-audio seconds of cut-audio seconds `time` (in `region`, else the one holding it)."""
        if region is None:
            region = self.region_index(time, is_end)
        return round(time + self._removed[region] / self.sampling_rate, 3)

    def region_bounds(self, region: int) -> tuple[float, float]:
        """Original-audio (start, end) seconds of a region."""
        start, end = self.regions[region]
        return start / self.sampling_rate, end / self.sampling_rate

    def restore(self, segments: list[dict]) -> list[dict]:
        """Map segment and word times (seconds of the cut audio) to the original audio, in place.

        A word is placed by its midpoint's region and kept inside that region, so no word spans
        removed silence; a segment with words then spans its first to last word (as openai-whisper
        sets it), one without words maps its start and end on their own.
        """
        if not self.regions:
            return segments
        for segment in segments:
            words = segment.get("words")
            if words:
                for word in words:
                    region = self.region_index((word["start"] + word["end"]) / 2)
                    lo, hi = self.region_bounds(region)
                    start = self.original_time(word["start"], region)
                    end = self.original_time(word["end"], region)
                    word["start"] = round(min(max(start, lo), hi), 3)
                    word["end"] = round(min(max(end, word["start"]), hi), 3)
                segment["start"], segment["end"] = words[0]["start"], words[-1]["end"]
            else:
                segment["start"] = self.original_time(segment["start"])
                segment["end"] = max(self.original_time(segment["end"], is_end=True), segment["start"])
        return segments

    def segment_times(self, segment: dict) -> tuple[float, float]:
        """The original-audio (start, end) `restore` gives a segment, leaving the segment as it is."""
        copy = {**segment, "words": [dict(w) for w in segment.get("words") or []]}
        self.restore([copy])
        return copy["start"], copy["end"]


@dataclass(frozen=True)
class SpeechChunk:
    """One decoding window of batched transcription: speech regions of the original audio, cut
    out and joined, at most `max_duration_s` long.

    `regions` are (start, end) sample ranges of the original audio; `start`/`end` the range the
    chunk spans there. Times decoded from the chunk (seconds from its first sample) map back to
    the original audio with `original_time` / `restore`.
    """

    regions: tuple[tuple[int, int], ...]
    sampling_rate: int = SAMPLE_RATE
    _map: SpeechMap = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("SpeechChunk: needs at least one speech region")
        object.__setattr__(self, "_map", SpeechMap(self.regions, self.sampling_rate))

    @property
    def start(self) -> int:
        return self.regions[0][0]

    @property
    def end(self) -> int:
        return self.regions[-1][1]

    @property
    def num_samples(self) -> int:
        return sum(end - start for start, end in self.regions)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate

    def audio(self, audio: np.ndarray) -> np.ndarray:
        """The chunk's samples: its regions of `audio`, concatenated."""
        return collect_speech(audio, self.regions)

    def original_time(self, time: float, is_end: bool = False) -> float:
        """Original-audio seconds of `time` seconds into the chunk."""
        return self._map.original_time(time, is_end=is_end)

    def restore(self, segments: list[dict]) -> list[dict]:
        """Map chunk-relative segment and word times to the original audio, in place."""
        return self._map.restore(segments)


def merge_chunks(
    speech: Sequence, max_duration_s: float = 30.0, sampling_rate: int = SAMPLE_RATE
) -> list[SpeechChunk]:
    """Speech regions grouped, in order, into chunks of at most `max_duration_s` of speech each
    (faster-whisper's `collect_chunks` with max_duration); a region longer than that is cut into
    pieces of that length. The chunks cover exactly the regions' samples."""
    if isinstance(max_duration_s, bool) or not isinstance(max_duration_s, numbers.Real) or not max_duration_s > 0:
        raise ValueError(f"max_duration_s: expected a positive number of seconds, got {max_duration_s!r}")
    limit = int(max_duration_s * sampling_rate)
    if limit < 1:
        raise ValueError(f"max_duration_s: {max_duration_s!r} s is shorter than one sample")
    pieces: list[tuple[int, int]] = []
    for start, end in _regions(speech):
        while end - start > limit:
            pieces.append((start, start + limit))
            start += limit
        pieces.append((start, end))
    chunks: list[SpeechChunk] = []
    current: list[tuple[int, int]] = []
    length = 0
    for start, end in pieces:
        if current and length + (end - start) > limit:
            chunks.append(SpeechChunk(tuple(current), sampling_rate))
            current, length = [], 0
        current.append((start, end))
        length += end - start
    if current:
        chunks.append(SpeechChunk(tuple(current), sampling_rate))
    return chunks
