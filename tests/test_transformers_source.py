"""Transformers checkpoints into the zoo (issue 18): small random WhisperForConditionalGeneration
models made with transformers here (2 decoder layers, tiny dims, as Distil-Whisper is shaped),
saved with save_pretrained, read from local directories and, through the real huggingface_hub
client, from the suite's Hub-compatible server; built by python -m tools.build from a manifest
naming the repo and its commit, and gated against transformers itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml

import whisper_mlx
from hub_server import PYTHON, TEST_CACHE, HubServer, client_env, run
from zoo.convert import convert
from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR
from zoo.sources import HEADS_DEFAULT, SourceError, sha256_file, settle_alignment_heads, transformers
from zoo.sources.checkpoint import default_alignment_heads

ROOT = Path(__file__).resolve().parents[1]
CLIP = "en_weather"
REPO = "distil-test/tiny-distil"
HEADS = [[1, 0], [1, 3]]  # what the random checkpoint's generation_config.json says


def make_model(n_vocab: int = 51866, n_mels: int = 128, seed: int = 0):
    """A random transformers Whisper with Distil-Whisper's shape (2 decoder layers) at tiny width,
    weights rounded to float16 values (as published distil checkpoints hold, and what the C
    decoder reads exactly), and a short text context (a random model rarely stops: 32 tokens)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=n_vocab, num_mel_bins=n_mels, d_model=64, encoder_layers=2,
                           encoder_attention_heads=4, decoder_layers=2, decoder_attention_heads=4,
                           encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=1500,
                           max_target_positions=64, init_std=0.05)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.generation_config.alignment_heads = HEADS
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(transformers model, its save_pretrained directory)."""
    model = make_model()
    d = tmp_path_factory.mktemp("hf") / "tiny-distil"
    model.save_pretrained(d)
    return model, d


@pytest.fixture(scope="module")
def clip():
    from zoo.speech import make_clips

    return make_clips(TEST_CACHE / "clips", [CLIP])[CLIP]


def _hf_logits(model, mel: np.ndarray, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_features=torch.from_numpy(np.ascontiguousarray(mel.T[None])),
                    decoder_input_ids=torch.tensor([tokens])).logits
    return out[0].numpy()


# ---- local directories: layouts, pickles, heads -------------------------------------------------

def test_sharded_and_pickled_checkpoints_convert_to_the_same_weights(hf, tmp_path):
    """Issue 18 point 1: a sharded safetensors checkpoint (index json) and a pytorch_model.bin-only
    one (read only against a pinned digest) give the converted weights the single file gives."""
    import torch

    model, single = hf
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 3
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(single / name, pickled / name)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # what older transformers wrote

    with pytest.raises(SourceError, match=r"pytorch_model\.bin: a pickle is unpickled only after its sha256 "
                                          r"matched a pinned digest; .* pin its sha256 [0-9a-f]{64}$"):
        transformers.load(pickled)
    digest = sha256_file(pickled / "pytorch_model.bin")
    outs = {}
    for name, ckpt in (("single", transformers.load(single)), ("sharded", transformers.load(sharded)),
                       ("pickled", transformers.load(pickled, {"pytorch_model.bin": digest}))):
        assert ckpt.dims["n_text_layer"] == 2 and ckpt.dims["n_mels"] == 128
        assert ckpt.alignment_heads == HEADS and ckpt.alignment_heads_from == "generation_config.json"
        outs[name] = mx.load(str(convert(ckpt, tmp_path / f"out-{name}", dtype="float32") / "weights.safetensors"))
    read = transformers.load(sharded).provenance["sha256"]
    assert "model.safetensors.index.json" in read and len(read) == 3 + len(list(sharded.glob("*.safetensors")))
    for name in ("sharded", "pickled"):
        assert sorted(outs[name]) == sorted(outs["single"])
        for key, value in outs["single"].items():
            assert mx.array_equal(outs[name][key], value).item(), (name, key)
    # the state dict itself: every transformers tensor, renamed (proj_out is the tied embedding)
    sd = {transformers.openai_to_hf(k): v for k, v in transformers.load(single).state_dict.items()}
    theirs = {k: v.numpy() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert sorted(sd) == sorted(theirs)
    assert all(np.array_equal(sd[k], theirs[k]) for k in theirs)


def test_bad_checkpoints_are_one_line_naming_the_file(hf, tmp_path):
    model, single = hf
    bad = tmp_path / "bad"
    shutil.copytree(single, bad)
    config = json.loads((single / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(SourceError, match=rf"^{bad}: config\.json: model_type is 'bert', not 'whisper'"):
        transformers.load(bad)
    (bad / "config.json").write_text(json.dumps({**config, "decoder_ffn_dim": 100}))
    with pytest.raises(SourceError, match=r"config\.json: decoder_ffn_dim is 100, not 4 x d_model \(256\)"):
        transformers.load(bad)
    (bad / "config.json").write_text(json.dumps(config))
    weights = dict(mx.load(str(single / "model.safetensors")))
    del weights["model.decoder.layers.1.fc2.weight"]
    mx.save_safetensors(str(bad / "model.safetensors"), weights)
    with pytest.raises(SourceError, match=r"model\.safetensors: missing tensor model\.decoder\.layers\.1\.fc2\.weight$"):
        transformers.load(bad)
    weights["model.decoder.layers.1.fc2.weight"] = mx.zeros((64, 256))
    weights["proj_out.weight"] = mx.zeros_like(weights["model.decoder.embed_tokens.weight"])
    mx.save_safetensors(str(bad / "model.safetensors"), weights)
    with pytest.raises(SourceError, match=r"proj_out\.weight differs from the token embedding"):
        transformers.load(bad)
    with pytest.raises(SourceError, match=r"model\.safetensors: sha256 mismatch \(expected 0{64}"):
        transformers.load(single, {"model.safetensors": "0" * 64})
    (bad / "model.safetensors").unlink()
    with pytest.raises(SourceError, match=rf"^{bad}: no weights \(model\.safetensors\.index\.json, model\.safetensors"):
        transformers.load(bad)


def test_alignment_heads_come_from_the_checkpoint_the_manifest_or_the_default(hf):
    """Issue 18 point 2: generation_config.json's heads when they fit the decoder; else the
    manifest's; else openai-whisper's default (every head of the decoder's second half)."""
    _, single = hf
    ckpt = transformers.load(single)
    settle_alignment_heads(ckpt, [[0, 1]])
    assert (ckpt.alignment_heads, ckpt.alignment_heads_from) == (HEADS, "the checkpoint's generation_config.json")
    ckpt = transformers.load(single)
    ckpt.alignment_heads = [[7, 0], [10, 3]]  # a teacher's heads copied into a 2-layer student's config
    settle_alignment_heads(ckpt, [[0, 1]])
    assert ckpt.alignment_heads == [[0, 1]] and ckpt.alignment_heads_from.startswith("the manifest; the checkpoint's "
                                                                                     "generation_config.json heads were ignored: [7, 0] is outside")
    ckpt.alignment_heads, ckpt.alignment_heads_from = None, None
    settle_alignment_heads(ckpt, None)
    assert ckpt.alignment_heads == default_alignment_heads(2, 4) == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert ckpt.alignment_heads_from == HEADS_DEFAULT and ckpt.provenance["alignment_heads_from"] == HEADS_DEFAULT


def test_english_only_vocabulary_gates_against_transformers(tmp_path, clip):
    """The transformers reference on the English-only vocabulary (distil-small.en, distil-medium.en:
    no language or task token in the prompt), in process: transformers' greedy generation on the
    first window and whisper_mlx's decode give the same tokens, and the logits along them agree
    to 1e-4 (the distil-small.en-fp32 gates)."""
    from zoo import gates
    from zoo.manifest import find_variant

    model = make_model(n_vocab=51864, n_mels=80, seed=1)
    model.save_pretrained(tmp_path / "hf")
    ckpt = transformers.load(tmp_path / "hf")
    settle_alignment_heads(ckpt, None)
    variant = find_variant("distil-small.en-fp32")
    clips = {CLIP: clip}
    reference = gates.reference_transcripts(ckpt, variant, clips, cache_dir=tmp_path / "refs")
    assert reference.engine == "transformers" and len(reference.tokens[CLIP]) > 0
    out = convert(ckpt, tmp_path / "fp32", dtype="float32")
    m = gates.measure(out, variant, clips, reference)
    assert m.window_tokens[CLIP] == reference.tokens[CLIP]
    assert 0 < m.logit_diffs[CLIP] < 1e-4
    report = gates.evaluate(variant, clips, reference, m, m)
    assert report["passed"] and {c["name"] for c in report["checks"]} >= {"identical_to_reference", "max_logit_diff"}


# ---- the runtime on a Distil-shaped model ---------------------------------------------------------

@pytest.fixture(scope="module")
def converted(hf, tmp_path_factory):
    ckpt = transformers.load(hf[1])
    settle_alignment_heads(ckpt, None)
    return convert(ckpt, tmp_path_factory.mktemp("mlx") / "fp32", dtype="float32")


def test_logits_match_transformers_on_every_backend(hf, converted, clip):
    """Issue 18 point 7: n_text_layer 2 and 128 mel bins run on the C kernels (the backend this
    machine picks) and the MLX graph, each within 1e-4 of transformers' logits, with the same
    greedy tokens."""
    from whisper_mlx.backends import backend_for, reason_for
    from whisper_mlx.decoding import decode
    from zoo.gates import first_window

    model_hf, _ = hf
    mel = first_window(clip.path, 128)
    prompt = [50258, 50259, 50360, 50364]  # sot, en, transcribe, notimestamps (large-v3's vocabulary)
    tokens = {}
    for backend in ("cpu", "mlx"):
        model = whisper_mlx.load_model(str(converted), backend=backend)
        assert type(backend_for(model)).__name__.lower().startswith(backend), reason_for(model)
        result = decode(model, mel, language="en", temperature=0.0, without_timestamps=True)
        tokens[backend] = result.tokens
        seq = prompt + result.tokens[:8]
        b = backend_for(model)
        session = b.session(b.encode(mel[None]), 1)
        session.prefill(np.array([prompt]), 0)
        ours = [session.pending_logits()[0]]
        for t in result.tokens[:8]:
            session.feed(np.array([t]))
            ours.append(session.pending_logits()[0])
        theirs = _hf_logits(model_hf, np.array(mel), seq)[len(prompt) - 1:]
        assert np.abs(np.stack(ours) - theirs).max() < 1e-4, backend
        assert np.abs(theirs).max() > 0.1  # logits of substance, not a degenerate model
    assert tokens["cpu"] == tokens["mlx"] and len(tokens["cpu"]) > 0


def test_cuda_backend_graphs_run_a_two_layer_128_mel_model(converted, clip, monkeypatch):
    """The CUDA backend's compiled graphs (fixed-size caches over n_text_layer layers, the
    pipelined greedy loop), built on MLX's CPU device as tests/test_cuda_backend.py builds them,
    decode the Distil-shaped model as the MLX graph does (its two CUDA kernels need a GPU)."""
    from whisper_mlx.backends import backend_for
    from whisper_mlx.backends.cuda import CudaBackend

    monkeypatch.setattr(CudaBackend, "supports", classmethod(lambda cls, model: None))
    cuda = whisper_mlx.load_model(str(converted), backend="cuda")
    reference = whisper_mlx.load_model(str(converted), backend="mlx")
    assert isinstance(backend_for(cuda), CudaBackend)
    for options in (dict(word_timestamps=True), dict(beam_size=5)):
        want = whisper_mlx.transcribe(str(clip.path), model=reference, language="en", temperature=0.0, **options)
        got = whisper_mlx.transcribe(str(clip.path), model=cuda, language="en", temperature=0.0, **options)
        assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in want["segments"]], options
        if "word_timestamps" in options:
            words = lambda r: [(w["word"], w["start"], w["end"]) for s in r["segments"] for w in s["words"]]  # noqa: E731
            assert [w[0] for w in words(got)] == [w[0] for w in words(want)]
            assert max(abs(a[k] - b[k]) for a, b in zip(words(got), words(want)) for k in (1, 2)) <= 0.02 + 1e-9


