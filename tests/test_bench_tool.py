"""tools/bench.py and zoo.bench: every installed system transcribes the same real speech with the
same real weights; the CI check passes or fails on same-run ratios; bad baselines are one clear
line. No timing is asserted: only that timings are measured and compared as the baseline says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import bench

ROOT = Path(__file__).resolve().parents[1]
PAIR = ["--family", "tiny.en", "--clip", "clip30", "--systems", "whisper_mlx", "faster-whisper",
        "--variants", "fp32", "--repeats", "1", "--quiet"]
KEY = "whisper_mlx:fp32/faster-whisper:fp32"


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def clip30() -> bench.BenchClip:
    return bench.prepare_clip("clip30")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One real run of every installed system (fp32) on tiny.en and the 30 s clip, plus the
    baseline it saved."""
    out = tmp_path_factory.mktemp("bench")
    proc = _tool("--family", "tiny.en", "--clip", "clip30", "--variants", "fp32", "--repeats", "1",
                 "--quiet", "--json", "--save-baseline", str(out / "baseline.json"),
                 "--out", str(out / "table.md"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


# ---- the measurement ---------------------------------------------------------------------------


def test_clip30_is_the_first_30_seconds(clip30):
    full = bench.prepare_clip("bench_long")
    assert abs(clip30.seconds - 30.0) < 0.01
    assert clip30.trimmed and not full.trimmed
    assert full.seconds > 180.0  # the 3+ minute clip


def test_every_installed_system_transcribes_the_same_speech(measured):
    result, _ = measured
    rows = {r["entry"]: r for r in result["rows"]}
    assert set(rows) == {f"{s}:fp32" for s in bench.installed_systems()}
    assert {"whisper_mlx:fp32", "faster-whisper:fp32"} <= set(rows)
    for key, row in rows.items():
        # a wrong weight layout (e.g. mlx-whisper's names) would give garbage, not a high WER
        assert row["wer"] <= 15.0, f"{key}: WER {row['wer']:.1f}% ({row['text']!r})"
        assert row["transcribe_s"] > 0 and row["load_s"] > 0 and row["import_s"] > 0
        assert 50 < row["peak_mb"] < 8000
        assert row["rtf"] == pytest.approx(row["transcribe_s"] / row["audio_s"])
    assert rows["whisper_mlx:fp32"]["vs_whisper_mlx"] == pytest.approx(1.0)
    fw = rows["faster-whisper:fp32"]
    assert fw["vs_whisper_mlx"] == pytest.approx(fw["transcribe_s"] / rows["whisper_mlx:fp32"]["transcribe_s"])
    target = next(t for t in result["targets"] if t["ratio"] == KEY and t["metric"] == "time")
    assert target["ok"] == (target["value"] <= 1.0)


def test_table_and_saved_baseline(measured):
    result, out = measured
    table = (out / "table.md").read_text()
    assert table.startswith("Command: `tools/bench.py ")
    assert all(f"| {r['entry'].replace(':', ' ')} |" in table for r in result["rows"])
    baseline = bench.load_baseline(out / "baseline.json")
    assert (baseline.family, baseline.clip, baseline.tolerance) == ("tiny.en", "clip30", 0.25)
    rows = {r["entry"]: r for r in result["rows"]}
    expected = rows["whisper_mlx:fp32"]["transcribe_s"] / rows["faster-whisper:fp32"]["transcribe_s"]
    assert baseline.ratios[KEY] == pytest.approx(expected, abs=1e-3)


# ---- the CI check, through the real command --------------------------------------------------


def _baseline(path: Path, ratio: float, tolerance: float, **extra) -> Path:
    path.write_text(json.dumps({"family": "tiny.en", "clip": "clip30", "repeats": 1, "tolerance": tolerance,
                                "ratios": {KEY: ratio}, **extra}))
    return path


def test_check_fails_when_a_ratio_exceeds_the_baseline(tmp_path):
    # no build makes whisper_mlx a thousand times faster than faster-whisper on the same run
    proc = _tool("--check", str(_baseline(tmp_path / "b.json", 0.001, 0.25)), "--quiet")
    assert proc.returncode == 1, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("FAIL: "))
    assert "speed regression" in line and KEY in line and "0.001 x (1 + 0.25) = 0.001" in line


def test_check_passes_within_tolerance_and_fails_on_wer(tmp_path):
    proc = _tool("--check", str(_baseline(tmp_path / "b.json", 1.0, 1000.0)), "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "bench check passed" in proc.stderr
    result = json.loads(proc.stdout)
    assert {r["entry"] for r in result["rows"]} == {"whisper_mlx:fp32", "faster-whisper:fp32"}
    assert result["config"]["repeats"] == 1
    # the same check with an impossible accuracy bar fails: fast but wrong is not a pass
    failures = bench.check(result, bench.Baseline(tolerance=1000.0, ratios={KEY: 1.0}, max_wer=0.0))
    wer = next(r["wer"] for r in result["rows"] if r["entry"] == "whisper_mlx:fp32")
    assert (wer > 0) == any(f.startswith("accuracy: whisper_mlx:fp32") for f in failures)


@pytest.mark.parametrize(
    "content, field",
    [
        ('{"tolerance": 0.25, "ratios": {"%s": 1.0}, "speed": 2}' % KEY, "speed"),
        ('{"ratios": {"%s": 1.0}}' % KEY, "tolerance"),
        ('{"tolerance": 0.25, "ratios": {"whisper_mlx:fp32": 1.0}}', "ratios"),
        ('{"tolerance": 0.25, "ratios": {"whisper_mlx:2bit/faster-whisper:fp32": 1.0}}', "ratios"),
        ('{"tolerance": 0.25, "ratios": {"%s": 1.0}, "clip": "clip99"}' % KEY, "clip"),
        ('{"tolerance": -1, "ratios": {"%s": 1.0}}' % KEY, "tolerance"),
    ],
)
def test_bad_baseline_is_one_line_naming_file_and_field(tmp_path, content, field):
    path = tmp_path / "baseline.json"
    path.write_text(content)
    proc = _tool("--check", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and f"field {field}" in lines[0], proc.stderr
    assert path.read_text() == content  # nothing written over the input


def test_unreadable_baseline(tmp_path):
    (tmp_path / "b.json").write_text("{not json")
    for path in (tmp_path / "b.json", tmp_path / "missing.json"):
        proc = _tool("--check", str(path))
        assert proc.returncode == 2 and str(path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- scoring -----------------------------------------------------------------------------------


def test_trimmed_clip_wer_scores_the_spoken_prefix(clip30):
    words = clip30.text.split()
    assert bench.clip_wer(clip30, " ".join(words[:60])) == 0.0
    assert bench.clip_wer(clip30, " ".join(words[:30] + ["banana"] + words[31:60])) == pytest.approx(100 / 60)
    assert bench.clip_wer(clip30, " ".join(words[:60] + ["banana"])) == pytest.approx(100 / 60)
    assert bench.clip_wer(clip30, "") == 100.0
    whole = bench.BenchClip("x", clip30.path, clip30.text, 40.0, trimmed=False)
    assert bench.clip_wer(whole, " ".join(words[:60])) == pytest.approx(100 * (len(words) - 60) / len(words))
