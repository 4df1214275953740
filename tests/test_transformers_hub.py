"""A transformers checkpoint on the Hub built into the zoo (issue 18, points 1-4): a random
Distil-shaped WhisperForConditionalGeneration (2 decoder layers, 128 mel bins, tiny width) saved
with save_pretrained and served by the suite's Hub-compatible server; python -m tools.build reads
it through the real huggingface_hub client (HF_ENDPOINT, a private HF_HOME) from a manifest that
names the repo and its commit, gates it against transformers (logits within 1e-4, greedy tokens
identical) and writes the card; the same repo unpinned is recorded by the first build and verified
by later ones; python -m tools.convert takes the repo id; bad input is one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import whisper_mlx
from hub_server import PYTHON, TEST_CACHE, HubServer, client_env, run
from test_transformers_source import CLIP, HEADS, _hf_logits, hf  # noqa: F401  (hf: the fixture)
from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR

REPO = "distil-test/tiny-distil"
FAMILY = "tiny-distil"
SUFFIXES = ("fp16", "fp32", "8bit", "4bit")


@pytest.fixture(scope="module")
def hub(hf):
    """The server, holding REPO (the random checkpoint, in three commits), a repo whose config
    is not Whisper's and one whose checkpoint lacks a tensor."""
    import mlx.core as mx

    _, d = hf
    with HubServer(orgs=("whisper-mlx", "distil-test")) as server:
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            server.put_file(REPO, name, (d / name).read_bytes())
        config = json.loads((d / "config.json").read_text())
        server.put_file("distil-test/not-whisper", "config.json", json.dumps({**config, "model_type": "bert"}).encode())
        server.put_file("distil-test/not-whisper", "model.safetensors", (d / "model.safetensors").read_bytes())
        weights = dict(mx.load(str(d / "model.safetensors")))
        del weights["model.encoder.layers.1.self_attn.q_proj.bias"]
        lacking = d.parent / "lacking.safetensors"
        mx.save_safetensors(str(lacking), weights)
        server.put_file("distil-test/lacking", "config.json", (d / "config.json").read_bytes())
        server.put_file("distil-test/lacking", "model.safetensors", lacking.read_bytes())
        yield server


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifests(root: Path, source: dict, variants: dict | None = None, logits: bool = True) -> Path:
    """The shared defaults without timing gates (a random model's speed says nothing) and with a
    lenient WER gate (its transcripts are noise), and the test family reading `source`."""
    root.mkdir(parents=True, exist_ok=True)
    defaults = yaml.safe_load((MANIFESTS_DIR / DEFAULTS_FILE).read_text())
    defaults["gates"]["thresholds"] = {}
    for key in ("8bit", "4bit"):
        defaults["variants"][key]["gates"] = {"max_wer_delta": 1000.0}
    (root / DEFAULTS_FILE).write_text(yaml.safe_dump(defaults, sort_keys=False))
    family = {
        "family": FAMILY, "language": "en", "base_model": REPO,
        "dims": {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2,
                 "n_vocab": 51866, "n_text_ctx": 64, "n_text_state": 64, "n_text_head": 4, "n_text_layer": 2},
        "sources": [{"kind": "transformers", **source}],
        "gates": {"clips": [CLIP], "reference": "transformers"},
        "variants": {"fp32": {"gates": {"max_logit_diff": 1.0e-4} if logits else {}}, **(variants or {})},
    }
    (root / f"{FAMILY}.yaml").write_text(yaml.safe_dump(family, sort_keys=False))
    return root


def _build(hub: HubServer, home: Path, manifests: Path, out: Path, *args: str, cache: Path | None = None, **env: str):
    environ = client_env(hub, home / "hf", WHISPER_MLX_CACHE=str(cache or home / "cache"), **env)
    return run([PYTHON, "-m", "tools.build", "--family", FAMILY, "--out", str(out), "--manifests", str(manifests),
                "--clips-dir", str(TEST_CACHE / "clips"), *args], environ)


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split(None, 3)[1:] for line in stdout.splitlines()[1:]}


