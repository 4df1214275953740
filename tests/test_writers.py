"""Writers produce exactly what openai-whisper's writers produce, and write files atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from whisper.utils import get_writer as reference_writer

from whisper_mlx.writers import OUTPUT_FORMATS, format_timestamp, get_writer


def _words(text: str, start: float, step: float) -> list[dict]:
    """Word timings for `text`, one every `step` seconds, with openai-whisper's leading spaces."""
    words = []
    for i, word in enumerate(text.split()):
        t = round(start + i * step, 2)
        words.append({"word": " " + word, "start": t, "end": round(t + step * 0.8, 2), "probability": 0.9})
    return words


def _segment(i: int, text: str, start: float, step: float, with_words: bool) -> dict:
    words = _words(text, start, step)
    segment = {
        "id": i, "seek": int(start * 100), "start": start, "end": words[-1]["end"], "text": " " + text,
        "tokens": [50364, 440, 3862], "temperature": 0.0, "avg_logprob": -0.25,
        "compression_ratio": 1.2, "no_speech_prob": 0.01,
    }
    if with_words:
        segment["words"] = words
    return segment


def _result(with_words: bool = True) -> dict:
    """Three segments: a pause of more than 3 s, punctuation, an arrow, a tab, and an hour mark."""
    texts = [
        (0.0, 0.35, "The weather today will be cool and cloudy, with a light rain in the afternoon."),
        (6.2, 0.3, "Please call our office --> between eight\tand five, Monday to Friday."),
        (3601.5, 0.4, "Café au lait, s'il vous plaît."),
    ]
    segments = [_segment(i, text, start, step, with_words) for i, (start, step, text) in enumerate(texts)]
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": "en"}


SUBTITLE_OPTIONS = [
    {},
    {"highlight_words": True},
    {"max_line_width": 20, "max_line_count": 2},
    {"max_line_width": 30, "max_line_count": 1, "highlight_words": True},
    {"max_words_per_line": 3},
    {"max_line_width": 25},  # without max_line_count: segments are preserved
]


def _write_both(tmp_path: Path, fmt: str, result: dict, options: dict, as_kwargs: bool) -> tuple[dict, dict]:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir(exist_ok=True)
    theirs_dir.mkdir(exist_ok=True)
    audio_path = "/some/where/meeting.notes.wav"
    if as_kwargs:
        get_writer(fmt, str(ours_dir))(result, audio_path, **options)
        reference_writer(fmt, str(theirs_dir))(result, audio_path, **options)
    else:
        get_writer(fmt, str(ours_dir))(result, audio_path, options)
        reference_writer(fmt, str(theirs_dir))(result, audio_path, options)
    read = lambda d: {p.name: p.read_bytes() for p in sorted(d.iterdir())}  # noqa: E731
    return read(ours_dir), read(theirs_dir)


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("with_words", [True, False])
def test_plain_output_equals_openai_whisper(tmp_path, fmt, with_words):
    ours, theirs = _write_both(tmp_path, fmt, _result(with_words), {}, as_kwargs=True)
    assert list(ours) == [f"meeting.notes.{fmt}"]
    assert ours == theirs


