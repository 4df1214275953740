"""Bad input (issues 6 and 17): one clear line naming the input and the problem, a non-zero exit,
nothing lost, nothing written, and no work done before the input is refused.

Every bad input is one row of a table (`FILES`, `COMMANDS`, `CALLS`), so the next one is a row,
not a function:
- FILES: bad audio files, refused by `load_audio`/`load_mel` and by the real `whisper-mlx`
  command in one run over good and bad files together (the good ones must still be written);
- COMMANDS: a command line (model directories, options, output folders, URLs), run by the real
  `whisper_mlx.cli.main` (all rows in one fresh interpreter), with its exit status and error line;
- CALLS: library calls with bad arguments, and the exception and message they must raise.
Odd but valid inputs (resampled, stereo, video, pipes, stdin, URLs) must transcribe their speech.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tracemalloc
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from whisper_mlx import DecodingOptions, ModelLoadError, decode, load_model, transcribe
from whisper_mlx.audio import AudioError, load_audio, load_mel
from whisper_mlx.decoding import check_options

REPO = Path(__file__).resolve().parents[1]
ERROR = "whisper-mlx: error: "


def run_cli(*args: str | Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """The real command, in a fresh interpreter (`python -m whisper_mlx.cli` is its entry point)."""
    kwargs.setdefault("text", True)
    return subprocess.run(
        [sys.executable, "-m", "whisper_mlx.cli", *map(str, args)],
        cwd=REPO, capture_output=True, timeout=timeout, **kwargs,
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


@dataclass
class Env:
    """What a row's builder gets: a fresh folder of its own, the clips, a good model directory."""

    root: Path
    clips: dict
    model: Path

    @property
    def audio(self) -> Path:
        return self.clips["en_weather"].path


# ---------------------------------------------------------------- builders


def broken_model(env: Env, *, config: dict | None = None, raw_config: str | None = None,
                 weights: bytes | None = None, drop_weights: bool = False, **changes) -> dict:
    """A copy of the good model directory with one thing wrong (good weights are symlinked):
    `changes` are config.json fields to set, `config` a whole replacement."""
    src, dst = env.model, env.root / "model"
    dst.mkdir()
    original = json.loads((src / "config.json").read_text())
    if raw_config is not None:
        (dst / "config.json").write_text(raw_config)
    else:
        (dst / "config.json").write_text(json.dumps(config if config is not None else {**original, **changes}))
    if weights is not None:
        (dst / "weights.safetensors").write_bytes(weights)
    elif not drop_weights:
        (dst / "weights.safetensors").symlink_to(src / "weights.safetensors")
    return {"model": dst}


def _header(path: Path) -> tuple[bytes, dict, int]:
    """A safetensors file's raw header (length + JSON), the parsed JSON, and its data size."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
    return n.to_bytes(8, "little") + raw, json.loads(raw), path.stat().st_size - 8 - n


def config_without(name: str) -> Callable[[Env], dict]:
    def make(env: Env) -> dict:
        config = json.loads((env.model / "config.json").read_text())
        return broken_model(env, config={k: v for k, v in config.items() if k != name})
    return make


def config_with(**changes) -> Callable[[Env], dict]:
    return lambda env: broken_model(env, **changes)


def config_plus(name: str, delta: int) -> Callable[[Env], dict]:
    def make(env: Env) -> dict:
        return broken_model(env, **{name: json.loads((env.model / "config.json").read_text())[name] + delta})
    return make


def truncated_weights(env: Env) -> dict:
    return broken_model(env, weights=(env.model / "weights.safetensors").read_bytes()[:1_000_000])


def weights_with_wrong_span(env: Env) -> dict:
    """An intact file whose header gives one tensor a shape its bytes do not hold."""
    raw, header, _ = _header(env.model / "weights.safetensors")
    header["decoder.ln.bias"]["shape"] = [10**6, 10**6]
    text = json.dumps(header).encode()
    data = (env.model / "weights.safetensors").read_bytes()[len(raw):]
    return broken_model(env, weights=len(text).to_bytes(8, "little") + text + data)


def weights_not_safetensors(env: Env) -> dict:
    return broken_model(env, weights=(64).to_bytes(8, "little") + np.random.default_rng(1).bytes(4096))


def random_weights(env: Env) -> dict:
    """The model's header, intact, over random bytes: loads, then computes NaN."""
    raw, _, size = _header(env.model / "weights.safetensors")
    return broken_model(env, weights=raw + np.random.default_rng(0).bytes(size))


