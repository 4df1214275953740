"""Audio front end: decode any file with PyAV, resample to 16 kHz mono, log-Mel spectrogram in MLX.

Values match openai-whisper's `ffmpeg -ac 1 -ar 16000 -f s16le` decoding and its torch
`log_mel_spectrogram`. Long files are streamed (`load_mel`), so memory does not grow with length.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import av
import mlx.core as mx
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a mel spectrogram input
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the initial convolutions has stride 2
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 10ms per audio frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 20ms per audio token

STREAM_THRESHOLD_S = 600.0  # files longer than this (or of unknown length) are streamed by load_mel
_BLOCK = 3000  # mel frames computed together; both paths use the same blocks, so values agree exactly
_CACHED_BLOCKS = 3  # blocks a streaming MelSource keeps (a 30 s window spans at most two)
_UNKNOWN = 1 << 40  # stands for a length not yet known (far beyond any real file)


class AudioError(ValueError):
    """Audio that cannot be used; the message is one line naming the file and the problem."""


# ---------------------------------------------------------------- decoding


def load_audio(file: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to a float32 mono waveform at `sr` Hz (s16 values / 32768, as openai-whisper)."""
    chunks = list(decode_chunks(file, sr))
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def decode_chunks(file: str | Path, sr: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yield the file's first audio stream as int16 mono chunks at `sr` Hz; AudioError on bad input.

    `file` may also be `-` (standard input), a named pipe or device, or an http(s) URL: FFmpeg
    reads them as the `ffmpeg -i` command line does, in one pass."""
    file = str(file)
    _check_file(file)
    container = _open(file)
    total = 0
    with container:
        if not container.streams.audio:
            raise AudioError(f"{file}: has no audio stream")
        stream = container.streams.audio[0]
        resampler = None
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    resampler = _Resampler(frame, sr)
                for out in resampler.push(frame):
                    total += out.size
                    yield out
            for out in resampler.push(None) if resampler else ():
                total += out.size
                yield out
        except av.FFmpegError as e:
            if total == 0:
                raise AudioError(f"{file}: no decodable audio ({_reason(e)}): corrupt, or not an audio file") from None
            raise AudioError(
                f"{file}: corrupt or truncated audio data after {total / sr:.1f} s ({_reason(e)})"
            ) from None
    if total == 0:
        raise AudioError(f"{file}: contains no audio samples")
    if not single_pass(file):
        _check_wav_complete(file)


class _Resampler:
    """An FFmpeg filter graph to s16 mono at `sr`, set up as the `ffmpeg` command line does.

    Like FFmpeg <= 6 (what openai-whisper's subprocess usually runs), swresample works in s16 for
    inputs of at most 16 bits, else in float; newer FFmpeg always uses float, which differs by 1-4 LSB.
    """

    def __init__(self, first: av.AudioFrame, sr: int):
        internal = "s16p" if first.format.bytes <= 2 else "fltp" if first.format.bytes <= 4 else "dblp"
        self.graph = av.filter.Graph()
        src = self.graph.add_abuffer(
            format=first.format.name, sample_rate=first.sample_rate, layout=first.layout.name,
            time_base=first.time_base,
        )
        resample = self.graph.add("aresample", f"{sr}:internal_sample_fmt={internal}")
        fmt = self.graph.add("aformat", f"sample_fmts=s16:sample_rates={sr}:channel_layouts=mono")
        self.sink = self.graph.add("abuffersink")
        src.link_to(resample)
        resample.link_to(fmt)
        fmt.link_to(self.sink)
        self.graph.configure()
        self.src = src

    def push(self, frame: av.AudioFrame | None) -> Iterator[np.ndarray]:
        """Feed one decoded frame (None: flush) and yield what the graph has ready."""
        if frame is not None:
            frame.pts = None  # the command line resamples samples, not timestamps
        self.src.push(frame)
        while True:
            try:
                out = self.sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            yield out.to_ndarray().reshape(-1)


STDIN = "-"
"""The audio argument that means standard input (as for `ffmpeg -i -`)."""
URL_SCHEMES = ("http", "https")
"""URL schemes read as audio (through FFmpeg); other `scheme://` arguments are refused up front."""
NETWORK_TIMEOUT_S = 30
"""A URL whose server sends nothing for this long fails instead of hanging."""


def single_pass(file: str) -> bool:
    """True for inputs that can be read only once, or only at a cost per read: standard input, a
    named pipe or device, a URL. They are decoded once, into memory (not streamed in two passes)."""
    if file == STDIN or "://" in file:
        return True
    try:
        return not stat.S_ISREG(os.stat(file).st_mode)
    except OSError:
        return False


def _open(file: str) -> "av.container.InputContainer":
    """av.open on a file, `-` (FFmpeg's pipe:0) or a URL (with a read timeout); AudioError on failure."""
    target, options = file, {}
    if file == STDIN:
        target = "pipe:0"
    elif "://" in file:
        options = {"rw_timeout": str(NETWORK_TIMEOUT_S * 1_000_000)}  # microseconds
    try:
        return av.open(target, metadata_errors="ignore", options=options)
    except av.FFmpegError as e:
        raise AudioError(f"{file}: {_open_problem(e)}") from None


def _check_file(file: str) -> None:
    """Catch the plain file-system problems before FFmpeg words them obscurely."""
    if file == STDIN:
        return
    if "://" in file:
        scheme = file.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise AudioError(f"{file}: unsupported URL scheme {scheme!r} (audio URLs must be http or https)")
        return
    if not os.path.exists(file):
        raise AudioError(f"{file}: no such file")
    if os.path.isdir(file):
        raise AudioError(f"{file}: is a directory, not an audio file")
    if not os.access(file, os.R_OK):
        raise AudioError(f"{file}: permission denied")
    if stat.S_ISREG(os.stat(file).st_mode) and os.path.getsize(file) == 0:
        raise AudioError(f"{file}: empty file (0 bytes)")


def _open_problem(e: av.FFmpegError) -> str:
    if isinstance(e, av.InvalidDataError):
        return "not a recognized audio or video file (unknown format or corrupt header)"
    return f"cannot open ({_reason(e)})"


def _reason(e: av.FFmpegError) -> str:
    return (e.strerror or type(e).__name__).strip().rstrip(".").lower()


def _check_wav_complete(file: str) -> None:
    """A WAV whose data chunk is shorter than its header declares was cut off; say so."""
    with open(file, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if size in (0, 0xFFFFFFFF) or size >= 0xFFFFFF00:  # streamed WAV: size unknown
                    return
                held = os.path.getsize(file) - f.tell()
                if held < size:
                    raise AudioError(
                        f"{file}: truncated WAV: header declares {size} bytes of audio, file holds {held}"
                    )
                return
            f.seek(size + (size & 1), os.SEEK_CUR)


def _probe_duration(file: str) -> float | None:
    """The container's declared duration in seconds, or None when it does not say."""
    _check_file(file)
    with _open(file) as container:
        return None if container.duration is None else container.duration / av.time_base


# ---------------------------------------------------------------- arrays


def pad_or_trim(array, length: int = N_SAMPLES, *, axis: int = -1):
    """Pad with zeros or trim `array` (numpy or MLX) to `length` along `axis`, as the encoder expects."""
    if array.shape[axis] > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        array = array[tuple(index)]
    if array.shape[axis] < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - array.shape[axis])
        array = mx.pad(array, widths) if isinstance(array, mx.array) else np.pad(array, widths)
    return array


@lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> mx.array:
    """The librosa Mel filterbank (n_mels, N_FFT // 2 + 1) that openai-whisper ships."""
    if n_mels not in (80, 128):
        raise ValueError(f"n_mels must be 80 or 128, not {n_mels}")
    path = Path(__file__).parent / "assets" / "mel_filters.npz"
    with np.load(path) as f:
        return mx.array(f[f"mel_{n_mels}"])


@lru_cache(maxsize=None)
def _hann_window() -> mx.array:
    """Periodic Hann window of N_FFT samples (torch.hann_window's default)."""
    return mx.array(np.hanning(N_FFT + 1)[:-1].astype(np.float32))


def _as_waveform(audio: np.ndarray | mx.array) -> np.ndarray:
    """Validate an in-memory waveform: 1-D, non-empty, finite; returned as float32 numpy."""
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim != 1:
        raise AudioError(f"<array>: expected a 1-D mono waveform at 16 kHz, got shape {array.shape}")
    if array.size == 0:
        raise AudioError("<array>: empty audio (0 samples)")
    if not np.isfinite(array).all():
        raise AudioError("<array>: audio contains NaN or infinite samples")
    return array


# ---------------------------------------------------------------- log-Mel spectrogram


def log_mel_spectrogram(
    audio: str | Path | np.ndarray | mx.array, n_mels: int = 80, padding: int = 0
) -> mx.array:
    """Log-Mel spectrogram of shape (n_frames, n_mels) (time first), as openai-whisper's, transposed."""
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    signal = _ArraySignal(_as_waveform(audio), padding)
    blocks = [_log10_block(signal, k, n_mels) for k in range(_n_blocks(signal.n_frames))]
    log_spec = mx.concatenate(blocks, axis=0) if blocks else mx.zeros((0, n_mels))
    return _normalize(log_spec, log_spec.max() if log_spec.size else mx.array(-10.0))


def _n_blocks(n_frames: int) -> int:
    return -(-n_frames // _BLOCK)


def _log10_block(signal: "_ArraySignal | _StreamSignal", k: int, n_mels: int) -> mx.array:
    """log10 Mel power of frames [k*_BLOCK, min((k+1)*_BLOCK, n_frames)), before the global clamp."""
    a, b = k * _BLOCK, min((k + 1) * _BLOCK, signal.n_frames)
    padded = mx.array(_padded(signal, a * HOP_LENGTH, (b - 1) * HOP_LENGTH + N_FFT))
    frames = mx.as_strided(padded, shape=(b - a, N_FFT), strides=(HOP_LENGTH, 1))
    power = mx.abs(mx.fft.rfft(frames * _hann_window())).square()
    mel = power @ mel_filters(n_mels).T
    out = mx.log10(mx.maximum(mel, 1e-10))
    mx.eval(out)
    return out


SILENCE_LOG10_POWER = -7.0


def _normalize(log_spec: mx.array, global_max: mx.array) -> mx.array:
    """openai-whisper's dynamic range clamp (max - 8) and scaling to roughly [-1, 1]."""
    return (mx.maximum(log_spec, global_max - 8.0) + 4.0) / 4.0


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Map indices of the STFT's reflect-padded signal (pad N_FFT//2 each side) into [0, n)."""
    idx = idx - N_FFT // 2
    idx = np.where(idx < 0, -idx, idx)
    return np.where(idx >= n, 2 * (n - 1) - idx, idx)


def _padded(signal: "_ArraySignal | _StreamSignal", lo: int, hi: int) -> np.ndarray:
    """Samples [lo, hi) of the reflect-padded signal, read from the samples they mirror: one slice,
    its mirrored ends reversed from it (per-sample index arithmetic only where a mirror reaches
    past the slice, as for audio shorter than the padding)."""
    first, last, n = lo - N_FFT // 2, hi - N_FFT // 2, signal.n
    a, b = max(first, 0), min(last, n)
    left, right = max(-first, 0), max(last - n, 0)  # mirrored samples before / after the signal
    if a < b and left < b - a and a <= n - 1 - right:
        seg = signal.samples(a, b)
        parts = [seg[1 : left + 1][::-1]] if left else []
        parts.append(seg)
        if right:
            parts.append(seg[n - 1 - right - a : n - 1 - a][::-1])
        return np.concatenate(parts) if len(parts) > 1 else seg
    idx = _reflect(np.arange(lo, hi), signal.n)
    base = int(idx.min())
    return signal.samples(base, int(idx.max()) + 1)[idx - base]


class _ArraySignal:
    """An in-memory waveform followed by `padding` zeros."""

    def __init__(self, audio: np.ndarray, padding: int):
        self.audio, self.length = audio, audio.size
        self.n = audio.size + padding
        if self.n <= N_FFT // 2:
            raise AudioError(f"<array>: audio too short for the STFT ({audio.size} samples)")
        self.n_frames = self.n // HOP_LENGTH

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi), zeros past the end of the audio."""
        out = np.zeros(hi - lo, np.float32)
        got = self.audio[lo:hi]
        out[: got.size] = got
        return out


class _StreamSignal:
    """A file decoded on demand into a bounded buffer, followed by `padding` zeros.

    Until the file has been read to its end, its length is unknown and `n`/`n_frames` are huge;
    callers first `fill` past the range they read, so no end reflection is needed before then.
    """

    def __init__(self, file: str, padding: int, length: int | None = None):
        self.file, self.padding = file, padding
        self.length: int | None = None
        self.n = self.n_frames = _UNKNOWN
        self._expected = length
        if length is not None:
            self._set_length(length)
        self._restart()

    def _restart(self) -> None:
        self._chunks = decode_chunks(self.file)
        self._buf = np.zeros(0, np.int16)
        self._base = 0  # absolute index of _buf[0]
        self._done = False

    def _set_length(self, length: int) -> None:
        self.length = length
        self.n = length + self.padding
        self.n_frames = self.n // HOP_LENGTH

    def fill(self, hi: int) -> None:
        """Decode until the buffer reaches sample `hi` or the file ends (which fixes `length`)."""
        parts = [self._buf]
        have = self._base + self._buf.size
        while have < hi and not self._done:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                if self._expected is not None and have != self._expected:
                    raise AudioError(f"{self.file}: changed while being read") from None
                self._set_length(have)
                break
            parts.append(chunk)
            have += chunk.size
        if len(parts) > 1:
            self._buf = np.concatenate(parts)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) as float32, zeros past the end; forgets the samples before `lo`."""
        if lo < self._base:
            self._restart()
        self.fill(hi)
        drop = min(lo - self._base, self._buf.size)
        self._buf, self._base = self._buf[drop:], self._base + drop
        out = np.zeros(hi - lo, np.float32)
        got = self._buf[: hi - lo].astype(np.float32) / 32768.0
        out[: got.size] = got
        return out


# ---------------------------------------------------------------- bounded-memory mel


class MelSource:
    """The whole-file mel `log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)`, served in windows.

    `content_frames` counts frames of real audio (without the 30 s padding); `segment(start, size)`
    equals `mel[start:start + size]` of the whole-file computation, global max-8 clamp included.
    """

    def __init__(self, n_mels: int, content_frames: int, global_max: mx.array, blocks):
        self.n_mels = n_mels
        self.content_frames = content_frames
        self.n_frames = content_frames + N_FRAMES
        self._global_max = global_max
        self._blocks = blocks  # k -> log10 block (before the clamp)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_frames, self.n_mels)

    def segment(self, start: int, size: int) -> mx.array:
        """Frames [start, start + size) of the whole-file mel (fewer past its end)."""
        start, stop = max(start, 0), min(start + size, self.n_frames)
        if stop <= start:
            return mx.zeros((0, self.n_mels))
        first, last = start // _BLOCK, (stop - 1) // _BLOCK
        parts = [self._blocks(k) for k in range(first, last + 1)]
        window = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)
        offset = first * _BLOCK
        return _normalize(window[start - offset : stop - offset], self._global_max)

    def is_silent(self, start: int, size: int) -> bool:
        """True when frames [start, start + size) are silence: 80 dB or more under the file's
        loudest frame (the model then sees a constant input), or no mel band above -70 dB (log10
        power -7: dithered digital silence sits near -80 dB, any audible sound far above).
        Whisper hallucinates ("you") on such windows, so a transcriber skips them."""
        window = self.segment(start, size)
        if window.size == 0:
            return True
        floor = _normalize(mx.maximum(self._global_max - 8.0, -10.0), self._global_max)
        quiet = _normalize(mx.array(SILENCE_LOG10_POWER), self._global_max)
        return bool(window.max() <= mx.maximum(floor, quiet))


def load_mel(
    audio: str | Path | np.ndarray | mx.array,
    n_mels: int = 80,
    *,
    stream_threshold_s: float = STREAM_THRESHOLD_S,
    padding: int = N_SAMPLES,
) -> MelSource:
    """A MelSource for a file or waveform; files longer than `stream_threshold_s` are streamed
    (`-`, pipes and URLs, readable once, are decoded into memory). `padding`: zeros after an
    in-memory waveform (the seek loop's 30 s; a caller that reads only frames ending within
    len + padding - N_FFT // 2 samples may pass less, with the same values)."""
    if isinstance(audio, (str, Path)):
        file = str(audio)
        if not single_pass(file):  # stdin, pipes and URLs are decoded once, into memory
            duration = _probe_duration(file)
            if duration is None or duration > stream_threshold_s:
                return _streaming_mel(file, n_mels)
        audio = load_audio(file)
    signal = _ArraySignal(_as_waveform(audio), padding)
    blocks = [_log10_block(signal, k, n_mels) for k in range(_n_blocks(signal.n_frames))]
    global_max = mx.max(mx.stack([b.max() for b in blocks]))
    return MelSource(n_mels, signal.length // HOP_LENGTH, global_max, blocks.__getitem__)


def _streaming_mel(file: str, n_mels: int) -> MelSource:
    """Pass 1 decodes the file once for its length and the global max; pass 2 decodes on demand."""
    first = _StreamSignal(file, N_SAMPLES)
    global_max, k = mx.array(-10.0), 0
    while True:
        first.fill((k + 1) * _BLOCK * HOP_LENGTH + N_FFT)  # past block k's samples, or to the end
        if k >= _n_blocks(first.n_frames):
            break
        global_max = mx.maximum(global_max, _log10_block(first, k, n_mels).max())
        mx.eval(global_max)  # else the lazy graph keeps every block alive
        k += 1
    length = first.length
    del first
    second = _StreamSignal(file, N_SAMPLES, length)
    cache: OrderedDict[int, mx.array] = OrderedDict()

    def block(k: int) -> mx.array:
        if k not in cache:
            cache[k] = _log10_block(second, k, n_mels)
            while len(cache) > _CACHED_BLOCKS:
                cache.popitem(last=False)
        cache.move_to_end(k)
        return cache[k]

    return MelSource(n_mels, length // HOP_LENGTH, global_max, block)