@pytest.mark.parametrize("fmt", ["vtt", "srt"])
@pytest.mark.parametrize("options", SUBTITLE_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("as_kwargs", [True, False], ids=["kwargs", "options"])
def test_subtitle_options_equal_openai_whisper(tmp_path, fmt, options, as_kwargs):
    ours, theirs = _write_both(tmp_path, fmt, _result(), options, as_kwargs)
    assert ours == theirs
    text = next(iter(ours.values())).decode()
    if options.get("highlight_words"):
        assert "<u>weather</u>" in text
    if options.get("max_line_count") == 2:
        assert all(len(line) <= 20 + 12 for line in text.splitlines())  # wrapped


def test_all_writes_every_format_equal_to_openai_whisper(tmp_path):
    options = {"max_line_width": 24, "max_line_count": 2, "highlight_words": False}
    ours, theirs = _write_both(tmp_path, "all", _result(), options, as_kwargs=True)
    assert sorted(ours) == sorted(f"meeting.notes.{fmt}" for fmt in OUTPUT_FORMATS)
    assert ours == theirs


def test_empty_result(tmp_path):
    empty = {"text": "", "segments": [], "language": "en"}
    ours, theirs = _write_both(tmp_path, "all", empty, {}, as_kwargs=True)
    assert ours == theirs
    assert ours["meeting.notes.txt"] == b""


@pytest.mark.parametrize(
    "seconds,hours,marker,expected",
    [(0.0, False, ".", "00:00.000"), (61.2345, False, ".", "01:01.234"), (3725.0006, True, ",", "01:02:05,001"),
     (3600.0, False, ".", "01:00:00.000"), (59.9996, False, ".", "01:00.000")],
)
def test_format_timestamp(seconds, hours, marker, expected):
    assert format_timestamp(seconds, hours, marker) == expected


def test_writes_are_atomic(tmp_path):
    """A write that fails midway keeps the previous file and leaves no temporary file behind."""
    write = get_writer("json", str(tmp_path))
    good = _result()
    write(good, "talk.wav")
    before = (tmp_path / "talk.json").read_bytes()
    assert json.loads(before) == good

    bad = _result()
    bad["segments"][1]["start"] = object()  # not JSON serializable: fails while rendering
    with pytest.raises(TypeError):
        write(bad, "talk.wav")
    assert (tmp_path / "talk.json").read_bytes() == before
    assert os.listdir(tmp_path) == ["talk.json"]


def test_all_renders_every_format_before_writing_any(tmp_path):
    """With "all", a result one format cannot render leaves no partial set of new outputs."""
    bad = _result()
    bad["segments"][0]["text"] = None  # txt/vtt/srt/tsv fail on it
    with pytest.raises(AttributeError):
        get_writer("all", str(tmp_path))(bad, "talk.wav")
    assert os.listdir(tmp_path) == []


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown output format 'docx'"):
        get_writer("docx", str(tmp_path))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_outputs_get_the_umask_permissions(tmp_path, umask):
    """As a plain open() would create them (before: 0600 from mkstemp whatever the umask)."""
    old = os.umask(umask)
    try:
        paths = get_writer("all", str(tmp_path))(_result(), "talk.wav")
    finally:
        os.umask(old)
    assert len(paths) == len(OUTPUT_FORMATS)
    assert {oct(os.stat(p).st_mode & 0o777) for p in paths} == {oct(0o666 & ~umask)}


def test_replaced_output_keeps_its_mode(tmp_path):
    """Rewriting an existing 0640 (or 0644) file keeps its mode (before: it became 0600)."""
    for mode in (0o640, 0o644):
        target = tmp_path / "talk.txt"
        target.write_text("old\n")
        target.chmod(mode)
        get_writer("txt", str(tmp_path))(_result(), "talk.wav")
        assert os.stat(target).st_mode & 0o777 == mode
        assert target.read_text().startswith("The weather today")


def test_symlinked_output_stays_a_symlink(tmp_path):
    """The file a symlinked output points to is replaced; the link stays (before: the link was
    replaced by a plain file and the file it pointed to kept the old text)."""
    real_dir = tmp_path / "archive"
    real_dir.mkdir()
    real = real_dir / "kept.txt"
    real.write_text("old\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "talk.txt").symlink_to(real)
    get_writer("txt", str(out))(_result(), "talk.wav")
    assert (out / "talk.txt").is_symlink() and os.readlink(out / "talk.txt") == str(real)
    assert real.read_text().startswith("The weather today")
    assert sorted(os.listdir(real_dir)) == ["kept.txt"] and sorted(os.listdir(out)) == ["talk.txt"]


@pytest.mark.parametrize("audio,stem", [
    ("-", "stdin"), ("/a/b/talk.v2.wav", "talk.v2"), ("http://host/dir/my%20talk.mp3?t=1", "my talk"),
    ("https://host/", "host"), ("talk", "talk")])
def test_output_names(tmp_path, audio, stem):
    assert get_writer("txt", str(tmp_path))(_result(), audio) == [str(tmp_path / f"{stem}.txt")]


def test_output_name_replaces_the_audio_name(tmp_path):
    assert get_writer("json", str(tmp_path))(_result(), "-", output_name="meeting") == [str(tmp_path / "meeting.json")]