def read_only_dir(env: Env) -> dict:
    """A folder nobody may create files in. Root ignores mode bits, so as root: sysfs's top
    folder, which refuses new files even to root."""
    if os.geteuid() == 0:
        return {"out": "/sys"}
    d = env.root / "read-only"
    d.mkdir()
    d.chmod(0o555)
    return {"out": d}


def file_as_out(env: Env) -> dict:
    (env.root / "out.txt").write_text("not a folder\n")
    return {"out": env.root / "out.txt"}


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Command:
    """A command line that must be refused: `args` with {audio}, {model}, {out} filled from
    the defaults (a good clip, the good model, a fresh output folder) and what `make` returns."""

    id: str
    args: tuple[str, ...]
    exit: int
    says: str  # regex the one error line must match
    names: str = ""  # the placeholder whose value the error line must name
    make: Callable[[Env], dict] = lambda env: {}


MODEL = ("{audio}", "--model", "{model}", "-o", "{out}")
TRANSCRIBE = ("{audio}", "--model", "{model}", "-o", "{out}", "--beam-size", "None")

COMMANDS = [
    # model directories: one line naming the file (and field or tensor)
    Command("missing weights", MODEL, 1, "model: no weights.safetensors", "model",
            lambda env: broken_model(env, drop_weights=True)),
    Command("truncated weights", MODEL, 1, "weights.safetensors: truncated", "model", truncated_weights),
    Command("missing field", MODEL, 1, "config.json: missing field 'n_text_layer'", "model",
            config_without("n_text_layer")),
    Command("wrong field type", MODEL, 1, "config.json: .*not an integer", "model",
            config_with(n_audio_state="three hundred")),
    Command("not json", MODEL, 1, "config.json: not valid JSON", "model",
            lambda env: broken_model(env, raw_config='{"n_mels": 80,')),
    Command("weights do not match config", MODEL, 1,
            "weights.safetensors: weights do not match config.json: no tensor decoder.blocks.4", "model",
            config_plus("n_text_layer", 1)),
    Command("no such directory", MODEL, 1, "not a local model directory", "model",
            lambda env: {"model": env.root / "nowhere"}),
    Command("heads do not divide the width", MODEL, 1,
            "config.json: field 'n_text_head' is 5, which does not divide n_text_state 384", "model",
            config_with(n_text_head=5)),
    Command("wrong head count", MODEL, 1,
            r"config.json: field 'alignment_heads' names head \d+ .*but n_text_head is 4", "model",
            config_with(n_text_head=4)),
    Command("alignment head layer out of range", MODEL, 1,
            "config.json: field 'alignment_heads' names layer 9, but n_text_layer is 4", "model",
            config_with(alignment_heads=[[1, 0], [9, 0]])),
    Command("alignment heads not pairs", MODEL, 1, "config.json: field 'alignment_heads' holds", "model",
            config_with(alignment_heads=[[1, 0, 2]])),
    Command("oversized n_audio_ctx", MODEL, 1, "config.json: field 'n_audio_ctx' is 100000000", "model",
            config_with(n_audio_ctx=100_000_000)),
    Command("oversized n_text_state", MODEL, 1,
            "config.json: field 'n_text_state' is 10000000, more than the limit", "model",
            config_with(n_text_state=10_000_000)),
    Command("oversized n_text_ctx", MODEL, 1, "config.json: field 'n_text_ctx' is 1000000000", "model",
            config_with(n_text_ctx=10**9)),
    Command("unknown vocabulary", MODEL, 1, "config.json: field 'n_vocab' is 50000", "model",
            config_with(n_vocab=50000)),
    Command("n_mels the runtime has no filters for", MODEL, 1, "config.json: field 'n_mels' is 100", "model",
            config_with(n_mels=100)),
    Command("weights shape contradicts a dim", MODEL, 1,
            r"weights.safetensors: weights do not match config.json: decoder.positional_embedding has shape "
            r"\(448, 384\), not \(500, 384\): config.json says n_text_ctx 500, the weights 448", "model",
            config_with(n_text_ctx=500)),
    Command("multilingual config over English weights", MODEL, 1,
            "weights.safetensors: .*config.json says n_vocab 51865, the weights 51864", "model",
            config_with(n_vocab=51865)),
    Command("header shape and bytes disagree", MODEL, 1,
            "weights.safetensors: corrupt header: tensor 'decoder.ln.bias'", "model", weights_with_wrong_span),
    Command("weights not safetensors", MODEL, 1, "weights.safetensors: not a safetensors file", "model",
            weights_not_safetensors),
    Command("malformed quantization", MODEL, 1, "config.json: field 'quantization.group_size' is None", "model",
            config_with(quantization={"bits": 4})),
    Command("quantization bits MLX lacks", MODEL, 1, "config.json: field 'quantization.bits' is 7",
            "model", config_with(quantization={"bits": 7, "group_size": 64})),
    Command("weights that compute NaN", TRANSCRIBE, 1,
            "model: the model's weights produce non-finite values", "model", random_weights),
    # options checked against the model, before any audio is read
    Command("language an English-only model lacks", (*MODEL, "--language", "de"), 2,
            ": language 'de': this model is English-only$", "model"),
    Command("translate with an English-only model", (*MODEL, "--task", "translate"), 2,
            ": task 'translate': this model is English-only", "model"),
    # clip ranges
    Command("clip past the end of the audio", (*TRANSCRIBE, "--clip-timestamps", "100,110"), 1,
            r"clip_timestamps: a clip starts at 100 s, at or after the end of the audio \(7.\d+ s\)", "audio"),
    Command("clip start only, past the end", (*TRANSCRIBE, "--clip-timestamps", "8"), 1,
            "a clip starts at 8 s, at or after the end", "audio"),
    Command("clip not a number", (*MODEL, "--clip-timestamps", "1,two"), 2, "--clip-timestamps '1,two': expected"),
    Command("clip NaN", (*MODEL, "--clip-timestamps", "nan"), 2, "--clip-timestamps 'nan': nan is not a time"),
    Command("clip infinite", (*MODEL, "--clip-timestamps", "0,inf"), 2, "inf is not a time"),
    Command("clip negative", (*MODEL, "--clip-timestamps=-1,2"), 2, "-1.0 is not a time"),
    Command("clip reversed", (*MODEL, "--clip-timestamps", "5,3"), 2, "the clip 5-3 s does not end after it starts"),
    # output folder, checked before the model is loaded
    Command("read-only output folder", MODEL, 1, r"not writable \(Permission denied\)", "out", read_only_dir),
    Command("output folder is a file", MODEL, 1, "not a directory", "out", file_as_out),
    Command("output folder under a file", ("{audio}", "--model", "{model}", "-o", "{out}/sub"), 1,
            "cannot be created in .*out.txt: not a directory", "out", file_as_out),
    # audio arguments
    Command("URL scheme FFmpeg must not read", ("ftp://127.0.0.1/a.wav", "--model", "{model}", "-o", "{out}"), 1,
            "ftp://127.0.0.1/a.wav: unsupported URL scheme 'ftp'"),
    Command("stdin twice", ("-", "-", "--model", "{model}", "-o", "{out}"), 2, "standard input .* read only once"),
    Command("one output name for several inputs", ("{audio}", "{audio}", "--model", "{model}", "-o", "{out}", "--output-name", "x"), 2,
            "--output-name names the outputs of one audio input"),
    Command("output name with a folder", (*MODEL, "--output-name", "../x"), 2,
            "--output-name '../x': a file name without a directory"),
    # usage errors (argparse's usage lines come first)
    Command("highlight without word timestamps", (*MODEL, "--highlight-words", "True"), 2,
            "--highlight-words requires --word-timestamps True"),
    Command("line width without word timestamps", (*MODEL, "--max-line-width", "20"), 2,
            "--max-line-width requires --word-timestamps True"),
    Command("no-pack without batch size", (*MODEL, "--no-pack"), 2, "--no-pack requires --batch-size"),
    Command("unknown format", (*MODEL, "--output-format", "docx"), 2, "invalid choice: 'docx'"),
    Command("unknown language", (*MODEL, "--language", "Klingon"), 2, "invalid choice: 'Klingon'"),
    Command("not a boolean", (*MODEL, "--verbose", "perhaps"), 2, "expected True or False"),
    Command("unknown device", (*MODEL, "--device", "tpu"), 2, "invalid choice: 'tpu'"),
    Command("no audio", ("--model", "{model}", "-o", "{out}"), 2, "the following arguments are required: audio"),
]

