"""The `whisper-mlx` command end to end: real model, real speech, real output files."""

from __future__ import annotations

import json
import re

import pytest
from whisper.utils import get_writer as reference_writer

from test_bad_input import run_cli, wer
from whisper_mlx import __version__
from whisper_mlx.audio import load_audio

FORMATS = ("txt", "vtt", "srt", "tsv", "json")


@pytest.fixture(scope="module")
def two_clips_run(clips, tiny_en_fp32_dir, tmp_path_factory):
    """Two clips, all formats, word timestamps and subtitle options, verbose (segments on stdout)."""
    out = tmp_path_factory.mktemp("cli out")
    files = [clips["en_meeting"].path, clips["ho_letter"].path]
    proc = run_cli(*files, "--model", tiny_en_fp32_dir, "--output-dir", out, "--output-format", "all",
                   "--word-timestamps", "True", "--max-line-width", "30", "--max-line-count", "2",
                   "--language", "English")
    return proc, out, files


def test_transcribes_every_file_into_every_format(two_clips_run, clips):
    proc, out, files = two_clips_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for path, clip_id in zip(files, ["en_meeting", "ho_letter"]):
        assert sorted(p.name for p in out.glob(f"{path.stem}.*")) == sorted(f"{path.stem}.{f}" for f in FORMATS)
        result = json.loads((out / f"{path.stem}.json").read_text())
        assert result["language"] == "en"
        assert wer(clips[clip_id].text, result["text"]) < 0.15, result["text"]
        assert wer(clips[clip_id].text, (out / f"{path.stem}.txt").read_text()) < 0.15
        duration = load_audio(path).size / 16000
        word_list = [w for s in result["segments"] for w in s["words"]]
        assert word_list and all(0 <= w["start"] <= w["end"] <= duration + 0.5 for w in word_list)


def test_subtitles_are_what_openai_whisper_writes_for_the_result(two_clips_run, tmp_path):
    """The command passes the subtitle options to the writers as openai-whisper's CLI does."""
    _, out, files = two_clips_run
    for path in files:
        result = json.loads((out / f"{path.stem}.json").read_text())
        for fmt in ("srt", "vtt", "tsv", "txt"):
            reference_writer(fmt, str(tmp_path))(result, str(path), max_line_width=30, max_line_count=2)
            assert (out / f"{path.stem}.{fmt}").read_text() == (tmp_path / f"{path.stem}.{fmt}").read_text()
        srt_lines = [line for line in (out / f"{path.stem}.srt").read_text().splitlines() if re.search("[a-z]", line)]
        assert srt_lines and max(len(line) for line in srt_lines) <= 30 + 15  # wrapped at ~30 characters


def test_verbose_prints_segments(two_clips_run):
    proc, _, _ = two_clips_run
    assert re.search(r"^\[00:00\.\d{3} --> 00:0\d\.\d{3}\]  The meeting", proc.stdout, re.M), proc.stdout


def test_quiet_run_shows_a_progress_bar_and_writes_one_format(clips, tiny_en_fp32_dir, tmp_path):
    """--verbose False: no segment lines, a tqdm bar over the frames; -f txt writes only txt.
    The 40 s clip runs the 30 s seek loop more than once."""
    clip = clips["en_long_story"]
    proc = run_cli(clip.path, "--model", tiny_en_fp32_dir, "-o", tmp_path, "-f", "txt", "--verbose", "False",
                   "--beam-size", "None")
    assert proc.returncode == 0, proc.stderr
    assert "-->" not in proc.stdout
    assert re.search(r"100%\|.*\| \d+/\d+ \[", proc.stderr), proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"{clip.path.stem}.txt"]
    assert wer(clip.text, (tmp_path / f"{clip.path.stem}.txt").read_text()) < 0.15


def test_openai_whisper_spellings_are_accepted(clips, tiny_en_fp32_dir, tmp_path):
    """Underscored options as openai-whisper spells them, temperature without fallback, greedy."""
    clip = clips["ho_computer"]
    proc = run_cli(clip.path, "--model", tiny_en_fp32_dir, "--output_dir", tmp_path, "--output_format", "tsv",
                   "--beam_size", "None", "--temperature_increment_on_fallback", "None",
                   "--condition_on_previous_text", "False", "--verbose", "False")
    assert proc.returncode == 0, proc.stderr
    tsv = (tmp_path / f"{clip.path.stem}.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) > 1
    assert wer(clip.text, " ".join(line.split("\t")[2] for line in tsv[1:])) < 0.15


def test_version_and_doctor():
    version = run_cli("--version")
    assert version.returncode == 0
    line = version.stdout.strip()
    assert line.startswith(f"whisper-mlx {__version__} (mlx ") and "BLAS " in line and "\n" not in line
    doctor = run_cli("doctor")
    assert doctor.returncode == 0
    report = dict(line.split(": ", 1) for line in doctor.stdout.strip().splitlines())
    assert {"mlx", "device", "blas"} <= set(report)
    assert report["device"] in ("cpu", "gpu") and report["blas"] in line
