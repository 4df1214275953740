"""Audio front end against openai-whisper's reference: decoding, log-Mel, streaming, memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import whisper.audio as reference

from whisper_mlx import audio
from zoo.speech import make_clips

LSB = 1 / 32768
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Path:
    """A 40 s synthesized English clip (16 kHz mono s16 WAV)."""
    return make_clips(tmp_path_factory.getbasetemp() / "clips", ["en_long_story"])["en_long_story"].path


@pytest.fixture(scope="module")
def formats(story, tmp_path_factory) -> dict[str, Path]:
    """The story in several containers, codecs, rates, channel counts and sample formats."""
    out = tmp_path_factory.mktemp("formats")
    stereo = out / "stereo44k.wav"
    subprocess.run(["sox", story, "-r", "44100", "-c", "2", stereo], check=True)
    made = {"stereo44k.wav": stereo}
    sox = {"mono8k.wav": ["-r", "8000"], "24bit48k.flac": ["-b", "24", "-r", "48000"]}
    for name, args in sox.items():
        subprocess.run(["sox", story, *args, out / name], check=True)
        made[name] = out / name
    ffmpeg = {
        "float32.wav": ["-c:a", "pcm_f32le"],
        "speech.mp3": [],
        "speech.ogg": [],
        "speech.m4a": ["-c:a", "aac"],
    }
    for name, args in ffmpeg.items():
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", stereo, *args, out / name], check=True)
        made[name] = out / name
    video = out / "video.mkv"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
         "-i", stereo, "-shortest", "-c:v", "mpeg4", "-c:a", "libopus", video],
        check=True,
    )
    made["video.mkv"] = video
    return made


# PCM, FLAC and MP3 decode identically; float codecs may differ by one LSB between FFmpeg versions.
EXACT = {"stereo44k.wav", "mono8k.wav", "24bit48k.flac", "float32.wav", "speech.mp3"}


@pytest.mark.parametrize(
    "name",
    ["stereo44k.wav", "mono8k.wav", "24bit48k.flac", "float32.wav", "speech.mp3", "speech.ogg",
     "speech.m4a", "video.mkv"],
)
def test_load_audio_matches_ffmpeg_command_line(formats, name):
    ours = audio.load_audio(formats[name])
    theirs = reference.load_audio(str(formats[name]))
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert ours.shape == theirs.shape
    tolerance = 0 if name in EXACT else LSB
    assert np.abs(ours - theirs).max() <= tolerance
    assert np.abs(ours).max() > 0.1  # speech, not silence


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("padding", [0, audio.N_SAMPLES])
def test_log_mel_matches_reference(story, n_mels, padding):
    samples = audio.load_audio(story)
    ours = np.array(audio.log_mel_spectrogram(samples, n_mels, padding))
    theirs = reference.log_mel_spectrogram(torch.from_numpy(samples), n_mels, padding).numpy().T
    assert ours.shape == theirs.shape == ((samples.size + padding) // audio.HOP_LENGTH, n_mels)
    assert np.abs(ours - theirs).max() < 1e-4


def test_log_mel_accepts_path_numpy_and_mlx(story):
    samples = audio.load_audio(story)
    from_numpy = np.array(audio.log_mel_spectrogram(samples))
    assert np.array_equal(np.array(audio.log_mel_spectrogram(str(story))), from_numpy)
    assert np.array_equal(np.array(audio.log_mel_spectrogram(mx.array(samples))), from_numpy)


def test_log_mel_of_short_audio_matches_reference():
    """A fraction of a second, padded: the reflect padding reads the zero padding."""
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(300)).astype(np.float32)
    ours = np.array(audio.log_mel_spectrogram(samples, padding=audio.N_SAMPLES))
    theirs = reference.log_mel_spectrogram(torch.from_numpy(samples), padding=audio.N_SAMPLES).numpy().T
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("make", [np.asarray, mx.array])
def test_pad_or_trim(make):
    x = make(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert np.array_equal(np.array(audio.pad_or_trim(x, 2)), [[0, 1], [4, 5], [8, 9]])
    padded = np.array(audio.pad_or_trim(x, 5, axis=0))
    assert padded.shape == (5, 4) and np.array_equal(padded[:3], np.array(x)) and not padded[3:].any()
    assert type(audio.pad_or_trim(x, 6)) is type(x)


def test_mel_filters_shapes():
    assert audio.mel_filters(80).shape == (80, audio.N_FFT // 2 + 1)
    assert audio.mel_filters(128).shape == (128, audio.N_FFT // 2 + 1)
    with pytest.raises(ValueError):
        audio.mel_filters(64)


def test_constants_match_reference():
    for name in ["SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_LENGTH", "N_SAMPLES", "N_FRAMES",
                 "N_SAMPLES_PER_TOKEN", "FRAMES_PER_SECOND", "TOKENS_PER_SECOND"]:
        assert getattr(audio, name) == getattr(reference, name), name


# Windows the transcribe loop asks for: block-aligned, straddling blocks, the end, past the end,
# and going backwards.
STARTS = [0, 1234, 2999, 3000, 5999, 6001, 9100, 0, 17000]


def _check_segments(source: audio.MelSource, whole: np.ndarray, starts: list[int]) -> None:
    assert source.n_frames == whole.shape[0]
    for start in starts:
        for size in (audio.N_FRAMES, 100):
            window = np.array(source.segment(start, size))
            assert np.array_equal(window, whole[start : start + size]), (start, size)


def test_load_mel_of_array_equals_whole_file_mel(story):
    samples = audio.load_audio(story)
    whole = np.array(audio.log_mel_spectrogram(samples, padding=audio.N_SAMPLES))
    source = audio.load_mel(samples, 80)
    assert source.content_frames == samples.size // audio.HOP_LENGTH
    _check_segments(source, whole, STARTS[:6] + [source.content_frames, source.n_frames - 5])


@pytest.fixture(scope="module")
def three_minutes(story, tmp_path_factory) -> Path:
    """About 3 minutes of speech in a compressed file, with varying loudness (the global max moves)."""
    path = tmp_path_factory.mktemp("long") / "three_minutes.flac"
    subprocess.run(["sox", story, path, "repeat", "3", "gain", "-3"], check=True)
    louder = path.with_name("loud.flac")
    subprocess.run(["sox", path, story, louder], check=True)  # the last 40 s at full volume
    return louder


def test_streamed_mel_equals_whole_file_mel(three_minutes):
    samples = audio.load_audio(three_minutes)
    whole = np.array(audio.log_mel_spectrogram(samples, padding=audio.N_SAMPLES))
    streamed = audio.load_mel(three_minutes, 80, stream_threshold_s=30)
    in_memory = audio.load_mel(three_minutes, 80)
    assert streamed.content_frames == in_memory.content_frames == samples.size // audio.HOP_LENGTH
    _check_segments(streamed, whole, STARTS + [streamed.content_frames - 1, streamed.n_frames - 3])
    _check_segments(in_memory, whole, STARTS)


# VmHWM, not ru_maxrss: a child's ru_maxrss keeps the high-water mark of the (large) pytest process
# it was forked from, across exec.
_PEAK_RSS = """
import re, sys
from whisper_mlx.audio import N_FRAMES, load_mel
import mlx.core as mx
mel = load_mel(sys.argv[1], 80)
for start in range(0, mel.content_frames, N_FRAMES):
    mx.eval(mel.segment(start, N_FRAMES))