def test_weights_float16_cannot_hold_fall_back_to_the_mlx_graph_with_the_reason(hf, tmp_path):
    """A checkpoint whose fp32 weights are not float16 values: the C decoder cannot take it, the
    MLX graph runs it, and `whisper-mlx doctor --model` says so."""
    import subprocess
    import sys

    import torch

    model = make_model()
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.weight.add_(1e-6)
    model.save_pretrained(tmp_path / "hf")
    out = convert(transformers.load(tmp_path / "hf"), tmp_path / "fp32", dtype="float32")
    done = subprocess.run([sys.executable, "-m", "whisper_mlx.cli", "doctor", "--model", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["model"] == f"{out} (128 mel bins, 2 decoder layers, 2 encoder layers, width 64)"
    assert lines["model backend"].startswith("mlx (")
    assert "float16 does not hold the decoder's weights exactly" in lines["model backend"]
    done = subprocess.run([sys.executable, "-m", "whisper_mlx.cli", "doctor", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "nope" in done.stderr


def test_word_timestamps_of_a_two_layer_model(converted, clip):
    """The word-timing mechanism on a 2-layer decoder with the checkpoint's heads: every word timed,
    in order, inside its segment. (Whether the times are right needs real distil weights.)"""
    model = whisper_mlx.load_model(str(converted))
    assert model.alignment_heads == [tuple(h) for h in HEADS]
    result = whisper_mlx.transcribe(str(clip.path), model=model, path_or_hf_repo=str(converted), language="en",
                                    temperature=0.0, word_timestamps=True)
    words = [w for s in result["segments"] for w in s["words"]]
    assert words, result
    for s in result["segments"]:
        for w in s["words"]:
            assert s["start"] - 0.01 <= w["start"] <= w["end"] <= s["end"] + 0.01
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
