"""whisper_mlx on MLX's GPU backend (CUDA on Linux): the default device, dtypes kept on load, and
transcripts with word timestamps that match the CPU fp32 reference on the parity clips.
Run with `pytest -m gpu`; skipped where this MLX build has no GPU."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import whisper_mlx
from conftest import _model_dir
from whisper_mlx import backend
from zoo.gates import corpus_wer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mx.is_available(mx.gpu), reason="this MLX build has no GPU backend"),
]

OPTIONS = dict(temperature=0.0, word_timestamps=True)


@pytest.fixture(autouse=True)
def restore_device():
    before = mx.default_device()
    yield
    mx.set_default_device(before)


def _words(result: dict) -> list[dict]:
    return [w for s in result["segments"] for w in s["words"]]


def _run(device: str, model_dir, paths, dtype=None) -> list[dict]:
    backend.set_device(device)
    model = whisper_mlx.load_model(model_dir, dtype=dtype)
    return [whisper_mlx.transcribe(str(p), model=model, **OPTIONS) for p in paths]


@pytest.fixture(scope="module")
def parity_paths(clips):
    paths = [c.path for c in clips.values() if c.split == "parity"]
    assert len(paths) >= 8
    return paths


_CPU_REFERENCES: dict[str, list[dict]] = {}


def _cpu_fp32(family: str, paths) -> list[dict]:
    """CPU fp32 transcripts of `paths` (the reference the GPU must match), computed once."""
    if family not in _CPU_REFERENCES:
        before = mx.default_device()
        try:
            _CPU_REFERENCES[family] = _run("cpu", _model_dir(family, "float32"), paths)
        finally:
            mx.set_default_device(before)
    return _CPU_REFERENCES[family]


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def cpu_reference(request, parity_paths):
    return request.param, _cpu_fp32(request.param, parity_paths)


def test_gpu_is_the_default_and_reported():
    assert backend.set_device(None) == "gpu"
    assert not backend.on_cpu()
    info = backend.report()
    assert info["device"] == "gpu" and info["gpu_available"] is True


def test_gpu_keeps_stored_dtype_and_quantized_layers():
    fp16_dir, q4_dir = _model_dir("tiny.en", "float16"), _model_dir("tiny.en", "float16", q_bits=4)
    backend.set_device("gpu")
    gpu16 = whisper_mlx.load_model(fp16_dir)
    assert {p.dtype for _, p in tree_flatten(gpu16.parameters())} == {mx.float16}
    gpu_q = whisper_mlx.load_model(q4_dir)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in gpu_q.named_modules())
    backend.set_device("cpu")
    cpu_q = whisper_mlx.load_model(q4_dir)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in cpu_q.named_modules())
    assert {p.dtype for _, p in tree_flatten(cpu_q.parameters())} == {mx.float32}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_transcripts_match_cpu_fp32(cpu_reference, parity_paths, dtype):
    """Same text and words as the CPU fp32 reference; word times within 20 ms on average
    (fp16 rounds differently, so its words may shift by a frame)."""
    family, reference = cpu_reference
    ours = _run("gpu", _model_dir(family, dtype), parity_paths)
    diffs = []
    for path, ref, got in zip(parity_paths, reference, ours):
        assert got["text"] == ref["text"], f"{family} {dtype} {path.name}"
        ref_words, got_words = _words(ref), _words(got)
        assert [w["word"] for w in got_words] == [w["word"] for w in ref_words], path.name
        diffs += [abs(a[k] - b[k]) for a, b in zip(ref_words, got_words) for k in ("start", "end")]
        assert all(0.0 <= w["probability"] <= 1.0 for w in got_words)
    assert np.mean(diffs) <= 0.020, f"{family} {dtype}: word times differ by {np.mean(diffs):.3f}s on average"


@pytest.mark.parametrize("q_bits", [8, 4])
def test_quantized_on_gpu_close_to_reference(clips, parity_paths, q_bits):
    """Quantized layers computed on the GPU: near the CPU fp32 transcript of the same model,
    and near the text the clips were synthesized from."""
    truth = {c.path: c.text for c in clips.values() if c.split == "parity"}
    reference = _cpu_fp32("tiny.en", parity_paths)
    ours = _run("gpu", _model_dir("tiny.en", "float16", q_bits=q_bits), parity_paths)
    to_ref = corpus_wer([(r["text"], o["text"]) for r, o in zip(reference, ours)])
    to_truth = corpus_wer([(truth[p], o["text"]) for p, o in zip(parity_paths, ours)])
    assert to_ref <= (2.0 if q_bits == 8 else 10.0), f"{q_bits}-bit: WER {to_ref:.1f}% against CPU fp32"
    assert to_truth <= 15.0, f"{q_bits}-bit: WER {to_truth:.1f}% against the synthesized text"