print(mel.content_frames, re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
"""


def _peak_rss_mib(path: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], check=True, capture_output=True, text=True,
                         cwd=REPO)
    frames, kib = out.stdout.split()
    return int(frames), int(kib) / 1024


@pytest.mark.slow
def test_long_audio_memory_does_not_grow_with_length(story, tmp_path):
    """Peak RSS of load_mel + every 30 s window: 60 minutes costs no more than 11 minutes."""
    short, long = tmp_path / "eleven_minutes.flac", tmp_path / "sixty_minutes.flac"
    story_s = audio.load_audio(story).size / audio.SAMPLE_RATE
    for path, minutes in ((short, 11), (long, 60)):
        repeats = int(minutes * 60 / story_s)  # sox plays the file once plus `repeats` times
        subprocess.run(["sox", story, path, "repeat", str(repeats)], check=True)
    short_frames, short_mib = _peak_rss_mib(short)
    long_frames, long_mib = _peak_rss_mib(long)
    print(f"peak RSS: {short_frames / 6000:.1f} min -> {short_mib:.0f} MiB, "
          f"{long_frames / 6000:.1f} min -> {long_mib:.0f} MiB")
    assert short_frames > 10 * 6000 and long_frames > 59 * 6000
    # The whole 60-minute waveform alone would take 220 MiB; its mel another 110 MiB.
    assert long_mib < short_mib + 40


def test_is_silent_finds_windows_the_model_sees_as_constant(story):
    """Digital silence and audio 80 dB or more under the peak clamp to the same constant input."""
    speech = audio.load_audio(story)[: 20 * audio.SAMPLE_RATE]
    quiet = speech * 1e-5  # 100 dB down: under the clamp, but not zero
    samples = np.concatenate([np.zeros(35 * audio.SAMPLE_RATE, np.float32), speech, quiet])
    source = audio.load_mel(samples, 80)
    fps = audio.FRAMES_PER_SECOND
    assert source.is_silent(0, 30 * fps)
    assert not source.is_silent(5 * fps, 30 * fps)  # reaches the speech at 35 s
    assert not source.is_silent(40 * fps, 10 * fps)
    assert source.is_silent(56 * fps, 19 * fps)  # the quiet copy, then the padding
    assert source.is_silent(source.content_frames, audio.N_FRAMES)  # padding only
    whole = np.array(audio.log_mel_spectrogram(samples, padding=audio.N_SAMPLES))
    assert np.unique(whole[56 * fps : 75 * fps]).size == 1  # what "silent" means: a constant input

    all_zero = audio.load_mel(np.zeros(60 * audio.SAMPLE_RATE, np.float32), 80)
    assert all_zero.is_silent(0, audio.N_FRAMES) and all_zero.is_silent(3000, audio.N_FRAMES)
    # alone, quiet speech (60 dB down) is speech; 100 dB down is under a 16-bit file's dither floor
    assert not audio.load_mel(speech * 1e-3, 80).is_silent(0, audio.N_FRAMES)


def test_reflect_padding_reads_slices_like_per_sample_mirroring():
    """The STFT's reflect padding, read as one slice with reversed ends, equals mirroring every
    sample index, for signals shorter and longer than the padding and blocks at either end."""
    from whisper_mlx.audio import _ArraySignal, _padded, _reflect

    rng = np.random.default_rng(0)
    for n in (201, 300, 1000, 480000):
        for zeros in (0, 7, 480000):
            signal = _ArraySignal(rng.normal(size=n).astype(np.float32), zeros)
            for lo, hi in [(0, signal.n + 400), (0, 500), (123, signal.n + 400), (signal.n - 100, signal.n + 400),
                           (250, signal.n)]:
                if hi <= lo:
                    continue
                idx = _reflect(np.arange(lo, hi), signal.n)
                expected = signal.samples(int(idx.min()), int(idx.max()) + 1)[idx - int(idx.min())]
                np.testing.assert_array_equal(_padded(signal, lo, hi), expected)
