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