# Runs every command row in one fresh interpreter through the real entry point (`main`), each with
# its own stdout/stderr and a time limit (a row that hangs fails alone instead of stalling the rest).
BATCH = r"""
import contextlib, io, json, signal, sys, traceback
import whisper_mlx.cli as cli

class TooLong(BaseException):
    pass

def too_long(*_):
    raise TooLong
signal.signal(signal.SIGALRM, too_long)
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(120)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
            except TooLong:
                code = "timed out after 120 s"
            except BaseException as e:  # what would have ended the command with a traceback
                traceback.print_exc()
                code = f"raised {type(e).__name__}"
    finally:
        signal.alarm(0)
    results.append({"exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def _fill(args: tuple[str, ...], values: dict) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in values.items()}) for arg in args]


@pytest.fixture(scope="module")
def command_runs(clips, tiny_en_fp32_dir, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """row id -> (its placeholder values, {exit, stdout, stderr}); every row in one interpreter."""
    base = tmp_path_factory.mktemp("bad commands")
    rows = []
    for row in COMMANDS:
        root = base / re.sub(r"\W+", "_", row.id)
        root.mkdir()
        env = Env(root, clips, tiny_en_fp32_dir)
        values = {"audio": env.audio, "model": env.model, "out": root / "out", **row.make(env)}
        rows.append((row, values))
    proc = subprocess.run([sys.executable, "-c", BATCH], cwd=REPO, capture_output=True, text=True, timeout=1800,
                          input=json.dumps([_fill(row.args, values) for row, values in rows]))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {row.id: (values, result) for (row, values), result in zip(rows, results)}


@pytest.mark.parametrize("row", COMMANDS, ids=[row.id for row in COMMANDS])
def test_bad_command_gets_one_line_and_writes_nothing(command_runs, row):
    values, result = command_runs[row.id]
    stderr = result["stderr"]
    assert result["exit"] == row.exit, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, stderr
    if row.exit != 2:  # usage errors come after argparse's usage lines; any other error is all there is
        assert stderr.strip().splitlines() == errors, stderr
    assert re.search(row.says, errors[0]), errors[0]
    if row.names:
        assert str(values[row.names]) in errors[0], errors[0]
    assert result["stdout"] == ""  # refused before any segment was decoded
    out = Path(values["out"])
    assert not out.exists() or out == Path("/sys") or not out.is_dir() or os.listdir(out) == []


def test_oversized_dims_allocate_nothing(clips, tiny_en_fp32_dir, tmp_path):
    """A config.json with n_audio_ctx 1e8 (a Hub repo could ship one) is refused before anything
    is allocated for it: before the fix, building the model asked for 143 GiB."""
    env = Env(tmp_path, clips, tiny_en_fp32_dir)
    model_dir = broken_model(env, n_audio_ctx=100_000_000)["model"]
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match="n_audio_ctx"):
            load_model(model_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_weights_are_checked_from_the_header_before_loading(clips, tiny_en_fp32_dir, tmp_path, monkeypatch):
    """A shape mismatch is found in the safetensors header, before any tensor is loaded (or the
    model built): mx.load is never reached."""
    import mlx.core as mx

    env = Env(tmp_path, clips, tiny_en_fp32_dir)
    model_dir = broken_model(env, n_text_ctx=500)["model"]

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded before their shapes were checked")

    monkeypatch.setattr(mx, "load", no_load)
    with pytest.raises(ModelLoadError, match="n_text_ctx 500, the weights 448"):
        load_model(model_dir)


# ---------------------------------------------------------------- library calls


@dataclass(frozen=True)
class Call:
    """A library call that must raise `raises` with a message matching `says` (one line)."""

    id: str
    call: Callable[[object], object]  # given the loaded tiny.en model
    raises: type
    says: str


def _mel(model):
    return load_mel(np.zeros(16000, np.float32)).segment(0, 3000)


CALLS = [
    Call("zero-length array", lambda m: transcribe(np.zeros(0, np.float32), model=m), AudioError,
         r"<array>: empty audio \(0 samples\)"),
    Call("2-D array", lambda m: transcribe(np.zeros((2, 16000), np.float32), model=m), AudioError,
         "<array>: expected a 1-D mono waveform"),
    Call("NaN samples", lambda m: transcribe(np.full(16000, np.nan, np.float32), model=m), AudioError,
         "<array>: audio contains NaN"),
    Call("unknown task", lambda m: transcribe(np.zeros(16000, np.float32), model=m, task="bogus"), ValueError,
         "task 'bogus' is not one of transcribe, translate, lang_id"),
    Call("unknown task, decode", lambda m: decode(m, _mel(m), DecodingOptions(task="bogus")), ValueError,
         "task 'bogus' is not one of"),
    Call("German on an English-only model", lambda m: transcribe(np.zeros(16000, np.float32), model=m, language="de"),
         ValueError, "language 'de': this model is English-only"),
    Call("German on an English-only model, decode",
         lambda m: decode(m, _mel(m), DecodingOptions(language="German")), ValueError,
         "language 'German': this model is English-only"),
    Call("translate on an English-only model",
         lambda m: transcribe(np.zeros(16000, np.float32), model=m, task="translate"), ValueError,
         "task 'translate': this model is English-only"),
    Call("language id on an English-only model", lambda m: decode(m, _mel(m), DecodingOptions(task="lang_id")),
         ValueError, "task 'lang_id': this model is English-only"),
    Call("unknown language", lambda m: transcribe(np.zeros(16000, np.float32), model=m, language="klingon"),
         ValueError, "language 'klingon' is not a language code or name"),
    Call("language beyond the model's 99", lambda m: check_options(DecodingOptions(language="yue"), True, 99),
         ValueError, "language 'yue': this model knows only the first 99 languages"),
    Call("clip past the end of an array",
         lambda m: transcribe(np.zeros(16000, np.float32), model=m, clip_timestamps=[2.0, 3.0]), AudioError,
         r"<array>: clip_timestamps: a clip starts at 2 s, at or after the end of the audio \(1 s\)"),
    Call("clip list with NaN", lambda m: transcribe(np.zeros(16000, np.float32), model=m, clip_timestamps=[math.nan]),
         ValueError, "nan is not a time in seconds"),
]


@pytest.fixture(scope="module")
def tiny_en(tiny_en_fp32_dir):
    return load_model(tiny_en_fp32_dir)


class _TooLong(BaseException):
    """Raised by SIGALRM in a call that should have been refused at once (never caught as an Exception)."""


@pytest.fixture
def time_limit():
    """Fail a call that runs for more than 120 s (a hang, such as a seek loop that never advances)."""
    def too_long(*_):
        raise _TooLong("still running after 120 s")
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("row", CALLS, ids=[row.id for row in CALLS])
def test_bad_call_raises_one_line(tiny_en, row, time_limit):
    with pytest.raises(row.raises) as caught:
        row.call(tiny_en)
    message = str(caught.value)
    assert re.search(row.says, message) and "\n" not in message, message


def test_valid_options_still_pass():
    """The checks refuse only what the model cannot do."""
    check_options(DecodingOptions(task="transcribe", language="en"), False, 99)
    check_options(DecodingOptions(task="transcribe", language="English"), False)
    check_options(DecodingOptions(task="translate", language="de"), True, 99)
    check_options(DecodingOptions(task="lang_id"), True, 99)
    check_options(DecodingOptions(language="yue"), True, 100)


# ---------------------------------------------------------------- bad audio files


@dataclass(frozen=True)
class File:
    """An audio file that must be refused with a line matching `says`."""

    id: str
    make: Callable[[Path, bytes], Path]  # (folder, a good WAV's bytes) -> the bad file
    says: str


def _write(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path, bytes], Path]:
    def make(d: Path, wav: bytes) -> Path:
        (d / name).write_bytes(data(wav))
        return d / name
    return make


def _video_only(d: Path, wav: bytes) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-t", "2", "-c:v", "mpeg4", d / "video_only.mp4"], check=True)
    return d / "video_only.mp4"


FILES = [
    File("missing", lambda d, wav: d / "missing.wav", "no such file"),
    File("empty", _write("empty.wav", lambda wav: b""), "empty file"),
    File("random bytes", _write("noise.mp3", lambda wav: np.random.default_rng(0).bytes(60_000)),
         "not an audio file|not a recognized audio"),
    File("text", _write("notes.txt", lambda wav: b"These are my meeting notes.\nNothing to hear here.\n"),
         "not a recognized audio or video file"),
    File("truncated", _write("cut.wav", lambda wav: wav[: len(wav) // 2]), "truncated WAV"),
    File("header only", _write("header_only.wav", lambda wav: wav[:30]), "not a recognized audio or video file"),
    File("no audio stream", _video_only, "has no audio stream"),
    File("directory", lambda d, wav: d, "is a directory"),
]


@pytest.fixture(scope="module")
def bad_files(clips, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """row id -> (path, a regex its error line must match)."""
    d = tmp_path_factory.mktemp("bad audio")  # a space in the path, too
    wav = clips["en_meeting"].path.read_bytes()
    return {row.id: (row.make(d, wav), row.says) for row in FILES}


@pytest.mark.parametrize("name", [row.id for row in FILES])
@pytest.mark.parametrize("load", [load_audio, load_mel])
def test_library_raises_one_clear_line(bad_files, name, load):
    path, says = bad_files[name]
    with pytest.raises(AudioError) as caught:
        load(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and re.search(says, message) and "\n" not in message


@pytest.fixture(scope="module")
def mixed_run(clips, bad_files, tiny_en_fp32_dir, tmp_path_factory):
    """One command over two good clips with every bad file between them."""
    out = tmp_path_factory.mktemp("mixed out")
    good = [clips["en_meeting"].path, clips["ho_computer"].path]
    files = [good[0], *(bad_files[row.id][0] for row in FILES), good[1]]
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


@pytest.mark.parametrize("name", [row.id for row in FILES])
def test_each_bad_file_gets_one_line(mixed_run, bad_files, name):
    proc, _, _ = mixed_run
    path, says = bad_files[name]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{ERROR}{path}: ")]
    assert len(lines) == 1, proc.stderr
    assert re.search(says, lines[0])


def test_no_traceback_and_nothing_else_on_stderr(mixed_run):
    proc, _, _ = mixed_run
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == len(FILES), proc.stderr


def test_single_bad_file_exits_non_zero(bad_files, tiny_en_fp32_dir, tmp_path):
    path, says = bad_files["truncated"]
    proc = run_cli(path, "--model", tiny_en_fp32_dir, "-o", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"{ERROR}{path}: ") and re.search(says, proc.stderr)
    assert os.listdir(tmp_path) == []


def test_debug_adds_the_traceback(bad_files, tiny_en_fp32_dir, tmp_path):
    path, _ = bad_files["no audio stream"]
    proc = run_cli(path, "--model", tiny_en_fp32_dir, "-o", tmp_path, "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "AudioError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{ERROR}{path}: ")


# ---------------------------------------------------------------- interrupted, or no MLX backend


def test_ctrl_c_while_the_model_loads_says_interrupted(clips, tmp_path):
    """Ctrl-C while the model downloads (a loopback Hub that accepts and never answers): one line,
    exit 130, no traceback, nothing written."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(300)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "whisper_mlx.cli", str(clips["en_weather"].path),
                             "--model", "whisper-mlx/stalled", "-o", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = server.accept()  # the command is now waiting on the Hub, inside load_model
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        conn.close()
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "whisper-mlx: interrupted", stderr
    assert not out.exists() or os.listdir(out) == []


