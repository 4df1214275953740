"""Bad input (issue 6): one clear line naming the file, a non-zero exit, nothing lost.

Audio problems are checked in the library and through the real `whisper-mlx` command (one run
over good and bad files together: the good ones must still be transcribed and written); model
directory problems through the command. Odd but valid audio must transcribe its speech.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisper_mlx import load_model, transcribe
from whisper_mlx.audio import AudioError, load_audio, load_mel

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command, in a fresh interpreter (`python -m whisper_mlx.cli` is its entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "whisper_mlx.cli", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(truth: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the number of true words."""
    ref, hyp = words(truth), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


# ---------------------------------------------------------------- bad audio files


@pytest.fixture(scope="module")
def bad_files(clips, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (path, a regex its error line must match)."""
    d = tmp_path_factory.mktemp("bad audio")  # a space in the path, too
    wav = clips["en_meeting"].path.read_bytes()
    (d / "empty.wav").write_bytes(b"")
    (d / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(60_000))
    (d / "notes.txt").write_text("These are my meeting notes.\nNothing to hear here.\n")
    (d / "cut.wav").write_bytes(wav[: len(wav) // 2])
    (d / "header_only.wav").write_bytes(wav[:30])
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
         "-t", "2", "-c:v", "mpeg4", d / "video_only.mp4"],
        check=True,
    )
    return {
        "missing": (d / "missing.wav", "no such file"),
        "empty": (d / "empty.wav", "empty file"),
        "random bytes": (d / "noise.mp3", "not an audio file|not a recognized audio"),
        "text": (d / "notes.txt", "not a recognized audio or video file"),
        "truncated": (d / "cut.wav", "truncated WAV"),
        "header only": (d / "header_only.wav", "not a recognized audio or video file"),
        "no audio stream": (d / "video_only.mp4", "has no audio stream"),
        "directory": (d, "is a directory"),
    }


BAD = ["missing", "empty", "random bytes", "text", "truncated", "header only", "no audio stream", "directory"]


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("load", [load_audio, load_mel])
def test_library_raises_one_clear_line(bad_files, name, load):
    path, says = bad_files[name]
    with pytest.raises(AudioError) as caught:
        load(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and re.search(says, message) and "\n" not in message


@pytest.mark.parametrize(
    "array,says",
    [(np.zeros(0, np.float32), "empty audio (0 samples)"),
     (np.zeros((2, 16000), np.float32), "expected a 1-D mono waveform"),
     (np.full(16000, np.nan, np.float32), "NaN")],
    ids=["zero-length", "2-D", "nan"],
)
def test_transcribe_refuses_bad_arrays(tiny_en_fp32_dir, array, says):
    model = load_model(tiny_en_fp32_dir)
    with pytest.raises(AudioError, match=re.escape(says)):
        transcribe(array, model=model)


@pytest.fixture(scope="module")
def mixed_run(clips, bad_files, tiny_en_fp32_dir, tmp_path_factory):
    """One command over two good clips with every bad file between them."""
    out = tmp_path_factory.mktemp("mixed out")
    good = [clips["en_meeting"].path, clips["ho_computer"].path]
    files = [good[0], *(bad_files[name][0] for name in BAD), good[1]]
    proc = run_cli(*files, "--model", tiny_en_fp32_dir, "-o", out, "-f", "all")
    return proc, out, good


def test_one_bad_file_does_not_stop_the_others(mixed_run, clips):
    proc, out, good = mixed_run
    assert proc.returncode == 1, proc.stderr
    for path, clip_id in zip(good, ["en_meeting", "ho_computer"]):
        stem = path.stem
        for fmt in ("txt", "vtt", "srt", "tsv", "json"):
            assert (out / f"{stem}.{fmt}").is_file()
        result = json.loads((out / f"{stem}.json").read_text())
        assert wer(clips[clip_id].text, result["text"]) < 0.2
    # nothing written for bad files, no temporary files left behind
    written = {p.name for p in out.iterdir()}
    assert written == {f"{p.stem}.{fmt}" for p in good for fmt in ("txt", "vtt", "srt", "tsv", "json")}


@pytest.mark.parametrize("name", BAD)
def test_each_bad_file_gets_one_line(mixed_run, bad_files, name):
    proc, _, _ = mixed_run
    path, says = bad_files[name]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"whisper-mlx: error: {path}: ")]
    assert len(lines) == 1, proc.stderr
    assert re.search(says, lines[0])


def test_no_traceback_and_nothing_else_on_stderr(mixed_run):
    proc, _, _ = mixed_run
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == len(BAD), proc.stderr


def test_single_bad_file_exits_non_zero(bad_files, tiny_en_fp32_dir, tmp_path):
    path, says = bad_files["truncated"]
    proc = run_cli(path, "--model", tiny_en_fp32_dir, "-o", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"whisper-mlx: error: {path}: ") and re.search(says, proc.stderr)
    assert os.listdir(tmp_path) == []


def test_debug_adds_the_traceback(bad_files, tiny_en_fp32_dir, tmp_path):
    path, _ = bad_files["no audio stream"]
    proc = run_cli(path, "--model", tiny_en_fp32_dir, "-o", tmp_path, "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "AudioError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"whisper-mlx: error: {path}: ")


# ---------------------------------------------------------------- odd but valid audio


@pytest.fixture(scope="module")
def odd_files(clips, tmp_path_factory) -> dict[str, Path]:
    """The same sentence in unusual but valid shapes, and one minute of digital silence."""
    d = tmp_path_factory.mktemp("odd")
    src = clips["en_river"].path
    made = {}
    for name, args in {"8k.wav": ["-r", "8000"], "stereo.wav": ["-c", "2", "-r", "44100"],
                       "24bit.wav": ["-b", "24", "-r", "48000"]}.items():
        subprocess.run(["sox", src, *args, d / name], check=True)
        made[name] = d / name
    for name, args in {"speech.mp3": [], "speech.ogg": [], "speech.m4a": ["-c:a", "aac"]}.items():
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-ac", "2", "-ar", "22050", *args, d / name],
                       check=True)
        made[name] = d / name
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
         "-i", src, "-shortest", "-c:v", "mpeg4", "-c:a", "aac", d / "video.mp4"],
        check=True,
    )
    made["video.mp4"] = d / "video.mp4"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", d / "silence.wav", "trim", "0", "60"],
                   check=True)
    made["silence.wav"] = d / "silence.wav"
    return made


@pytest.fixture(scope="module")
def odd_run(odd_files, tiny_en_fp32_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("odd out")
    proc = run_cli(*odd_files.values(), "--model", tiny_en_fp32_dir, "-o", out, "-f", "json",
                   "--word-timestamps", "True")
    return proc, out


def test_odd_run_succeeds(odd_run):
    proc, _ = odd_run
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr


@pytest.mark.parametrize("name", ["8k.wav", "stereo.wav", "24bit.wav", "speech.mp3", "speech.ogg", "speech.m4a",
                                  "video.mp4"])
def test_odd_valid_audio_transcribes_the_speech(odd_run, clips, name):
    _, out = odd_run
    result = json.loads((out / f"{Path(name).stem}.json").read_text())
    assert wer(clips["en_river"].text, result["text"]) < 0.2, result["text"]
    assert result["segments"] and all(s["words"] for s in result["segments"])


def test_digital_silence_gives_no_words(odd_run):
    _, out = odd_run
    result = json.loads((out / "silence.json").read_text())
    assert result["text"].strip() == ""
    assert [w for s in result["segments"] for w in s.get("words", [])] == []


# ---------------------------------------------------------------- bad model directories


def _broken_model(src: Path, dst: Path, *, config: dict | None = None, raw_config: str | None = None,
                  weights: bytes | None = None, drop_weights: bool = False) -> Path:
    """A copy of a good model directory with one thing wrong (good weights are symlinked)."""
    dst.mkdir()
    original = json.loads((src / "config.json").read_text())
    if raw_config is not None:
        (dst / "config.json").write_text(raw_config)
    else:
        (dst / "config.json").write_text(json.dumps(config if config is not None else original))
    if weights is not None:
        (dst / "weights.safetensors").write_bytes(weights)
    elif not drop_weights:
        (dst / "weights.safetensors").symlink_to(src / "weights.safetensors")
    return dst


def _model_cases(src: Path, root: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (model dir, file the line must name, what it must say)."""
    config = json.loads((src / "config.json").read_text())
    head = (src / "weights.safetensors").read_bytes()[:1_000_000]
    missing_field = {k: v for k, v in config.items() if k != "n_text_layer"}
    wrong_type = {**config, "n_audio_state": "three hundred"}
    mismatch = {**config, "n_text_layer": config["n_text_layer"] + 1}
    cases = {
        "missing weights": (_broken_model(src, root / "no_weights", drop_weights=True), "no_weights",
                            "no weights.safetensors"),
        "truncated weights": (_broken_model(src, root / "cut_weights", weights=head),
                              "cut_weights/weights.safetensors", "truncated"),
        "missing field": (_broken_model(src, root / "missing_field", config=missing_field),
                          "missing_field/config.json", "n_text_layer"),
        "wrong field type": (_broken_model(src, root / "wrong_type", config=wrong_type),
                             "wrong_type/config.json", "not an integer"),
        "not json": (_broken_model(src, root / "not_json", raw_config="{\"n_mels\": 80,"),
                     "not_json/config.json", "not valid JSON"),
        "weights do not match config": (_broken_model(src, root / "mismatch", config=mismatch),
                                        "mismatch/weights.safetensors", "do not match"),
        "no such directory": (root / "nowhere", "nowhere", ""),
    }
    return cases


MODEL_CASES = ["missing weights", "truncated weights", "missing field", "wrong field type", "not json",
               "weights do not match config", "no such directory"]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_errors_are_one_line_naming_the_file(case, clips, tiny_en_fp32_dir, tmp_path):
    model_dir, names, says = _model_cases(tiny_en_fp32_dir, tmp_path)[case]
    out = tmp_path / "out"
    proc = run_cli(clips["en_meeting"].path, "--model", model_dir, "-o", out)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("whisper-mlx: error: ") and names in lines[0] and says in lines[0], lines[0]
    assert not out.exists() or os.listdir(out) == []
