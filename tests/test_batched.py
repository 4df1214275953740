"""Batched transcription (whisper_mlx.batched): chunks of one or many inputs decoded as B rows.

On clips of at most 30 s a batch is the sequential decoder's window, so text and word times must
be the sequential run's; many files with bad ones among them each get their own outcome; with the
VAD the chunks follow the speech and times map back to the original audio."""

from __future__ import annotations

import json

import pytest

import whisper_mlx
from test_bad_input import run_cli, wer
from test_vad import PAD_S, gap_clip  # noqa: F401  (the fixture)
from whisper_mlx.batched import transcribe_many


@pytest.fixture(scope="module")
def tiny(tiny_en_fp32_dir):
    return whisper_mlx.load_model(tiny_en_fp32_dir)


@pytest.fixture(scope="module")
def short_clips(clips):
    """The parity clips of at most 30 s (one window)."""
    from whisper_mlx.audio import load_audio

    short = [c for c in clips.values() if c.split == "parity" and load_audio(c.path).size <= 30 * 16000]
    assert len(short) >= 6
    return sorted(short, key=lambda c: c.id)


def _words(result: dict) -> list[tuple]:
    return [(w["word"], w["start"], w["end"]) for s in result["segments"] for w in s["words"]]


@pytest.mark.parametrize("options", [dict(temperature=0.0, word_timestamps=True), dict(temperature=0.0, beam_size=5)],
                         ids=["greedy-words", "beam5"])
def test_batched_equals_sequential_on_short_clips(tiny, short_clips, options):
    paths = [str(c.path) for c in short_clips]
    batched = {i: r for i, _, r in transcribe_many(paths, model=tiny, batch_size=8, vad_filter=False,
                                                    without_timestamps=False, **options)}
    assert sorted(batched) == list(range(len(paths)))
    for i, path in enumerate(paths):
        sequential = whisper_mlx.transcribe(path, model=tiny, **options)
        assert batched[i]["text"] == sequential["text"], path
        assert [s["text"] for s in batched[i]["segments"]] == [s["text"] for s in sequential["segments"]]
        assert [(s["start"], s["end"]) for s in batched[i]["segments"]] == \
            [(s["start"], s["end"]) for s in sequential["segments"]]
        if options.get("word_timestamps"):
            assert _words(batched[i]) == _words(sequential), path


def test_many_files_with_bad_ones_through_the_command(tiny_en_fp32_dir, short_clips, tmp_path, tiny):
    good = [c.path for c in short_clips[:3]]
    text_file = tmp_path / "notes.wav"
    text_file.write_text("this is not audio\n")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    inputs = [good[0], text_file, good[1], empty, good[2]]
    out = tmp_path / "out"
    proc = run_cli(*map(str, inputs), "--model", str(tiny_en_fp32_dir), "--batch-size", "4", "--vad-filter", "False",
                    "--output-format", "json", "--output-dir", str(out), "--beam-size", "None", "--temperature", "0")
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2, proc.stderr
    assert str(text_file) in errors[0] and str(empty) in errors[1]
    for path in good:
        written = json.loads((out / f"{path.stem}.json").read_text())
        assert written["text"] == whisper_mlx.transcribe(str(path), model=tiny, temperature=0.0,
                                                         without_timestamps=True)["text"]
    assert not (out / "notes.json").exists() and not (out / "empty.json").exists()


def test_batched_vad_chunks_keep_words_out_of_silences(tiny, gap_clip):  # noqa: F811
    result = whisper_mlx.transcribe(str(gap_clip.path), model=tiny, temperature=0.0, word_timestamps=True,
                                    batch_size=8, vad_filter=True)
    assert wer(gap_clip.text, result["text"]) <= 0.2, result["text"]
    words = [w for s in result["segments"] for w in s["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    for gap_start, gap_end in gap_clip.gaps:
        inside = [w for w in words if w["end"] > gap_start + PAD_S and w["start"] < gap_end - PAD_S]
        assert not inside, (gap_start, gap_end, inside)
    assert words[-1]["end"] <= gap_clip.audio.size / 16000


def test_batch_size_must_be_positive(tiny, short_clips):
    with pytest.raises(ValueError, match="batch_size"):
        list(transcribe_many([str(short_clips[0].path)], model=tiny, batch_size=0))