@pytest.fixture(scope="module")
def pinned(hub, hf, tmp_path_factory):
    """The four variants built from the repo pinned at its commit, every file's digest given."""
    _, d = hf
    home = tmp_path_factory.mktemp("pinned")
    revision = hub.head(REPO).sha
    digests = {n: _sha256(d / n) for n in ("config.json", "generation_config.json", "model.safetensors")}
    manifests = _manifests(home / "m", {"repo": REPO, "revision": revision, "sha256": digests})
    done = _build(hub, home, manifests, home / "out")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {"home": home, "out": home / "out", "revision": revision, "digests": digests, "manifests": manifests,
            "stdout": done.stdout}


def test_pinned_repo_builds_and_gates_against_transformers(pinned, hub, hf):
    out, revision = pinned["out"], pinned["revision"]
    rows = _rows(pinned["stdout"])
    assert [(n, r[:2]) for n, r in rows.items()] == [(f"{FAMILY}-{s}", ["built", "pass"]) for s in SUFFIXES]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{FAMILY}-{s}" for s in SUFFIXES)  # no temp dirs
    # every file came through the Hub client at the pinned commit
    assert hub.requests(contains=f"/{REPO}/resolve/{revision}/model.safetensors"), hub.requests()

    fp32 = json.loads((out / f"{FAMILY}-fp32" / "eval.json").read_text())
    assert fp32["reference"]["engine"] == "transformers" and fp32["reference"]["version"]
    checks = {c["name"]: c for c in fp32["checks"]}
    assert set(checks) == {"identical_to_reference", "max_logit_diff"} and all(c["passed"] for c in checks.values())
    assert 0 < fp32["metrics"]["max_logit_diff"] <= 1e-4
    [clip] = fp32["clips"]
    assert clip["identical"] and clip["first_window"]["text"] == clip["reference"]
    assert fp32["alignment_heads"] == {"heads": HEADS, "from": "the checkpoint's generation_config.json"}

    provenance = json.loads((out / f"{FAMILY}-fp32" / "checksums.json").read_text())["provenance"]
    assert provenance["repo"] == REPO and provenance["revision"] == revision and provenance["pinned"] == "manifest"
    assert provenance["sha256"] == pinned["digests"]
    card = (out / f"{FAMILY}-4bit" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == REPO and meta["language"] == ["en"]
    assert f"| source revision | `{revision}` (pinned by the manifest, every file verified against its sha256) |" in card
    assert f"| model.safetensors | `{pinned['digests']['model.safetensors']}` |" in card
    assert f"| alignment heads | {HEADS}, from the checkpoint's generation_config.json |" in card
    assert "against [transformers]" in card
    card = (out / f"{FAMILY}-fp32" / "README.md").read_text()
    assert "| first windows decoded identically to transformers | 1 / 1 |" in card
    assert f"| max_logit_diff | 0.0001 | {fp32['metrics']['max_logit_diff']} | pass |" in card


def test_built_variants_compute_what_transformers_computes(pinned, hf):
    """Independently of the gates: the built fp32 directory's logits are transformers' to 1e-4
    (the random model in this process, not one rebuilt from the converted weights), and the
    quantized variants load and transcribe."""
    from zoo.gates import first_window
    from zoo.speech import make_clips

    model_hf, _ = hf
    clip = make_clips(TEST_CACHE / "clips", [CLIP])[CLIP]
    mel = first_window(clip.path, 128)
    model = whisper_mlx.load_model(str(pinned["out"] / f"{FAMILY}-fp32"))
    tokens = [50258, 50259, 50360, 50364, 1012, 291, 257]
    import mlx.core as mx

    ours = np.array(model.logits(mx.array([tokens]), model.embed_audio(mel[None])))[0]
    assert np.abs(ours - _hf_logits(model_hf, np.array(mel), tokens)).max() < 1e-4
    for suffix in ("fp16", "8bit", "4bit"):
        d = pinned["out"] / f"{FAMILY}-{suffix}"
        config = json.loads((d / "config.json").read_text())
        assert config["alignment_heads"] == HEADS and config["n_text_layer"] == 2
        result = whisper_mlx.transcribe(str(clip.path), path_or_hf_repo=str(d), temperature=0.0, language="en")
        assert isinstance(result["text"], str) and result["segments"] is not None
        assert json.loads((d / "eval.json").read_text())["passed"]


def test_offline_rebuild_reads_the_cache(pinned, hub):
    """HF_HUB_OFFLINE=1: the cached files make the family buildable offline; nothing changed, so
    every variant is up to date, and the server saw no request."""
    hub.clear_log()
    done = _build(hub, pinned["home"], pinned["manifests"], pinned["out"], "--offline-only", HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in _rows(done.stdout).values()] == ["up-to-date"] * 4
    assert hub.requests() == []


def test_unpinned_repo_is_recorded_then_verified(hub, pinned, tmp_path):
    """`revision: unpinned`, `sha256: unpinned`: the first build records the commit and digests it
    read (checksums.json, the card); once the repo's main moves, later builds still read the
    recorded commit and verify its digests; a record that no longer matches is refused. (The
    transformers reference of these files is the pinned build's, from its cache; no logit gate.)"""
    manifests = _manifests(tmp_path / "m", {"repo": REPO, "revision": "unpinned", "sha256": "unpinned"},
                           {"fp16": None, "8bit": None}, logits=False)
    out = tmp_path / "out"
    first = hub.head(REPO).sha
    assert first == pinned["revision"]

    def build():
        return _build(hub, tmp_path, manifests, out, cache=pinned["home"] / "cache")

    done = build()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "read distil-test/tiny-distil at " + first + " unpinned" in done.stderr
    record = json.loads((out / f"{FAMILY}-fp32" / "checksums.json").read_text())["provenance"]
    assert (record["revision"], record["pinned"]) == (first, "unpinned")
    assert sorted(record["sha256"]) == ["config.json", "generation_config.json", "model.safetensors"]
    card = (out / f"{FAMILY}-fp32" / "README.md").read_text()
    assert f"`{first}` (unpinned in the manifest: what this build downloaded, recorded here and in checksums.json)" in card

    hub.put_file(REPO, "README.md", b"# moved on\n")  # main moves on
    assert hub.head(REPO).sha != first
    shutil.rmtree(out / f"{FAMILY}-4bit")
    done = build()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert {n: r[0] for n, r in _rows(done.stdout).items()} == {f"{FAMILY}-fp32": "up-to-date", f"{FAMILY}-4bit": "built"}
    rebuilt = json.loads((out / f"{FAMILY}-4bit" / "checksums.json").read_text())["provenance"]
    assert rebuilt["revision"] == first and rebuilt["sha256"] == record["sha256"]
    assert rebuilt["pinned"] == f"recorded by an earlier build ({FAMILY}-fp32/checksums.json)"
    card = (out / f"{FAMILY}-4bit" / "README.md").read_text()
    assert (f"`{first}` (unpinned in the manifest; recorded by an earlier build ({FAMILY}-fp32/checksums.json), "
            "every file verified against it)") in card

    # the record says another digest than the commit's file has: refused, naming repo and file
    path = out / f"{FAMILY}-fp32" / "checksums.json"
    data = json.loads(path.read_text())
    data["provenance"]["sha256"]["model.safetensors"] = "0" * 64
    path.write_text(json.dumps(data))
    before = sorted(p.name for p in out.iterdir())
    done = build()
    assert done.returncode == 1
    for row in _rows(done.stdout).values():
        assert row[0] == "error" and re.search(
            rf"Hub repo {REPO}@{first}: model\.safetensors: sha256 mismatch \(expected 0{{64}}", row[-1]), row
    assert sorted(p.name for p in out.iterdir()) == before  # nothing half-written


def test_wrong_digest_fails_the_build_and_writes_nothing(hub, pinned, tmp_path):
    digests = {**pinned["digests"], "config.json": "f" * 64}
    manifests = _manifests(tmp_path / "m", {"repo": REPO, "revision": pinned["revision"], "sha256": digests})
    done = _build(hub, tmp_path, manifests, tmp_path / "out")
    assert done.returncode == 1
    for row in _rows(done.stdout).values():
        assert row[0] == "error" and f"Hub repo {REPO}@{pinned['revision']}: config.json: sha256 mismatch" in row[-1]
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_revision_is_one_line_before_anything(hub, tmp_path):
    hub.clear_log()
    manifests = _manifests(tmp_path / "m", {"repo": REPO, "sha256": "unpinned"})
    done = _build(hub, tmp_path, manifests, tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == (f"error: {manifests / (FAMILY + '.yaml')}: sources.0.transformers: revision: missing for "
                        f"Hub repo {REPO}: pin a commit sha (40 hex digits), or write 'unpinned' where it cannot be looked up")
    assert not (tmp_path / "out").exists() and hub.requests() == []


def _convert(hub, home: Path, *args: str, **env: str):
    return run([PYTHON, "-m", "tools.convert", *args], client_env(hub, home, **env))


def test_convert_tool_takes_a_hub_repo_id(hub, pinned, hf, tmp_path):
    """Issue 18 point 4: --torch-name-or-path ORG/NAME (--revision) as mlx-examples' converter
    takes it, through the Hub client; the output loads, with the checkpoint's heads."""
    done = _convert(hub, tmp_path / "hf", "--torch-name-or-path", REPO, "--revision", pinned["revision"],
                    "--mlx-path", str(tmp_path / "q4"), "-q", "--q-bits", "4")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4} and config["alignment_heads"] == HEADS
    assert config["source"] == {"kind": "transformers", "location": REPO, "revision": pinned["revision"],
                                "alignment_heads_from": "the checkpoint's generation_config.json"}
    assert whisper_mlx.load_model(str(tmp_path / "q4")).dims.n_mels == 128
    # main, cached: offline from the same HF_HOME; a fresh HF_HOME offline is one line
    done = _convert(hub, tmp_path / "hf", "--torch-name-or-path", REPO, "--revision", pinned["revision"],
                    "--mlx-path", str(tmp_path / "again"), HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args, says", [
    (("--torch-name-or-path", "distil-test/not-whisper"),
     r"Hub repo distil-test/not-whisper@[0-9a-f]{40}: config\.json: model_type is 'bert', not 'whisper'"),
    (("--torch-name-or-path", "distil-test/lacking"),
     r"Hub repo distil-test/lacking@[0-9a-f]{40}: model\.safetensors: missing tensor "
     r"model\.encoder\.layers\.1\.self_attn\.q_proj\.bias$"),
    (("--torch-name-or-path", REPO, "--sha256", "model.safetensors=" + "0" * 64),
     rf"Hub repo {REPO}@[0-9a-f]{{40}}: model\.safetensors: sha256 mismatch \(expected 0{{64}}, got [0-9a-f]{{64}}\)$"),
    (("--torch-name-or-path", REPO, "--revision", "a" * 40),
     rf"Hub repo {REPO}@a{{40}}: no such revision on http://127\.0\.0\.1:\d+$"),
    (("--torch-name-or-path", "distil-test/nothing-here"),
     r"Hub repo distil-test/nothing-here@main: no such repo on http://127\.0\.0\.1:\d+"),
    (("--torch-name-or-path", "tiny.en", "--revision", "main"),
     r"--revision: for a transformers checkpoint \(a directory or a Hub repo id\), not 'tiny\.en'"),
])
def test_convert_tool_bad_input_is_one_line_and_writes_nothing(hub, tmp_path, args, says):
    done = _convert(hub, tmp_path / "hf", *args, "--mlx-path", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.search(says, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name != "hf"] == []


def test_offline_without_the_cache_is_one_line(hub, pinned, tmp_path):
    done = _convert(hub, tmp_path / "fresh", "--torch-name-or-path", REPO, "--revision", pinned["revision"],
                    "--mlx-path", str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.search(rf"Hub repo {REPO}@{pinned['revision']}: config\.json: not in the cache \(.*\) and HF_HUB_OFFLINE "
                     r"is set$", lines[0]), lines[0]
    assert not (tmp_path / "out").exists()