def test_import_without_mlx_backend_says_what_to_install(tmp_path):
    """Linux without mlx[cpu] or mlx[cuda]: MLX's Python package without its libmlx.so."""
    if sys.platform != "linux":
        pytest.skip("MLX's backends are separate packages on Linux only")
    import mlx

    real = Path(list(mlx.__path__)[0])
    fake = tmp_path / "mlx"
    fake.mkdir()
    for item in real.iterdir():
        if item.name != "lib":
            (fake / item.name).symlink_to(item)
    (fake / "lib").mkdir()
    proc = subprocess.run([sys.executable, "-c", "import whisper_mlx"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: whisper-mlx needs MLX with a CPU or CUDA backend"), proc.stderr
    assert 'pip install "whisper-mlx[cpu]"' in last and '"whisper-mlx[cuda]"' in last and "libmlx.so" in last


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


def test_clip_past_the_end_is_clamped(clips, tiny_en_fp32_dir, tmp_path):
    """A clip that ends after the audio runs to its end (before the fix: the same loop as a clip
    that starts there, never advancing)."""
    clip = clips["en_weather"]
    proc = run_cli(clip.path, "--model", tiny_en_fp32_dir, "-o", tmp_path, "-f", "json", "--beam-size", "None",
                   "--clip-timestamps", "3,1000", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / f"{clip.path.stem}.json").read_text())
    duration = load_audio(clip.path).size / 16000
    assert result["segments"] and all(3.0 <= s["start"] <= s["end"] <= duration + 0.5 for s in result["segments"])
    assert 0 < len(words(result["text"])) < len(words(clip.text))


# ---------------------------------------------------------------- pipes, stdin, URLs


@pytest.fixture(scope="module")
def speech(clips):
    return clips["en_meeting"]


def _transcript(out: Path, stem: str) -> str:
    return (out / f"{stem}.txt").read_text()


def test_stdin_is_read_as_openai_whisper_users_expect(speech, tiny_en_fp32_dir, tmp_path):
    """`cat a.wav | whisper-mlx -`: FFmpeg decodes the pipe; the outputs are named `stdin`."""
    proc = run_cli("-", "--model", tiny_en_fp32_dir, "-o", tmp_path, "-f", "txt", "--beam-size", "None",
                   input=speech.path.read_bytes(), text=False)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["stdin.txt"]
    assert wer(speech.text, _transcript(tmp_path, "stdin")) < 0.2


def test_dev_stdin_and_output_name(speech, tiny_en_fp32_dir, tmp_path):
    """/dev/stdin on a pipe (before: "empty file (0 bytes)"), named by --output-name."""
    proc = run_cli("/dev/stdin", "--model", tiny_en_fp32_dir, "-o", tmp_path, "-f", "txt", "--beam-size", "None",
                   "--output-name", "meeting notes", input=speech.path.read_bytes(), text=False)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["meeting notes.txt"]
    assert wer(speech.text, _transcript(tmp_path, "meeting notes")) < 0.2


def test_named_pipe(speech, tiny_en_fp32_dir, tmp_path):
    """A FIFO is read once, as it is written (before: refused as an empty file)."""
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    out = tmp_path / "out"

    def feed():
        with open(fifo, "wb") as f:  # blocks until the command opens the pipe
            f.write(speech.path.read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    proc = run_cli(fifo, "--model", tiny_en_fp32_dir, "-o", out, "-f", "txt", "--beam-size", "None")
    writer.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out) == ["live.txt"]
    assert wer(speech.text, _transcript(out, "live")) < 0.2


@pytest.fixture
def http_server(speech, tmp_path):
    """A loopback HTTP server over a folder holding the clip."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(speech.path, served / "meeting notes.wav")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_read_end_to_end(speech, tiny_en_fp32_dir, http_server, tmp_path):
    """An http URL is decoded by FFmpeg and named after its path (before: decoded in full, then
    FileNotFoundError); a missing one is one line naming it, and the other inputs still run."""
    good, missing = f"{http_server}/meeting%20notes.wav?x=1", f"{http_server}/nothing.wav"
    out = tmp_path / "out"
    proc = run_cli(good, missing, "--model", tiny_en_fp32_dir, "-o", out, "-f", "txt", "--beam-size", "None")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"{ERROR}{missing}: cannot open (server returned 404 not found")
    assert os.listdir(out) == ["meeting notes.txt"]
    assert wer(speech.text, _transcript(out, "meeting notes")) < 0.2
