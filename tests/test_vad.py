"""Voice activity detection (issue 14): Silero probabilities against Silero's own model, speech
regions on a clip with known silences, faster-whisper's region rules, the time maps, the chunks
for batched decoding, bad options, and `transcribe(vad_filter=True)` on real weights and speech.

The clip with known silences: four synthesized sentences joined by sox with 3, 6 and 4 s of faint
noise between them, so where the silences lie is known to the sample.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE
from test_bad_input import run_cli, wer
from whisper_mlx import cli, load_model, transcribe, vad
from whisper_mlx.audio import load_audio

SR = 16000
SENTENCES = ("en_weather", "en_train", "en_garden", "en_library")
GAPS_S = (3.0, 6.0, 4.0)  # silence inserted after each sentence but the last
PAD_S = vad.VadOptions().speech_pad_ms / 1000


@dataclass(frozen=True)
class GapClip:
    path: Path
    audio: np.ndarray
    text: str
    sentences: list[tuple[float, float]]  # each sentence file's span in the joined clip (s)
    audible: list[tuple[float, float]]  # first to last audible sample of each sentence (s)
    gaps: list[tuple[float, float]]  # the inserted silences (s)


@pytest.fixture(scope="module")
def gap_clip() -> GapClip:
    from zoo.speech import make_clips

    parts = make_clips(CACHE / "clips", list(SENTENCES))
    files = [parts[i].path for i in SENTENCES]
    key = hashlib.sha256(("\0".join(p.name for p in files) + repr(GAPS_S)).encode()).hexdigest()[:12]
    path = CACHE / "clips" / f"vad_gaps-{key}.wav"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".vad-") as tmp:
            inputs: list[str] = []
            for i, file in enumerate(files):
                inputs.append(str(file))
                if i < len(GAPS_S):
                    gap = Path(tmp) / f"gap{i}.wav"
                    # -R: the same noise every time; vol 0.002: a faint noise floor, not digital zero
                    subprocess.run(["sox", "-R", "-n", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed-integer",
                                    str(gap), "synth", str(GAPS_S[i]), "whitenoise", "vol", "0.002"], check=True)
                    inputs.append(str(gap))
            subprocess.run(["sox", *inputs, str(Path(tmp) / "joined.wav")], check=True)
            os.replace(Path(tmp) / "joined.wav", path)
    sentences, audible, gaps, at = [], [], [], 0
    for i, file in enumerate(files):
        samples = load_audio(file)
        loud = np.nonzero(np.abs(samples) > 0.01)[0]
        sentences.append((at / SR, (at + samples.size) / SR))
        audible.append(((at + loud[0]) / SR, (at + loud[-1] + 1) / SR))
        at += samples.size
        if i < len(GAPS_S):
            gaps.append((at / SR, at / SR + GAPS_S[i]))
            at += round(GAPS_S[i] * SR)
    audio = load_audio(path)
    assert audio.size == at
    return GapClip(path, audio, " ".join(parts[i].text for i in SENTENCES), sentences, audible, gaps)


# ---------------------------------------------------------------- the model


def test_probabilities_match_silero_reference(gap_clip):
    """Per-frame probabilities equal Silero's own implementation's: the TorchScript model of the
    `silero-vad` 6.0.0 package (scripts/setup.sh installs it; the same model version as ours),
    loaded from the package's files (its Python code needs torchaudio, which torch 2.13 lacks)."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None, "silero-vad 6.0.0 is missing: scripts/setup.sh installs it"
    jit = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.jit"
    threads = torch.get_num_threads()
    try:  # Silero's model runs frame by frame, slow on more than one thread: only here
        torch.set_num_threads(1)
        model = torch.jit.load(str(jit), map_location="cpu")
        model.eval()
        reference = model.audio_forward(torch.from_numpy(gap_clip.audio), SR).numpy().reshape(-1)
    finally:
        torch.set_num_threads(threads)
    ours = vad.speech_probabilities(gap_clip.audio)
    assert ours.shape == reference.shape == (-(-gap_clip.audio.size // 512),)
    assert np.abs(ours - reference).max() < 1e-3
    assert reference.max() > 0.9 and reference.min() < 0.1  # the clip has speech and silence
    # the LSTM state and the 64-sample context are carried across onnxruntime calls
    np.testing.assert_allclose(vad.speech_probabilities(gap_clip.audio, block_frames=37), ours, atol=1e-5)


def test_probabilities_from_a_stream_of_blocks_equal_the_whole_arrays(gap_clip):
    """A file decoded piece by piece (blocks of any size, as audio.decode_chunks yields them) gets
    exactly the whole array's probabilities: state, context and onnxruntime's frame groups carry
    across blocks. Odd-sized blocks, some shorter than a frame or than the 64-sample context,
    the last one longer than an onnxruntime group."""
    from whisper_mlx.audio import decode_chunks

    audio = gap_clip.audio
    whole = vad.speech_probabilities(audio)
    rng = np.random.default_rng(0)
    sizes = np.concatenate([[1, 63, 65, 511, 513, 1023], rng.integers(1, 20_000, 8)])
    blocks = np.split(audio, np.cumsum(sizes))  # the last one: the rest, more than one group
    assert blocks[-1].size > vad.BLOCK_FRAMES * 512
    probs, n_samples = vad.stream_speech_probabilities(iter(blocks))
    assert n_samples == audio.size
    np.testing.assert_array_equal(probs, whole)
    # the file's own blocks, as pass 1 of batched transcription reads it
    stream = vad.SpeechProbabilityStream()
    for block in decode_chunks(gap_clip.path):
        stream.feed(block.astype(np.float32) / 32768.0)
    np.testing.assert_array_equal(stream.finish(), whole)
    assert vad.speech_timestamps_from_probabilities(whole, stream.num_samples, vad.VadOptions()) == \
        vad.get_speech_timestamps(audio, vad.VadOptions())
    with pytest.raises(ValueError, match="fed after finish"):
        stream.feed(audio[:10])


def test_speech_regions_follow_the_known_silences(gap_clip):
    regions = vad.get_speech_timestamps(gap_clip.audio, vad.VadOptions())
    assert len(regions) == len(SENTENCES), regions
    for region, (start, end), (loud_start, loud_end) in zip(regions, gap_clip.sentences, gap_clip.audible):
        lo, hi = region["start"] / SR, region["end"] / SR
        assert lo <= loud_start and loud_end <= hi  # the sentence's sound is kept ...
        assert start - PAD_S - 0.04 <= lo and hi <= end + PAD_S + 0.04  # ... and the silence cut
    # the keyword form and the dict form give the same regions
    assert vad.get_speech_timestamps(gap_clip.audio, speech_pad_ms=400) == regions


def _smooth_probabilities(seed: int, n: int) -> np.ndarray:
    """Speech-like probability tracks: runs of speech and silence with noise between 0 and 1."""
    rng = np.random.default_rng(seed)
    level = np.repeat(rng.random(n // 20 + 1) > 0.5, 20)[:n].astype(float)
    return np.clip(0.8 * level + 0.1 + rng.normal(0, 0.2, n), 0, 1).astype(np.float32)


@pytest.mark.parametrize(
    "options",
    [{}, {"threshold": 0.3, "neg_threshold": 0.2}, {"min_speech_duration_ms": 250, "min_silence_duration_ms": 100,
                                                     "speech_pad_ms": 30},
     {"max_speech_duration_s": 2.0, "min_silence_duration_ms": 500, "speech_pad_ms": 100},
     {"max_speech_duration_s": 1.0, "min_silence_duration_ms": 2000, "speech_pad_ms": 0}],
    ids=["defaults", "thresholds", "short", "split", "hard-split"],
)
def test_regions_are_faster_whispers_for_the_same_probabilities(options, monkeypatch):
    """The state machine is faster-whisper's, branch for branch (its model is swapped for the
    probabilities given, since it ships an older v6 whose probabilities differ from Silero's)."""
    import faster_whisper.vad as fw

    for seed in range(4):
        probs = _smooth_probabilities(seed, 600)
        n_samples = probs.size * 512 - 100
        monkeypatch.setattr(fw, "get_vad_model", lambda: (lambda audio: probs))
        expected = fw.get_speech_timestamps(np.zeros(n_samples, np.float32), fw.VadOptions(**options))
        assert expected, "the probabilities give speech"
        assert vad.speech_timestamps_from_probabilities(probs, n_samples, vad.VadOptions(**options)) == expected


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options,field",
    [({"threshold": 1.5}, "threshold"), ({"threshold": "0.5"}, "threshold"), ({"threshold": True}, "threshold"),
     ({"neg_threshold": 0.7}, "neg_threshold"), ({"min_speech_duration_ms": -1}, "min_speech_duration_ms"),
     ({"min_silence_duration_ms": float("nan")}, "min_silence_duration_ms"),
     ({"speech_pad_ms": float("inf")}, "speech_pad_ms"),
     ({"max_speech_duration_s": 0.5}, "max_speech_duration_s"), ({"max_speech_duration_s": -3}, "max_speech_duration_s")],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=rf"^VadOptions\.{field}: ") as info:
        vad.VadOptions(**options)
    assert info.value.field == field and "\n" not in str(info.value)


def test_vad_parameters_are_checked_before_anything_loads(tmp_path):
    """transcribe refuses bad vad_parameters before it loads a model or reads the audio."""
    missing = str(tmp_path / "no model here")
    with pytest.raises(ValueError, match=r"^vad_parameters: unknown option 'treshold' \(expected some of threshold,"):
        transcribe(str(tmp_path / "no.wav"), path_or_hf_repo=missing, vad_filter=True, vad_parameters={"treshold": 0.4})
    with pytest.raises(ValueError, match=r"^VadOptions\.speech_pad_ms: must be >= 0"):
        transcribe(str(tmp_path / "no.wav"), path_or_hf_repo=missing, vad_filter=True, vad_parameters={"speech_pad_ms": -5})
    with pytest.raises(ValueError, match=r"^vad_parameters: expected a dict"):
        transcribe(str(tmp_path / "no.wav"), path_or_hf_repo=missing, vad_filter=True, vad_parameters=[0.5])
    assert vad.VadOptions.from_parameters({"threshold": 0.4}) == vad.VadOptions(threshold=0.4)


def test_missing_onnxruntime_is_one_line_with_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(vad, "onnxruntime_available", lambda: False)
    with pytest.raises(vad.VadError, match=r'needs onnxruntime, which is not installed: pip install "whisper-mlx\[vad\]"'):
        transcribe(np.zeros(SR, np.float32), path_or_hf_repo=str(tmp_path), vad_filter=True)
    assert cli.main([str(tmp_path / "a.wav"), "--vad-filter", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['whisper-mlx: error: --vad-filter needs onnxruntime, which is not installed: '
                   'pip install "whisper-mlx[vad]"']


@pytest.mark.parametrize(
    "args,says",
    [(["--vad-threshold", "0.4"], "--vad-threshold requires --vad-filter"),
     (["--vad-filter", "--vad-threshold", "1.2"], "--vad-threshold: must be between 0 and 1"),
     (["--vad-filter", "True", "--vad-speech-pad-ms", "-1"], "--vad-speech-pad-ms: must be >= 0"),
     (["--vad-filter", "--vad-min-silence-duration-ms", "lots"], "invalid int value: 'lots'")],
    ids=["without-filter", "threshold", "pad", "not-a-number"],
)
def test_cli_refuses_bad_vad_options(tmp_path, args, says):
    proc = run_cli(tmp_path / "a.wav", *args, "-o", tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("whisper-mlx: error: ") and says in last, proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- time maps and chunks


def test_speech_map_maps_cut_time_to_original_time():
    # regions at 1-2 s, 4-5 s and 5-6 s of the original: cut-audio seconds 0-1, 1-2, 2-3
    speech_map = vad.SpeechMap([{"start": SR, "end": 2 * SR}, {"start": 4 * SR, "end": 5 * SR}, (5 * SR, 6 * SR)])
    assert speech_map.num_samples == 3 * SR
    assert speech_map.regions == [(SR, 2 * SR), (4 * SR, 6 * SR)]  # touching regions merged
    assert speech_map.original_time(0.5) == 1.5
    assert speech_map.original_time(1.0) == 4.0  # a start on a boundary begins the next region
    assert speech_map.original_time(1.0, is_end=True) == 2.0  # an end on it closes the previous one
    assert speech_map.original_time(2.5) == 5.5
    assert speech_map.original_time(3.7) == 6.7  # past the end: the last region's offset
    segments = [
        {"start": 0.2, "end": 1.0, "seek": 0, "text": " a"},  # no words: ends at the first region's end
        {"start": 0.8, "end": 2.4, "words": [
            {"word": " across", "start": 0.8, "end": 1.3},  # midpoint 1.05: the 4-5 s region
            {"word": " short", "start": 0.9, "end": 1.05},  # midpoint 0.975: the 1-2 s region
            {"word": " next", "start": 1.5, "end": 2.4},  # 4-5 s and 5-6 s touch: no silence removed
        ]},
    ]
    speech_map.restore(segments)
    assert (segments[0]["start"], segments[0]["end"]) == (1.2, 2.0)
    words = segments[1]["words"]
    assert (words[0]["start"], words[0]["end"]) == (4.0, 4.3)  # kept inside its region, not across the cut
    assert (words[1]["start"], words[1]["end"]) == (1.9, 2.0)
    assert (words[2]["start"], words[2]["end"]) == (4.5, 5.4)
    assert (segments[1]["start"], segments[1]["end"]) == (4.0, 5.4)
    with pytest.raises(ValueError, match="overlaps"):
        vad.SpeechMap([(0, 100), (50, 200)])


def test_merge_chunks_for_batched_decoding():
    audio = np.arange(100 * SR, dtype=np.float32)
    seconds = [(0.5, 10), (12, 25), (26, 35), (36, 40), (41, 95)]  # the last is longer than a chunk
    speech = [{"start": round(a * SR), "end": round(b * SR)} for a, b in seconds]
    chunks = vad.merge_chunks(speech, max_duration_s=30.0)
    assert [c.regions for c in chunks] == [
        ((8000, 160000), (192000, 400000)),  # 9.5 + 13 s; + 9 s would pass 30 s
        ((416000, 560000), (576000, 640000)),  # 9 + 4 s; + 30 s would pass it
        ((656000, 1136000),),  # the 54 s region, cut at 30 s
        ((1136000, 1520000),),
    ]
    assert all(c.duration <= 30.0 for c in chunks)
    assert [(c.start, c.end) for c in chunks] == [(8000, 400000), (416000, 640000), (656000, 1136000), (1136000, 1520000)]
    first = chunks[0]
    np.testing.assert_array_equal(first.audio(audio), np.concatenate([audio[8000:160000], audio[192000:400000]]))
    assert first.original_time(0.0) == 0.5 and first.original_time(9.5, is_end=True) == 10.0
    assert first.original_time(9.5) == 12.0 and first.original_time(22.5) == 25.0
    assert chunks[2].original_time(29.0) == 70.0 and chunks[3].original_time(1.0) == 72.0
    decoded = [{"start": 9.0, "end": 12.0, "words": [{"word": " hi", "start": 9.0, "end": 9.4},
                                                     {"word": " there", "start": 9.6, "end": 12.0}]}]
    first.restore(decoded)
    assert decoded[0]["words"][1] == {"word": " there", "start": 12.1, "end": 14.5}
    assert (decoded[0]["start"], decoded[0]["end"]) == (9.5, 14.5)
    # the grouping is faster-whisper's collect_chunks' where no region exceeds the limit (its
    # metadata drops the first region of each later chunk, so its audio is compared)
    import faster_whisper.vad as fw

    fw_audio, metadata = fw.collect_chunks(audio, speech[:4], max_duration=30.0)
    assert len(fw_audio) == 2 and [m["duration"] for m in metadata] == [c.duration for c in chunks[:2]]
    for theirs, ours in zip(fw_audio, chunks[:2]):
        np.testing.assert_array_equal(theirs, ours.audio(audio))
    assert vad.merge_chunks([]) == []
    with pytest.raises(ValueError, match="max_duration_s"):
        vad.merge_chunks(speech, max_duration_s=0)


# ---------------------------------------------------------------- transcription


@pytest.fixture(scope="module")
def tiny(tiny_en_fp32_dir):
    return load_model(str(tiny_en_fp32_dir))


def test_vad_filter_on_silence_gives_nothing(tiny):
    noise = (np.random.default_rng(0).standard_normal(20 * SR) * 0.002).astype(np.float32)
    for audio in (noise, np.zeros(10 * SR, np.float32)):
        result = transcribe(audio, model=tiny, vad_filter=True, word_timestamps=True)
        assert result == {"text": "", "segments": [], "language": "en"}


@pytest.fixture(scope="module")
def gap_runs(tiny, gap_clip):
    """The clip transcribed without and with the VAD filter (greedy, word timestamps), and the
    lines the VAD run printed."""
    options = dict(model=tiny, word_timestamps=True, best_of=5)
    plain = transcribe(str(gap_clip.path), **options)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        filtered = transcribe(str(gap_clip.path), vad_filter=True, verbose=True, **options)
    return plain, filtered, printed.getvalue()


def _words(result: dict) -> list[dict]:
    return [w for s in result["segments"] for w in s["words"]]


def test_vad_filter_keeps_words_out_of_the_silences(gap_runs, gap_clip):
    plain, filtered, _ = gap_runs
    # tiny.en writes numbers as digits ("62" for "sixty two"), which this WER counts as errors
    assert wer(gap_clip.text, filtered["text"]) <= min(0.2, wer(gap_clip.text, plain["text"]) + 0.02), filtered["text"]
    words = _words(filtered)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] <= w["end"] for w in words)
    for gap_start, gap_end in gap_clip.gaps:
        # a word may reach into the padding kept around speech, never further into the silence
        inside = [w for w in words if w["end"] > gap_start + PAD_S and w["start"] < gap_end - PAD_S]
        assert not inside, (gap_start, gap_end, inside)
    for segment in filtered["segments"]:
        assert any(s - PAD_S <= segment["start"] <= segment["end"] <= e + PAD_S for s, e in gap_clip.sentences)


def test_vad_filter_word_times_agree_with_the_plain_run(gap_runs, gap_clip):
    """Where both runs decoded the same words in the same context, word times agree within
    100 ms. Not compared: words next to a different decoding (a comma more or less moves the
    alignment) and each sentence's first and last word, where the plain run stretches words
    into the silence (checked against the silences above instead)."""
    plain, filtered = _words(gap_runs[0]), _words(gap_runs[1])
    edges = set()
    for start, end in gap_clip.sentences:
        inside = [i for i, w in enumerate(filtered) if start <= (w["start"] + w["end"]) / 2 <= end]
        edges |= {inside[0], inside[-1]}
    matcher = difflib.SequenceMatcher(a=[w["word"] for w in plain], b=[w["word"] for w in filtered], autojunk=False)
    pairs = [(plain[block.a + k], filtered[block.b + k]) for block in matcher.get_matching_blocks()
             for k in range(1, block.size - 1) if block.b + k not in edges]
    assert len(pairs) >= 0.6 * len(filtered), (len(pairs), len(filtered))
    far = [(p["word"], p["start"], p["end"], f["start"], f["end"]) for p, f in pairs
           if abs(p["start"] - f["start"]) > 0.1 or abs(p["end"] - f["end"]) > 0.1]
    assert not far, far


def test_vad_filter_times_are_the_cut_audio_times_mapped_back(tiny, gap_runs, gap_clip):
    """The filtered run equals transcribing the speech regions joined, then mapping its times."""
    filtered = gap_runs[1]
    speech = vad.get_speech_timestamps(gap_clip.audio)
    cut = transcribe(vad.collect_speech(gap_clip.audio, speech), model=tiny, word_timestamps=True, best_of=5)
    assert cut["text"] == filtered["text"]
    # the original audio's time is far from the cut audio's after the first silence
    assert filtered["segments"][-1]["start"] > cut["segments"][-1]["start"] + 5
    restored = vad.SpeechMap(speech).restore(cut["segments"])
    assert len(restored) == len(filtered["segments"])
    for expected, got in zip(restored, filtered["segments"]):
        assert (got["start"], got["end"], got["text"]) == (expected["start"], expected["end"], expected["text"])
        assert [(w["word"], w["start"], w["end"]) for w in got["words"]] == [
            (w["word"], w["start"], w["end"]) for w in expected["words"]]


def test_verbose_lines_show_original_times(gap_runs):
    _, filtered, printed = gap_runs
    assert re.search(r"^Voice activity detection kept \d+\.\d s of 42\.4 s in 4 speech regions$", printed, re.M), printed
    shown = [m.groups() for m in re.finditer(r"^\[(\d\d):(\d\d\.\d{3}) --> ", printed, re.M)]
    starts = [int(m) * 60 + float(s) for m, s in shown]
    assert len(starts) == len(filtered["segments"])
    assert starts == [s["start"] for s in filtered["segments"]], starts


def test_vad_filter_within_clip_timestamps(tiny, gap_clip):
    """clip_timestamps (original time) limit the speech decoded: only the second sentence here."""
    start, end = gap_clip.sentences[1]
    result = transcribe(str(gap_clip.path), model=tiny, vad_filter=True, word_timestamps=True,
                        clip_timestamps=f"{start - 1:.2f},{end + 1:.2f}")
    assert wer("The next train to the city leaves at seven thirty in the morning. "
               "Please have your ticket ready before you reach the platform.", result["text"]) < 0.15, result["text"]
    assert all(start - 1 <= w["start"] <= w["end"] <= end + 1 for w in _words(result))


def test_cli_vad_filter_end_to_end(tiny_en_fp32_dir, gap_clip, tmp_path):
    """--vad-filter with VAD options: the options reach the VAD (the regions it reports are those
    of the same options here), and the written times are the original audio's."""
    start, end = gap_clip.sentences[1]
    audio = gap_clip.audio[round((start - 3) * SR) : round(end * SR)]  # 3 s of silence, then a sentence
    path = tmp_path / "late start.wav"
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(SR)
        f.writeframes(np.round(audio * 32768).clip(-32768, 32767).astype("<i2").tobytes())
    audio = load_audio(path)
    options = vad.VadOptions(speech_pad_ms=100, min_silence_duration_ms=500)
    kept = sum(r["end"] - r["start"] for r in vad.get_speech_timestamps(audio, options)) / SR
    proc = run_cli(path, "--model", tiny_en_fp32_dir, "-o", tmp_path, "-f", "json", "--word-timestamps", "True",
                   "--vad-filter", "--vad-speech-pad-ms", "100", "--vad-min-silence-duration-ms", "500")
    assert proc.returncode == 0, proc.stderr
    assert f"Voice activity detection kept {kept:.1f} s of {audio.size / SR:.1f} s" in proc.stdout, proc.stdout
    result = json.loads((tmp_path / "late start.json").read_text())
    assert wer("The next train to the city leaves at seven thirty in the morning. "
               "Please have your ticket ready before you reach the platform.", result["text"]) < 0.15, result["text"]
    first = result["segments"][0]["words"][0]
    assert 3 - 0.1 <= first["start"] < 3.6, first  # the sentence starts 3 s in (cut audio: ~0.1 s)
