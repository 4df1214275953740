"""Shared fixtures: real weights (rebuilt from the offline CTranslate2 packages) and real speech
(synthesized from the texts in zoo/clips.yaml), cached under .cache/tests between runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import pytest
import whisper_mlx  # noqa: F401  (before any test module imports mlx.core: loads OpenBLAS and the C kernels)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WHISPER_MLX_TEST_CACHE", ROOT / ".cache" / "tests"))


CONVERTER_CODE = ("zoo/__init__.py", "zoo/convert.py", "zoo/sources/*.py")
"""The code that turns a checkpoint into a model directory: a converted fixture is keyed by it."""
RUNTIME_CODE = ("whisper_mlx/**/*.py", "whisper_mlx/assets/*.cuh", "whisper_mlx/assets/*.h", "csrc/*.c", "csrc/*.h")
"""The code that turns a model directory and audio into a transcript: cached references are keyed by it."""


def code_hash(patterns: Iterable[str], *extra: str, root: Path | None = None) -> str:
    """A short sha256 over the files matching `patterns` (globs under `root`, the repo by default:
    each file's path and bytes) and `extra` strings, so a cache made by other code is never read
    as current."""
    root = root or ROOT
    h = hashlib.sha256()
    files = sorted({f for pattern in patterns for f in root.glob(pattern) if f.is_file()})
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().st_size}\0".encode())
        h.update(f.read_bytes())
    for item in extra:
        h.update(b"\0" + item.encode())
    return h.hexdigest()[:16]


def _family_key(family_name: str) -> str:
    """The converter code and what the manifest gives the converter (dims, alignment heads)."""
    from zoo.manifest import find_family

    family = find_family(family_name)
    given = {"dims": family.dims.model_dump(), "alignment_heads": family.alignment_heads}
    return code_hash(CONVERTER_CODE, json.dumps(given, sort_keys=True, default=str))


def model_dir_path(family_name: str, dtype: str, q_bits: int | None = None) -> Path:
    """Where the converted fixture lives: its name carries the converter-code key, so a change to
    the converter (or the family's dims/heads) builds a new directory instead of reusing a stale one."""
    return CACHE / "models" / f"{variant_name(family_name, dtype, q_bits)}-{_family_key(family_name)}"


def variant_name(family_name: str, dtype: str, q_bits: int | None = None) -> str:
    """The fixture's variant name (`tiny.en-fp32`, `tiny.en-4bit`), written into its config.json."""
    return f"{family_name}-" + (f"{q_bits}bit" if q_bits else {"float32": "fp32", "float16": "fp16"}[dtype])


def openai_pt_path(family_name: str) -> Path:
    """Where the family's OpenAI-format .pt fixture lives, keyed like `model_dir_path`."""
    return CACHE / "models" / f"{family_name}-{_family_key(family_name)}.pt"


def _checkpoint(family_name: str):
    """The family's OpenAI state dict from its offline source (with the manifest's heads)."""
    from zoo.manifest import find_family
    from zoo.sources import load_first_available

    return load_first_available(find_family(family_name), offline_only=True)


def _model_dir(family_name: str, dtype: str, q_bits: int | None = None) -> Path:
    """A converted model directory, built once and reused (conversion writes atomically)."""
    from zoo.convert import convert

    out = model_dir_path(family_name, dtype, q_bits)
    if not (out / "config.json").is_file():
        convert(_checkpoint(family_name), out, dtype=dtype, q_bits=q_bits,
                name=variant_name(family_name, dtype, q_bits))
    return out


def _openai_pt(family_name: str) -> Path:
    from zoo.sources import write_openai_checkpoint

    out = openai_pt_path(family_name)
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
