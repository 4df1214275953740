"""Build: gates, model card, checksums; incremental, atomic under SIGKILL, offline reporting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import whisper_mlx
from zoo import build
from zoo.gates import corpus_wer, normalize, wer, word_errors
from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WHISPER_MLX_TEST_CACHE", ROOT / ".cache" / "tests"))
GATE_CLIPS = ["en_weather", "ho_park"]  # two short clips keep the suite fast


def test_wer_normalizes_and_counts_word_edits():
    assert normalize("Hello, World! It's 7:30.") == ["hello", "world", "it's", "7", "30"]
    assert wer("The cat sat on the mat.", "the cat sat on the mat") == 0
    assert word_errors("the cat sat on the mat", "the cat sat on mat") == (1, 6)  # deletion
    assert word_errors("the cat sat", "the black cat sat") == (1, 3)  # insertion
    assert word_errors("the cat sat", "a dog sat") == (2, 3)  # substitutions
    assert wer("one two", "") == 100
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "e g")]) == pytest.approx(100 / 6)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A manifests dir with a trimmed tiny.en (fp32 + 4bit, two gate clips) and caches for clips/refs."""
    root = tmp_path_factory.mktemp("zoo")
    manifests = root / "manifests"
    manifests.mkdir()
    shutil.copy(MANIFESTS_DIR / DEFAULTS_FILE, manifests / DEFAULTS_FILE)
    data = yaml.safe_load((MANIFESTS_DIR / "tiny.en.yaml").read_text())
    data["gates"] = {"clips": GATE_CLIPS}
    data["variants"].update({"fp16": None, "8bit": None})  # fp32 and 4bit only
    (manifests / "tiny.en.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    small = yaml.safe_load((MANIFESTS_DIR / "small.en.yaml").read_text())
    small["sources"][0]["url"] = "http://127.0.0.1:9/small.en.pt"  # never download in tests
    (manifests / "small.en.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    environ = dict(os.environ)
    environ["WHISPER_MLX_CACHE"] = str(CACHE / "zoo")  # reference transcripts, reused across runs
    environ["WHISPER_MLX_CHECKPOINTS"] = str(root / "no-downloads")
    return {"manifests": manifests, "clips": CACHE / "clips", "out": root / "out", "environ": environ}


def _run(env, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tools.build", "--manifests", str(env["manifests"]),
           "--clips-dir", str(env["clips"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env["environ"], cwd=ROOT)


@pytest.fixture(scope="module")
def built(env):
    r = _run(env, "tiny.en-fp32", "tiny.en-4bit", "--out", str(env["out"]))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_build_writes_complete_gated_variants(env, built):
    out = env["out"]
    assert sorted(p.name for p in out.iterdir()) == ["tiny.en-4bit", "tiny.en-fp32"]  # no temp dirs left
    lines = built.stdout.splitlines()
    assert lines[0].split() == ["variant", "status", "gates", "detail"]
    assert [line.split()[:3] for line in lines[1:]] == [["tiny.en-fp32", "built", "pass"], ["tiny.en-4bit", "built", "pass"]]
    for name in ("tiny.en-fp32", "tiny.en-4bit"):
        d = out / name
        assert sorted(p.name for p in d.iterdir()) == sorted(build.BUILT_FILES + ("checksums.json",))
        assert build.is_built(d)
        checksums = json.loads((d / "checksums.json").read_text())
        assert checksums["inputs"]["converter_version"] == json.loads((d / "config.json").read_text())["converter_version"]
        assert checksums["provenance"]["kind"] == "ctranslate2"
        assert whisper_mlx.load_model(str(d)).dims.n_text_layer == 4

    fp32 = json.loads((out / "tiny.en-fp32" / "eval.json").read_text())
    assert fp32["passed"] and fp32["metrics"]["identical_clips"] == fp32["metrics"]["clips"] == 2
    assert fp32["metrics"]["wer"] == fp32["metrics"]["reference_wer"] == fp32["metrics"]["fp32_wer"]
    assert [c["id"] for c in fp32["clips"]] == GATE_CLIPS
    q4 = json.loads((out / "tiny.en-4bit" / "eval.json").read_text())
    assert {c["name"] for c in q4["checks"]} == {"max_wer_delta", "max_rtf_ratio", "max_memory_ratio"}
    assert q4["metrics"]["fp32_wer"] == fp32["metrics"]["wer"]
    assert q4["metrics"]["wer_delta"] <= 3.0


def test_model_card(env, built):
    card = (env["out"] / "tiny.en-4bit" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "mlx" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "automatic-speech-recognition"
    assert meta["base_model"] == "openai/whisper-tiny.en" and meta["language"] == ["en"]
    assert "4bit" in meta["tags"]
    evaluation = json.loads((env["out"] / "tiny.en-4bit" / "eval.json").read_text())
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "whisper-mlx/whisper-tiny.en-4bit"
    assert result["metrics"][0]["value"] == evaluation["metrics"]["wer"]
    assert 'path_or_hf_repo="whisper-mlx/whisper-tiny.en-4bit"' in body and "word_timestamps=True" in body
    assert "| max_wer_delta | 3.0 |" in body
    assert "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a" in (
        env["out"] / "tiny.en-4bit" / "checksums.json").read_text()


def test_stale_temporary_dirs_are_cleaned(env, built):
    """Issue 17 point 10: a killed build leaves `.NAME.tmp-*`, `.NAME.old-*` or (measuring an unbuilt
    fp32 sibling) `.NAME.scratch-*` directories; the next build of the family removes them all, even
    when every variant is up to date. Another family's and foreign entries are left alone."""
    out = env["out"]
    stale = [out / ".tiny.en-fp32.scratch-k1ll3d", out / ".tiny.en-4bit.tmp-x", out / ".tiny.en-4bit.old-y",
             out / ".tiny.en-fp32.tmp-z"]
    kept = [out / ".small.en-fp32.scratch-other-family", out / "notes"]
    for d in stale + kept:
        d.mkdir()
        (d / "weights.safetensors").write_bytes(b"\0" * 1024)
    try:
        r = _run(env, "tiny.en-4bit", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1].split()[:2] == ["tiny.en-4bit", "up-to-date"]
        assert [d for d in stale if d.exists()] == []
        assert all(d.is_dir() for d in kept)
    finally:
        for d in stale + kept:
            shutil.rmtree(d, ignore_errors=True)


def test_incremental_rebuild(env, built):
    out = env["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = _run(env, "tiny.en-fp32", "tiny.en-4bit", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines()[1:]] == ["up-to-date", "up-to-date"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps

    # a manifest change to one variant rebuilds only that variant; an impossible gate fails the build
    path = env["manifests"] / "tiny.en.yaml"
    data = yaml.safe_load(path.read_text())
    data["variants"]["4bit"]["gates"] = {"max_rtf_ratio": 1e-6}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    r = _run(env, "tiny.en-fp32", "tiny.en-4bit", "--out", str(out))
    assert r.returncode == 1
    assert [line.split()[:3] for line in r.stdout.splitlines()[1:]] == [
        ["tiny.en-fp32", "up-to-date", "pass"], ["tiny.en-4bit", "built", "FAIL"]]
    q4 = json.loads((out / "tiny.en-4bit" / "eval.json").read_text())
    assert not q4["passed"] and [c["name"] for c in q4["checks"] if not c["passed"]] == ["max_rtf_ratio"]
    assert "Overall: **FAILED**" in (out / "tiny.en-4bit" / "README.md").read_text()
    assert all(p.stat().st_mtime_ns == t
               for p, t in stamps.items() if "tiny.en-fp32" in str(p))

    # a directory without eval.json, or with a file the format does not have, is not built (publish
    # refuses it in the same words): it is rebuilt, and the rebuild leaves exactly the format's files
    (out / "tiny.en-fp32" / "notes.txt").write_text("left over")
    assert "notes.txt: not a file of the build" in build.why_not_built(out / "tiny.en-fp32")
    (out / "tiny.en-fp32" / "eval.json").unlink()
    assert not build.is_built(out / "tiny.en-fp32")
    r = _run(env, "tiny.en-fp32", "--out", str(out))
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:2] == ["tiny.en-fp32", "built"]
    assert build.is_built(out / "tiny.en-fp32")
    assert sorted(p.name for p in (out / "tiny.en-fp32").iterdir()) == sorted(build.builddir.FILES)


def test_interrupted_build_leaves_nothing_complete_looking(env, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.build", "--manifests", str(env["manifests"]),
           "--clips-dir", str(env["clips"]), "tiny.en-fp32", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env["environ"], cwd=ROOT)
    try:
        for line in proc.stderr:
            if line.startswith("tiny.en-fp32: gating"):  # weights written, gates running
                break
        temp = Path(line.split("gating ", 1)[1].strip())
        assert temp.parent == out and (temp / "weights.safetensors").is_file()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "tiny.en-fp32").exists()
    assert not build.is_built(out / "tiny.en-fp32")

    r = subprocess.run(cmd, capture_output=True, text=True, env=env["environ"], cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert build.is_built(out / "tiny.en-fp32")
    assert [p.name for p in out.iterdir()] == ["tiny.en-fp32"]  # the stale temp dir is gone


def test_offline_only_reports_network_sources(env, tmp_path):
    r = _run(env, "--offline-only", "small.en-fp16", "small.en-4bit", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["small.en-fp16", "offline-unavailable"],
                                                 ["small.en-4bit", "offline-unavailable"]]
    assert "not buildable offline: every source needs the network (http://127.0.0.1:9/small.en.pt)" in rows[0]
    assert not any((tmp_path / "o").iterdir())
    # --family: every variant of one family (what a release job builds)
    r = _run(env, "--offline-only", "--family", "small.en", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert [row.split()[:2] for row in r.stdout.splitlines()[1:]] == [
        [f"small.en-{suffix}", "offline-unavailable"] for suffix in ("fp16", "fp32", "8bit", "4bit")]
    # without --offline-only the unreachable source is an error, and the build fails
    r = _run(env, "small.en-fp16", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "small.en-fp16  error" in r.stdout and "cannot download" in r.stdout


def test_list_and_bad_names(env):
    r = subprocess.run([sys.executable, "-m", "tools.build", "--list"],
                       capture_output=True, text=True, cwd=ROOT)
    names = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(names) == 64 and "large-v3-turbo-4bit" in names and "distil-small.en-4bit" in names
    assert "tiny.en-fp32\twhisper-mlx/whisper-tiny.en-fp32\tfloat32\t-\topenai+ctranslate2" in r.stdout
    assert "small.en-4bit\twhisper-mlx/whisper-small.en-4bit\tfloat16\t4bit/g64\topenai" in r.stdout
    r = _run(env, "tiny.en-3bit", "--out", "unused")
    assert r.returncode == 2 and "no variant named tiny.en-3bit" in r.stderr


def test_multilingual_card_languages_survive_yaml():
    """Every language code reads back as a string (unquoted `no` would be YAML's false)."""
    from zoo.card import languages, render_card
    from zoo.manifest import find_variant

    variant = find_variant("base-8bit")
    metrics = {k: 1.0 for k in ("wer", "fp32_wer", "reference_wer", "rtf", "rtf_ratio", "peak_memory_mb",
                                "memory_ratio")}
    metrics.update(clips=18, identical_clips=18)
    evaluation = {"passed": True, "checks": [], "metrics": metrics}
    provenance = {"kind": "ctranslate2", "location": ["a", "b"]}
    card = render_card(variant, evaluation, provenance, "0" * 64)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["language"] == languages(variant) and len(meta["language"]) == 99 and "no" in meta["language"]
    assert "`ctranslate2`: a + b" in card
