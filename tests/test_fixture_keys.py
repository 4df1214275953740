"""Cached fixtures are keyed by the code that made them (issue 17, point 17): a converted model
directory by the converter's code, the GPU tests' CPU references by the runtime's code, so a
changed converter or runtime never tests against what older code produced."""

from __future__ import annotations

import shutil
from pathlib import Path

import conftest
from conftest import CONVERTER_CODE, RUNTIME_CODE, ROOT, code_hash, model_dir_path, openai_pt_path


def _copy(patterns, dst: Path) -> None:
    for pattern in patterns:
        for f in ROOT.glob(pattern):
            if f.is_file():
                (dst / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / f.relative_to(ROOT))


def test_converted_fixtures_move_when_the_converter_changes(tmp_path, monkeypatch):
    _copy(CONVERTER_CODE, tmp_path)
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    before = model_dir_path("tiny.en", "float32"), openai_pt_path("tiny.en"), model_dir_path("tiny.en", "float16", 4)
    assert before == (model_dir_path("tiny.en", "float32"), openai_pt_path("tiny.en"),
                      model_dir_path("tiny.en", "float16", 4))  # same code, same place
    source = tmp_path / "zoo" / "sources" / "ctranslate2.py"
    source.write_text(source.read_text() + "\n# a change to a source module\n")
    after = model_dir_path("tiny.en", "float32"), openai_pt_path("tiny.en"), model_dir_path("tiny.en", "float16", 4)
    assert all(a != b for a, b in zip(before, after))
    assert all(p.parent == conftest.CACHE / "models" for p in after)
    assert after[0].name.startswith("tiny.en-fp32-") and after[2].name.startswith("tiny.en-4bit-")


def test_converter_key_covers_every_converter_file(tmp_path):
    _copy(CONVERTER_CODE, tmp_path)
    files = [f for pattern in CONVERTER_CODE for f in tmp_path.glob(pattern)]
    assert {"convert.py", "__init__.py", "ctranslate2.py", "checkpoint.py"} <= {f.name for f in files}
    base = code_hash(CONVERTER_CODE, root=tmp_path)
    for f in files:
        original = f.read_bytes()
        f.write_bytes(original + b"\n")
        assert code_hash(CONVERTER_CODE, root=tmp_path) != base, f
        f.write_bytes(original)
    assert code_hash(CONVERTER_CODE, root=tmp_path) == base


def test_gpu_references_are_keyed_by_the_runtime_code(tiny_en_fp32_dir, clips, tmp_path, monkeypatch):
    from test_gpu import _reference_file

    paths = [clips["en_meeting"].path]
    path, key = _reference_file("tiny.en", tiny_en_fp32_dir, paths)
    assert _reference_file("tiny.en", tiny_en_fp32_dir, paths) == (path, key)
    _copy(RUNTIME_CODE, tmp_path)
    assert (tmp_path / "whisper_mlx" / "decoding.py").is_file() and (tmp_path / "csrc" / "cpu_kernels.c").is_file()
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    assert _reference_file("tiny.en", tiny_en_fp32_dir, paths) == (path, key)  # a copy of the same code
    keys = {key}
    for changed in ("csrc/cpu_kernels.c", "whisper_mlx/assets/gelu_coeffs.h", "whisper_mlx/transcribe.py"):
        f = tmp_path / changed
        f.write_text(f.read_text() + "\n/* a change */\n")
        keys.add(_reference_file("tiny.en", tiny_en_fp32_dir, paths)[1])
    assert len(keys) == 4  # each change gives a new key
