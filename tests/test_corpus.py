"""`whisper-mlx corpus` on a local Ray cluster (started by the command: ray.init(num_cpus=2) on
127.0.0.1), and whisper_mlx.ray's Transcriber.

20 inputs (the short parity clips under different names, in two folders, and one file that is
not audio) go through the command in three runs: one limited to 10 inputs, one killed (SIGTERM)
once a few rows are written (its last file then cut short, as if it died writing it), one that
finishes. Each run must transcribe only the inputs without a row; every good row must be `transcribe(path, batch_size=4)` with the same options, and the
bad file an error row.

"Equal": text, language, every segment's id/seek/start/end/text/tokens/temperature and every
word's text/start/end exactly; avg_logprob, no_speech_prob and word probabilities to 1e-3 (a
batch that holds other files' chunks multiplies matrices of another shape, which moves the last
float bits of these scores, not the tokens or times they lead to)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq  # the ray extra (scripts/setup.sh installs it): missing, this fails, never skips
import pytest

import whisper_mlx
from whisper_mlx.audio import load_audio
from whisper_mlx.ray import SCHEMA, Transcriber, to_result
from whisper_mlx.writers import render

REPO = Path(__file__).resolve().parents[1]
# the options of every run, as flags and as transcribe's keyword arguments
FLAGS = ["--batch-size", "4", "--beam-size", "None", "--word-timestamps", "True", "--vad-filter", "False"]
OPTIONS = dict(batch_size=4, beam_size=None, best_of=5, word_timestamps=True, vad_filter=False)


@pytest.fixture(scope="module")
def tiny(tiny_en_fp32_dir):
    return whisper_mlx.load_model(tiny_en_fp32_dir)


@pytest.fixture(scope="module")
def corpus(clips, tmp_path_factory):
    """20 inputs: 19 links to short clips (each clip several times, under other names, in two
    folders, one name in both) and one text file named .wav. Returns (folder, paths, source clip
    per path, the bad path)."""
    short = sorted((c for c in clips.values() if c.split == "parity" and load_audio(c.path).size <= 30 * 16000),
                   key=lambda c: c.id)
    assert len(short) >= 4
    root = tmp_path_factory.mktemp("corpus")
    sources: dict[str, Path] = {}
    for k in range(19):
        clip = short[k % len(short)]
        name = "same.wav" if k in (0, 10) else f"clip{k:02d}.wav"
        link = root / ("a" if k < 10 else "b") / name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(clip.path)
        sources[str(link)] = clip.path
    bad = root / "b" / "notes.wav"
    bad.write_text("this is not audio\n")
    return root, sorted([*sources, str(bad)]), sources, str(bad)


@pytest.fixture(scope="module")
def reference(tiny, corpus):
    """transcribe's result for each clip the corpus links to, with the runs' options."""
    _, _, sources, _ = corpus
    return {clip: whisper_mlx.transcribe(str(clip), model=tiny, **OPTIONS) for clip in sorted(set(sources.values()))}


def corpus_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "whisper_mlx.cli", "corpus", *map(str, args)]


def run_corpus(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(corpus_cmd(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _env() -> dict:
    # Ray's workers import whisper_mlx from this checkout, as the command does
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def read_rows(out: Path) -> dict[str, list[dict]]:
    """Rows per output file (files that cannot be read are left out: a killed run's last one)."""
    rows = {}
    for path in sorted(out.glob("*.parquet")):
        try:
            rows[path.name] = pq.read_table(path).to_pylist()
        except Exception:
            continue
    return rows


def paths_of(rows: dict[str, list[dict]]) -> list[str]:
    return [row["path"] for file_rows in rows.values() for row in file_rows]


def assert_same(row: dict, expected: dict) -> None:
    got = to_result(row)
    assert got["text"] == expected["text"] and got["language"] == expected["language"], row["path"]
    assert len(got["segments"]) == len(expected["segments"]), row["path"]
    for a, b in zip(got["segments"], expected["segments"]):
        for key in ("id", "seek", "start", "end", "text", "tokens", "temperature"):
            assert a[key] == b[key], (row["path"], key)
        for key in ("avg_logprob", "no_speech_prob", "compression_ratio"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), (row["path"], key)
        assert [(w["word"], w["start"], w["end"]) for w in a["words"]] == \
            [(w["word"], w["start"], w["end"]) for w in b["words"]], row["path"]
        assert [w["probability"] for w in a["words"]] == \
            pytest.approx([w["probability"] for w in b["words"]], abs=1e-3), row["path"]


def test_corpus_runs_resume_and_equal_transcribe(tiny_en_fp32_dir, corpus, reference, tmp_path):
    root, inputs, sources, bad = corpus
    out = tmp_path / "rows"
    common = ["--output", out, "--model", tiny_en_fp32_dir, "--cpus", "2", "--subtitles", "srt", *FLAGS]

    # run 1: the first 10 inputs (two workers, two files per task)
    first = run_corpus(root, *common, "--workers", "2", "--files-per-task", "2", "--max-files", "10")
    assert first.returncode in (0, 1), first.stderr
    after_first = read_rows(out)
    assert sorted(paths_of(after_first)) == inputs[:10], first.stderr

    # run 2: killed once it has written two more rows (one file per task, so it is far from done)
    proc = subprocess.Popen(corpus_cmd(root, *common, "--files-per-task", "1"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(paths_of(read_rows(out))) < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the second run ended before it could be killed: " + proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    after_kill = read_rows(out)
    killed_paths = paths_of(after_kill)
    assert {name: after_first[name] for name in after_first} == {name: after_kill[name] for name in after_first}
    assert 12 <= len(killed_paths) < len(inputs), killed_paths
    assert len(set(killed_paths)) == len(killed_paths)
    assert f"10 of {len(inputs)} inputs already in" in stderr
    died_writing = len(list(out.glob("*.parquet"))) - len(after_kill)  # rarely, SIGTERM came mid-write
    # as if the run had died while Ray wrote its last file: that file cut short
    cut = max((name for name in after_kill if name not in after_first), key=lambda n: (out / n).stat().st_mtime)
    (out / cut).write_bytes((out / cut).read_bytes()[:100])
    lost = [row["path"] for row in after_kill.pop(cut)]
    killed_paths = paths_of(after_kill)

    # run 3: only the rest
    last = run_corpus(root, *common)
    assert last.returncode == 1, last.stderr  # the bad file
    assert f"{len(killed_paths)} of {len(inputs)} inputs already in" in last.stderr
    assert f"{1 + died_writing} unreadable output file(s)" in last.stderr and (out / ".incomplete" / cut).exists()
    assert set(lost) <= set(inputs) - set(killed_paths)
    errors = [line for line in last.stderr.splitlines() if ": error: " in line]
    if bad not in killed_paths:
        assert errors == [f"whisper-mlx corpus: error: {bad}: not a recognized audio or video file "
                          "(unknown format or corrupt header)"], last.stderr
    final = read_rows(out)
    assert {name: final[name] for name in after_kill} == after_kill  # earlier rows untouched
    new_paths = [p for name, rows in final.items() if name not in after_kill for p in (r["path"] for r in rows)]
    assert sorted(new_paths) == sorted(set(inputs) - set(killed_paths))
    assert sorted(paths_of(final)) == inputs

    rows = {row["path"]: row for file_rows in final.values() for row in file_rows}
    assert set(rows[bad]) == {"path", *SCHEMA.names}
    assert rows[bad]["error"].startswith(f"{bad}: not a recognized audio or video file")
    assert rows[bad]["text"] is None and rows[bad]["segments"] is None
    for path, clip in sources.items():
        row = rows[path]
        assert row["error"] is None, row["error"]
        assert row["duration"] == load_audio(clip).size / 16000
        assert_same(row, reference[clip])
        # the subtitles: named by the path below the inputs' folder (a/same.srt and b/same.srt)
        srt = out / "subtitles" / Path(path).relative_to(root).with_suffix(".srt")
        assert srt.read_text() == render("srt", reference[clip]), srt
    assert not (out / "subtitles" / "b" / "notes.srt").exists()
    assert sorted(p.relative_to(out / "subtitles").as_posix() for p in (out / "subtitles").rglob("*.srt")) == \
        sorted(Path(p).relative_to(root).with_suffix(".srt").as_posix() for p in sources)

    # a rerun with everything done starts no cluster
    again = run_corpus(root, *common)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr


def test_json_lines_and_subtitles(tiny_en_fp32_dir, corpus, reference, tmp_path):
    """--format jsonl: the rows read back as transcribe's results (floats to 15 decimals), the bad
    file an error row; one subtitle file per good input."""
    root, inputs, sources, bad = corpus
    out = tmp_path / "rows"
    good = [p for p in inputs if p in sources][:2]
    proc = run_corpus(*good, bad, "--output", out, "--model", tiny_en_fp32_dir, "--cpus", "2", "--format", "jsonl",
                      "--subtitles", "vtt,txt", *FLAGS)
    assert proc.returncode == 1, proc.stderr
    assert f"whisper-mlx corpus: error: {bad}: not a recognized audio or video file" in proc.stderr
    assert "2 transcribed" in proc.stderr and "1 failed" in proc.stderr
    rows = {}
    for path in sorted(out.glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[row["path"]] = row
    assert sorted(rows) == sorted([*good, bad])
    assert rows[bad]["error"].startswith(f"{bad}: ") and rows[bad]["segments"] is None
    for path in good:
        expected = reference[sources[path]]
        assert_same(rows[path], expected)
        for fmt in ("vtt", "txt"):
            subtitle = out / "subtitles" / Path(path).relative_to(root).with_suffix(f".{fmt}")  # root: a/ and b/'s
            assert subtitle.read_text() == render(fmt, expected)


def test_transcriber_on_bytes_and_paths(tiny_en_fp32_dir, corpus, reference):
    """The map_batches callable, called as Ray calls it: a batch of audio bytes rows (as
    read_binary_files gives them) with one that is not audio, and rows of paths."""
    import numpy as np

    _, inputs, sources, bad = corpus
    paths = [p for p in inputs if p in sources][:3] + [bad]
    transcriber = Transcriber(str(tiny_en_fp32_dir), **{k: v for k, v in OPTIONS.items()})
    by_bytes = transcriber({"bytes": np.array([Path(p).read_bytes() for p in paths], dtype=object),
                            "path": np.array(paths, dtype=object), "speaker": np.array([1, 2, 3, 4])})
    assert by_bytes.column_names == ["path", "speaker", *SCHEMA.names]
    rows = by_bytes.to_pylist()
    assert [r["speaker"] for r in rows] == [1, 2, 3, 4]
    for row in rows[:3]:
        assert_same(row, reference[sources[row["path"]]])
    assert rows[3]["error"] == f"{bad}: not a recognized audio or video file (unknown format or corrupt header)"
    by_path = transcriber({"path": np.array(paths, dtype=object)}).to_pylist()
    assert [to_result(r) for r in by_path[:3]] == [to_result(r) for r in rows[:3]]
    assert by_path[3]["error"] == rows[3]["error"]
    with pytest.raises(ValueError, match="'bytes'.*'path'"):
        transcriber({"audio": np.array([b""], dtype=object)})
    with pytest.raises(TypeError, match="unknown option.*beam_sise"):
        Transcriber(str(tiny_en_fp32_dir), beam_sise=5)


def test_bad_usage_is_one_line(tmp_path, tiny_en_fp32_dir):
    missing = tmp_path / "nowhere"
    proc = run_corpus(missing, "--output", tmp_path / "out", "--model", tiny_en_fp32_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"whisper-mlx corpus: error: {missing}: no such file or directory"
    empty_glob = run_corpus(str(tmp_path / "*.mp3"), "--output", tmp_path / "out")
    assert empty_glob.returncode == 2 and empty_glob.stderr.strip().endswith("*.mp3: no file matches")
    audio = tmp_path / "x.wav"
    shutil.copy(REPO / "tests" / "conftest.py", audio)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.json").write_text("{}\n")
    mixed = run_corpus(audio, "--output", tmp_path / "out", "--format", "parquet")
    assert mixed.returncode == 2
    assert mixed.stderr.strip() == (f"whisper-mlx corpus: error: {tmp_path / 'out'}: holds jsonl rows, not parquet; "
                                    "omit --format to continue them")
    no_ray = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from whisper_mlx.cli import main; "
         f"sys.exit(main(['corpus', {str(audio)!r}, '--output', {str(tmp_path / 'rows')!r}]))"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert no_ray.returncode == 2
    assert no_ray.stderr.strip() == ("whisper-mlx corpus: error: needs the `ray` extra (ray is missing): "
                                     "pip install 'whisper-mlx[ray]'")


def test_tasks_by_duration_longest_first():
    from whisper_mlx.corpus import plan_tasks

    durations = {"long": 900.0, "mid": 200.0, **{f"s{i:02d}": 10.0 + i for i in range(40)}, "unknown": 0.0}
    paths = sorted(durations)
    # batch 4: a task holds about two batches of 30 s chunks (240 s), one worker gets at least four
    groups = plan_tasks(paths, durations, batch_size=4, workers=1)
    assert sorted(p for g in groups for p in g) == paths  # every input once
    flat = [p for g in groups for p in g]
    assert flat[:2] == ["long", "mid"] and flat[-1] == "unknown"  # longest first; unknown length last
    assert groups[0] == ["long"]  # longer than a task: alone
    for group in groups[1:-1]:  # each full task holds its target's worth, not much more
        seconds = [durations[p] or 30.0 for p in group]
        assert sum(seconds) >= 240.0 and sum(seconds) - seconds[-1] < 240.0, group
    # two workers, no file longer than a task: at least four tasks each
    short = [p for p in paths if p.startswith("s")]
    many = plan_tasks(short, durations, batch_size=16, workers=2)
    assert len(many) >= 8 and all(sum(durations[p] for p in g[:-1]) < sum(durations[p] for p in short) / 8 for g in many)
    # a file count, when given, is the task size
    assert [len(g) for g in plan_tasks(paths, durations, 4, 1, files_per_task=16)] == [16, 16, 11]


def test_durations_for_planning(tmp_path, corpus):
    """The tasks' durations: a PCM WAV file's from its header, equal to its decoded length; a
    float WAV (which the header reader refuses) through FFmpeg; a file that is no audio, 0."""
    import struct

    import numpy as np

    from whisper_mlx.corpus import _duration

    _, paths, _, bad = corpus
    pcm = next(p for p in paths if p != bad)
    assert _duration(pcm) == pytest.approx(load_audio(pcm).size / 16000, abs=1e-3)
    samples = np.zeros(16000 * 3 // 2, np.float32)  # 1.5 s of 32-bit float samples, format tag 3
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + samples.nbytes, b"WAVE", b"fmt ", 16, 3, 1, 16000,
                         64000, 4, 32, b"data", samples.nbytes)
    (tmp_path / "float.wav").write_bytes(header + samples.tobytes())
    assert _duration(str(tmp_path / "float.wav")) == pytest.approx(1.5, abs=0.01)
    assert _duration(bad) == 0.0


def test_tasks_reach_gpu_actors_whole(tiny_en_fp32_dir, corpus, reference):
    """The run's pipeline with actors that ask for a GPU (ray_remote_args(gpu=True)), on a local
    cluster that declares one GPU (Ray counts it; the model computes on the CPU here): Ray Data
    takes it (it refuses GPU actors without a batch size) and each planned task comes back as
    one row per file, each equal to `transcribe`."""
    import ray

    from whisper_mlx.corpus import task_dataset
    from whisper_mlx.ray import ray_remote_args

    _, inputs, sources, bad = corpus
    groups = [[p for p in inputs if p in sources][:3], [bad, *[p for p in inputs if p in sources][3:5]]]
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"]}})
    try:
        ds = task_dataset(groups, dict(model=str(tiny_en_fp32_dir), device="cpu", **OPTIONS), 1,
                          ray_remote_args(gpu=True))
        rows = {row["path"]: row for row in ds.take_all()}
    finally:
        ray.shutdown()
    assert sorted(rows) == sorted(p for g in groups for p in g)
    assert rows[bad]["error"] == f"{bad}: not a recognized audio or video file (unknown format or corrupt header)"
    for path, row in rows.items():
        if path != bad:
            assert row["error"] is None
            assert_same(row, reference[sources[path]])
