"""Shared fixtures: real weights (rebuilt from the offline CTranslate2 packages) and real speech
(synthesized from the texts in zoo/clips.yaml), cached under .cache/tests between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import whisper_mlx  # noqa: F401  (before any test module imports mlx.core: loads OpenBLAS and the C kernels)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WHISPER_MLX_TEST_CACHE", ROOT / ".cache" / "tests"))


def _checkpoint(family_name: str):
    """The family's OpenAI state dict from its offline source (with the manifest's heads)."""
    from zoo.manifest import find_family
    from zoo.sources import load_first_available

    return load_first_available(find_family(family_name), offline_only=True)


def _model_dir(family_name: str, dtype: str, q_bits: int | None = None) -> Path:
    """A converted model directory, built once and reused (conversion writes atomically)."""
    from zoo.convert import convert

    suffix = f"{q_bits}bit" if q_bits else {"float32": "fp32", "float16": "fp16"}[dtype]
    out = CACHE / "models" / f"{family_name}-{suffix}"
    if not (out / "config.json").is_file():
        convert(_checkpoint(family_name), out, dtype=dtype, q_bits=q_bits, name=out.name)
    return out


def _openai_pt(family_name: str) -> Path:
    from zoo.sources import write_openai_checkpoint

    out = CACHE / "models" / f"{family_name}.pt"
    if not out.is_file():
        write_openai_checkpoint(_checkpoint(family_name), out)
    return out


@pytest.fixture(scope="session")
def clips():
    """Every non-bench reference clip: id -> zoo.speech.Clip (path, text, language, split)."""
    from zoo.speech import load_specs, make_clips

    ids = [i for i, spec in load_specs().items() if spec.split != "bench"]
    return make_clips(CACHE / "clips", ids)


@pytest.fixture(scope="session")
def tiny_en_fp32_dir() -> Path:
    return _model_dir("tiny.en", "float32")


@pytest.fixture(scope="session")
def tiny_en_fp16_dir() -> Path:
    return _model_dir("tiny.en", "float16")


@pytest.fixture(scope="session")
def base_fp32_dir() -> Path:
    return _model_dir("base", "float32")


@pytest.fixture(scope="session")
def base_fp16_dir() -> Path:
    return _model_dir("base", "float16")


def openai_reference(family_name: str, model_dir: Path):
    """openai-whisper (PyTorch, CPU) on the same checkpoint, using the same alignment heads."""
    import json

    import torch
    import whisper

    model = whisper.load_model(str(_openai_pt(family_name)), device="cpu")
    heads = json.loads((model_dir / "config.json").read_text())["alignment_heads"]
    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model
